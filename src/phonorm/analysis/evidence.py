"""What the claims are decided from (`Evidence`: probes, similarity, erasure, evaluations, with their
per-speaker terms as `intervals.Estimate`s) and which tasks each model was fine-tuned on (`model_tasks`)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from phonorm.analysis.intervals import (
    JACKKNIFE_T,
    Estimate,
    SpeakerTally,
    pooled_accuracy,
)
from phonorm.labels import CLASSIC_MODEL
from phonorm.records.kinds import TRAINED_KINDS
from phonorm.settings import TASKS

# The claims' margins (module docstring of claims.py): a change, a tolerated loss, a relative gain, a
# similarity drop, the distance from ceiling below which nothing is left to enhance.
CHANGE = 0.05
TOLERANCE = 0.02
REL_GAIN = 0.10
SIM_DROP = 0.05
CEILING = 0.02
#: A fine-tuned model has learned its task when its accuracy removes at least this share of the
#: chance-level error, (accuracy − chance) / (1 − chance), by the 95% CI's lower bound: the premise of
#: every check of the model (fixed before any data; docs/statistics.md).
LEARNED = 1 / 3


def model_tasks(name: str, kind: str | None = None, tasks: Sequence[str] = (),
                reference: str | None = None) -> tuple[list[str], str]:
    """(tasks, how they were found) of a model in the store, from its manifest entry (`kind`, `tasks`):
    the fine-tuning tasks phonorm recorded (`kind` pretrained or finetuned). A model phonorm did not
    train (`kind` given, e.g. a hub id) has only its name in the store: its tokens tone/phone/sex."""
    if name == reference:
        return [], "reference"
    if kind in TRAINED_KINDS:
        return [t for t in tasks if t in TASKS], "manifest"
    tokens = [t for t in re.split(r"[^a-z]+", name.lower()) if t]
    return [t for t in TASKS if t in tokens], "name"


def _tallies(probe: dict) -> dict[str, SpeakerTally]:
    """A probe row's per-speaker counts (`by_speaker`) as tallies: saved layer parts hold them as lists."""
    return {s: SpeakerTally(*v) for s, v in probe["by_speaker"].items()}


# =========================================================================== the evidence
class Evidence:
    """Everything the claims read, keyed for lookup.

    probes: (model, layer, label) → {accuracy, chance, ci_low, ci_high, by_speaker: {speaker: (hits, rows,
        chance hits)}}
    evaluations: model → evaluation.json's `tasks` dict (task → {accuracy, by_speaker?, ...})
    cka: (model, layer) → (linear CKA to the reference, {speaker: CKA without that speaker}), the
        leave-one-out values of every layer and model on the same speakers
    secondary: (model, layer) → {measure: value} beside CKA (e.g. held-out fixed-k SVCCA)
    erasure: (model, layer, erased, probed) → a row of `erasure.erasure_probes`
    """

    def __init__(self, *, probes: dict, layers: dict[str, list[str]], reference: str, tasks: dict[str, list[str]],
                 evaluations: dict[str, dict] | None = None, cka: dict | None = None, secondary: dict | None = None,
                 erasure: dict | None = None, evaluation_sources: dict[str, str] | None = None):
        self.probes, self.layers, self.reference, self.tasks = probes, layers, reference, tasks
        self.evaluations = evaluations or {}
        self.evaluation_sources = evaluation_sources or {}
        self.cka, self.secondary, self.erasure = cka or {}, secondary or {}, erasure or {}

    def speakers(self) -> dict[str, int]:
        """Speakers behind the probes and the task accuracies (claims.json `intervals`)."""
        probe = {s for p in self.probes.values() for s in (p.get("by_speaker") or {})}
        task = {s for ev in self.evaluations.values() for t in ev.values() if isinstance(t, dict)
                for s in (t.get("by_speaker") or {})}
        return {"probe_speakers": len(probe), "task_speakers": len(task)}

    def top(self, model: str) -> str | None:
        layers = self.layers.get(model)
        return layers[-1] if layers else None

    def probe(self, model: str, label: str, layer: str | None = None) -> dict | None:
        return self.probes.get((model, layer or self.top(model), label))

    def probe_accuracy(self, model: str, label: str) -> Estimate | None:
        """Top-layer probe accuracy with its per-speaker terms; None without per-speaker hits."""
        p = self.probe(model, label)
        if not p or not p.get("by_speaker"):
            return None
        return pooled_accuracy({s: (t.hits, t.rows) for s, t in _tallies(p).items()})

    def probe_chance(self, model: str, label: str) -> float | None:
        """Chance of the top-layer probe: the share of its rows in the most frequent class
        (`probes.CHANCE_METHOD`)."""
        p = self.probe(model, label)
        if not p or not p.get("by_speaker"):
            return None
        tallies = _tallies(p).values()
        baseline, rows = sum(t.baseline for t in tallies), sum(t.rows for t in tallies)
        return baseline / rows if rows > 0 else None

    def task_accuracy(self, model: str, task: str) -> tuple[dict | None, Estimate | None]:
        """(evaluation entry or None, accuracy estimate or None when it has no per-speaker counts)."""
        entry = (self.evaluations.get(model) or {}).get(task)
        if not isinstance(entry, dict):
            return None, None
        by = entry.get("by_speaker")
        if not by:
            return entry, None
        return entry, pooled_accuracy({s: (v["correct"], v["n_frames"]) for s, v in by.items()})

    def learned(self, model: str, task: str) -> tuple[bool | None, str]:
        """Whether `model` learned `task` (`LEARNED`): from its own classifier's accuracy on the
        evaluation split with per-speaker counts, else from its top-layer probe (said so). None when
        neither has an interval."""
        entry, accuracy = self.task_accuracy(model, task)
        chance = None if entry is None else entry.get("chance")
        source = "task accuracy"
        if accuracy is None or chance is None:
            accuracy, chance, source = self.probe_accuracy(model, task), self.probe_chance(model, task), "top-layer probe"
        if accuracy is None or chance is None or chance >= 1:
            return None, (f"no {task} accuracy of the {model} model with per-speaker counts (evaluation or top-layer probe): "
                          f"whether it learned {task} is unknown")
        low, _ = accuracy.interval()
        if not np.isfinite(low):
            return None, f"no CI for the {task} accuracy of {model} (fewer than 2 speakers)"
        removed = (low - chance) / (1 - chance)
        said = (f"{source} {accuracy.point:.3f}, chance {float(chance):.3f}; by the 95% CI's lower bound {low:.3f} it "
                f"removes {removed:.2f} of the chance-level error, {LEARNED:.2f} needed")
        if removed >= LEARNED:
            return True, f"{model} learned {task} ({said})"
        return False, f"the {model} model did not learn {task} ({said})"

    def below_baseline(self, model: str, task: str) -> str | None:
        """A warning when `model`'s accuracy on `task` (its own classifier, else its top-layer probe) is
        below the best classic baseline's probe of that label (e.g. z-scored F0 for tone) by more than
        TOLERANCE, else None (a warning, not a verdict: the two are scored on different rows)."""
        entry, _ = self.task_accuracy(model, task)
        value = entry.get("accuracy") if entry else None
        if value is None:
            probe = self.probe_accuracy(model, task)
            value = None if probe is None else probe.point
        baselines = {layer: row.get("accuracy") for (m, layer, label), row in self.probes.items()
                     if m == CLASSIC_MODEL and label == task and row.get("accuracy") is not None}
        if value is None or not baselines:
            return None
        best = max(baselines, key=lambda name: float(baselines[name]))
        if float(value) >= float(baselines[best]) - TOLERANCE:
            return None
        return (f"the {model} model's {task} accuracy ({float(value):.3f}) is below the best classic baseline's probe "
                f"({best}, {float(baselines[best]):.3f})")

    def cka_estimate(self, model: str, layer: str) -> Estimate:
        value, left_out = self.cka[(model, layer)]
        return Estimate(float(value), {str(s): float(v) for s, v in dict(left_out).items()}, JACKKNIFE_T)

    def decodes_clearly(self, model: str, label: str) -> tuple[bool | None, str]:
        """Whether the top-layer probe linearly decodes `label` clearly above chance: the 95% CI lower
        bound of its accuracy exceeds chance (the class prior of the scored rows) + δ."""
        acc, chance = self.probe_accuracy(model, label), self.probe_chance(model, label)
        if acc is None or chance is None:
            return None, f"no top-layer {label} probe of {model} (e.g. too few test speakers of each class)"
        low, _ = acc.interval()
        if not np.isfinite(low):
            return None, f"no CI for the top-layer {label} probe of {model} (fewer than 2 speakers)"
        ok = bool(low > chance + CHANGE)
        return ok, (f"{model} decodes {label} at {acc.point:.3f} (95% CI from {low:.3f}; chance {chance:.3f})"
                    + ("" if ok else f": not clearly more than {CHANGE} above chance, so suppression cannot be "
                                     "observed"))
