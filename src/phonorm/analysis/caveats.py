"""How far the speakers behind the verdicts carry them: a caveat on claims drawn from few speakers.

Every interval of the claim checks is over speakers (cluster-robust t, jackknife), and every probe is
scored on speakers it was not trained on; with few speakers of a sex the intervals rest on a handful
of clusters and a sex probe mostly tells speakers apart. So, counted on the
speakers of the analysed rows:
- fewer than `CAVEAT_BELOW` speakers of a sex: every claim row carries a `caveat` saying so;
- fewer than `TESTABLE_FROM` speakers of a sex: a claim whose comparisons involve sex is "not
  testable" (its measured values stay in the row, its verdict does not count).
Kept apart from claims.py: the criteria decide on the estimates; this says what the data can bear.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from phonorm.labels import SEXES

CAVEAT_BELOW = 4
TESTABLE_FROM = 2


def speakers_per_sex(frames: pd.DataFrame) -> dict[str, int]:
    """Speakers of each sex (F, M) among the analysed rows."""
    table = frames[["speaker", "sex"]].astype(str).drop_duplicates()
    return {sex: int((table["sex"] == sex).sum()) for sex in SEXES}


def speaker_caveat(counts: dict[str, int]) -> Optional[str]:
    """The caveat sentence for these speaker counts, or None when every sex has enough speakers."""
    few = {sex: n for sex, n in counts.items() if n < CAVEAT_BELOW}
    if not few:
        return None
    said = " and ".join(f"{n} {'female' if sex == 'F' else 'male'} speaker{'' if n == 1 else 's'}"
                        for sex, n in counts.items())
    text = (f"the analysed rows hold {said}: intervals over fewer than {CAVEAT_BELOW} speakers of a sex are "
            "unreliable; read every verdict as indicative only")
    if any(n < TESTABLE_FROM for n in few.values()):
        text += f"; claims about sex need at least {TESTABLE_FROM} speakers of each sex and are not testable here"
    return text


def involves_sex(claim: dict[str, Any]) -> bool:
    """Whether any comparison of the claim row is about sex (a sex probe, sex task accuracy, sex erased)."""
    return any("sex" in str(c.get("name", "")) for check in claim.get("measured") or []
               for c in check.get("comparisons") or []) or any(check.get("task") == "sex" or
                                                               check.get("irrelevant") == "sex"
                                                               for check in claim.get("measured") or [])


def with_speaker_caveat(claims: list[dict[str, Any]], counts: dict[str, int]) -> list[dict[str, Any]]:
    """The claim rows with the caveat of `counts` (see the module docstring); unchanged when none applies."""
    caveat = speaker_caveat(counts)
    if caveat is None:
        return claims
    untestable = any(n < TESTABLE_FROM for n in counts.values())
    rows = []
    for claim in claims:
        row = dict(claim, caveat=caveat)
        if untestable and involves_sex(claim) and claim.get("status") != "not testable":
            row.update(status="not testable", holds=None, verdict_without_caveat=claim.get("status"),
                       reason=f"fewer than {TESTABLE_FROM} speakers of a sex ({_counts(counts)}): a claim about sex "
                              "cannot be tested on these speakers")
        rows.append(row)
    return rows


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {sex}" for sex, n in counts.items())
