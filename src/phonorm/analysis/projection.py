"""Low-dimensional views of a layer: PCA (from the streamed sums) and UMAP (on a PCA reduction).

PCA needs only the d×d sums of `similarity.ViewSums`; coordinates are then one streamed pass.
UMAP does not scale to millions of points (pitfall 8, docs/pitfalls.md): rows are first reduced to about 50 PCA
dimensions, the map is fitted on a subsample stratified by speaker and label, and the other rows
are placed with `UMAP.transform`. A fixed `random_state` makes UMAP reproducible but single-threaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phonorm.analysis.similarity import ViewSums


@dataclass
class PCA:
    """Principal axes of a view from its sums: `mean` (dim,), `components` (dim, k), `variance` (k,)
    and `explained` (k,) = share of total variance per component."""

    mean: np.ndarray
    components: np.ndarray
    variance: np.ndarray
    explained: np.ndarray

    @classmethod
    def from_sums(cls, sums: ViewSums, k: int | None = None) -> "PCA":
        values, vectors = sums.pca()
        total = values.sum()
        k = len(values) if k is None else min(k, len(values))
        mean = sums.mean + (sums.shift if sums.shift is not None else 0.0)
        # Fix each axis's sign (largest loading positive) so coordinates are reproducible.
        signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
        vectors = vectors * np.where(signs == 0, 1, signs)
        return cls(mean, vectors[:, :k], values[:k], values[:k] / total if total > 0 else values[:k] * np.nan)

    def transform(self, block: np.ndarray, k: int | None = None) -> np.ndarray:
        """(rows, dim) → (rows, k) float32 coordinates on the first k axes."""
        axes = self.components if k is None else self.components[:, :k]
        return ((np.asarray(block, dtype=np.float64) - self.mean) @ axes).astype(np.float32)


def stratified_subsample(speakers: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices (sorted) of at most `size` rows spread evenly over (speaker, label) cells: each cell
    gives up to the same quota, so no speaker or label dominates the fitted map."""
    n = len(speakers)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keys = np.char.add(np.char.add(np.asarray(speakers, dtype=str), "\x1f"), np.asarray(labels, dtype=str))
    _, inverse = np.unique(keys, return_inverse=True)
    order = rng.permutation(n)
    inverse = inverse[order]
    # Round robin over cells: rank of each row within its cell (random order), take lowest ranks first.
    sort = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[sort])) + 1]
    rank = np.empty(n, dtype=np.int64)
    for begin, end in zip(starts, np.r_[starts[1:], n]):
        rank[sort[begin:end]] = np.arange(end - begin)
    chosen = order[np.argsort(rank, kind="stable")[:size]]
    return np.sort(chosen)


#: Above this many (transformed × fitted) point pairs, UMAP uses its nearest-neighbour index. Measured
#: (the demo's maps: 1,000 fitted, 3,000 transformed, 50 dims): exact 5.2 s a map, the index 2.0 s,
#: after a one-time compilation of 19 s and 31 s; from 15 maps on the index is the faster.
EXACT_TRANSFORM_PAIRS = 1_000_000


def fit_umap(fit_points: np.ndarray, seed: int, n_neighbors: int = 15, min_dist: float = 0.1, to_transform: int = 0):
    """A UMAP model (2-D) fitted on (rows, k) points; `random_state=seed` (forces one thread).
    `to_transform`: how many points will be transformed into the map afterwards."""
    import warnings

    import umap

    # Below 4,096 fitted points umap-learn transforms new points through scikit-learn's
    # pairwise_distances with its numba metric as a Python callable, one call per pair (measured:
    # minutes for 17,000 × 3,000 points). With many points to transform, force its nearest-neighbour
    # descent index instead (seeded, so maps stay reproducible); small maps keep the exact path.
    approximate = to_transform * len(fit_points) > EXACT_TRANSFORM_PAIRS
    model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, max(2, len(fit_points) - 1)),
                      min_dist=min_dist, random_state=seed, transform_seed=seed,
                      force_approximation_algorithm=approximate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden to 1 by setting random_state": intended
        model.fit(fit_points)
    return model


def umap_map(points: np.ndarray, fit_index: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP coordinates (rows, 2) float32 of all `points`: fitted on `points[fit_index]`, the
    rest transformed into that map."""
    import warnings

    model = fit_umap(points[fit_index], seed, to_transform=len(points) - len(fit_index))
    out = np.empty((len(points), 2), dtype=np.float32)
    out[fit_index] = model.embedding_
    rest = np.setdiff1d(np.arange(len(points)), fit_index)
    if len(rest):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[rest] = model.transform(points[rest])
    return out


def warm_up(seed: int = 0) -> float:
    """Compile umap-learn's and pynndescent's numba functions for the maps the analysis makes, both the
    exact and the index path of `fit_umap`, on random points; returns the seconds it took. Their
    functions are cached on disk (numba `cache=True`, in the environment), so the environment's first
    analysis does not pay the compilation: `make demo` in a fresh clone spent 104 s on its maps against
    56 s once compiled. `make install` runs it once per environment."""
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(2400, 50)).astype(np.float32)
    umap_map(points[:600], np.arange(300), seed)  # 300 × 300 pairs: the exact path
    umap_map(points, np.arange(1000), seed)  # 1,000 × 1,400 pairs: the index path
    return time.perf_counter() - start
