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


def hard():
    path = Path(__file__).resolve().parents[1] / "bench" / "coverage_hard.py"
    sys.path.insert(0, str(path.parent))
    try:
        import coverage_hard
    finally:
        sys.path.remove(str(path.parent))
    return coverage_hard


@pytest.mark.slow
def test_every_deciding_interval_covers_in_the_hard_cases_from_the_speaker_count_the_verdicts_use():
    """docs/statistics.md's hard-case table (same seed and data sets, without the real-probe runs): every
    interval a verdict decides on meets its target from `intervals.RELIABLE_FROM` speakers on, and not
    below it, which is why fewer speakers read "too few speakers for a reliable interval"."""
    from phonorm.analysis.intervals import RELIABLE_FROM

    module = hard()
    rows = module.hard_table(speakers=(4, 6, 8, 12, 20), reps=2000, probe_reps=0, seed=0)
    assert module.reliable_from(rows) == RELIABLE_FROM
    used = {(r["statistic"], r["speakers"]): r for r in rows if r["used"]}
    assert used["paired difference", 8]["false_holds"] <= 0.035
    assert used["relative gain, gate on the interval", 20]["false_holds"] <= 0.035
    # the methods replaced fail where they were replaced: the delta method near ceiling, TOST by speaker
    others = {(r["statistic"], r["speakers"], r["method"].split(",")[0]): r for r in rows if not r["used"]}
    assert others["relative gain, gate on the interval", 12, "delta method"]["false_holds"] > 0.035
    assert others["'at chance' (90% CI)", 12, "cluster t by speaker (G-1 df)"]["false_holds"] > 0.07
