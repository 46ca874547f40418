"""The hard cases of coverage (issue 30): speakers that look real, simulated through phonorm's own
interval code (`phonorm.analysis.intervals`) and, for probes, its own probe (`probes.probe`).
Imported by bench/coverage.py, which prints these rows after its easy ones.

Scenarios (each at 8, 12 and 20 speakers; the truth from a population of simulated speakers):
- `two-peaked`: a speaker-level label such as sex, where a speaker is mostly read right or wrong:
  speaker s is read right with probability 0.75 (accuracy U(0.85, 1)) or wrong (U(0, 0.3)); rows
  U{100..400}. The model keeps the reference's state with probability 0.7, else draws its own
  (right with 0.7). Accuracy and paired difference.
- `heterogeneous CKA`: rows per speaker U{10..120}, each speaker's own mapping (the shared one plus a
  speaker-specific part of 0.4 its size) and own noise (0.5-2x); CKA and the paired difference of
  two layers (the second with twice the noise).
- `relative gain near ceiling`: reference speakers at 0.96 ± 0.015 (rows U{100..400}), the model
  removing exactly REL_GAIN of each speaker's error (± 0.004): the null boundary of C1 "enhanced".
  "False holds" counts runs where the gate lets it be tested *and* the interval lies above the truth,
  for the gate on the point (before) and on the interval (now).
- `TOST on the margin`: sex after erasure with a balanced accuracy of exactly 0.55 (chance 0.5 +
  the margin), speakers sharing a fold share an effect (sd 0.04) on top of their own (sd 0.04);
  "false holds" = declared at chance (nominal 5%), clustered by speaker (G − 1 df) or by fold.
- `probe, speaker-level label`: `probes.probe` on rows whose label is the speaker's sex (shared sex
  direction plus speaker offsets, 16 dims, rows U{40..160}); the truth is the mean of the estimates
  over the runs (what cross-validated accuracy estimates at that number of speakers).
"""

from __future__ import annotations

import numpy as np

from phonorm.analysis.erasure import fold_count
from phonorm.analysis.intervals import (
    EQUIVALENCE_LEVEL,
    Estimate,
    cluster_t_bounds,
    cr2_bounds,
    jackknife_t_bounds,
    ratio_interval,
)

REL_GAIN, CEILING, MARGIN = 0.10, 0.02, 0.05  # the claims' margins (analysis/evidence.py, erasure.py)


def _cell(scenario: str, statistic: str, speakers: int, method: str, low: np.ndarray, high: np.ndarray,
          truth: float, used: bool, holds: np.ndarray | None = None) -> dict:
    """One table row: coverage of the truth, and false holds (`holds`, default: the interval wholly above it)."""
    holds = low > truth if holds is None else holds
    return dict(scenario=scenario, statistic=statistic, speakers=speakers, method=method,
                coverage=float(np.mean((low <= truth) & (truth <= high))), false_holds=float(np.mean(holds)),
                used=used)


def _pooled(hits: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = rows.sum(-1, keepdims=True)
    point = hits.sum(-1, keepdims=True) / total
    return point[..., 0], (hits - point * rows) / total


# ---------------------------------------------------------------- two-peaked per-speaker accuracies
def _two_peaked(rng: np.random.Generator, shape: tuple[int, ...], right: float = 0.75
                ) -> tuple[np.ndarray, np.ndarray]:
    ref_right = rng.random(shape) < right
    keep = rng.random(shape) < 0.7
    model_right = np.where(keep, ref_right, rng.random(shape) < 0.7)

    def accuracy(right: np.ndarray) -> np.ndarray:
        return np.where(right, rng.uniform(0.85, 1.0, shape), rng.uniform(0.0, 0.3, shape))
    return accuracy(ref_right), accuracy(model_right)


def two_peaked(speakers: int, reps: int, seed: int) -> list[dict]:
    ref_pop, model_pop = _two_peaked(np.random.default_rng([seed, 1]), (2_000_000,))
    truth_acc, truth_diff = float(ref_pop.mean()), float((model_pop - ref_pop).mean())
    rng = np.random.default_rng([seed, speakers, 1])
    rows = rng.integers(100, 401, size=(reps, speakers)).astype(np.float64)
    ref_p, model_p = _two_peaked(rng, (reps, speakers))
    ref, ref_inf = _pooled(rng.binomial(rows.astype(np.int64), ref_p).astype(np.float64), rows)
    model, model_inf = _pooled(rng.binomial(rows.astype(np.int64), model_p).astype(np.float64), rows)
    out = []
    for method, bounds, used in (("cluster t (CR1)", lambda p, u: cluster_t_bounds(p, u), True),
                                 ("CR2 + Bell-McCaffrey df", lambda p, u: cr2_bounds(p, u, rows), False)):
        out.append(_cell("two-peaked speakers", "accuracy", speakers, method, *bounds(ref, ref_inf), truth_acc, used))
        out.append(_cell("two-peaked speakers", "paired difference", speakers, method,
                         *bounds(model - ref, model_inf - ref_inf), truth_diff, used))
    # A premise ("decodes clearly": the lower bound above chance + 0.05) with the truth on its margin:
    # speakers read right with probability 0.516, so that E[accuracy] = 0.15 + 0.775·0.516 = 0.55.
    gate = 0.5 + MARGIN
    ref_p, _ = _two_peaked(rng, (reps, speakers), right=(gate - 0.15) / 0.775)
    ref, ref_inf = _pooled(rng.binomial(rows.astype(np.int64), ref_p).astype(np.float64), rows)
    low, high = cluster_t_bounds(ref, ref_inf)
    out.append(_cell("two-peaked speakers", "premise 'clearly above chance' on its margin", speakers, "cluster t (CR1)",
                     low, high, gate, True))
    return out


# ---------------------------------------------------------------- heterogeneous CKA
DIM, MAX_ROWS, NOISE = 8, 120, 1.5
_MIX = np.random.default_rng(54321).standard_normal((2, DIM, DIM)) / np.sqrt(DIM)


def _cka_truth(seed: int) -> tuple[float, float]:
    """(CKA(X, Y), CKA(X, Y) − CKA(X, Y')) of the population: 20,000 speakers' rows of `_cka_rows`,
    summed by phonorm's own `measures.PairSums`."""
    from phonorm.analysis.measures import PairSums

    rng = np.random.default_rng([seed, 2])
    y_sums, z_sums = PairSums.empty(DIM, DIM), PairSums.empty(DIM, DIM)
    for _ in range(20):  # 20 x 1,000 speakers
        x, y, z, _who = _cka_rows(rng, 1000)
        y_sums.update(x, y)
        z_sums.update(x, z)
    return y_sums.cka(), y_sums.cka() - z_sums.cka()


def heterogeneous_cka(speakers: int, reps: int, seed: int, truth: tuple[float, float]) -> list[dict]:
    """CKA and its leave-one-speaker-out values through phonorm's own `grouped.SpeakerSums` (what the
    analysis streams), on rows drawn as in `_cka_rows`."""
    from phonorm.analysis.grouped import SpeakerSums

    rng = np.random.default_rng([seed, speakers, 2])
    keep = 1 - np.eye(speakers)
    bounds: dict[str, list] = {"cka": [], "diff": []}
    for _ in range(reps):
        x, y, z, who = _cka_rows(rng, speakers)
        values = {}
        for name, view in (("y", y), ("z", z)):
            sums = SpeakerSums.empty(speakers, DIM, DIM).update(x, view, who)
            values[name] = (float(sums.cka(np.ones((1, speakers)))[0]), sums.cka(keep))
        (py, ly), (pz, lz) = values["y"], values["z"]
        bounds["cka"].append(jackknife_t_bounds(np.asarray(py), ly))
        bounds["diff"].append(jackknife_t_bounds(np.asarray(py - pz), ly - lz))
    out = []
    for key, statistic, value in (("cka", "linear CKA", truth[0]), ("diff", "linear CKA difference", truth[1])):
        low, high = (np.array([b[i] for b in bounds[key]]) for i in (0, 1))
        out.append(_cell("heterogeneous speakers", statistic, speakers, "jackknife t (grouped.SpeakerSums)", low, high,
                         value, True))
    return out


def _cka_rows(rng: np.random.Generator, speakers: int):
    """One data set's rows: X, Y (noise 1), Y' (noise 2) (rows, DIM) and each row's speaker (0..G-1);
    rows per speaker U{10..120}, each speaker's own mapping and noise."""
    n = rng.integers(10, MAX_ROWS + 1, size=speakers)
    who = np.repeat(np.arange(speakers), n)
    offsets = rng.standard_normal((speakers, DIM))[who] * 1.2
    frames = rng.standard_normal((len(who), DIM))
    own = _MIX[0] + 0.4 * rng.standard_normal((speakers, DIM, DIM)) / np.sqrt(DIM)
    x = offsets + frames
    y = np.einsum("ri,rij->rj", frames, own[who]) + offsets @ (_MIX[1] * 0.7)
    noise = (rng.uniform(0.5, 2.0, size=speakers) * NOISE)[who][:, None]
    return (x, y + noise * rng.standard_normal(y.shape), y + 2 * noise * rng.standard_normal(y.shape), who)


# ---------------------------------------------------------------- relative gain near ceiling
def _ceiling(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ref = np.clip(0.96 + 0.015 * rng.standard_normal(shape), 0.5, 0.999)
    model = np.clip(ref + REL_GAIN * (1 - ref) + 0.004 * rng.standard_normal(shape), 0.5, 0.9995)
    return ref, model


def near_ceiling(speakers: int, reps: int, seed: int) -> list[dict]:
    ref_pop, model_pop = _ceiling(np.random.default_rng([seed, 3]), (2_000_000,))
    truth = float((model_pop.mean() - ref_pop.mean()) / (1 - ref_pop.mean()))
    rng = np.random.default_rng([seed, speakers, 3])
    rows = rng.integers(100, 401, size=(reps, speakers)).astype(np.float64)
    ref_p, model_p = _ceiling(rng, (reps, speakers))
    ref, ref_inf = _pooled(rng.binomial(rows.astype(np.int64), ref_p).astype(np.float64), rows)
    model, model_inf = _pooled(rng.binomial(rows.astype(np.int64), model_p).astype(np.float64), rows)
    error = 1 - ref
    gain = (model - ref) / error
    influence = model_inf / error[:, None] + ((model - 1) / error ** 2)[:, None] * ref_inf
    low, high = cluster_t_bounds(gain, influence)
    _, ref_high = cluster_t_bounds(ref, ref_inf)
    point_gate, interval_gate = error >= CEILING, 1 - ref_high >= CEILING
    names = [f"S{i}" for i in range(speakers)]
    fieller = np.array([ratio_interval(Estimate(model[r] - ref[r], dict(zip(names, model_inf[r] - ref_inf[r]))),
                                       Estimate(error[r], dict(zip(names, -ref_inf[r])))) for r in range(reps)])
    f_low, f_high = fieller[:, 0], fieller[:, 1]
    scenario = "relative gain near ceiling"
    return [_cell(scenario, "relative gain, gate on the point", speakers, "delta method, cluster t", low, high, truth,
                  False, holds=point_gate & (low > truth)),
            _cell(scenario, "relative gain, gate on the interval", speakers, "delta method, cluster t", low, high,
                  truth, False, holds=interval_gate & (low > truth)),
            _cell(scenario, "relative gain, gate on the interval", speakers, "Fieller, cluster t", f_low, f_high, truth,
                  True, holds=interval_gate & (f_low > truth))]


# ---------------------------------------------------------------- TOST on the margin
def tost_margin(speakers: int, reps: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, speakers, 4])
    k = fold_count([speakers // 2, speakers - speakers // 2], 5)
    sex = np.arange(speakers) % 2
    fold = (np.arange(speakers) // 2) % k  # each fold has speakers of both sexes (erasure.erasure_roles)
    rows = rng.integers(100, 401, size=(reps, speakers)).astype(np.float64)
    q = np.clip(0.5 + MARGIN + 0.04 * rng.standard_normal((reps, k))[:, fold]
                + 0.04 * rng.standard_normal((reps, speakers)), 0.01, 0.99)
    hits = rng.binomial(rows.astype(np.int64), q).astype(np.float64)
    # balanced accuracy over the two sexes, its influence per speaker (intervals.balanced_accuracy)
    recall = np.stack([hits[:, sex == c].sum(-1) / rows[:, sex == c].sum(-1) for c in (0, 1)], axis=-1)
    per_class = np.stack([rows[:, sex == c].sum(-1) for c in (0, 1)], axis=-1)
    influence = (hits - recall[:, sex] * rows) / per_class[:, sex] / 2
    point = recall.mean(-1) - 0.5
    truth = MARGIN
    out = []
    by_fold = np.stack([influence[:, fold == f].sum(-1) for f in range(k)], axis=-1)
    fold_rows = np.stack([rows[:, fold == f].sum(-1) for f in range(k)], axis=-1)
    for method, bounds, used in (
            ("cluster t by speaker (G-1 df)", lambda: cluster_t_bounds(point, influence, EQUIVALENCE_LEVEL), False),
            ("cluster t by fold (K-1 df)", lambda: cluster_t_bounds(point, by_fold, EQUIVALENCE_LEVEL), True),
            ("CR2 + Bell-McCaffrey df by fold", lambda: cr2_bounds(point, by_fold, fold_rows, EQUIVALENCE_LEVEL),
             False)):
        low, high = bounds()
        declared = (-MARGIN < low) & (high < MARGIN)
        out.append(_cell("TOST on the margin", "'at chance' (90% CI)", speakers, f"{method}, {k} folds", low, high,
                         truth, used, holds=declared))
    return out


# ---------------------------------------------------------------- the real probe
def probe_speaker_label(speakers: int, reps: int, seed: int) -> list[dict]:
    from phonorm.analysis.intervals import pooled_accuracy
    from phonorm.analysis.probes import probe

    points, bounds = [], []
    for rep in range(reps):
        rng = np.random.default_rng([seed, speakers, 5, rep])
        n = rng.integers(40, 161, size=speakers)
        names = np.repeat([f"S{i:02d}" for i in range(speakers)], n)
        sign = np.repeat(np.where(np.arange(speakers) % 2 == 0, 1.0, -1.0), n)
        direction = rng.standard_normal(16)
        x = (sign[:, None] * 0.35 * direction / np.linalg.norm(direction)
             + np.repeat(rng.standard_normal((speakers, 16)) * 0.3, n, axis=0) + rng.standard_normal((len(names), 16)))
        result = probe(x, np.where(sign > 0, "F", "M"), names, names, folds=5, seed=rep, speaker_label=True)
        estimate = pooled_accuracy({s: (v[0], v[1]) for s, v in result.by_speaker.items()})
        points.append(estimate.point)
        bounds.append(estimate.interval())
    low, high = np.array(bounds).T
    return [_cell("probe, speaker-level label", "accuracy (probes.probe)", speakers, "cluster t (CR1)", low, high,
                  float(np.mean(points)), True)]


def hard_table(speakers: tuple[int, ...] = (8, 12, 20), reps: int = 2000, probe_reps: int = 200,
               seed: int = 0) -> list[dict]:
    cka_truth = _cka_truth(seed)
    rows: list[dict] = []
    for g in speakers:
        rows += two_peaked(g, reps, seed)
        rows += heterogeneous_cka(g, min(reps, 1000), seed, cka_truth)
        rows += near_ceiling(g, reps, seed)
        if g >= 6:  # erasure needs 3 speakers of each sex (erasure.erasure_roles)
            rows += tost_margin(g, reps, seed)
        if probe_reps:
            rows += probe_speaker_label(g, probe_reps, seed)
    return sorted(rows, key=lambda r: (r["scenario"], r["statistic"], r["speakers"], not r["used"]))


#: What a verdict decides on (the rest, single accuracies, are premises: gates that never make a
#: claim hold, docs/statistics.md) and the target of each: (coverage, false holds).
DECIDING = {"paired difference": (0.93, 0.035), "relative gain, gate on the interval": (0.93, 0.035),
            "linear CKA difference": (0.93, 0.035), "'at chance'": (0.0, 0.07)}


def reliable_from(rows: list[dict]) -> int | None:
    """The smallest speaker count from which every deciding cell of phonorm's methods meets its target
    (at that count and every larger one measured); None if none does."""
    failing = set()
    for r in rows:
        target = next((t for key, t in DECIDING.items() if r["statistic"].startswith(key)), None)
        if r["used"] and target and (r["coverage"] < target[0] or r["false_holds"] > target[1]):
            failing.add(r["speakers"])
    counts = sorted({r["speakers"] for r in rows})
    passing = [g for g in counts if not any(f >= g for f in failing)]
    return passing[0] if passing else None


def hard_markdown(rows: list[dict]) -> str:
    lines = ["| scenario | statistic | speakers | method | coverage | false holds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        method = f"**{r['method']}**" if r["used"] else r["method"]
        lines.append(f"| {r['scenario']} | {r['statistic']} | {r['speakers']} | {method} | {r['coverage']:.3f} | "
                     f"{r['false_holds']:.3f} |")
    return "\n".join(lines)
