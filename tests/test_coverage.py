"""The interval methods phonorm uses cover what they claim (bench/coverage.py's simulation)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "coverage.py"
    spec = importlib.util.spec_from_file_location("bench_coverage", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_intervals_phonorm_uses_cover_95_percent_at_8_speakers():
    rows = bench().table(speakers=(8,), reps=1000, resamples=0, seed=1)  # resamples=0: the methods used only
    assert {(r.statistic, r.method) for r in rows} == {
        ("accuracy (pooled)", "cluster t"), ("difference (pooled, paired)", "cluster t"),
        ("linear CKA", "jackknife t"), ("linear CKA difference (paired)", "jackknife t")}
    for row in rows:
        assert row.used and row.coverage >= 0.92, row
        assert row.false_holds <= 0.04, row  # one tail of a 95% interval: 0.025 nominal


def test_the_simulation_tells_a_too_narrow_interval_from_a_right_one():
    """The check can fail: the earlier percentile speaker bootstrap of CKA misses the truth far more often."""
    module = bench()
    rows = {(r.statistic, r.method): r for r in module.cka_rows(8, reps=100, resamples=200, seed=2)}
    assert rows["linear CKA", "percentile bootstrap"].coverage < 0.8 < rows["linear CKA", "jackknife t"].coverage
