"""Speaker-level confidence intervals and the three-way decision rule of the claims.

Speakers, not frames, are the independent units (frames of one speaker are strongly correlated), so
every interval treats a speaker as one cluster and has G − 1 degrees of freedom, G = the number of
speakers. The methods, chosen because their coverage was measured (`bench/coverage.py`, table in
docs/statistics.md), not assumed:

- `CLUSTER_T`, for accuracies and their paired differences: a pooled accuracy Σcₛ/Σnₛ is a ratio
  of speaker sums. Its linearisation (influence) per speaker is (cₛ − p·nₛ)/Σn; the variance is the
  cluster-robust (CR1) sum G/(G − 1)·Σ influenceₛ², and the interval is p ± t(G − 1)·se
  (Cameron & Miller 2015, "A practitioner's guide to cluster-robust inference", J. Human Resources
  50(2), sections VI.C-D: small-G correction and T(G − 1) critical values). A paired difference
  subtracts the influences speaker by speaker, so what both sides share cancels.
- `JACKKNIFE_T`, for similarity measures (CKA, SVCCA, PWCCA): a measure recomputed with each speaker
  left out, θ₍ₛ₎; se² = (G − 1)/G·Σ(θ₍ₛ₎ − θ̄)², interval centred on the bias-corrected
  G·θ − (G − 1)·θ̄, ± t(G − 1)·se (the delete-one jackknife, Efron & Tibshirani 1993, "An
  introduction to the bootstrap", ch. 11). The correction matters: in-sample CKA is biased upward
  by about √(dx·dy)/rows, and an interval about the raw estimate covered the population value in a
  third of the simulations (bench/coverage.py). A speaker bootstrap does not work at all: a speaker
  drawn twice repeats identical rows, which raises CKA between any two representations, so the
  resampled values sit above the estimate.

- `FIELLER_T`, for C1's relative gain (a ratio): `ratio_interval`, Fieller's set of ratios whose
  linear statistic the cluster-robust t test does not reject (the delta method's false holds near
  ceiling were above nominal).
- Intervals of rows that share a fitted probe (erasure: a fold's test speakers) sum the influences per
  fold (`Estimate.clustered`), K − 1 df.
Below `RELIABLE_FROM` speakers no comparison is decided (`too_few`): the measured coverage fails there.

An `Estimate` carries its point value and one term per speaker (an influence or a leave-one-out
value), so differences and smooth functions of estimates keep their pairing.

Decision rule (fixed before any data is seen): a claim "d > m" (or "d < m") about a difference d
with margin m holds when the whole 95% CI lies on the claimed side of m, does not hold when it lies
wholly on the other side, and is inconclusive when the CI contains m. "At chance" is an equivalence
test (TOST, Schuirmann 1987, J. Pharmacokinetics and Biopharmaceutics 15(6)): the 90% CI of
accuracy − chance lies inside (−margin, +margin), i.e. both one-sided 5% tests reject.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import numpy as np

LEVEL = 0.95
#: The two one-sided 5% tests of an equivalence (TOST) are one 90% interval.
EQUIVALENCE_LEVEL = 0.90
HOLDS, FAILS, INCONCLUSIVE, UNTESTABLE = "holds", "does not hold", "inconclusive", "not testable"
#: Every tested part holds but a part the claim asserts could not be tested: never "holds".
PARTLY = "partly tested"
#: Verdicts of a comparison shown beside the deciding ones (no verdict of its own).
SHOWN = "shown only"
CLUSTER_T = "cluster-robust t over speakers (CR1, G-1 df)"
#: Every interval a verdict decides on reaches coverage ≥ 0.93 and false holds ≤ 3.5% (7% for the 5%
#: TOST) in every scenario of bench/coverage.py from this many speakers on (measured: at 4 speakers
#: Fieller's interval of the relative gain covered 0.74); below it a comparison is not decided.
RELIABLE_FROM = 6
FIELLER_T = "Fieller interval of a ratio, cluster-robust t over speakers (CR1, G-1 df)"
JACKKNIFE_T = "delete-one-speaker jackknife t, bias-corrected (G-1 df)"


def t_quantile(level: float, df: np.ndarray | int) -> np.ndarray:
    """The two-sided `level` critical value of Student's t with `df` degrees of freedom (NaN below 1)."""
    from scipy.stats import t

    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(df >= 1, t.ppf(0.5 + level / 2, np.maximum(df, 1)), np.nan)


def cluster_t_bounds(point: np.ndarray, influence: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """CR1 cluster-robust t interval of a linearised statistic: `point` (...) and its per-speaker
    influence (..., G), which sums to the statistic's first-order error. Vectorised over leading
    dimensions (the simulation in bench/coverage.py runs thousands at once). NaN when G < 2."""
    influence = np.asarray(influence, dtype=np.float64)
    g = influence.shape[-1]
    if g < 2:
        nan = np.full(np.shape(point), np.nan)
        return nan, nan
    se = np.sqrt(g / (g - 1) * np.sum(influence ** 2, axis=-1))
    half = t_quantile(level, g - 1) * se
    return point - half, point + half


def cr2_bounds(point: np.ndarray, influence: np.ndarray, rows: np.ndarray, level: float = LEVEL
               ) -> tuple[np.ndarray, np.ndarray]:
    """CR2 cluster-robust t interval with Bell-McCaffrey degrees of freedom (Bell & McCaffrey 2002,
    Survey Methodology 28(2); Imbens & Kolesár 2016, Rev. Econ. Stat. 98(4)) of a pooled ratio, the
    intercept of a least-squares fit over rows: `influence` (..., G) as in `cluster_t_bounds`, `rows`
    (..., G) each speaker's rows. With leverage hₛ = nₛ/N, se² = Σ influenceₛ²/(1 − hₛ) and
    df = (tr M)²/tr M², M = D^(-1/2)(diag h − hhᵀ)D^(-1/2), D = diag(1 − h) (closed form below; equal
    rows give CR1 with G − 1 df exactly). A candidate measured in bench/coverage.py."""
    influence = np.asarray(influence, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    g = influence.shape[-1]
    if g < 2:
        nan = np.full(np.shape(point), np.nan)
        return nan, nan
    h = rows / rows.sum(axis=-1, keepdims=True)
    se = np.sqrt(np.sum(influence ** 2 / (1 - h), axis=-1))
    c = h ** 2 / (1 - h)
    frobenius = np.sum(h ** 2, axis=-1) + np.sum(c, axis=-1) ** 2 - np.sum(c ** 2, axis=-1)  # tr M = Σh = 1
    half = t_quantile(level, 1 / frobenius) * se
    return point - half, point + half


def jackknife_t_bounds(point: np.ndarray, replicates: np.ndarray, level: float = LEVEL
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Delete-one jackknife t interval: `point` (...) and the statistic with each speaker left out,
    `replicates` (..., G). Vectorised over leading dimensions. NaN when G < 2 or a replicate is NaN."""
    replicates = np.asarray(replicates, dtype=np.float64)
    g = replicates.shape[-1]
    if g < 2:
        nan = np.full(np.shape(point), np.nan)
        return nan, nan
    mean = replicates.mean(axis=-1)
    se = np.sqrt((g - 1) / g * np.sum((replicates - mean[..., None]) ** 2, axis=-1))
    # The bias-corrected centre g·θ − (g − 1)·θ̄ removes a bias of order 1/rows: with rows in
    # proportion to speakers, in-sample CKA's upward bias (about √(dx·dy)/rows) is one.
    centre = g * np.asarray(point, dtype=np.float64) - (g - 1) * mean
    half = t_quantile(level, g - 1) * se
    return centre - half, centre + half


@dataclass(frozen=True)
class Estimate:
    """A statistic over speakers with what its interval needs.

    `terms`: speaker → influence (method `CLUSTER_T`: the linearised statistic's per-speaker error
    term) or leave-one-out value (`JACKKNIFE_T`). Speakers absent from `terms` have no rows."""

    point: float
    terms: Mapping[str, float] = field(default_factory=dict)
    method: str = CLUSTER_T

    @property
    def speakers(self) -> int:
        return len(self.terms)

    def centre(self) -> float:
        """The value the interval is centred on (both methods' intervals are symmetric): the point, or
        for `JACKKNIFE_T` the bias-corrected G·θ − (G − 1)·θ̄ (what a verdict reports beside the interval)."""
        low, high = self.interval()
        return (low + high) / 2 if np.isfinite(low) and np.isfinite(high) else self.point

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """(low, high); (nan, nan) with fewer than 2 speakers or a non-finite point."""
        if not np.isfinite(self.point) or len(self.terms) < 2:
            return float("nan"), float("nan")
        values = np.array(list(self.terms.values()), dtype=np.float64)
        bounds = cluster_t_bounds if self.method == CLUSTER_T else jackknife_t_bounds
        low, high = bounds(np.asarray(self.point, dtype=np.float64), values, level)
        return float(low), float(high)

    def minus(self, other: "Estimate") -> "Estimate":
        """The paired difference self − other (the same speakers on both sides)."""
        return linear_combination([(1.0, self), (-1.0, other)])

    def clustered(self, cluster_of: Mapping[str, str]) -> "Estimate":
        """The same statistic with its speakers' influences summed per cluster (`cluster_of`: speaker →
        cluster), for rows that share more than a speaker: the test speakers of one fold are all scored
        by one fitted probe, so their errors are not independent. `CLUSTER_T` only."""
        if self.method != CLUSTER_T:
            raise ValueError("only influence terms (cluster-robust t) can be summed per cluster")
        summed: dict[str, float] = {}
        for speaker, value in self.terms.items():
            key = str(cluster_of[speaker])
            summed[key] = summed.get(key, 0.0) + value
        return Estimate(self.point, dict(sorted(summed.items())), self.method)

    def shifted(self, constant: float) -> "Estimate":
        """self − a fixed `constant` (e.g. a chance level fixed by the rows' class shares)."""
        return Estimate(self.point - constant, self.terms if self.method == CLUSTER_T else
                        {s: v - constant for s, v in self.terms.items()}, self.method)


def ratio_interval(numerator: Estimate, denominator: Estimate, level: float = LEVEL) -> tuple[float, float]:
    """Fieller's interval (Fieller 1954, J. R. Stat. Soc. B 16(2)) of numerator/denominator, both
    `CLUSTER_T` estimates over the same speakers: the ratios r for which numerator − r·denominator,
    a linear statistic, is not rejected by the cluster-robust t test. Exact where the delta method
    is not: the relative gain near ceiling had 3.5-4.6% false holds by the delta method at 8-20
    speakers (bench/coverage.py). (nan, nan) when the denominator is not clearly away from 0 (unbounded set)."""
    speakers = sorted(set(numerator.terms) | set(denominator.terms))
    g = len(speakers)
    if g < 2 or numerator.method != CLUSTER_T or denominator.method != CLUSTER_T:
        return float("nan"), float("nan")
    u = np.array([numerator.terms.get(s, 0.0) for s in speakers])
    v = np.array([denominator.terms.get(s, 0.0) for s in speakers])
    scale = g / (g - 1)
    vaa, vab, vbb = scale * u @ u, scale * u @ v, scale * v @ v
    t2 = float(t_quantile(level, g - 1)) ** 2
    a, b = numerator.point, denominator.point
    qa, qb, qc = b * b - t2 * vbb, -2 * (a * b - t2 * vab), a * a - t2 * vaa
    if qa <= 0:
        return float("nan"), float("nan")
    # The point estimate a/b always lies in the set (there the left side is −t²·variance ≤ 0), so the
    # discriminant is ≥ 0 but for rounding.
    root = np.sqrt(max(qb * qb - 4 * qa * qc, 0.0))
    return float((-qb - root) / (2 * qa)), float((-qb + root) / (2 * qa))


def linear_combination(parts: list[tuple[float, "Estimate"]]) -> Estimate:
    """Σ coefficient·estimate over `parts`, speaker by speaker (the delta method's first-order terms
    for `CLUSTER_T`; leave-one-out values combined alike for `JACKKNIFE_T`). Every part must share
    one method; jackknife parts must share their speakers (a leave-one-out value needs the rest)."""
    methods = {e.method for _, e in parts}
    if len(methods) != 1:
        raise ValueError(f"cannot combine estimates of different methods: {sorted(methods)}")
    method = methods.pop()
    point = float(sum(c * e.point for c, e in parts))
    if method == JACKKNIFE_T:
        speakers = set(parts[0][1].terms)
        if any(set(e.terms) != speakers for _, e in parts):
            raise ValueError("jackknife estimates on different speakers cannot be paired")
        return Estimate(point, {s: float(sum(c * e.terms[s] for c, e in parts)) for s in sorted(speakers)}, method)
    every = sorted({s for _, e in parts for s in e.terms})
    return Estimate(point, {s: float(sum(c * e.terms.get(s, 0.0) for c, e in parts)) for s in every}, method)


class SpeakerTally(NamedTuple):
    """One speaker's out-of-fold counts of a probe: `hits`, `rows`, and `baseline`, the hits of the
    majority-class guess (`probes.prior_hits`). Saved (by_speaker in the layer parts) as [hits, rows,
    baseline]; `SpeakerTally(*saved)` reads it back."""

    hits: int
    rows: int
    baseline: int


def pooled_accuracy(per_speaker: Mapping[str, tuple[float, float]]) -> Estimate:
    """Pooled accuracy Σcₛ/Σnₛ from {speaker: (correct, total)} with its influence per speaker,
    (cₛ − p·nₛ)/Σn. Speakers without rows are left out; NaN when there is no row at all."""
    rows = {str(s): (float(c), float(t)) for s, (c, t) in per_speaker.items() if t > 0}
    total = sum(t for _, t in rows.values())
    if total <= 0:
        return Estimate(float("nan"), {})
    p = sum(c for c, _ in rows.values()) / total
    return Estimate(p, {s: (c - p * t) / total for s, (c, t) in sorted(rows.items())})


def balanced_accuracy(hits: np.ndarray, classes: np.ndarray, speakers: np.ndarray) -> Estimate:
    """Balanced accuracy (mean over the k classes of the share of the class's rows predicted right)
    from per-row `hits`, true `classes` and `speakers` (rows,), with its influence per speaker,
    (1/k)·Σ_c (hits of s in c − recall_c·rows of s in c)/rows of c. Any prediction that ignores the
    features scores exactly 1/k in expectation, whatever the class shares of the rows: the chance
    level of an equivalence ("at chance") test needs no estimate of its own."""
    hits = np.asarray(hits, dtype=np.float64)
    names, speaker = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    labels, label = np.unique(np.asarray(classes), return_inverse=True)
    cells = speaker * len(labels) + label
    size = len(names) * len(labels)
    rows = np.bincount(cells, minlength=size).reshape(len(names), len(labels)).astype(np.float64)
    right = np.bincount(cells, weights=hits, minlength=size).reshape(len(names), len(labels))
    per_class = rows.sum(axis=0)
    recall = right.sum(axis=0) / per_class
    influence = ((right - recall * rows) / per_class).sum(axis=1) / len(labels)
    return Estimate(float(recall.mean()), {str(n): float(v) for n, v in zip(names, influence)})


def decide(low: float, high: float, margin: float, direction: str) -> str:
    """Verdict of the claim "difference `direction` margin" ('>' or '<') from its CI [low, high]."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNTESTABLE
    if direction == ">":
        return HOLDS if low > margin else FAILS if high < margin else INCONCLUSIVE
    if direction == "<":
        return HOLDS if high < margin else FAILS if low > margin else INCONCLUSIVE
    raise ValueError(f"direction must be '>' or '<', not {direction!r}")


def equivalent(difference: Estimate, margin: float) -> tuple[bool | None, float, float]:
    """TOST: whether `difference` lies within ±`margin` (its 90% CI inside (−margin, margin)), with
    that CI; None when no CI can be had."""
    low, high = difference.interval(EQUIVALENCE_LEVEL)
    if not (np.isfinite(low) and np.isfinite(high)):
        return None, low, high
    return bool(-margin < low and high < margin), low, high


def combine(verdicts: list[str]) -> str:
    """A conjunction of the verdicts of every part a claim asserts: does not hold if a tested part
    fails; else inconclusive if one is inconclusive; else "partly tested" when a part could not be
    tested (a claim holds only on what was tested); holds when every part holds; not testable when
    nothing was."""
    if not verdicts or all(v == UNTESTABLE for v in verdicts):
        return UNTESTABLE
    if FAILS in verdicts:
        return FAILS
    if INCONCLUSIVE in verdicts:
        return INCONCLUSIVE
    return HOLDS if all(v == HOLDS for v in verdicts) else PARTLY


def difference(a: Estimate, b: Estimate, margin: float, direction: str) -> dict:
    """The paired difference a − b: estimate, 95% CI with its method, margin, direction and verdict."""
    return judged(a.minus(b), margin, direction)


def too_few(speakers: int) -> str | None:
    """Why an interval over `speakers` speakers cannot decide (`RELIABLE_FROM`), or None when it can."""
    if speakers >= RELIABLE_FROM:
        return None
    return (f"too few speakers for a reliable interval ({speakers}; the intervals reach their coverage from "
            f"{RELIABLE_FROM} speakers on, bench/coverage.py)")


def judged(d: Estimate, margin: float, direction: str) -> dict:
    """An estimate `d` decided against `margin` (`interval_verdict`), reporting the value its interval
    is centred on; for a jackknife the raw value beside it."""
    low, high = d.interval()
    row = interval_verdict(d.centre(), low, high, d.method, d.speakers, margin, direction)
    if d.method == JACKKNIFE_T:
        row["uncorrected_estimate"] = num(d.point)  # the interval is about the bias-corrected `estimate`
    return row


def interval_verdict(estimate: float | None, low: float | None, high: float | None, method: str | None,
                     speakers: int, margin: float, direction: str) -> dict:
    """A comparison's estimate, 95% CI with its method, speakers, margin, direction and verdict: decided
    by `decide`, not testable without a finite estimate and interval, or (with the reason) over fewer
    than `RELIABLE_FROM` speakers. The one place every verdict of an interval is made."""
    finite = [float("nan") if v is None else float(v) for v in (estimate, low, high)]
    verdict = decide(finite[1], finite[2], margin, direction) if np.isfinite(finite[0]) else UNTESTABLE
    few = too_few(speakers)
    row = dict(estimate=num(finite[0]), ci_low=num(finite[1]), ci_high=num(finite[2]), ci_method=method,
               ci_level=LEVEL, speakers=speakers, margin=margin, direction=direction,
               verdict=UNTESTABLE if few else verdict)
    if few:
        row["reason"] = few
    return row


def num(value: float | None) -> float | None:
    """A finite float, or None (JSON null) for NaN/inf/None."""
    return float(value) if value is not None and np.isfinite(value) else None
