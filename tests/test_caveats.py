"""Verdicts drawn from few speakers of a sex carry a caveat; below 2 per sex, claims about sex are not testable."""

from __future__ import annotations

import pandas as pd

from phonorm.analysis.caveats import speaker_caveat, speakers_per_sex, with_speaker_caveat


def _frames(females: int, males: int) -> pd.DataFrame:
    speakers = [(f"F{i}", "F") for i in range(females)] + [(f"M{i}", "M") for i in range(males)]
    return pd.DataFrame([{"speaker": s, "sex": x} for s, x in speakers for _ in range(3)])


CLAIMS = [
    {"claim": "C1", "status": "holds", "holds": True, "measured": [
        {"model": "tone", "irrelevant": "sex", "comparisons": [{"name": "sex suppressed", "verdict": "holds"}]}]},
    {"claim": "C2", "status": "does not hold", "holds": False, "measured": [
        {"model": "tone", "comparisons": [{"name": "similarity stays high", "verdict": "does not hold"}]}]},
]


def test_enough_speakers_of_each_sex_leave_the_verdicts_alone():
    counts = speakers_per_sex(_frames(4, 5))
    assert counts == {"F": 4, "M": 5} and speaker_caveat(counts) is None
    assert with_speaker_caveat(CLAIMS, counts) == CLAIMS


def test_fewer_than_4_speakers_of_a_sex_is_a_caveat_on_every_verdict():
    rows = with_speaker_caveat(CLAIMS, speakers_per_sex(_frames(3, 5)))
    assert [r["status"] for r in rows] == ["holds", "does not hold"]
    assert all("3 female speakers and 5 male speakers" in r["caveat"] and "indicative only" in r["caveat"]
               for r in rows)


def test_one_speaker_of_a_sex_makes_claims_about_sex_not_testable():
    """Real data with 2 test speakers (one per sex): C1's sex comparison cannot be tested; C2 keeps its verdict."""
    rows = with_speaker_caveat(CLAIMS, speakers_per_sex(_frames(1, 1)))
    c1, c2 = rows
    assert c1["status"] == "not testable" and c1["holds"] is None and c1["verdict_without_caveat"] == "holds"
    assert "fewer than 2 speakers of a sex (1 F, 1 M)" in c1["reason"]
    assert c2["status"] == "does not hold" and "not testable here" in c2["caveat"]
