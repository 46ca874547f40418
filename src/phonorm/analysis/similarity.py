"""Representational similarity (SVCCA, PWCCA, linear CKA, debiased CKA) from streamed d×d sums.

No measure here ever holds the rows of a layer or an n×n Gram matrix (pitfall 6, docs/pitfalls.md): every one is
computed from sums accumulated in float64 over row blocks, and sums of separate shards add up
(`a + b`) to the sums of the whole.

- `ViewSums`  one view X (rows, d): n, Σx (d,), XᵀX (d, d), and Σ‖x‖⁴, Σ‖x‖²x for debiased CKA.
- `CrossSums` two views on the same rows: XᵀY (dx, dy) plus the O(d) terms debiased CKA needs.
- `PairSums`  (ViewSums x, ViewSums y, CrossSums) with the measures as methods.

All sums are taken about a fixed `shift` vector per view (`PairSums.empty`: zero unless given;
`PairSums.of` and `analyze`: the mean of the first rows) so that large common offsets do not cancel
catastrophically in float64. Every measure is translation invariant, so the shift changes nothing but
rounding; shards to be merged must share one shift (chosen once, before they are summed).

Hand-written rather than taken from a library because no maintained library computes these measures
from mergeable streamed sums (google/svcca and netrep hold the rows in memory); the heavy lifting is
BLAS (`dsyrk`/`dgemm`) and LAPACK (`eigh`, `svd`).

PWCCA is Morcos et al. (2018)'s: CCA on every direction of both views, each canonical correlation
weighted by how much of the weighted view's neurons its canonical variate accounts for; the weighted
view is always X (the model compared, not the reference), never chosen per layer. CCA on every
direction overfits when dx + dy approaches the number of rows: `pwcca` warns (`IllPosedWarning`)
when dx + dy > n. docs/statistics.md compares it with google/svcca's `compute_pwcca`.

SVCCA keeps each view's top principal directions explaining `keep` of the variance; `rule` says what
"variance" means: "eigenvalue" (s², the variance, default) or "singular_value" (s, as some SVCCA
code sums). `svcca_fixed` keeps a fixed number of directions instead, so that every layer averages
the same number of canonical correlations (comparable across layers).

`cka_bootstrap` resamples speakers (weights per speaker) for linear CKA from per-speaker sums in
O(S²) per resample (S = speakers), never touching the rows again.

Debiased CKA (Song et al. 2012 unbiased HSIC with linear kernels on centred features, as in
Kornblith et al. 2019's `feature_space_linear_cka(debiased=True)`) needs, besides ‖XcᵀYc‖²,
‖Xc‖², ‖Yc‖², the one non-d×d term Σᵢ ‖xcᵢ‖²‖ycᵢ‖², with xcᵢ = xᵢ − μx. Writing aᵢ = ‖xᵢ‖²,
bᵢ = ‖yᵢ‖² (about the shift) and expanding ‖xᵢ − μx‖² = aᵢ − 2xᵢᵀμx + ‖μx‖²:

    Σ ‖xcᵢ‖²‖ycᵢ‖² = Σaᵢbᵢ − 2 μyᵀ(Σaᵢyᵢ) + ‖μy‖² Σaᵢ − 2 μxᵀ(Σbᵢxᵢ) + 4 μxᵀ(XᵀY)μy
                     − 2‖μy‖² μxᵀΣxᵢ + ‖μx‖² Σbᵢ − 2‖μx‖² μyᵀΣyᵢ + n‖μx‖²‖μy‖²

so three more accumulators suffice: the scalar Σaᵢbᵢ and the vectors Σaᵢyᵢ (dy,), Σbᵢxᵢ (dx,)
(Σaᵢ = tr XᵀX and Σbᵢ = tr YᵀY are already there). The self terms HSIC(X, X) need the same with
Y = X: Σaᵢ² and Σaᵢxᵢ, kept in `ViewSums`. Memory stays O(d²).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.blas import dgemm, dsyrk

#: Fraction of variance (by squared singular value) the SVD step of SVCCA keeps.
SVCCA_KEEP = 0.99
#: What SVCCA's `keep` fraction is a fraction of: "eigenvalue" (s², variance) or "singular_value" (s).
SVCCA_RULES = ("eigenvalue", "singular_value")
#: Directions `svcca_fixed` keeps per view (fewer when a view has fewer dimensions).
SVCCA_DIMS = 20


class IllPosedWarning(UserWarning):
    """A similarity value is computed where it is not well defined (e.g. full CCA with dx + dy > n)."""
#: Ridge added to each view's covariance eigenvalues before whitening, relative to the largest
#: eigenvalue (scale-free, so measures stay invariant to scaling).
EPSILON = 1e-10


def _as64(block: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    block = np.asarray(block, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(f"expected a (rows, dim) block, got shape {block.shape}")
    return block - shift if shift is not None else block


def _gram(block: np.ndarray) -> np.ndarray:
    """XᵀX (d, d) with a symmetric rank-k update: half the flops of a general product."""
    upper = dsyrk(1.0, block, trans=1, lower=0)
    return np.triu(upper) + np.triu(upper, 1).T


@dataclass
class ViewSums:
    """Sums of one view X (rows, dim) about `shift`: `n`, `sum` = Σx (dim,), `gram` = XᵀX (dim, dim)."""

    dim: int
    shift: np.ndarray | None = None
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[arg-type]
    gram: np.ndarray = field(default=None)  # type: ignore[arg-type]
    #: Σ‖xᵢ‖⁴ and Σ‖xᵢ‖² xᵢ (dim,): the O(d) extras of debiased CKA's self-HSIC.
    norm4: float = 0.0
    norm2_x: np.ndarray = field(default=None)  # type: ignore[arg-type]

    def __post_init__(self):
        if self.sum is None:
            self.sum = np.zeros(self.dim)
        if self.gram is None:
            self.gram = np.zeros((self.dim, self.dim))
        if self.norm2_x is None:
            self.norm2_x = np.zeros(self.dim)
        if self.shift is not None:
            self.shift = np.asarray(self.shift, dtype=np.float64)

    def update(self, block: np.ndarray) -> "ViewSums":
        """Add a (rows, dim) block; returns self."""
        x = _as64(block, self.shift)
        if x.shape[1] != self.dim:
            raise ValueError(f"block has {x.shape[1]} columns, expected {self.dim}")
        self.update_shifted(x)
        return self

    def update_shifted(self, x: np.ndarray) -> None:
        """Add a float64 block already shifted."""
        if len(x):
            a = np.einsum("ij,ij->i", x, x)
            self.n += len(x)
            self.sum += x.sum(axis=0)
            self.gram += _gram(x)
            self.norm4 += float(a @ a)
            self.norm2_x += a @ x

    def __add__(self, other: "ViewSums") -> "ViewSums":
        _same_shift(self.shift, other.shift)
        return ViewSums(self.dim, self.shift, self.n + other.n, self.sum + other.sum, self.gram + other.gram,
                        self.norm4 + other.norm4, self.norm2_x + other.norm2_x)

    @property
    def mean(self) -> np.ndarray:
        """Mean about the shift (dim,)."""
        return self.sum / self.n

    def scatter(self) -> np.ndarray:
        """Centred scatter XcᵀXc (dim, dim) = (n−1) × covariance."""
        m = self.mean
        s = self.gram - self.n * np.outer(m, m)
        return (s + s.T) / 2

    def covariance(self) -> np.ndarray:
        return self.scatter() / max(self.n - 1, 1)

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending, ≥ 0; variance per component) and eigenvectors (dim, dim) as columns.
        Memoised until the sums change (every pair measure needs it; eigh is the costly step)."""
        key = (self.n, float(self.sum.sum()), float(np.trace(self.gram)))
        cached = getattr(self, "_pca_memo", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        values, vectors = np.linalg.eigh(self.covariance())
        order = np.argsort(values)[::-1]
        result = (np.clip(values[order], 0, None), vectors[:, order])
        self._pca_memo = (key, result)
        return result


@dataclass
class CrossSums:
    """Sums over the same rows of two views: `xy` = XᵀY (dx, dy) and the debiased-CKA terms
    `ab` = Σ‖xᵢ‖²‖yᵢ‖², `a_y` = Σ‖xᵢ‖² yᵢ (dy,), `b_x` = Σ‖yᵢ‖² xᵢ (dx,), all about the views' shifts."""

    dx: int
    dy: int
    n: int = 0
    xy: np.ndarray = field(default=None)  # type: ignore[arg-type]
    ab: float = 0.0
    a_y: np.ndarray = field(default=None)  # type: ignore[arg-type]
    b_x: np.ndarray = field(default=None)  # type: ignore[arg-type]

    def __post_init__(self):
        if self.xy is None:
            self.xy = np.zeros((self.dx, self.dy))
        if self.a_y is None:
            self.a_y = np.zeros(self.dy)
        if self.b_x is None:
            self.b_x = np.zeros(self.dx)

    def update_shifted(self, x: np.ndarray, y: np.ndarray) -> "CrossSums":
        """Add float64 blocks already shifted (rows, dx), (rows, dy)."""
        if len(x) != len(y):
            raise ValueError(f"blocks differ in rows: {len(x)} vs {len(y)}")
        if len(x):
            a = np.einsum("ij,ij->i", x, x)
            b = np.einsum("ij,ij->i", y, y)
            self.n += len(x)
            self.xy += dgemm(1.0, x, y, trans_a=1)
            self.ab += float(a @ b)
            self.a_y += a @ y
            self.b_x += b @ x
        return self

    def __add__(self, other: "CrossSums") -> "CrossSums":
        return CrossSums(self.dx, self.dy, self.n + other.n, self.xy + other.xy, self.ab + other.ab,
                         self.a_y + other.a_y, self.b_x + other.b_x)


def _same_shift(a, b) -> None:
    if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
        raise ValueError("cannot add sums taken about different shifts")


@dataclass
class PairSums:
    """Everything the similarity measures need about two views X (rows, dx), Y (rows, dy) on the same rows.

    Accumulate with `update(x_block, y_block)` (any row blocking gives the same sums to rounding),
    merge shards with `+`, then read `svcca()`, `pwcca()`, `cka()`, `cka_debiased()`.
    """

    x: ViewSums
    y: ViewSums
    cross: CrossSums

    @classmethod
    def empty(cls, dx: int, dy: int, shift_x=None, shift_y=None) -> "PairSums":
        return cls(ViewSums(dx, shift_x), ViewSums(dy, shift_y), CrossSums(dx, dy))

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, block: int | None = None) -> "PairSums":
        """Sums of two in-memory arrays (optionally in blocks of `block` rows), about the mean of the
        first rows (a shift keeps float64 exact when the data sit far from the origin)."""
        head = slice(0, min(len(x), 1024))
        pair = cls.empty(x.shape[1], y.shape[1], np.asarray(x[head], np.float64).mean(axis=0),
                         np.asarray(y[head], np.float64).mean(axis=0))
        step = block or max(len(x), 1)
        for begin in range(0, len(x), step):
            pair.update(x[begin:begin + step], y[begin:begin + step])
        return pair

    def update(self, x_block: np.ndarray, y_block: np.ndarray) -> "PairSums":
        x = _as64(x_block, self.x.shift)
        y = _as64(y_block, self.y.shift)
        self.x.update_shifted(x)
        self.y.update_shifted(y)
        self.cross.update_shifted(x, y)
        return self

    def __add__(self, other: "PairSums") -> "PairSums":
        return PairSums(self.x + other.x, self.y + other.y, self.cross + other.cross)

    @property
    def n(self) -> int:
        return self.x.n

    def cross_scatter(self) -> np.ndarray:
        """XcᵀYc (dx, dy)."""
        return self.cross.xy - self.n * np.outer(self.x.mean, self.y.mean)

    # ------------------------------------------------------------------ CKA
    def cka(self) -> float:
        """Linear CKA = ‖XcᵀYc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖) (Frobenius norms), in [0, 1]."""
        num = np.sum(self.cross_scatter() ** 2)
        den = np.linalg.norm(self.x.scatter()) * np.linalg.norm(self.y.scatter())
        return float(num / den) if den > 0 else float("nan")

    def _centred_row_norm_product(self) -> float:
        """Σᵢ ‖xᵢ−μx‖² ‖yᵢ−μy‖² from the sums (derivation in the module docstring)."""
        n, mx, my = self.n, self.x.mean, self.y.mean
        sa, sb = np.trace(self.x.gram), np.trace(self.y.gram)
        mx2, my2 = mx @ mx, my @ my
        c = self.cross
        return float(c.ab - 2 * my @ c.a_y + my2 * sa - 2 * mx @ c.b_x + 4 * mx @ c.xy @ my
                     - 2 * my2 * (mx @ self.x.sum) + mx2 * sb - 2 * mx2 * (my @ self.y.sum) + n * mx2 * my2)

    def cka_debiased(self) -> float:
        """Debiased linear CKA (unbiased HSIC estimator; Kornblith et al. 2019's `debiased=True`).
        Can be slightly negative for unrelated views. Needs n > 3."""
        n = self.n
        if n <= 3:
            return float("nan")
        sxx, syy = self.x.scatter(), self.y.scatter()
        nx, ny = np.trace(sxx), np.trace(syy)
        rows_xy = self._centred_row_norm_product()

        def debias(dot: float, rows: float, a: float, b: float) -> float:
            return dot - n / (n - 2.0) * rows + a * b / ((n - 1) * (n - 2))

        # The view-with-itself terms need Σ‖xcᵢ‖⁴: the same formula with Y = X.
        xx = PairSums(self.x, self.x, _self_cross(self.x))
        yy = PairSums(self.y, self.y, _self_cross(self.y))
        hxy = debias(float(np.sum(self.cross_scatter() ** 2)), rows_xy, nx, ny)
        hxx = debias(float(np.sum(sxx ** 2)), xx._centred_row_norm_product(), nx, nx)
        hyy = debias(float(np.sum(syy ** 2)), yy._centred_row_norm_product(), ny, ny)
        den = np.sqrt(hxx * hyy)
        return float(hxy / den) if den > 0 else float("nan")

    # ------------------------------------------------------------------ CCA family
    def svcca(self, keep: float = SVCCA_KEEP, epsilon: float = EPSILON, fit: "PairSums | None" = None,
              rule: str = "eigenvalue") -> float:
        """SVCCA: keep each view's top principal directions explaining `keep` of the variance (`rule`:
        by eigenvalue = s², or by singular value s), CCA between the kept coordinates, mean of ALL
        canonical correlations.

        `fit`: sums of other rows to fit the directions on (held-out scoring); these sums score them.
        """
        return float(np.mean(self.canonical_correlations(keep, epsilon, fit, rule=rule)))

    def svcca_fixed(self, dims: int = SVCCA_DIMS, epsilon: float = EPSILON, fit: "PairSums | None" = None) -> float:
        """SVCCA with a fixed number of top principal directions per view (`dims`, capped by the views'
        dimensions): every layer averages the same number of canonical correlations."""
        wx, wy, _ = (fit or self).cca_directions(epsilon=epsilon, dims=dims)
        return float(np.mean(self._score_directions(wx, wy)))

    def canonical_correlations(self, keep: float | None = SVCCA_KEEP, epsilon: float = EPSILON,
                               fit: "PairSums | None" = None, rule: str = "eigenvalue") -> np.ndarray:
        """Canonical correlations (descending), after the SVD step when `keep` is set (None: plain CCA)."""
        wx, wy, _ = (fit or self).cca_directions(keep, epsilon, rule=rule)
        return self._score_directions(wx, wy)

    def cca_directions(self, keep: float | None = SVCCA_KEEP, epsilon: float = EPSILON, rule: str = "eigenvalue",
                       dims: int | None = None):
        """Canonical directions in each view's original coordinates, (dx, k) and (dy, k), with their
        correlations (k,) on these sums. k = min of the kept dimensions (`dims`: a fixed number kept)."""
        ux, uy = _reduce(self.x, keep, rule, dims), _reduce(self.y, keep, rule, dims)
        cxx = ux.T @ self.x.scatter() @ ux
        cyy = uy.T @ self.y.scatter() @ uy
        cxy = ux.T @ self.cross_scatter() @ uy
        ix = _inv_sqrt(cxx, epsilon)
        iy = _inv_sqrt(cyy, epsilon)
        u, rho, vt = np.linalg.svd(ix @ cxy @ iy, full_matrices=False)
        wx = ux @ ix @ u
        wy = uy @ iy @ vt.T
        self._kept = (ux.shape[1], uy.shape[1])
        return wx, wy, np.clip(rho, 0.0, 1.0)

    def _score_directions(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """Correlations of paired canonical variates Xc wx[:, i], Yc wy[:, i] on these rows."""
        cov = np.einsum("ik,ij,jk->k", wx, self.cross_scatter(), wy)
        vx = np.einsum("ik,ij,jk->k", wx, self.x.scatter(), wx)
        vy = np.einsum("ik,ij,jk->k", wy, self.y.scatter(), wy)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(np.abs(cov) / np.sqrt(vx * vy), 0.0, 1.0)

    def pwcca(self, epsilon: float = EPSILON, fit: "PairSums | None" = None) -> float:
        """Projection-weighted CCA as published (Morcos et al. 2018, "Insights on representational
        similarity in neural networks with canonical correlation", eq. for α̃ᵢ): CCA on every direction
        of both views; canonical correlation ρᵢ weighted by α̃ᵢ = Σⱼ |⟨hᵢ/‖hᵢ‖, xⱼ⟩|, hᵢ = Xc wᵢ the
        i-th canonical variate of X (rows,) and xⱼ neuron j's centred activations (rows,);
        PWCCA = Σ α̃ᵢρᵢ / Σ α̃ᵢ. Weighted on X (the first view, fixed). Not invariant to rotations of
        X's neuron basis (the weights refer to neurons), invariant to translation and scaling.

        `fit`: sums of other rows to fit the directions and weights on; these sums score ρᵢ.
        Warns (IllPosedWarning) when dx + dy > n of the fitting rows: full CCA is then degenerate.
        """
        source = fit or self
        if source.x.dim + source.y.dim > source.n:
            warnings.warn(f"PWCCA: dx + dy = {source.x.dim + source.y.dim} > {source.n} rows; CCA on every direction "
                          "is degenerate (canonical correlations of 1 by construction)", IllPosedWarning, stacklevel=2)
        wx, wy, _ = source.cca_directions(None, epsilon)
        rho = self._score_directions(wx, wy)
        scatter = source.x.scatter()
        # ⟨hᵢ, xcⱼ⟩ = (Xc wᵢ)ᵀ Xc eⱼ = (wᵢᵀ S)ⱼ; ‖hᵢ‖ = sqrt(wᵢᵀ S wᵢ), S = XcᵀXc.
        proj = wx.T @ scatter
        norms = np.sqrt(np.clip(np.einsum("ik,ij,jk->k", wx, scatter, wx), 1e-300, None))
        alpha = np.abs(proj).sum(axis=1) / norms
        return float(np.sum(alpha * rho) / np.sum(alpha))

    def measures(self, fit: "PairSums | None" = None, keep: float = SVCCA_KEEP, rule: str = "eigenvalue",
                 dims: int = SVCCA_DIMS) -> dict[str, float]:
        """All measures by name; `fit` as in `svcca` (CKA has nothing to fit: it is scored on these rows)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllPosedWarning)  # the caller checks dx + dy > n itself
            pwcca = self.pwcca(fit=fit)
        return {"svcca": self.svcca(keep, fit=fit, rule=rule), "svcca_fixed": self.svcca_fixed(dims, fit=fit),
                "pwcca": pwcca, "cka": self.cka(), "cka_debiased": self.cka_debiased()}


MEASURES = ("svcca", "svcca_fixed", "pwcca", "cka", "cka_debiased")


def _self_cross(view: ViewSums) -> CrossSums:
    """The CrossSums of a view with itself (X = Y), for the debiased self-HSIC terms."""
    return CrossSums(view.dim, view.dim, view.n, view.gram, view.norm4, view.norm2_x, view.norm2_x)


def _reduce(view: ViewSums, keep: float | None, rule: str = "eigenvalue", dims: int | None = None) -> np.ndarray:
    """Orthonormal top principal directions (dim, k): `dims` of them when given, else those explaining
    `keep` of the variance, counted by eigenvalue (= s² of the centred data; pitfall 7, docs/pitfalls.md) or, with
    rule="singular_value", by s. `keep=None`: every direction with non-negligible variance."""
    values, vectors = view.pca()
    total = values.sum()
    if total <= 0:
        raise ValueError("a view has zero variance: similarity is undefined")
    if dims is not None:
        k = min(int(dims), int(np.sum(values > values[0] * 1e-12)))
    elif keep is None:
        k = int(np.sum(values > values[0] * 1e-12))
    else:
        if rule not in SVCCA_RULES:
            raise ValueError(f"unknown SVCCA rule {rule!r}; known: {', '.join(SVCCA_RULES)}")
        mass = values if rule == "eigenvalue" else np.sqrt(values)
        k = int(np.searchsorted(np.cumsum(mass) / mass.sum(), keep - 1e-12) + 1)
    return vectors[:, :max(1, min(k, len(values)))]


def _inv_sqrt(c: np.ndarray, epsilon: float) -> np.ndarray:
    """(C + ε λmax I)^(-1/2) for a symmetric PSD matrix C, via its eigendecomposition."""
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    values = np.clip(values, 0, None)
    values = values + epsilon * max(values.max(), 1e-300)
    return (vectors / np.sqrt(values)) @ vectors.T


@dataclass
class SpeakerSums:
    """Per-speaker sums of two views on the same rows, about fixed shifts, for resampling speakers:
    `n` (S,), `sx` (S, dx), `sy` (S, dy), `xx` (S, dx, dx), `yy` (S, dy, dy), `xy` (S, dx, dy).
    Memory S·(dx² + dy² + dx·dy)·8 bytes."""

    n: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    shift_x: np.ndarray | None = None
    shift_y: np.ndarray | None = None

    @classmethod
    def empty(cls, speakers: int, dx: int, dy: int, shift_x=None, shift_y=None) -> "SpeakerSums":
        return cls(np.zeros(speakers), np.zeros((speakers, dx)), np.zeros((speakers, dy)),
                   np.zeros((speakers, dx, dx)), np.zeros((speakers, dy, dy)), np.zeros((speakers, dx, dy)),
                   None if shift_x is None else np.asarray(shift_x, np.float64),
                   None if shift_y is None else np.asarray(shift_y, np.float64))

    @staticmethod
    def nbytes(speakers: int, dx: int, dy: int) -> int:
        return 8 * speakers * (dx * dx + dy * dy + dx * dy + dx + dy + 1)

    def update(self, x_block: np.ndarray, y_block: np.ndarray, speaker: np.ndarray) -> "SpeakerSums":
        """Add blocks (rows, dx), (rows, dy) whose rows belong to speakers `speaker` (rows,) in 0..S-1."""
        x = _as64(x_block, self.shift_x)
        y = _as64(y_block, self.shift_y)
        for s in np.unique(speaker):
            rows = speaker == s
            xs, ys = x[rows], y[rows]
            self.n[s] += len(xs)
            self.sx[s] += xs.sum(axis=0)
            self.sy[s] += ys.sum(axis=0)
            self.xx[s] += _gram(xs)
            self.yy[s] += _gram(ys)
            self.xy[s] += dgemm(1.0, xs, ys, trans_a=1)
        return self

    def cka(self, weights: np.ndarray) -> np.ndarray:
        """Linear CKA (resamples,) of the data in which speaker s appears `weights[b, s]` times
        (weights (resamples, S), e.g. multinomial bootstrap counts; all ones = the data itself).
        ‖Σ w_s M_s − a bᵀ/N‖² expands into quadratic and cubic forms in w of per-speaker inner
        products, so each resample costs O(S³) instead of a pass over the rows."""
        w = np.asarray(weights, dtype=np.float64)
        big_n = w @ self.n
        with np.errstate(invalid="ignore", divide="ignore"):
            xy = _centred_sq_norm(self.xy, self.sx, self.sy, w, big_n)
            xx = _centred_sq_norm(self.xx, self.sx, self.sx, w, big_n)
            yy = _centred_sq_norm(self.yy, self.sy, self.sy, w, big_n)
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
