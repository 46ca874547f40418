"""The parts of a claim and how they make its verdict: paired comparisons with their intervals
(`comparison`, `task_comparison`, `untestable`), the premise every check of a fine-tuned model states
(`with_premise`: the model learned its task), and the claim row that combines its checks
(`claim_row`: a claim holds only on what was tested; the untested parts are named). The four claims
themselves, and what each compares, are in claims.py."""

from __future__ import annotations

from phonorm.analysis.evidence import LEARNED, Evidence
from phonorm.analysis.intervals import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    PARTLY,
    UNTESTABLE,
    Estimate,
    combine,
    difference,
)


def comparison(key: str, name: str, evidence: str, a: str, b: str, pa: Estimate | None, pb: Estimate | None,
                margin: float, direction: str, primary: bool = True) -> dict:
    """A paired difference a − b with its interval and verdict. `key`: what the comparison is, for
    programs (`sex_suppressed`; the same for every model of a claim), `name`: for readers."""
    row = dict(key=key, name=name, evidence=evidence, a=a, b=b, primary=primary)
    if pa is None or pb is None:
        return {**row, "estimate": None, "ci_low": None, "ci_high": None, "ci_method": None, "margin": margin,
                "direction": direction, "verdict": UNTESTABLE, "a_value": None if pa is None else pa.point,
                "b_value": None if pb is None else pb.point}
    return {**row, "a_value": pa.point, "b_value": pb.point, **difference(pa, pb, margin, direction)}


def untestable(key: str, name: str, evidence: str, reason: str, margin: float, direction: str) -> dict:
    return dict(key=key, name=name, evidence=evidence, primary=True, estimate=None, ci_low=None, ci_high=None, ci_method=None,
                margin=margin, direction=direction, verdict=UNTESTABLE, reason=reason)


def task_comparison(ev: Evidence, key: str, name: str, task: str, a: str, b: str, margin: float) -> list[dict]:
    """Task accuracy of a − b (primary, when both have per-speaker counts) and the top-layer probe
    difference beside it; the probe decides, visibly, when task accuracy cannot."""
    ea, pa = ev.task_accuracy(a, task)
    eb, pb = ev.task_accuracy(b, task)
    probe = comparison(key, name, "probe", a, b, ev.probe_accuracy(a, task), ev.probe_accuracy(b, task), margin, ">",
                        primary=False)
    if pa is not None and pb is not None:
        return [comparison(key, name, "task accuracy", a, b, pa, pb, margin, ">"), probe]
    if ea is None or eb is None:
        why = f"no evaluation of {' and '.join(m for m, e in ((a, ea), (b, eb)) if e is None)} for {task}"
    else:
        why = "evaluation.json has no per-speaker counts (rerun evaluate) for a CI"
    va = None if ea is None else ea.get("accuracy")
    vb = None if eb is None else eb.get("accuracy")
    shown = dict(key=key, name=name, evidence="task accuracy", a=a, b=b, primary=False, a_value=va, b_value=vb,
                 estimate=(va - vb) if va is not None and vb is not None else None, ci_low=None, ci_high=None,
                 ci_method=None, margin=margin, direction=">", verdict=UNTESTABLE, reason=why)
    probe.update(primary=True, reason=f"probe decides: {why}")
    return [probe, shown]


def decided(comparisons: list[dict]) -> str:
    return combine([c["verdict"] for c in comparisons if c.get("primary")])


def with_premise(ev: Evidence, check: dict, models: list[str]) -> dict:
    """`check` with the premise of every check of a fine-tuned model applied: each of `models` learned
    each of its tasks (`Evidence.learned`); else the check is not testable, with the reason. Models
    below the best classic baseline of a task get a warning on the check."""
    failed, warnings = [], []
    for model in models:
        for task in ev.tasks.get(model) or []:
            ok, why = ev.learned(model, task)
            if not ok:
                failed.append(why)
            warning = ev.below_baseline(model, task)
            if warning:
                warnings.append(warning)
    if warnings:
        check["warnings"] = warnings
    if failed:
        why = "; ".join(failed)
        earlier = check.get("reason") if check.get("verdict") == UNTESTABLE else None
        check.update(verdict=UNTESTABLE, premise=False, reason=f"{earlier}; {why}" if earlier else why)
    else:
        check["premise"] = True
    return check


#: The premise every check of a fine-tuned model states in its claim's criterion.
PREMISE = (f"premise: the fine-tuned model learned its task, (accuracy − chance)/(1 − chance) ≥ {LEARNED:.2f} by the "
           "95% CI's lower bound (else its check is not testable)")


def untested_parts(checks: list[dict]) -> list[str]:
    """What a claim asserts but could not test: whole checks and the deciding comparisons of tested ones."""
    parts = []
    for check in checks:
        who = " vs ".join(str(check[k]) for k in ("model", "compared_with") if check.get(k))
        if check["verdict"] == UNTESTABLE:
            parts.append(f"{who}: {check.get('reason') or 'a value it needs is missing'}")
            continue
        for c in check.get("comparisons", []):
            if c.get("primary") and c["verdict"] == UNTESTABLE:
                parts.append(f"{who}, {c['name']}: {c.get('reason') or 'no interval'}")
    return parts


def claim_row(claim: str, statement: str, criterion: str, checks: list[dict], reason: str) -> dict:
    if not checks:
        return dict(claim=claim, statement=statement, criterion=criterion, holds=None, status=UNTESTABLE,
                    measured=[], reason=reason, untested=[reason])
    status = combine([c["verdict"] for c in checks])
    untested = untested_parts(checks)
    row = dict(claim=claim, statement=statement, criterion=criterion, status=status,
               holds={HOLDS: True, FAILS: False}.get(status), measured=checks, untested=untested)
    if status == UNTESTABLE:
        row["reason"] = "; ".join(untested)
    elif status == PARTLY:
        row["reason"] = "every tested part holds, but not everything the claim asserts was tested: " + "; ".join(untested)
    elif status == INCONCLUSIVE:
        row["reason"] = "a confidence interval contains its margin: the data cannot decide" + (
            "; not tested: " + "; ".join(untested) if untested else "")
    elif status == FAILS and untested:
        row["reason"] = "a tested part does not hold; not tested: " + "; ".join(untested)
    fallback = sorted({c["reason"] for check in checks for c in check.get("comparisons", [])
                       if c.get("primary") and str(c.get("reason", "")).startswith("probe decides")})
    if fallback:
        row["fallback"] = fallback  # the primary evidence (task accuracy) was not available
    return row
