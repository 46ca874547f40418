"""The claims C1-C4 of Wang, Yang & Yuan 2025 (arXiv 2503.04814), each decided from an estimate with a 95% confidence interval
against a margin fixed here, before any data is seen. Nothing is tuned to make a claim hold.

Models are identified by their fine-tuning tasks (`model_tasks`): the manifest entry's `tasks` list
when present, else the `tasks` of the model folder's `phonorm.json` (the manifest's `source`, when
that folder is readable), else the tokens of the model's name among {tone, phone, sex} (split at
any non-letter: "tone_sex", "tone+sex", "ft-tone" all work). The reference model has no tasks.

Evidence. "Top layer" = the model's last stored layer. Probe accuracies come from `probes.csv`
(with per-speaker hits); task accuracy is the models' own classifiers on the evaluation split
(`evaluate`'s evaluation.json, per-speaker `by_speaker` counts). Every accuracy and paired
difference has a 95% cluster-robust t interval over speakers (`intervals.CLUSTER_T`: the same
speakers on both sides of a difference); linear CKA a delete-one-speaker jackknife t interval
(`intervals.JACKKNIFE_T`). Each comparison names its interval's method (`ci_method`) and is decided
by `intervals.decide`: holds when the whole CI is on the claimed side of the margin, does not hold
when it is wholly on the other side, inconclusive when the CI contains the margin. A claim combines
its comparisons with `intervals.combine` (any failure → does not hold; all hold → holds; else
inconclusive; untestable parts are left out). A check whose *premise* fails (there is nothing the
claim could be observed on) is not testable as a whole, whatever its other comparisons say.

Margins (accuracy units): CHANGE δ = 0.05, TOLERANCE = 0.02, REL_GAIN = 0.10 (share of the
reference's errors removed), SIM_DROP = 0.05 (linear CKA), CEILING = 0.02 (reference error below
which there is nothing to enhance), erasure.EQUIVALENCE_MARGIN = 0.05 ("at chance").

- C1, per single-purpose fine-tuned model (irrelevant factor: sex; tone for a sex-only model),
  top-layer probes: suppressed = model − reference accuracy of the irrelevant factor < −δ; enhanced =
  relative error reduction on each task, (acc_model − acc_ref) / (1 − acc_ref) > REL_GAIN. Relative
  because an absolute gain of δ is impossible when the reference is already above 1 − δ; when the
  reference's error is below CEILING, "enhanced" is not testable (said so) and C1 rests on
  suppression. Premise: the reference linearly decodes the irrelevant factor clearly above chance
  (below), and both probes exist; otherwise the model's check is not testable (said so), whatever
  "enhanced" says: C1 is about suppression *and* enhancement.
- C2, per fine-tuned model, linear CKA to the reference (same layer, all stored rows; jackknife
  over speakers from per-speaker sums): mean over the lower half of the layers − mean over the top
  third > SIM_DROP, and the least similar layer in the upper half: min CKA of the lower half − min
  CKA of the upper half > 0. CKA because it has no fitted directions or truncation, so a layer
  curve is like for like (docs/statistics.md); held-out SVCCA with a fixed number of directions is
  shown beside it.
- C3, each model with tasks ⊇ {tone, sex} vs each single-task model: task accuracy multitask −
  single-task > −TOLERANCE, for tone (vs tone-only) and sex (vs sex-only). Primary evidence: the
  models' own task accuracy; top-layer probe accuracy beside it. Without per-speaker task accuracy
  the probe decides, and the check says so (`evidence`).
- C4, each tone+sex model vs each tone-only model: (a) tone as good: task accuracy multitask −
  tone-only > −TOLERANCE (primary; probe beside); (b) sex not suppressed: multitask − reference
  top-layer sex probe > −δ; (c) causal: erasing sex (LEACE, eraser fitted on other speakers than
  the probe's, `erasure.py`) from the multitask top layer changes tone probe accuracy by
  > −TOLERANCE, provided the erasure worked (sex after erasure at chance by TOST: its 90% CI of
  accuracy − chance within ±EQUIVALENCE_MARGIN; else (c) is not testable, said so). Premise: the
  reference decodes sex clearly above chance ("not suppressed" would be automatic otherwise).
"Clearly above chance": the accuracy's 95% CI lower bound exceeds chance + δ, chance = the class
prior of the scored rows (`probes.CHANCE_METHOD`).
A claim whose models are missing is "not testable" (holds null) with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phonorm.analysis.erasure import EQUIVALENCE_MARGIN
from phonorm.analysis.evidence import CEILING, CHANGE, REL_GAIN, SIM_DROP, TOLERANCE, Evidence
from phonorm.analysis.intervals import (
    CLUSTER_T,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    JACKKNIFE_T,
    LEVEL,
    UNTESTABLE,
    Estimate,
    combine,
    decide,
    difference,
    judged,
    linear_combination,
)


def _comparison(key: str, name: str, evidence: str, a: str, b: str, pa: Estimate | None, pb: Estimate | None,
                margin: float, direction: str, primary: bool = True) -> dict:
    """A paired difference a − b with its interval and verdict. `key`: what the comparison is, for
    programs (`sex_suppressed`; the same for every model of a claim), `name`: for readers."""
    row = dict(key=key, name=name, evidence=evidence, a=a, b=b, primary=primary)
    if pa is None or pb is None:
        return {**row, "estimate": None, "ci_low": None, "ci_high": None, "ci_method": None, "margin": margin,
                "direction": direction, "verdict": UNTESTABLE, "a_value": None if pa is None else pa.point,
                "b_value": None if pb is None else pb.point}
    return {**row, "a_value": pa.point, "b_value": pb.point, **difference(pa, pb, margin, direction)}


def _untestable(key: str, name: str, evidence: str, reason: str, margin: float, direction: str) -> dict:
    return dict(key=key, name=name, evidence=evidence, primary=True, estimate=None, ci_low=None, ci_high=None, ci_method=None,
                margin=margin, direction=direction, verdict=UNTESTABLE, reason=reason)


def _task_comparison(ev: Evidence, key: str, name: str, task: str, a: str, b: str, margin: float) -> list[dict]:
    """Task accuracy of a − b (primary, when both have per-speaker counts) and the top-layer probe
    difference beside it; the probe decides, visibly, when task accuracy cannot."""
    ea, pa = ev.task_accuracy(a, task)
    eb, pb = ev.task_accuracy(b, task)
    probe = _comparison(key, name, "probe", a, b, ev.probe_accuracy(a, task), ev.probe_accuracy(b, task), margin, ">",
                        primary=False)
    if pa is not None and pb is not None:
        return [_comparison(key, name, "task accuracy", a, b, pa, pb, margin, ">"), probe]
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


def _decided(comparisons: list[dict]) -> str:
    return combine([c["verdict"] for c in comparisons if c.get("primary")])


def _claim(claim: str, statement: str, criterion: str, checks: list[dict], reason: str) -> dict:
    if not checks:
        return dict(claim=claim, statement=statement, criterion=criterion, holds=None, status=UNTESTABLE,
                    measured=[], reason=reason)
    status = combine([c["verdict"] for c in checks])
    row = dict(claim=claim, statement=statement, criterion=criterion, status=status,
               holds={HOLDS: True, FAILS: False}.get(status), measured=checks)
    if status == UNTESTABLE:
        row["reason"] = "; ".join(sorted({c.get("reason", "") for c in checks if c.get("reason")})) or \
            "a value it needs is missing"
    elif status == INCONCLUSIVE:
        row["reason"] = "a confidence interval contains its margin: the data cannot decide"
    fallback = sorted({c["reason"] for check in checks for c in check.get("comparisons", [])
                       if c.get("primary") and str(c.get("reason", "")).startswith("probe decides")})
    if fallback:
        row["fallback"] = fallback  # the primary evidence (task accuracy) was not available
    return row


# =========================================================================== the claims
def check_claims(ev: Evidence) -> list[dict[str, Any]]:
    """The four claim rows (see the module docstring for each criterion)."""
    tuned = [m for m, t in ev.tasks.items() if m != ev.reference and t]
    return [_c1(ev, tuned), _c2(ev, tuned), _c3(ev, tuned), _c4(ev, tuned)]


def _c1(ev: Evidence, tuned: list[str]) -> dict:
    checks = []
    for m in tuned:
        t = set(ev.tasks[m])
        if "sex" in t and len(t) > 1:
            continue  # multitask models with sex are C3/C4's subject
        irrelevant = "tone" if t == {"sex"} else "sex"
        suppressed, premise = _suppressed(ev, m, irrelevant)
        comparisons = [suppressed] + [_enhanced(ev, m, task) for task in sorted(t)]
        check = dict(model=m, tasks=sorted(t), irrelevant=irrelevant, comparisons=comparisons,
                     verdict=_decided(comparisons))
        if premise is not None:
            # Nothing could be suppressed (or no probe shows it): C1 claims suppression *and*
            # enhancement, so enhancement alone cannot make it hold.
            check.update(verdict=UNTESTABLE, reason=f"C1 needs the suppression of {irrelevant} to be testable: "
                                                    f"{premise}")
        checks.append(check)
    return _claim("C1", "Fine-tuning normalizes: the task-irrelevant factor is suppressed in the top layer "
                  "while the task factor is enhanced.",
                  f"top-layer probes vs the reference: irrelevant factor (sex; tone for a sex-only model) "
                  f"difference < −{CHANGE}, and each task's relative error reduction > {REL_GAIN} (not testable at "
                  f"ceiling); not testable unless the reference linearly decodes the irrelevant factor above chance "
                  f"+ {CHANGE} (95% CI); 95% cluster-robust t CIs over speakers; every single-purpose fine-tuned "
                  "model", checks, "needs a single-purpose fine-tuned model")


def _suppressed(ev: Evidence, model: str, irrelevant: str) -> tuple[dict, str | None]:
    """C1's suppression comparison and, when its premise fails, why (else None)."""
    key, name, ref = f"{irrelevant}_suppressed", f"{irrelevant} suppressed", ev.reference
    clear, why = ev.decodes_clearly(ref, irrelevant)
    if not clear:
        return _untestable(key, name, "probe", why, -CHANGE, "<"), why
    row = _comparison(key, name, "probe", model, ref, ev.probe_accuracy(model, irrelevant),
                      ev.probe_accuracy(ref, irrelevant), -CHANGE, "<")
    if row["verdict"] == UNTESTABLE:
        why = f"no top-layer {irrelevant} probe of {model} with a CI"
        row["reason"] = why
        return row, why
    return row, None


def _enhanced(ev: Evidence, model: str, task: str) -> dict:
    """C1's enhancement: relative error reduction (acc_m − acc_ref)/(1 − acc_ref) > REL_GAIN, its
    interval by the delta method on the paired per-speaker terms."""
    pm, pr = ev.probe_accuracy(model, task), ev.probe_accuracy(ev.reference, task)
    key, name = f"{task}_enhanced", f"{task} enhanced (relative error reduction)"
    if pm is None or pr is None:
        return _untestable(key, name, "probe", f"no top-layer {task} probe", REL_GAIN, ">")
    if 1 - pr.point < CEILING:
        return _untestable(key, name, "probe", f"the reference is at ceiling on {task} ({pr.point:.3f}): nothing left to "
                           "enhance", REL_GAIN, ">")
    error = 1 - pr.point
    # ∂g/∂acc_m = 1/(1 − acc_ref), ∂g/∂acc_ref = (acc_m − 1)/(1 − acc_ref)²
    linear = linear_combination([(1 / error, pm), ((pm.point - 1) / error ** 2, pr)])
    gain = Estimate((pm.point - pr.point) / error, linear.terms, CLUSTER_T)
    return dict(key=key, name=name, evidence="probe", a=model, b=ev.reference, primary=True, a_value=pm.point,
                b_value=pr.point, **judged(gain, REL_GAIN, ">"))


def _c2(ev: Evidence, tuned: list[str]) -> dict:
    checks = []
    for m in tuned:
        order = [layer for layer in ev.layers.get(m, []) if (m, layer) in ev.cka]
        if len(order) < 3:
            checks.append(dict(model=m, layers=len(order), comparisons=[], verdict=UNTESTABLE,
                               reason="fewer than 3 layers with a CKA value"))
            continue
        cka = [ev.cka_estimate(m, layer) for layer in order]
        points = np.array([e.point for e in cka], dtype=float)
        n = len(order)
        low_part, top_part = slice(0, (n + 1) // 2), slice(int(np.ceil(2 * n / 3)), n)
        if top_part.start >= n:
            top_part = slice(n - 1, n)
        lower, top = _mean(cka[low_part]), _mean(cka[top_part])
        comparisons = [dict(key="cka_drop", name="CKA lower half − top third", evidence="similarity (linear CKA)", a="lower half",
                            b="top third", primary=True, a_value=lower.point, b_value=top.point,
                            **_paired(lower, top, SIM_DROP, ">"))]
        half = n // 2 + n % 2  # layers with index ≥ n/2 are the upper half
        lowest = int(np.argmin(points))
        low_min, up_min = _minimum(cka[:half]), _minimum(cka[half:])
        comparisons.append(dict(key="least_similar_upper", name="least similar layer in the upper half", evidence="similarity (linear CKA)",
                                a="min over the lower half", b="min over the upper half", primary=True,
                                a_value=low_min.point, b_value=up_min.point, least_similar_layer=order[lowest],
                                **_paired(low_min, up_min, 0.0, ">"),
                                reason=f"estimate: min CKA of the lower half − min of the upper half (> 0: the least "
                                       f"similar layer, {order[lowest]}, is in the upper half)"))
        sec = [ev.secondary.get((m, layer), {}).get("svcca_fixed_held_out") for layer in order]
        if all(v is not None and np.isfinite(v) for v in sec):
            sec_arr = np.array(sec, dtype=float)
            comparisons.append(dict(key="svcca_fixed_held_out_drop",
                                    name="held-out SVCCA (fixed directions) lower half − top third",
                                    evidence="similarity (held-out svcca_fixed)", a="lower half", b="top third",
                                    primary=False, a_value=float(sec_arr[low_part].mean()),
                                    b_value=float(sec_arr[top_part].mean()),
                                    estimate=float(sec_arr[low_part].mean() - sec_arr[top_part].mean()),
                                    ci_low=None, ci_high=None, ci_method=None, margin=SIM_DROP, direction=">",
                                    verdict="shown only"))
        checks.append(dict(model=m, layers=order, cka=[float(v) for v in points], least_similar_layer=order[lowest],
                           comparisons=comparisons, verdict=_decided(comparisons)))
    return _claim("C2", "The change is concentrated in upper layers: similarity to the pre-trained model stays high "
                  "low down and drops near the top.",
                  f"linear CKA to the reference (same layer): mean of the lower half − mean of the top third > "
                  f"{SIM_DROP}, and min of the lower half − min of the upper half > 0 (the least similar layer is in "
                  "the upper half); 95% delete-one-speaker jackknife t CIs; for every fine-tuned model", checks,
                  "needs a fine-tuned model")


def _mean(parts: list[Estimate]) -> Estimate:
    return linear_combination([(1 / len(parts), e) for e in parts])


def _minimum(parts: list[Estimate]) -> Estimate:
    """The smallest of jackknife estimates on the same speakers, with its leave-one-out values."""
    speakers = list(parts[0].terms)
    return Estimate(min(e.point for e in parts), {s: min(e.terms[s] for e in parts) for s in speakers}, JACKKNIFE_T)


def _paired(a: Estimate, b: Estimate, margin: float, direction: str) -> dict:
    """`difference` of two CKA estimates; not testable (no CI) when they lack leave-one-out values."""
    if a.speakers < 2 or set(a.terms) != set(b.terms):
        return dict(estimate=a.point - b.point, ci_low=None, ci_high=None, ci_method=None, margin=margin,
                    direction=direction, verdict=UNTESTABLE)
    return difference(a, b, margin, direction)


def _single(tuned: list[str], tasks: dict, task: str) -> list[str]:
    return [m for m in tuned if set(tasks[m]) == {task}]


def _multi(tuned: list[str], tasks: dict) -> list[str]:
    return [m for m in tuned if {"tone", "sex"} <= set(tasks[m])]


def _c3(ev: Evidence, tuned: list[str]) -> dict:
    checks = []
    for multi in _multi(tuned, ev.tasks):
        for task in ("tone", "sex"):
            for single in _single(tuned, ev.tasks, task):
                comparisons = _task_comparison(ev, f"{task}_kept", f"{task}: {multi} − {single}", task, multi, single,
                                               -TOLERANCE)
                checks.append(dict(model=multi, compared_with=single, task=task, comparisons=comparisons,
                                   evidence=next(c["evidence"] for c in comparisons if c["primary"]),
                                   verdict=_decided(comparisons)))
    return _claim("C3", "A multitask (tone+sex) model keeps both kinds of information without losing accuracy "
                  "on either task against the single-task models.",
                  f"task accuracy (the models' own classifiers; top-layer probe beside it) of the multitask model − "
                  f"the single-task model's > −{TOLERANCE} (95% CI over speakers), for tone (vs tone-only) and sex "
                  "(vs sex-only)", checks, "needs a model fine-tuned on tone+sex and a tone-only or sex-only model")


def _c4(ev: Evidence, tuned: list[str]) -> dict:
    checks = []
    ref = ev.reference
    for multi in _multi(tuned, ev.tasks):
        for single in _single(tuned, ev.tasks, "tone"):
            comparisons = _task_comparison(ev, "tone_as_good", f"tone as good: {multi} − {single}", "tone", multi,
                                           single, -TOLERANCE)
            clear, why = ev.decodes_clearly(ref, "sex")
            if clear:
                comparisons.append(_comparison("sex_not_suppressed", "sex not suppressed", "probe", multi, ref,
                                               ev.probe_accuracy(multi, "sex"), ev.probe_accuracy(ref, "sex"), -CHANGE,
                                               ">"))
            else:
                comparisons.append(_untestable("sex_not_suppressed", "sex not suppressed", "probe", why, -CHANGE, ">"))
            comparisons.append(_causal(ev, multi))
            check = dict(model=multi, compared_with=single, comparisons=comparisons, verdict=_decided(comparisons))
            if not clear:
                # With no sex information in the reference there is nothing suppression could remove, so
                # "suppression is not needed" cannot be observed: not testable, never a pass by default.
                check.update(verdict=UNTESTABLE, reason=f"C4 needs a reference that decodes sex: {why}")
            checks.append(check)
    return _claim("C4", "Suppressing irrelevant information is not needed for good classification.",
                  f"(a) tone task accuracy of the tone+sex model − the tone-only model's > −{TOLERANCE}; (b) its "
                  f"top-layer sex probe − the reference's > −{CHANGE}; (c) erasing sex (LEACE fitted on other "
                  f"speakers) from its top layer changes tone probe accuracy by > −{TOLERANCE}, testable when sex is "
                  f"then at chance (TOST, ±{EQUIVALENCE_MARGIN}, 90% CI); not testable unless the reference linearly "
                  f"decodes sex above chance + {CHANGE}; 95% cluster-robust t CIs over speakers", checks,
                  "needs a model fine-tuned on tone+sex and a tone-only model")


def _causal(ev: Evidence, model: str) -> dict:
    key, name = "tone_after_sex_erasure", "tone unchanged after erasing sex (top layer)"
    layer = ev.top(model)
    tone = ev.erasure.get((model, layer, "sex", "tone"))
    sex = ev.erasure.get((model, layer, "sex", "sex"))
    if not tone or not sex:
        return _untestable(key, name, "erasure", f"no erasure result for {model} {layer}", -TOLERANCE, ">")
    after = dict(sex_after_erasure=sex["accuracy"], sex_chance=sex["chance"],
                 sex_after_erasure_ci=[sex.get("above_chance_ci_low"), sex.get("above_chance_ci_high")],
                 sex_after_erasure_ci_level=sex.get("above_chance_ci_level"), sex_at_chance=sex.get("at_chance"))
    if sex.get("at_chance") is not True:
        low, high = after["sex_after_erasure_ci"]
        shown = "no CI" if low is None or high is None else f"90% CI of accuracy − chance [{low:+.3f}, {high:+.3f}]"
        return {**_untestable(key, name, "erasure", f"erasing sex (eraser fitted on other speakers) did not bring sex to "
                              f"chance within ±{EQUIVALENCE_MARGIN}: {sex['accuracy']:.3f} vs chance "
                              f"{sex['chance']:.3f}, {shown}", -TOLERANCE, ">"), **after}
    low, high = tone.get("change_ci_low"), tone.get("change_ci_high")
    verdict = decide(low if low is not None else float("nan"), high if high is not None else float("nan"),
                     -TOLERANCE, ">")
    return dict(key=key, name=name, evidence="erasure", a=f"{model} {layer} sex erased", b=f"{model} {layer}", primary=True,
                a_value=tone["accuracy"], b_value=tone["accuracy"] - tone["change"], estimate=tone["change"],
                ci_low=low, ci_high=high, ci_method=tone.get("ci_method"), ci_level=LEVEL, margin=-TOLERANCE,
                direction=">", verdict=verdict, **after)


def constants() -> dict[str, float]:
    return {"change": CHANGE, "tolerance": TOLERANCE, "relative_gain": REL_GAIN, "similarity_drop": SIM_DROP,
            "ceiling": CEILING, "equivalence_margin": EQUIVALENCE_MARGIN}


def intervals_used() -> dict[str, Any]:
    """What claims.json says about its intervals (`intervals` key)."""
    return {"level": LEVEL, "unit": "speaker", "paired": True, "accuracies_and_differences": CLUSTER_T,
            "similarity": JACKKNIFE_T, "at_chance": f"TOST: 90% CI of accuracy − chance within "
                                                   f"±{EQUIVALENCE_MARGIN}"}
