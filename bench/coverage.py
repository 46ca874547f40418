"""Coverage of phonorm's interval methods, simulated with planted speaker-level effects (issue 23),
then in the hard cases where the verdicts live (issue 30: bench/coverage_hard.py).

    python bench/coverage.py [--reps 2000] [--resamples 1000] [--speakers 8 12 20] [--seed 0] [--probe-reps 200]

Prints, per statistic, number of test speakers and method: the share of nominal 95% intervals that
contain the true value (`coverage`), the share lying wholly above it (`false holds`: a claim
"value > margin" with the margin at the truth, the null boundary, holds that often; ≤ 0.025 is
right), and for accuracy differences the share that holds when the truth exceeds the margin by
0.03 (`power`). Methods: the speaker bootstrap's percentile interval (`percentile bootstrap`,
phonorm's earlier method), the cluster-robust t interval (`cluster t`, phonorm's for accuracies and
their differences) and the delete-one-speaker jackknife t interval (`jackknife t`, phonorm's for
similarity). The two last are phonorm's own functions (`phonorm.analysis.intervals`).

The planted data:
- accuracies: speaker s has rows nₛ ~ U{100..400} and a reference accuracy pₛ = 0.65 + 0.12 zₛ;
  the model's is pₛ + Δ + 0.03 wₛ (zₛ, wₛ standard normal; clipped to [0.02, 0.99]); hits are
  binomial. The truth is the population's pooled accuracy E[p] (E[p + Δ + …] − E[p] for the
  difference), from 2,000,000 simulated speakers.
- linear CKA between X = oₛ + f and Y = f A + oₛ B + e (3 dimensions, 60 rows per speaker;
  oₛ a speaker offset, f the frame signal, e noise): the truth is CKA on 40,000 speakers. The
  difference is CKA(X, Y) − CKA(X, Y'), Y' with twice the noise (two layers of one model).
Everything is vectorised over the replications (2,000 by default: a coverage of 0.95 is then
estimated to ±0.01). `table()` returns the rows; tests/test_coverage.py asserts the methods phonorm
uses cover ≥ 0.92 at 8 speakers.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phonorm.analysis.intervals import cluster_t_bounds, jackknife_t_bounds

LEVEL = 0.95
SHIFT = 0.03  # how far the truth lies above the margin for `power`
NOISE = 1.5  # frame noise of Y (Y' has twice as much)


@dataclass(frozen=True)
class Row:
    statistic: str
    speakers: int
    method: str
    coverage: float
    false_holds: float
    power: float | None
    used: bool  # the method phonorm uses for this statistic


# ---------------------------------------------------------------- accuracies
def speaker_accuracies(rng: np.random.Generator, shape: tuple[int, ...], delta: float) -> tuple[np.ndarray, ...]:
    """Per-speaker (reference accuracy, model accuracy) of `shape` (..., G) speakers."""
    base = np.clip(0.65 + 0.12 * rng.standard_normal(shape), 0.02, 0.99)
    model = np.clip(base + delta + 0.03 * rng.standard_normal(shape), 0.02, 0.99)
    return base, model


def accuracy_truth(delta: float, seed: int) -> tuple[float, float]:
    """(E[reference accuracy], E[model − reference]) of the population (2,000,000 speakers)."""
    base, model = speaker_accuracies(np.random.default_rng([seed, 99]), (2_000_000,), delta)
    return float(base.mean()), float((model - base).mean())


def accuracy_sample(rng: np.random.Generator, reps: int, speakers: int, delta: float) -> dict[str, np.ndarray]:
    """Hits and rows (reps, G) of the reference and the model on the same speakers."""
    rows = rng.integers(100, 401, size=(reps, speakers)).astype(np.float64)
    base, model = speaker_accuracies(rng, (reps, speakers), delta)
    return {"rows": rows, "ref": rng.binomial(rows.astype(np.int64), base).astype(np.float64),
            "model": rng.binomial(rows.astype(np.int64), model).astype(np.float64)}


def ratio_influence(hits: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled accuracy (reps,) and its per-speaker influence (reps, G), as `intervals.pooled_accuracy`."""
    total = rows.sum(-1, keepdims=True)
    point = hits.sum(-1, keepdims=True) / total
    return point[..., 0], (hits - point * rows) / total


def bootstrap_weights(rng: np.random.Generator, reps: int, resamples: int, speakers: int) -> np.ndarray:
    """Multinomial speaker counts (reps, resamples, G): phonorm's earlier `SpeakerDraws`."""
    return rng.multinomial(speakers, np.full(speakers, 1.0 / speakers), size=(reps, resamples)).astype(np.float64)


def percentile(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - LEVEL) / 2
    return np.quantile(values, tail, axis=-1), np.quantile(values, 1 - tail, axis=-1)


def accuracy_rows(speakers: int, reps: int, resamples: int, seed: int) -> list[Row]:
    delta = -0.02  # the C3/C4 tolerance: the null boundary of "multitask − single-task > −0.02"
    truth_ref, truth_diff = accuracy_truth(delta, seed)
    rng = np.random.default_rng([seed, speakers])
    bounds: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for begin in range(0, reps, 100):
        n = min(100, reps - begin)
        data = accuracy_sample(rng, n, speakers, delta)
        ref, ref_inf = ratio_influence(data["ref"], data["rows"])
        model, model_inf = ratio_influence(data["model"], data["rows"])
        bounds.setdefault(("accuracy", "cluster t"), []).append(cluster_t_bounds(ref, ref_inf))
        bounds.setdefault(("difference", "cluster t"), []).append(cluster_t_bounds(model - ref, model_inf - ref_inf))
        if not resamples:
            continue
        w = bootstrap_weights(rng, n, resamples, speakers)
        rows = np.einsum("rbg,rg->rb", w, data["rows"])
        ref_b = np.einsum("rbg,rg->rb", w, data["ref"]) / rows
        model_b = np.einsum("rbg,rg->rb", w, data["model"]) / rows
        bounds.setdefault(("accuracy", "percentile bootstrap"), []).append(percentile(ref_b))
        bounds.setdefault(("difference", "percentile bootstrap"), []).append(percentile(model_b - ref_b))
    truths = {"accuracy": truth_ref, "difference": truth_diff}
    out = []
    for (statistic, method), parts in bounds.items():
        low, high = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        truth = truths[statistic]
        power = float(np.mean(low > truth - SHIFT)) if statistic == "difference" else None
        out.append(Row(f"{statistic} (pooled, paired)" if statistic == "difference" else "accuracy (pooled)",
                       speakers, method, float(np.mean((low <= truth) & (truth <= high))), float(np.mean(low > truth)),
                       power, method == "cluster t"))
    return out


# ---------------------------------------------------------------- linear CKA
DIM, ROWS = 8, 15
_MIXES = np.random.default_rng(12345).standard_normal((2, DIM, DIM)) / np.sqrt(DIM)
MIX, OFFSET_MIX = _MIXES[0], _MIXES[1] * 0.7


def cka_sums(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-speaker sums (shape + (…)) of X and of two views Y (noise 1) and Y' (noise 2) on the same rows."""
    offsets = rng.standard_normal(shape + (1, DIM)) * 1.2
    frames = rng.standard_normal(shape + (ROWS, DIM))
    x = offsets + frames
    y = frames @ MIX + offsets @ OFFSET_MIX
    sums = {"n": np.full(shape, float(ROWS)), "x": x.sum(-2), "xx": np.einsum("...ri,...rj->...ij", x, x)}
    for name, noise in (("y", NOISE), ("z", 2 * NOISE)):
        view = y + noise * rng.standard_normal(y.shape)
        sums[name] = view.sum(-2)
        sums[name + name] = np.einsum("...ri,...rj->...ij", view, view)
        sums["x" + name] = np.einsum("...ri,...rj->...ij", x, view)
    return sums


def weighted_cka(sums: dict[str, np.ndarray], w: np.ndarray, other: str) -> np.ndarray:
    """Linear CKA of X and view `other` ("y" or "z") when speaker g counts w[..., g] times
    (w (reps, B, G) against sums (reps, G, ...)), from the weighted per-speaker sums."""
    n = (w @ sums["n"][..., None])[..., None]  # (reps, B, 1, 1)

    def total(name: str) -> np.ndarray:
        """Σ_g w[..., g]·sums[name][:, g] as one batched matrix product (reps, B, ...)."""
        part = sums[name]
        return (w @ part.reshape(part.shape[0], part.shape[1], -1)).reshape(w.shape[:2] + part.shape[2:])

    def scatter(a: str, b: str) -> np.ndarray:
        mean_a, mean_b = total(a), total(b)
        return total(a + b) - mean_a[..., :, None] * mean_b[..., None, :] / n

    xy, xx, yy = scatter("x", other), scatter("x", "x"), scatter(other, other)
    return (xy ** 2).sum((-1, -2)) / np.sqrt((xx ** 2).sum((-1, -2)) * (yy ** 2).sum((-1, -2)))


def cka_truth(seed: int) -> tuple[float, float]:
    """(CKA(X, Y), CKA(X, Y) − CKA(X, Y')) of the population (40,000 speakers)."""
    sums = cka_sums(np.random.default_rng([seed, 98]), (1, 40_000))
    w = np.ones((1, 1, 40_000))
    y, z = weighted_cka(sums, w, "y")[0, 0], weighted_cka(sums, w, "z")[0, 0]
    return float(y), float(y - z)


def cka_rows(speakers: int, reps: int, resamples: int, seed: int) -> list[Row]:
    truth_cka, truth_diff = cka_truth(seed)
    rng = np.random.default_rng([seed, speakers, 7])
    keep = (1 - np.eye(speakers))[None]  # delete-one-speaker weights (1, G, G)
    bounds: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for begin in range(0, reps, 50):
        n = min(50, reps - begin)
        sums = cka_sums(rng, (n, speakers))
        ones = np.ones((n, 1, speakers))
        point_y, point_z = weighted_cka(sums, ones, "y")[:, 0], weighted_cka(sums, ones, "z")[:, 0]
        jack = np.broadcast_to(keep, (n, speakers, speakers))
        left_y, left_z = weighted_cka(sums, jack, "y"), weighted_cka(sums, jack, "z")
        bounds.setdefault(("CKA", "jackknife t"), []).append(jackknife_t_bounds(point_y, left_y))
        bounds.setdefault(("CKA difference", "jackknife t"), []).append(
            jackknife_t_bounds(point_y - point_z, left_y - left_z))
        if not resamples:
            continue
        w = bootstrap_weights(rng, n, resamples, speakers)
        boot_y, boot_z = weighted_cka(sums, w, "y"), weighted_cka(sums, w, "z")
        bounds.setdefault(("CKA", "percentile bootstrap"), []).append(percentile(boot_y))
        bounds.setdefault(("CKA difference", "percentile bootstrap"), []).append(percentile(boot_y - boot_z))
    truths = {"CKA": truth_cka, "CKA difference": truth_diff}
    out = []
    for (statistic, method), parts in bounds.items():
        low, high = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        truth = truths[statistic]
        out.append(Row(f"linear {statistic} (paired)" if "difference" in statistic else "linear CKA", speakers, method,
                       float(np.mean((low <= truth) & (truth <= high))), float(np.mean(low > truth)), None,
                       method == "jackknife t"))
    return out


# ---------------------------------------------------------------- the table
def table(speakers: tuple[int, ...] = (8, 12, 20), reps: int = 2000, resamples: int = 1000, seed: int = 0,
          which: tuple[str, ...] = ("accuracy", "cka")) -> list[Row]:
    rows: list[Row] = []
    for g in speakers:
        if "accuracy" in which:
            rows += accuracy_rows(g, reps, resamples, seed)
        if "cka" in which:
            rows += cka_rows(g, reps, resamples, seed)
    order = {"accuracy (pooled)": 0, "difference (pooled, paired)": 1, "linear CKA": 2,
             "linear CKA difference (paired)": 3}
    return sorted(rows, key=lambda r: (order[r.statistic], r.speakers, not r.used))


def markdown(rows: list[Row]) -> str:
    lines = ["| statistic | speakers | method | coverage | false holds | power |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        power = "–" if r.power is None else f"{r.power:.3f}"
        method = f"**{r.method}**" if r.used else r.method
        lines.append(f"| {r.statistic} | {r.speakers} | {method} | {r.coverage:.3f} | {r.false_holds:.3f} | {power} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated data sets per cell")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per data set")
    parser.add_argument("--speakers", type=int, nargs="+", default=[8, 12, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-reps", type=int, default=200, help="runs of the real probe per speaker count "
                        "(0: skip that scenario)")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = table(tuple(args.speakers), args.reps, args.resamples, args.seed)
    print(markdown(rows))
    print(f"\n{args.reps} data sets per cell, {args.resamples} bootstrap resamples, seed {args.seed}; "
          f"bold = the method phonorm uses; {time.perf_counter() - start:.0f} s\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from coverage_hard import hard_markdown, hard_table, reliable_from

    hard = hard_table(tuple(args.speakers), args.reps, args.probe_reps, args.seed)
    print(hard_markdown(hard))
    print(f"\nThe hard cases: {args.reps} data sets per cell ({min(args.reps, 1000)} for CKA, {args.probe_reps} runs "
          f"of the real probe), seed {args.seed}; bold = the method phonorm uses; {time.perf_counter() - start:.0f} s "
          f"in all. Deciding cells reach coverage >= 0.93 and false holds <= 0.035 (0.07 for 'at chance', a 5% test) "
          f"from {reliable_from(hard)} speakers on.")


if __name__ == "__main__":
    main()
