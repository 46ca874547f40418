"""Similarity sums kept per group of rows (speakers, or the fit/score halves): `GroupedViewSums` and
`GroupedCrossSums` add each block's rows to their group's sums (`group_runs`: the runs of one group
in a block), any set of groups is then a sum (`sum_groups`); `SpeakerSums` gives the pair sums of
any set of speakers and the delete-one-speaker jackknife of linear CKA (O(S³) from the per-speaker
sums). The measures themselves are `similarity.py`'s."""

from __future__ import annotations

import numpy as np

from phonorm.analysis.measures import PairSums
from phonorm.analysis.similarity import (
    CrossSums,
    ViewSums,
    _column_sums,
    _cross,
    _gram,
    _host,
    _is_device_tensor,
    _norm_dot,
    as_block,
    row_norms,
)


def sum_groups(per_group: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Σ of `per_group[g]` (G, ...) over the groups where `mask` (bool (G,)) holds, added in group
    order as `per_group[mask].sum(0)` does, without its copy of the selected groups (at 20 speakers
    × 768² that copy is 90 MB)."""
    total = np.zeros(per_group.shape[1:], dtype=per_group.dtype)
    for g in np.flatnonzero(mask):
        total += per_group[g]
    return total


class GroupedViewSums:
    """`ViewSums` of one view kept per group of rows (a speaker; or the fit/score halves):
    `n` (G,), `sum` (G, dim), `gram` (G, dim, dim), `norm4` (G,), `norm2_x` (G, dim), about `shift`.
    `view(mask)` adds the groups in `mask` into one `ViewSums`. Memory G·dim²·8 bytes."""

    def __init__(self, groups: int, dim: int, shift=None):
        self.groups, self.dim = int(groups), int(dim)
        self.shift = None if shift is None else np.asarray(shift, np.float64)
        self.n = np.zeros(self.groups, dtype=np.int64)
        self.sum = np.zeros((self.groups, self.dim))
        self.gram = np.zeros((self.groups, self.dim, self.dim))
        self.norm4 = np.zeros(self.groups)
        self.norm2_x = np.zeros((self.groups, self.dim))
        self._views: dict[bytes, ViewSums] | None = None

    def share_views(self) -> None:
        """From now on `view(mask)` returns one `ViewSums` object per mask, so that its memoised PCA
        (an eigendecomposition, the costly step of SVCCA and PWCCA) is computed once for every pair
        that uses it: the reference layer's leave-one-speaker-out views serve the jackknife of every
        model compared with that layer. Memory: a view's sums and decomposition (3·dim²·8 bytes) per
        mask asked for; dropped when the sums change."""
        self._views = {}

    def update_shifted(self, x, a, runs: list[tuple[int, object]]) -> None:
        """Add a shifted block x (rows, dim) (float32 or float64) with row norms `a` (rows,), split into `runs`
        of (group, row index) (`group_runs`)."""
        if self._views:
            self._views = {}
        for g, rows in runs:
            xs, ag = x[rows], a[rows]
            self.n[g] += len(xs)
            self.sum[g] += _column_sums(xs)
            self.gram[g] += _gram(xs)
            self.norm4[g] += _norm_dot(ag, ag)
            self.norm2_x[g] += _host(ag @ xs)

    def view(self, mask: np.ndarray | None = None) -> ViewSums:
        """The sums of the groups in `mask` (bool (G,); all when None) as one `ViewSums`."""
        m = np.ones(self.groups, bool) if mask is None else np.asarray(mask, bool)
        if self._views is not None and m.tobytes() in self._views:
            return self._views[m.tobytes()]
        view = ViewSums(self.dim, self.shift, int(self.n[m].sum()), self.sum[m].sum(0), sum_groups(self.gram, m),
                        float(self.norm4[m].sum()), self.norm2_x[m].sum(0))
        if self._views is not None:
            self._views[m.tobytes()] = view
        return view


class GroupedCrossSums:
    """`CrossSums` kept per group: `xy` (G, dx, dy), `ab` (G,), `a_y` (G, dy), `b_x` (G, dx)."""

    def __init__(self, groups: int, dx: int, dy: int):
        self.groups, self.dx, self.dy = int(groups), int(dx), int(dy)
        self.n = np.zeros(self.groups, dtype=np.int64)
        self.xy = np.zeros((self.groups, self.dx, self.dy))
        self.ab = np.zeros(self.groups)
        self.a_y = np.zeros((self.groups, self.dy))
        self.b_x = np.zeros((self.groups, self.dx))

    def update_shifted(self, x, y, a, b, runs: list[tuple[int, object]]) -> None:
        """Add shifted blocks x (rows, dx), y (rows, dy) with row norms `a`, `b`, split into `runs`."""
        for g, rows in runs:
            xs, ys, ag, bg = x[rows], y[rows], a[rows], b[rows]
            self.n[g] += len(xs)
            self.xy[g] += _cross(xs, ys)
            self.ab[g] += _norm_dot(ag, bg)
            self.a_y[g] += _host(ag @ ys)
            self.b_x[g] += _host(bg @ xs)

    def cross(self, mask: np.ndarray | None = None) -> CrossSums:
        m = np.ones(self.groups, bool) if mask is None else np.asarray(mask, bool)
        return CrossSums(self.dx, self.dy, int(self.n[m].sum()), sum_groups(self.xy, m), float(self.ab[m].sum()),
                         self.a_y[m].sum(0), self.b_x[m].sum(0))


def group_runs(codes: np.ndarray, like=None) -> list[tuple[int, object]]:
    """(group, rows) for each group present in `codes` (rows,) (negative codes skipped): a slice when
    the group's rows are consecutive, else row indices (a torch tensor on `like`'s device when `like`
    is one)."""
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable")
    present, starts = np.unique(codes[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    runs: list[tuple[int, object]] = []
    for g, begin, end in zip(present, starts, bounds):
        if g < 0:
            continue
        rows: object = order[begin:end]
        if order[end - 1] - order[begin] == end - begin - 1:
            # The group's rows are one run (a store's rows come speaker by speaker): a slice is a view,
            # where fancy indexing would copy the block once per product. (The stable sort keeps a
            # group's rows increasing, so a span of exactly end - begin rows means consecutive.)
            rows = slice(int(order[begin]), int(order[end - 1]) + 1)
        elif like is not None and _is_device_tensor(like):
            # int64 indices on the block's device (tensor methods only: kernels.py)
            rows = like.new_empty(0).long().new_tensor(order[begin:end])
        runs.append((int(g), rows))
    return runs


class SpeakerSums:
    """Sums of two views on the same rows kept per speaker, about fixed shifts, for resampling
    speakers: `x`, `y` (`GroupedViewSums`) and `cross` (`GroupedCrossSums`). Every sum of a set of
    speakers follows (`pair(mask)`: e.g. the fit and score halves of the speakers), and linear CKA of
    any reweighting of speakers (`cka(weights)`). `y` may be shared by several pairs (one reference
    layer against several models). Memory S·(dx² + dy² + dx·dy)·8 bytes."""

    def __init__(self, x: GroupedViewSums, y: GroupedViewSums, cross: GroupedCrossSums):
        self.x, self.y, self.cross = x, y, cross

    @classmethod
    def empty(cls, speakers: int, dx: int, dy: int, shift_x=None, shift_y=None) -> "SpeakerSums":
        return cls(GroupedViewSums(speakers, dx, shift_x), GroupedViewSums(speakers, dy, shift_y),
                   GroupedCrossSums(speakers, dx, dy))

    @staticmethod
    def nbytes(speakers: int, dx: int, dy: int) -> int:
        return 8 * speakers * (dx * dx + dy * dy + dx * dy + 3 * (dx + dy) + 3)

    def update(self, x_block, y_block, speaker: np.ndarray, y_too: bool = True, dtype=np.float64) -> "SpeakerSums":
        """Add blocks (rows, dx), (rows, dy) whose rows belong to speakers `speaker` (rows,) in 0..S-1.
        `y_too=False`: `y` is kept by someone else (shared); only x and the cross sums are added."""
        x = as_block(x_block, self.x.shift, dtype)
        y = as_block(y_block, self.y.shift, dtype)
        a, b = row_norms(x), row_norms(y)
        runs = group_runs(speaker, like=x)
        self.x.update_shifted(x, a, runs)
        if y_too:
            self.y.update_shifted(y, b, runs)
        self.cross.update_shifted(x, y, a, b, runs)
        return self

    def pair(self, mask: np.ndarray | None = None) -> PairSums:
        """The `PairSums` of the speakers in `mask` (bool (S,); all when None)."""
        return PairSums(self.x.view(mask), self.y.view(mask), self.cross.cross(mask))

    def cka(self, weights: np.ndarray) -> np.ndarray:
        """Linear CKA (resamples,) of the data in which speaker s appears `weights[b, s]` times
        (weights (resamples, S), e.g. multinomial bootstrap counts; all ones = the data itself).
        ‖Σ w_s M_s − a bᵀ/N‖² expands into quadratic and cubic forms in w of per-speaker inner
        products, so each resample costs O(S³) instead of a pass over the rows."""
        w = np.asarray(weights, dtype=np.float64)
        big_n = w @ self.x.n
        with np.errstate(invalid="ignore", divide="ignore"):
            xy = _centred_sq_norm(self.cross.xy, self.x.sum, self.y.sum, w, big_n)
            xx = _centred_sq_norm(self.x.gram, self.x.sum, self.x.sum, w, big_n)
            yy = _centred_sq_norm(self.y.gram, self.y.sum, self.y.sum, w, big_n)
            return xy / np.sqrt(xx * yy)


def _centred_sq_norm(m: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """‖A − a bᵀ/N‖²_F per resample, with A = Σ w_s m_s, a = Σ w_s a_s, b = Σ w_s b_s, N = Σ w_s n_s."""
    flat = m.reshape(len(m), -1)
    k = flat @ flat.T                                   # ⟨m_s, m_t⟩ (S, S)
    t1 = np.einsum("bs,st,bt->b", w, k, w)
    q = np.einsum("ta,sab->stb", a, m)                  # a_tᵀ m_s (S, S, db)
    cube = np.einsum("stb,rb->str", q, b)               # a_tᵀ m_s b_r (S, S, S)
    t2 = np.einsum("bs,bt,br,str->b", w, w, w, cube, optimize=True)
    t3 = np.einsum("bs,st,bt->b", w, a @ a.T, w) * np.einsum("bs,st,bt->b", w, b @ b.T, w)
    return t1 - 2 * t2 / big_n + t3 / big_n ** 2
