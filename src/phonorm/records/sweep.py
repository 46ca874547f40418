"""The sweep summary folder (`experiment/summary.py` writes it, `report/sweep.py` draws its page):
`sweep.csv` (a row per point and quantity) and `points.json` (`SweepPoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional

import pandas as pd
from pydantic import BaseModel, ConfigDict

from phonorm.artifacts import JsonRecord
from phonorm.errors import InputError
from phonorm.records.tables import SWEEP

TABLE = SWEEP.file  # sweep.csv; its columns: records/tables.SweepRow
POINTS = "points.json"


class SweepPointEntry(BaseModel):
    """One point: its id and setting values, its folders and model names, the notes on what its
    summary lacked."""

    model_config = ConfigDict(extra="forbid")

    id: str
    values: dict[str, Any]
    results: str
    features: str
    report: str
    reference: str
    tone_model: Optional[str] = None
    pretrained: Optional[str] = None
    notes: list[str] = []


class SweepPoints(JsonRecord):
    """points.json: the swept settings (sweep.csv's first columns), the quantities (name → words),
    the CI level, the speaker-bootstrap resamples, and every point."""

    FILE: ClassVar[str] = POINTS
    WHAT: ClassVar[str] = "sweep summary (points.json)"

    settings: list[str]
    quantities: dict[str, str]
    level: float
    resamples: int
    points: list[SweepPointEntry]


def load_points(folder: str | Path) -> tuple[pd.DataFrame, SweepPoints]:
    """(sweep.csv, points.json) of a summary folder; InputError naming sweep.csv when it lacks a column
    of its row type (`records/tables.SweepRow`)."""
    folder = Path(folder)
    table = pd.read_csv(folder / TABLE, keep_default_na=True)
    missing = SWEEP.missing_columns(table.columns)
    if missing:
        raise InputError(folder / TABLE, f"lacks the column(s) {', '.join(missing)} of a sweep table (SweepRow): "
                                         "not written by this version's phonorm run; run the sweep again")
    return table, SweepPoints.load(folder)
