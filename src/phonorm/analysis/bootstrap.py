"""Paired speaker-level bootstrap and the three-way decision rule of the claims.

Speakers, not frames, are the independent units (frames of one speaker are strongly correlated), so
every confidence interval resamples speakers with replacement. A comparison of two quantities
(model A vs model B, layer k vs layer j, before vs after erasure) is *paired*: both sides are
computed from the same resampled speakers, drawn once by `SpeakerDraws` for a speaker list and a
seed, so every comparison made on that speaker list sees the very same resamples.

Decision rule (fixed before any data is seen): a claim "d > m" (or "d < m") about a difference d
with margin m holds when the whole 95% percentile CI lies on the claimed side of m, does not hold
when it lies wholly on the other side, and is inconclusive when the CI contains m.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

#: Default number of bootstrap resamples of the claim checks.
RESAMPLES = 2000
LEVEL = 0.95
HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE = "holds", "does not hold", "inconclusive", "not testable"


class SpeakerDraws:
    """Multinomial resampling weights (resamples, S) over a sorted speaker list: entry [b, s] is how
    often speaker s is drawn in resample b. Deterministic in (speakers, resamples, seed)."""

    def __init__(self, speakers: Iterable[str], resamples: int = RESAMPLES, seed: int = 0):
        self.speakers = sorted({str(s) for s in speakers})
        self.index = {s: i for i, s in enumerate(self.speakers)}
        rng = np.random.default_rng(seed)
        s = len(self.speakers)
        self.weights = (rng.multinomial(s, np.full(s, 1.0 / s), size=resamples).astype(np.float64)
                        if s and resamples > 0 else np.zeros((0, s)))

    def counts(self, per_speaker: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(correct, total) arrays (S,) on this speaker list from {speaker: (correct, total)};
        speakers absent from the mapping count zero (they add nothing to that side of a resample)."""
        correct, total = np.zeros(len(self.speakers)), np.zeros(len(self.speakers))
        for speaker, (c, t) in per_speaker.items():
            i = self.index.get(str(speaker))
            if i is not None:
                correct[i], total[i] = c, t
        return correct, total

    def accuracy(self, per_speaker: Mapping[str, tuple[float, float]]) -> tuple[float, np.ndarray]:
        """Pooled accuracy on all speakers and its resampled values (resamples,); NaN where a
        resample drew no speaker with rows."""
        correct, total = self.counts(per_speaker)
        point = correct.sum() / total.sum() if total.sum() > 0 else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(point), (self.weights @ correct) / (self.weights @ total)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap values, ignoring NaN resamples; (nan, nan) when none is finite."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))


def decide(low: float, high: float, margin: float, direction: str) -> str:
    """Verdict of the claim "difference `direction` margin" ('>' or '<') from its CI [low, high]."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNTESTABLE
    if direction == ">":
        return HOLDS if low > margin else FAILS if high < margin else INCONCLUSIVE
    if direction == "<":
        return HOLDS if high < margin else FAILS if low > margin else INCONCLUSIVE
    raise ValueError(f"direction must be '>' or '<', not {direction!r}")


def combine(verdicts: list[str]) -> str:
    """A conjunction of verdicts: fails if any part fails, holds if every part holds, else inconclusive;
    parts that are not testable are left out (all not testable → not testable)."""
    tested = [v for v in verdicts if v != UNTESTABLE]
    if not tested:
        return UNTESTABLE
    if FAILS in tested:
        return FAILS
    return HOLDS if all(v == HOLDS for v in tested) else INCONCLUSIVE


def difference(point_a: float, samples_a: np.ndarray, point_b: float, samples_b: np.ndarray,
               margin: float, direction: str) -> dict:
    """The paired difference a − b: estimate, 95% CI, margin, direction and verdict."""
    low, high = interval(np.asarray(samples_a) - np.asarray(samples_b))
    estimate = point_a - point_b
    verdict = decide(low, high, margin, direction) if np.isfinite(estimate) else UNTESTABLE
    return dict(estimate=_num(estimate), ci_low=_num(low), ci_high=_num(high), margin=margin, direction=direction,
                verdict=verdict)


def _num(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
