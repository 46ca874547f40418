"""The study's claims C1-C4 (BRIEF §1), each checked against measured numbers by a criterion fixed here,
before any data is seen. Nothing is tuned to make a claim hold.

Models are identified by their fine-tuning tasks (`model_tasks`): the manifest entry's `tasks` list
when present, else the `tasks` of the model folder's `phonorm.json` (the manifest's `source`, when
that folder is readable), else the tokens of the model's name among {tone, phone, sex} (split at
any non-letter: "tone_sex", "tone+sex", "ft-tone" all work). The reference model has no tasks.

"Top layer" = the model's last stored layer. Probe accuracies are those of `probes.csv`.

Criteria (δ = `CHANGE` = 0.05 accuracy, `TOLERANCE` = 0.02 accuracy, `SIM_DROP` = 0.05):
- C1, per single-purpose fine-tuned model (tasks without sex: irrelevant factor = sex; a sex-only
  model: irrelevant factor = tone): at the top layer, irrelevant-factor accuracy ≤ the reference's
  top-layer accuracy − δ (suppressed) AND every task's accuracy ≥ the reference's + δ (enhanced).
  Holds when it holds for every such model.
- C2, per fine-tuned model: SVCCA to the reference (same layer) averaged over the lower half of the
  layers exceeds its average over the top third by ≥ SIM_DROP, AND the least similar layer lies in
  the upper half. Holds when it holds for every fine-tuned model.
- C3, the multitask model(s) with tasks ⊇ {tone, sex}: top-layer tone accuracy ≥ the tone-only
  model's − TOLERANCE and sex accuracy ≥ the sex-only model's − TOLERANCE (each comparison made
  when that single-task model exists; at least one must exist).
- C4, multitask vs tone-only: the multitask top layer does NOT suppress sex (sex accuracy > the
  reference's top-layer accuracy − δ) while its tone accuracy ≥ the tone-only model's − TOLERANCE:
  good tone classification without suppressing the irrelevant factor.
A claim whose models are missing is "not testable"; `holds` is then None. A comparison whose probe
(e.g. phone, when not probed) is missing is listed with holds None and the claim is decided on the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CHANGE = 0.05
TOLERANCE = 0.02
SIM_DROP = 0.05
KNOWN_TASKS = ("tone", "phone", "sex")


def model_tasks(name: str, manifest_entry: dict | None = None, reference: str | None = None) -> tuple[list[str], str]:
    """(tasks, how they were found) of a model in the store, from its manifest entry: the fine-tuning
    tasks phonorm recorded (`kind` pretrained or finetuned). A model phonorm did not train
    (`kind: given`, e.g. a hub id) has only its name in the store: its tokens tone/phone/sex."""
    if name == reference:
        return [], "reference"
    entry = manifest_entry or {}
    if entry.get("kind") in ("pretrained", "finetuned"):
        return [t for t in entry.get("tasks") or [] if t in KNOWN_TASKS], "manifest"
    tokens = [t for t in re.split(r"[^a-z]+", name.lower()) if t]
    return [t for t in KNOWN_TASKS if t in tokens], "name"


def _top(probes: pd.DataFrame, model: str, label: str, layers: dict[str, list[str]]) -> float | None:
    if model not in layers or not layers[model]:
        return None
    top = layers[model][-1]
    hit = probes[(probes.model == model) & (probes.layer == top) & (probes.label == label)]
    return float(hit.accuracy.iloc[0]) if len(hit) else None


def _verdict(claim: str, statement: str, criterion: str, checks: list[dict], reason: str | None = None) -> dict:
    if not checks:
        return dict(claim=claim, statement=statement, criterion=criterion, holds=None, status="not testable",
                    measured=[], reason=reason or "the models it needs are not in the store")
    testable = [c for c in checks if c.get("holds") is not None]
    if not testable:
        return dict(claim=claim, statement=statement, criterion=criterion, holds=None, status="not testable",
                    measured=checks, reason="a probe or similarity value it needs is missing")
    holds = all(c["holds"] for c in testable)
    row = dict(claim=claim, statement=statement, criterion=criterion, holds=holds,
               status="holds" if holds else "does not hold", measured=checks)
    if len(testable) < len(checks):
        row["reason"] = (f"decided on {len(testable)} of {len(checks)} comparisons; the others lack a probe "
                         "or similarity value (holds: null)")
    return row


def check_claims(probes: pd.DataFrame, similarity: pd.DataFrame, tasks: dict[str, list[str]],
                 layers: dict[str, list[str]], reference: str) -> list[dict[str, Any]]:
    """The four claim rows. `tasks`: model → fine-tuning tasks; `layers`: model → stored layers in order;
    `similarity`: rows (model, reference, layer, measure, value)."""
    tuned = [m for m, t in tasks.items() if m != reference and t]
    acc = lambda m, label: _top(probes, m, label, layers)  # noqa: E731
    rows = [_c1(tuned, tasks, acc, reference), _c2(tuned, similarity, layers, reference),
            _c3(tuned, tasks, acc), _c4(tuned, tasks, acc, reference)]
    return rows


def _ok(*values) -> bool:
    return all(v is not None and not (isinstance(v, float) and np.isnan(v)) for v in values)


def _c1(tuned, tasks, acc, reference) -> dict:
    checks = []
    for m in tuned:
        t = set(tasks[m])
        if len(t & {"tone", "phone", "sex"}) == 0 or ("sex" in t and len(t) > 1):
            continue  # multitask models with sex are C3/C4's subject
        irrelevant = "tone" if t == {"sex"} else "sex"
        ref_irr, mod_irr = acc(reference, irrelevant), acc(m, irrelevant)
        check = dict(model=m, tasks=sorted(t), irrelevant=irrelevant, reference_irrelevant_accuracy=ref_irr,
                     model_irrelevant_accuracy=mod_irr)
        ok = _ok(ref_irr, mod_irr)
        suppressed = ok and mod_irr <= ref_irr - CHANGE
        enhanced = True
        for task in sorted(t):
            ref_t, mod_t = acc(reference, task), acc(m, task)
            check[f"reference_{task}_accuracy"], check[f"model_{task}_accuracy"] = ref_t, mod_t
            ok = ok and _ok(ref_t, mod_t)
            enhanced = enhanced and ok and mod_t >= ref_t + CHANGE
        check.update(suppressed=bool(suppressed) if ok else None, enhanced=bool(enhanced) if ok else None,
                     holds=bool(suppressed and enhanced) if ok else None)
        checks.append(check)
    return _verdict("C1", "Fine-tuning normalizes: the task-irrelevant factor is suppressed in the top layer "
                    "while the task factor is enhanced.",
                    f"top-layer probe accuracy: irrelevant factor (sex; tone for a sex-only model) ≤ reference − {CHANGE}, "
                    f"and each task ≥ reference + {CHANGE}; for every single-purpose fine-tuned model", checks)


def _c2(tuned, similarity, layers, reference) -> dict:
    checks = []
    for m in tuned:
        sv = similarity[(similarity.model == m) & (similarity.reference == reference) & (similarity.measure == "svcca")]
        order = [layer for layer in layers.get(m, []) if layer in set(sv.layer)]
        if len(order) < 3:
            checks.append(dict(model=m, holds=None, layers=len(order)))
            continue
        values = sv.set_index("layer").loc[order, "value"].to_numpy(dtype=float)
        n = len(values)
        lower = values[: (n + 1) // 2].mean()
        top = values[int(np.ceil(2 * n / 3)):].mean() if n - int(np.ceil(2 * n / 3)) > 0 else values[-1]
        lowest = int(np.argmin(values))
        holds = bool(lower - top >= SIM_DROP and lowest >= n / 2)
        checks.append(dict(model=m, svcca_lower_half=float(lower), svcca_top_third=float(top),
                           least_similar_layer=order[lowest], holds=holds))
    return _verdict("C2", "The change is concentrated in upper layers: SVCCA to the pre-trained model stays high "
                    "low down and drops near the top.",
                    f"mean SVCCA of the lower half − mean of the top third ≥ {SIM_DROP}, and the least similar layer "
                    "in the upper half; for every fine-tuned model", checks)


def _single(tuned, tasks, task) -> list[str]:
    return [m for m in tuned if set(tasks[m]) == {task}]


def _c3(tuned, tasks, acc) -> dict:
    checks = []
    for multi in [m for m in tuned if {"tone", "sex"} <= set(tasks[m])]:
        for task in ("tone", "sex"):
            for single in _single(tuned, tasks, task):
                a_multi, a_single = acc(multi, task), acc(single, task)
                ok = _ok(a_multi, a_single)
                checks.append(dict(model=multi, compared_with=single, task=task, multitask_accuracy=a_multi,
                                   single_task_accuracy=a_single,
                                   holds=bool(a_multi >= a_single - TOLERANCE) if ok else None))
    return _verdict("C3", "A multitask (tone+sex) model keeps both kinds of information without losing accuracy "
                    "on either task against the single-task models.",
                    f"top-layer probe accuracy of the multitask model ≥ the single-task model's − {TOLERANCE}, "
                    "for tone (vs tone-only) and sex (vs sex-only)", checks,
                    "needs a model fine-tuned on tone+sex and a tone-only or sex-only model")


def _c4(tuned, tasks, acc, reference) -> dict:
    checks = []
    for multi in [m for m in tuned if {"tone", "sex"} <= set(tasks[m])]:
        for single in _single(tuned, tasks, "tone"):
            ref_sex, multi_sex = acc(reference, "sex"), acc(multi, "sex")
            multi_tone, single_tone = acc(multi, "tone"), acc(single, "tone")
            ok = _ok(ref_sex, multi_sex, multi_tone, single_tone)
            keeps_sex = ok and multi_sex > ref_sex - CHANGE
            good_tone = ok and multi_tone >= single_tone - TOLERANCE
            checks.append(dict(model=multi, compared_with=single, reference_sex_accuracy=ref_sex,
                               multitask_sex_accuracy=multi_sex, multitask_tone_accuracy=multi_tone,
                               single_task_tone_accuracy=single_tone,
                               sex_not_suppressed=bool(keeps_sex) if ok else None,
                               tone_as_good=bool(good_tone) if ok else None,
                               holds=bool(keeps_sex and good_tone) if ok else None))
    return _verdict("C4", "Suppressing irrelevant information is not needed for good classification.",
                    f"multitask top layer: sex accuracy > reference − {CHANGE} (not suppressed) while tone accuracy "
                    f"≥ tone-only model − {TOLERANCE}", checks,
                    "needs a model fine-tuned on tone+sex and a tone-only model")
