"""The analysis's result tables, one row type each: the row's fields are the file's columns.

`analysis/tables.py` writes them through `ResultTable.frame` (a row with a key the type does not
have, or without one it has, is an error naming both: a misspelt key is never dropped in silence);
the report and the sweep summary read them through `ResultTable.read`; `validate` checks a file's
header against `columns`. Column meanings: docs/architecture.md ("Results").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, TypedDict

import pandas as pd


def read_csv_or_none(path: Path) -> Optional[pd.DataFrame]:
    """The CSV file at `path`, or None when it is missing, empty or unreadable (readers of results and
    training logs show a gap rather than stop)."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


class SimilarityRow(TypedDict):
    """similarity.csv: one model layer against the reference's same-named layer, one measure."""

    model: str
    reference: str
    layer: str
    measure: str
    value: float
    ci_low: Optional[float]
    ci_high: Optional[float]
    ci_method: Optional[str]
    floor: Optional[float]
    held_out_value: Optional[float]
    held_out_floor: Optional[float]
    n: int
    n_fit: Optional[int]
    n_score: Optional[int]
    speakers: int


class ProbeRow(TypedDict):
    """probes.csv: one probe (model, layer or classic feature, label)."""

    model: str
    layer: str
    label: str
    accuracy: float
    chance: float
    chance_method: str
    ci_low: Optional[float]
    ci_high: Optional[float]
    ci_method: str
    n: int
    folds: int
    classes: int
    dropped: int
    probe: str
    iterations: int
    converged: bool
    gradient: Optional[float]


class ErasureRow(TypedDict):
    """erasure.csv: one probe of a tone model's layer after erasing a label (or none)."""

    model: str
    layer: str
    erased: str
    probed: str
    accuracy: float
    chance: float
    chance_method: str
    ci_low: Optional[float]
    ci_high: Optional[float]
    ci_method: str
    ci_level: float
    change: Optional[float]
    change_ci_low: Optional[float]
    change_ci_high: Optional[float]
    balanced_accuracy: float
    balanced_chance: float
    balanced_ci_low: Optional[float]
    balanced_ci_high: Optional[float]
    balanced_change: Optional[float]
    balanced_change_ci_low: Optional[float]
    balanced_change_ci_high: Optional[float]
    above_chance: Optional[float]
    above_chance_ci_low: Optional[float]
    above_chance_ci_high: Optional[float]
    above_chance_ci_level: float
    at_chance: Optional[bool]
    equivalence_margin: float
    n: int
    speakers: int
    folds: int
    sex_eraser: str
    roles: str
    probe: str
    iterations: int
    converged: bool
    gradient: Optional[float]


class NormalizationRow(TypedDict):
    """normalization.csv: a variance share or silhouette of one label in one model layer."""

    model: str
    layer: str
    measure: str
    label: str
    value: float
    n: int


class PcaVarianceRow(TypedDict):
    """projections/pca_variance.parquet: one principal component of one model layer."""

    model: str
    layer: str
    component: int
    variance: float
    explained: float
    cumulative: float


class SweepRow(TypedDict):
    """sweep.csv (`experiment/summary.py`): one quantity of one sweep point, after one column per swept
    setting (`ResultTable.frame(rows, leading=settings)`)."""

    point: str
    quantity: str
    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    ci_from: str
    verdict: Optional[str]


@dataclass(frozen=True)
class ResultTable:
    """One result file of the analysis and its row type."""

    file: str
    row: type

    @property
    def columns(self) -> list[str]:
        return list(self.row.__annotations__)

    def frame(self, rows: Iterable[dict[str, Any]], leading: Iterable[str] = ()) -> pd.DataFrame:
        """The table of `rows` in column order; ValueError naming the row and the keys when a row has
        keys the type does not declare or lacks some it does (written by the analysis: a bug, not input).
        `leading`: columns a file has before the type's own (sweep.csv: one per swept setting)."""
        columns = [*leading, *self.columns]
        expected = set(columns)
        listed = list(rows)
        for i, row in enumerate(listed):
            if set(row) != expected:
                extra, missing = sorted(set(row) - expected), sorted(expected - set(row))
                raise ValueError(f"{self.file}: row {i} ({row.get('model')}, {row.get('layer')}) does not match "
                                 f"{self.row.__name__}: unknown keys {extra}, missing keys {missing}")
        return pd.DataFrame(listed, columns=columns)

    def read(self, results: Path) -> Optional[pd.DataFrame]:
        """The table of the results folder `results`, or None when it is missing or unreadable (the
        reader shows a gap). Files of earlier versions may lack later columns (`missing_columns`):
        readers check a column they can do without before they use it."""
        return read_csv_or_none(results / self.file)

    def missing_columns(self, header: Iterable[str]) -> list[str]:
        """The type's columns a file's header lacks."""
        present = set(header)
        return [c for c in self.columns if c not in present]


SIMILARITY = ResultTable("similarity.csv", SimilarityRow)
PROBES = ResultTable("probes.csv", ProbeRow)
ERASURE = ResultTable("erasure.csv", ErasureRow)
NORMALIZATION = ResultTable("normalization.csv", NormalizationRow)
PCA_VARIANCE = ResultTable("projections/pca_variance.parquet", PcaVarianceRow)
SWEEP = ResultTable("sweep.csv", SweepRow)
# The layer matrices (layer_matrix/*.csv) are matrices, not rows: index the model's layers, columns the
# reference's layers, one file per model and measure (`analysis/tables.write_layer_matrices`).

#: The CSV tables (settings.json records their row counts; validate reads each to its last line).
CSV_TABLES = (SIMILARITY, PROBES, ERASURE, NORMALIZATION)
