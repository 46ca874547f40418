"""The analysis's result tables, written from every layer's `LayerResult`, and the steps after the
layers: the claims (`claims_step`, claims.json) and the figures (`figures_step`).

Columns: one row type per table in records/tables.py (similarity.csv `SimilarityRow`, probes.csv
`ProbeRow`, erasure.csv `ErasureRow`, normalization.csv `NormalizationRow`,
projections/pca_variance.parquet `PcaVarianceRow`); layer_matrix/<model>__vs__<reference>__<measure>.csv (rows: the model's layers,
columns: the reference's layers). Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from phonorm.analysis import claims as claims_mod
from phonorm.analysis.caveats import speaker_caveat, speakers_per_sex, with_speaker_caveat
from phonorm.analysis.evidence import Evidence
from phonorm.analysis.measures import MEASURES
from phonorm.analysis.steps import LayerResult
from phonorm.artifacts import atomic_path, write_parquet
from phonorm.errors import InputError
from phonorm.records.analysis import ClaimsFile, EvaluationFile
from phonorm.records.tables import ERASURE, NORMALIZATION, PCA_VARIANCE, PROBES, SIMILARITY


@dataclass(frozen=True)
class Tables:
    """The result tables of an analysis. `layers`: the (model, layer) of each model layer's result in
    `parts` (model by model), the classic baselines' results after them."""

    similarity: pd.DataFrame
    probes: pd.DataFrame
    erasure: pd.DataFrame
    normalization: pd.DataFrame
    pca_variance: pd.DataFrame
    probe_rows: list[dict]
    erasure_rows: list[dict]

    @classmethod
    def of(cls, parts: list[LayerResult]) -> Tables:
        probe_rows = [r for p in parts for r in p.probes.rows]
        erasure_rows = [r for p in parts for r in p.erasure.rows]
        return cls(
            similarity=SIMILARITY.frame(r for p in parts for r in p.similarity.rows),
            probes=PROBES.frame(_without_speakers(r) for r in probe_rows),
            erasure=ERASURE.frame(_without_speakers(r) for r in erasure_rows),
            normalization=NORMALIZATION.frame(r for p in parts for r in p.normalization),
            pca_variance=PCA_VARIANCE.frame(r for p in parts for r in p.pca),
            probe_rows=probe_rows, erasure_rows=erasure_rows)

    def row_counts(self) -> dict[str, int]:
        """Data rows of each CSV table, recorded in settings.json: `validate` reads each table to its
        last line against them (a table cut at a line boundary still parses)."""
        return {SIMILARITY.file: len(self.similarity), PROBES.file: len(self.probes),
                ERASURE.file: len(self.erasure), NORMALIZATION.file: len(self.normalization)}

    def write(self, out: Path) -> None:
        write_csv(out / SIMILARITY.file, self.similarity)
        write_csv(out / PROBES.file, self.probes)
        write_csv(out / ERASURE.file, self.erasure)
        write_csv(out / NORMALIZATION.file, self.normalization)
        write_parquet(out / PCA_VARIANCE.file, self.pca_variance)


def _without_speakers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "by_speaker"}


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_layer_matrices(out: Path, by_layer: dict[tuple[str, str], LayerResult], models: list[str],
                         layers: dict[str, list[str]], reference: str) -> dict[str, pd.DataFrame]:
    """layer_matrix/<model>__vs__<reference>__<measure>.csv from the per-layer results `by_layer`."""
    matrices: dict[str, pd.DataFrame] = {}
    for m in models:
        if m == reference:
            continue
        for measure in MEASURES:
            table = pd.DataFrame(
                [[by_layer[(m, a)].similarity.matrix.get(b, {}).get(measure, np.nan) for b in layers[reference]]
                 for a in layers[m]],
                index=pd.Index(layers[m], name=m), columns=layers[reference])
            name = f"{m}__vs__{reference}__{measure}"
            with atomic_path(out / "layer_matrix" / f"{name}.csv") as tmp:
                table.to_csv(tmp)
            matrices[name] = table
    return matrices


# =========================================================================== claims
def read_evaluations(files: Optional[dict[str, str]]) -> dict[str, dict]:
    """model → {file, split, tasks} from evaluation.json files (`evaluate`'s dict under `tasks`)."""
    result = {}
    for model, file in (files or {}).items():
        path = Path(file)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise InputError(path, f"cannot read the evaluation of model {model!r}: {err.strerror or err}") from None
        except ValueError as err:
            raise InputError(path, f"is not valid JSON: {err}") from None
        tasks = data.get("tasks") if isinstance(data, dict) else None
        if not isinstance(tasks, dict):
            raise InputError(path, "has no `tasks` object (expected the evaluation.json that `phonorm run` writes)")
        evaluation = EvaluationFile.load_file(path)  # every field checked, the problem named
        result[model] = {"file": str(path), "split": evaluation.split, "tasks": evaluation.tasks}
    return result


@dataclass(frozen=True)
class ClaimInputs:
    """What the claims are decided from besides the tables: the models (reference first), their
    layers and tasks (`how`: where each model's tasks were found), the evaluations, the frames."""

    reference: str
    models: list[str]
    layers: dict[str, list[str]]
    tasks: dict[str, list[str]]
    how: dict[str, str]
    evaluations: dict[str, dict]
    frames: pd.DataFrame


def claims_step(out: Path, tables: Tables, by_layer: dict[tuple[str, str], LayerResult], given: ClaimInputs
                ) -> list[dict[str, Any]]:
    """Decide the claims (claims.py) and write claims.json; returns the claim rows."""
    evaluations = given.evaluations
    evidence = Evidence(
        probes={(r["model"], r["layer"], r["label"]): r for r in tables.probe_rows}, layers=given.layers,
        reference=given.reference, tasks=given.tasks, evaluations={m: e["tasks"] for m, e in evaluations.items()},
        evaluation_sources={m: e["file"] for m, e in evaluations.items()},
        cka={key: (p.similarity.cka[0], p.similarity.cka[1]) for key, p in by_layer.items() if p.similarity.cka},
        secondary={(r["model"], r["layer"]): {"svcca_fixed_held_out": r["held_out_value"]}
                   for r in tables.similarity.to_dict("records") if r["measure"] == "svcca_fixed"},
        erasure={(r["model"], r["layer"], r["erased"], r["probed"]): r for r in tables.erasure_rows})
    speakers = speakers_per_sex(given.frames)
    claim_rows = with_speaker_caveat(claims_mod.check_claims(evidence), speakers)
    ClaimsFile.write(out, {
        "claims": claim_rows, "model_tasks": given.tasks, "tasks_found_from": given.how, "reference": given.reference,
        "constants": claims_mod.constants(), "top_layer": {m: given.layers[m][-1] for m in given.models},
        "intervals": {**claims_mod.intervals_used(), **evidence.speakers()},
        "evaluations": {m: {"file": e["file"], "split": e.get("split"),
                            "per_speaker": all(isinstance(t, dict) and bool(t.get("by_speaker"))
                                               for t in e["tasks"].values())} for m, e in evaluations.items()},
        "evaluations_missing": [m for m in given.models if given.tasks[m] and m not in evaluations],
        "speakers_per_sex": speakers, "caveat": speaker_caveat(speakers),
        "splits": sorted(given.frames["split"].astype(str).unique()),
    })
    return claim_rows


# =========================================================================== figures
def figures_step(out: Path, tables: Tables, matrices: dict[str, pd.DataFrame], models: list[str],
                 layers: dict[str, list[str]], reference: str, draw: bool) -> list[str]:
    """Draw the figures under figures/ (none when not `draw`); returns their paths relative to `out`.
    Files an earlier run with other settings left in figures/ and layer_matrix/ are removed."""
    from phonorm.figures import draw_all

    figures = [] if not draw else draw_all(
        out, similarity=tables.similarity, probes=tables.probes, normalization=tables.normalization,
        pca_variance=tables.pca_variance, matrices=matrices, models=models, layers=layers, reference=reference,
        projections=out / "projections", erasure=tables.erasure)
    remove_stale(out / "figures", {(out / f).resolve() for f in figures})
    remove_stale(out / "layer_matrix", {(out / "layer_matrix" / f"{name}.csv").resolve() for name in matrices})
    return figures


def remove_stale(folder: Path, keep: set[Path]) -> None:
    """Delete what an earlier run with other settings left in `folder` (e.g. UMAP maps after a re-run
    with --no-umap), so the folder holds exactly this run's outputs."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.resolve() not in keep:
                path.unlink()
