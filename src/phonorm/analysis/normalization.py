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


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int = 0, max_rows: int = 3000) -> float:
    """Mean silhouette (euclidean) of labelled rows on at most `max_rows` rows drawn with `seed`;
    NaN when fewer than two labels are present."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if max_rows <= 0 or len(np.unique(labels)) < 2 or len(labels) < 3:
        return float("nan")
    rng = np.random.default_rng(seed)
    take = rng.choice(len(labels), size=min(max_rows, len(labels)), replace=False)
    if len(np.unique(labels[take])) < 2:
        return float("nan")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a few thousand rows: threads cost more than they gain
        return float(silhouette_score(np.asarray(x[take], dtype=np.float64), labels[take]))
