"""How much of a layer's variance belongs to the speaker and sex versus tone and phone.

`GroupSums` accumulates, over streamed row blocks, per-group sums of a (rows, dim) layer for one
labelling of the rows; `variance_share` is then the between-group sum of squares over the total
(η², the share of variance a factor explains), on the raw dimensions (`share`, dominated by the
high-variance directions) and averaged over standardised dimensions (`share_std`, every dimension
counted alike). Silhouette by label (sklearn) is computed on a row subsample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroupSums:
    """Per-group row counts (groups,), sums (groups, dim) and per-dimension Σx² (dim,), about `shift`.

    Rows whose group code is negative (no label) are ignored.
    """

    n_groups: int
    dim: int
    shift: np.ndarray | None = None
    counts: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    sums: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    squares: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.n_groups, dtype=np.int64)
            self.sums = np.zeros((self.n_groups, self.dim))
            self.squares = np.zeros(self.dim)

    def update(self, block: np.ndarray, codes: np.ndarray) -> "GroupSums":
        """Add a (rows, dim) block whose rows belong to groups `codes` (rows,) (−1: none)."""
        keep = codes >= 0
        x = np.asarray(block[keep], dtype=np.float64)
        return self.update_shifted(x - self.shift if self.shift is not None else x, codes[keep])

    def update_shifted(self, x: np.ndarray, codes: np.ndarray) -> "GroupSums":
        """`update` for a block already taken about `shift` (rows, dim), float32 or float64 (the
        products' precision; the sums stay float64): no conversion, and no copy when every row has a group."""
        codes = np.asarray(codes)
        keep = codes >= 0
        labelled = np.flatnonzero(keep)
        self.counts += np.bincount(codes[labelled], minlength=self.n_groups)
        if len(labelled):
            # The group sums as one product with the rows' one-hot indicator (rows, groups): a BLAS
            # product, 10× faster at 768 dims than sorting the block and summing runs of rows.
            indicator = np.zeros((len(x), self.n_groups), dtype=x.dtype)  # the block's precision
            indicator[labelled, codes[labelled]] = 1.0
            self.sums += indicator.T @ x
        if 2 * len(labelled) < len(x):
            rows = x[labelled]
            self.squares += np.einsum("ij,ij->j", rows, rows)
        else:  # all rows minus the few unlabelled ones: no copy of the block
            self.squares += np.einsum("ij,ij->j", x, x)
            if len(labelled) < len(x):
                unlabelled = x[~keep]
                self.squares -= np.einsum("ij,ij->j", unlabelled, unlabelled)
        return self

    def __add__(self, other: "GroupSums") -> "GroupSums":
        return GroupSums(self.n_groups, self.dim, self.shift, self.counts + other.counts,
                         self.sums + other.sums, self.squares + other.squares)

    def variance_share(self) -> dict[str, float]:
        """η² of the grouping: `share` = Σ_dims between-SS / Σ_dims total-SS, `share_std` = mean over
        dimensions of between-SS/total-SS (dimensions with no variance skipped); `groups` = non-empty groups."""
        n = self.counts.sum()
        used = self.counts > 0
        if n < 2 or used.sum() < 2:
            return {"share": float("nan"), "share_std": float("nan"), "groups": int(used.sum()), "n": int(n)}
        mean = self.sums.sum(axis=0) / n
        group_means = self.sums[used] / self.counts[used, None]
        between = (self.counts[used, None] * group_means ** 2).sum(axis=0) - n * mean ** 2
        total = self.squares - n * mean ** 2
        live = total > total.max() * 1e-12
        return {"share": float(between.sum() / total.sum()),
                "share_std": float(np.mean(between[live] / total[live])),
                "groups": int(used.sum()), "n": int(n)}


def silhouettes(x: np.ndarray, labelled: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0,
                max_rows: int = 3000) -> dict[str, float]:
    """Mean silhouette (euclidean) of each label on at most `max_rows` of its rows drawn with `seed`:
    {name: (rows of `x` (n,), their labels (n,))} → {name: mean silhouette}, NaN when fewer than two
    labels are present. Labels with the same rows share the draw and the distances between the drawn
    rows: one distance matrix instead of one per label (a layer's four labels cost the time of one)."""
    from sklearn.metrics import pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits

    result: dict[str, float] = {}
    by_rows: dict[bytes, list[str]] = {}
    for name, (index, _) in labelled.items():
        by_rows.setdefault(np.asarray(index).tobytes(), []).append(name)
    for names in by_rows.values():
        index = np.asarray(labelled[names[0]][0])
        if max_rows <= 0 or len(index) < 3:
            result.update({name: float("nan") for name in names})
            continue
        take = np.random.default_rng(seed).choice(len(index), size=min(max_rows, len(index)), replace=False)
        distances = None
        for name in names:
            labels = np.asarray(labelled[name][1])
            if len(np.unique(labels)) < 2 or len(np.unique(labels[take])) < 2:
                result[name] = float("nan")
                continue
            with threadpool_limits(1):  # a few thousand rows: threads cost more than they gain
                if distances is None:
                    distances = pairwise_distances(np.asarray(x[index[take]], dtype=np.float64))
                result[name] = float(silhouette_score(distances, labels[take], metric="precomputed"))
    return result
