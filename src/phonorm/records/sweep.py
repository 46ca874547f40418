"""The sweep summary folder (`experiment/summary.py` writes it, `report/sweep.py` draws its page):
`sweep.csv` (a row per point and quantity) and `points.json` (settings, quantities, points)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

TABLE = "sweep.csv"
POINTS = "points.json"


def load_points(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(sweep.csv, points.json) of a summary folder."""
    folder = Path(folder)
    return pd.read_csv(folder / TABLE, keep_default_na=True), json.loads((folder / POINTS).read_text(encoding="utf-8"))
