"""Representational similarity (SVCCA, PWCCA, linear CKA, debiased CKA) from streamed d×d sums.

No measure here ever holds the rows of a layer or an n×n Gram matrix (pitfall 6, docs/pitfalls.md): every one is
computed from sums accumulated in float64 over row blocks (each block's products taken in float32 or
float64: `as_block`, `PRODUCT_DTYPES`), and sums of separate shards add up (`a + b`) to the sums of
the whole.

- `ViewSums`  one view X (rows, d): n, Σx (d,), XᵀX (d, d), and Σ‖x‖⁴, Σ‖x‖²x for debiased CKA.
- `CrossSums` two views on the same rows: XᵀY (dx, dy) plus the O(d) terms debiased CKA needs.
- `PairSums`  (ViewSums x, ViewSums y, CrossSums) with the measures as methods.

All sums are taken about a fixed `shift` vector per view (`PairSums.empty`: zero unless given;
`PairSums.of` and `analyze`: the mean of the first rows) so that large common offsets do not cancel
catastrophically in float64. Every measure is translation invariant, so the shift changes nothing but
rounding; shards to be merged must share one shift (chosen once, before they are summed).

Hand-written rather than taken from a library because no maintained library computes these measures
from mergeable streamed sums (google/svcca and netrep hold the rows in memory); the heavy lifting is
BLAS (`XᵀX`, `XᵀY`: NumPy's matmul, which uses a symmetric rank-k update for `XᵀX`) and LAPACK
(`eigh`, `svd`). Blocks may also be torch tensors (on a GPU: `analyze --device cuda`): the
accumulators then take their products on the device and keep the sums on the host.

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


#: The dtypes a block's products may be taken in (`AnalyzeSettings.products`). Sums always
#: accumulate in float64 across blocks; "float32" takes each block's products in single precision
#: (sgemm/ssyrk: twice the throughput of float64), which moved no similarity value by more than
#: `bench/scale.py` prints (its `products_max_difference`, docs/statistics.md).
PRODUCT_DTYPES = {"float32": np.float32, "float64": np.float64}


def as_block(block, shift: np.ndarray | None, dtype=np.float64):
    """`block` (rows, dim) in `dtype` (the products' precision) minus `shift` (dim,) (rounded to
    `dtype`: any fixed shift serves, as long as every block of a view gets the same one); a torch
    tensor stays one, on its device."""
    if _is_torch(block):
        import torch

        if block.ndim != 2:
            raise ValueError(f"expected a (rows, dim) block, got shape {tuple(block.shape)}")
        wanted = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        block = block.to(wanted)
        return block - torch.as_tensor(shift, device=block.device).to(wanted) if shift is not None else block
    if np.ndim(block) != 2:
        raise ValueError(f"expected a (rows, dim) block, got shape {np.shape(block)}")
    if shift is None:
        return np.asarray(block, dtype=dtype)
    if np.dtype(dtype) == np.float64:
        # One pass that casts and subtracts (a cast, then a subtraction, was 3.5× slower on float16 blocks).
        return np.subtract(block, shift, dtype=np.float64)
    # float16 rows minus a float32 shift: float16 has 11 significant bits, float32 24, so the
    # difference of a stored value and the rounded shift is exact to float32's precision.
    return np.subtract(block, shift.astype(np.float32), dtype=np.float32)


def head_shift(x: np.ndarray, rows: int = 1024) -> np.ndarray:
    """The mean of the first `rows` rows of `x` (rows, dim) as float64 (dim,): the fixed shift that
    keeps sums of in-memory rows exact in float64 when the data sit far from the origin."""
    return np.asarray(x[: min(len(x), rows)], np.float64).mean(axis=0)


def _is_torch(block) -> bool:
    return type(block).__module__.startswith("torch")


def _host(value) -> np.ndarray:
    """A block's product or sum as a float64 NumPy array (copied from the device for a torch tensor),
    whatever precision it was taken in: the sums across blocks accumulate in float64."""
    if _is_torch(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def row_norms(x):
    """‖xᵢ‖² per row (rows,), in the block's dtype."""
    if _is_torch(x):
        return (x * x).sum(1)
    return np.einsum("ij,ij->i", x, x)  # no (rows, dim) temporary: 3× faster than (x * x).sum(1)


def _gram(block) -> np.ndarray:
    """XᵀX (d, d). NumPy hands `x.T @ x` to a symmetric rank-k update (half the flops of a general
    product; measured 3-4× faster than calling scipy's dsyrk, which copies C-ordered input)."""
    return _host(block.T @ block)


def _cross(x, y) -> np.ndarray:
    """XᵀY (dx, dy)."""
    return _host(x.T @ y)


def _column_sums(x) -> np.ndarray:
    """Σᵢ xᵢ (dim,) accumulated in float64 (no float64 copy of a float32 block)."""
    if _is_torch(x):
        import torch

        return _host(x.sum(0, dtype=torch.float64))
    return x.sum(0, dtype=np.float64)


def _norm_dot(a, b) -> float:
    """Σᵢ aᵢ bᵢ of two (rows,) vectors, in float64."""
    if _is_torch(a):
        import torch

        return float((a.to(torch.float64) * b.to(torch.float64)).sum())
    return float(np.dot(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)))


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

    def update(self, block: np.ndarray, dtype=np.float64) -> "ViewSums":
        """Add a (rows, dim) block, its products taken in `dtype`; returns self."""
        x = as_block(block, self.shift, dtype)
        if x.shape[1] != self.dim:
            raise ValueError(f"block has {x.shape[1]} columns, expected {self.dim}")
        self.update_shifted(x)
        return self

    def update_shifted(self, x: np.ndarray) -> None:
        """Add a block already shifted (float32 or float64: the products' precision)."""
        if len(x):
            a = row_norms(x)
            self.n += len(x)
            self.sum += _column_sums(x)
            self.gram += _gram(x)
            self.norm4 += _norm_dot(a, a)
            self.norm2_x += _host(a @ x)

    def __add__(self, other: "ViewSums") -> "ViewSums":
        _same_shift(self.shift, other.shift)
        return ViewSums(self.dim, self.shift, self.n + other.n, self.sum + other.sum, self.gram + other.gram,
                        self.norm4 + other.norm4, self.norm2_x + other.norm2_x)

    @property
    def mean(self) -> np.ndarray:
        """Mean about the shift (dim,)."""
        return self.sum / self.n

    def _memo_key(self) -> tuple:
        return (self.n, float(self.sum.sum()), float(np.trace(self.gram)), float(self.gram.sum()))

    def scatter(self) -> np.ndarray:
        """Centred scatter XcᵀXc (dim, dim) = (n−1) × covariance. Memoised until the sums change
        (every measure of every pair needs it)."""
        key = self._memo_key()
        cached = getattr(self, "_scatter_memo", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        m = self.mean
        s = self.gram - self.n * np.outer(m, m)
        s = (s + s.T) / 2
        self._scatter_memo = (key, s)
        return s

    def covariance(self) -> np.ndarray:
        return self.scatter() / max(self.n - 1, 1)

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending, ≥ 0; variance per component) and eigenvectors (dim, dim) as columns.
        Memoised until the sums change (every pair measure needs it; eigh is the costly step)."""
        key = self._memo_key()
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
        """Add blocks already shifted (rows, dx), (rows, dy), both float32 or both float64."""
        if len(x) != len(y):
            raise ValueError(f"blocks differ in rows: {len(x)} vs {len(y)}")
        if len(x):
            a, b = row_norms(x), row_norms(y)
            self.n += len(x)
            self.xy += _cross(x, y)
            self.ab += _norm_dot(a, b)
            self.a_y += _host(a @ y)
            self.b_x += _host(b @ x)
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
        pair = cls.empty(x.shape[1], y.shape[1], head_shift(x), head_shift(y))
        step = block or max(len(x), 1)
        for begin in range(0, len(x), step):
            pair.update(x[begin:begin + step], y[begin:begin + step])
        return pair

    def update(self, x_block: np.ndarray, y_block: np.ndarray, dtype=np.float64) -> "PairSums":
        """Add blocks (rows, dx), (rows, dy), their products taken in `dtype`; returns self."""
        x = as_block(x_block, self.x.shift, dtype)
        y = as_block(y_block, self.y.shift, dtype)
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
        if fit is None:
            return float(np.mean(self._in_sample_correlations(keep, epsilon, rule=rule)))
        return float(np.mean(self.canonical_correlations(keep, epsilon, fit, rule=rule)))

    def svcca_fixed(self, dims: int = SVCCA_DIMS, epsilon: float = EPSILON, fit: "PairSums | None" = None) -> float:
        """SVCCA with a fixed number of top principal directions per view (`dims`, capped by the views'
        dimensions): every layer averages the same number of canonical correlations."""
        if fit is None:
            return float(np.mean(self._in_sample_correlations(None, epsilon, dims=dims)))
        wx, wy, _ = fit.cca_directions(epsilon=epsilon, dims=dims)
        return float(np.mean(self._score_directions(wx, wy)))

    def _in_sample_correlations(self, keep: float | None, epsilon: float, rule: str = "eigenvalue",
                                dims: int | None = None) -> np.ndarray:
        """Canonical correlations fitted and scored on these sums: the singular values of the whitened
        cross-covariance (what scoring the directions on the same rows returns, to the ridge's 1e-10),
        from the eigenvalues of M Mᵀ: about 5× faster than the full SVD at 768 dimensions."""
        m = self._whitened_cross(keep, epsilon, rule, dims)[0]
        small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        values = np.linalg.eigvalsh((small + small.T) / 2)[::-1]
        return np.clip(np.sqrt(np.clip(values, 0.0, None)), 0.0, 1.0)

    def _whitened_cross(self, keep: float | None, epsilon: float, rule: str, dims: int | None):
        """The whitened cross-covariance M (kx, ky) of the kept principal coordinates, with each view's
        whitening scale (k,) and directions (dim, k)."""
        # The kept directions are eigenvectors of the view's covariance, so the scatter of the kept
        # coordinates is diagonal, (n − 1)·λ: whitening needs no further decomposition (the ridge
        # ε·λmax is added to those eigenvalues).
        ix, ux = _whitener(self.x, keep, rule, dims, epsilon)
        iy, uy = _whitener(self.y, keep, rule, dims, epsilon)
        self._kept = (ux.shape[1], uy.shape[1])
        return ix[:, None] * (ux.T @ self.cross_scatter() @ uy) * iy[None, :], ix, ux, iy, uy

    def canonical_correlations(self, keep: float | None = SVCCA_KEEP, epsilon: float = EPSILON,
                               fit: "PairSums | None" = None, rule: str = "eigenvalue") -> np.ndarray:
        """Canonical correlations (descending), after the SVD step when `keep` is set (None: plain CCA)."""
        wx, wy, _ = (fit or self).cca_directions(keep, epsilon, rule=rule)
        return self._score_directions(wx, wy)

    def cca_directions(self, keep: float | None = SVCCA_KEEP, epsilon: float = EPSILON, rule: str = "eigenvalue",
                       dims: int | None = None):
        """Canonical directions in each view's original coordinates, (dx, k) and (dy, k), with their
        correlations (k,) on these sums. k = min of the kept dimensions (`dims`: a fixed number kept)."""
        m, ix, ux, iy, uy = self._whitened_cross(keep, epsilon, rule, dims)
        u, rho, vt = np.linalg.svd(m, full_matrices=False)
        wx = ux @ (ix[:, None] * u)
        wy = uy @ (iy[:, None] * vt.T)
        return wx, wy, np.clip(rho, 0.0, 1.0)

    def _score_directions(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """Correlations of paired canonical variates Xc wx[:, i], Yc wy[:, i] on these rows."""
        cov = _quadratic(wx, self.cross_scatter(), wy)
        vx = _quadratic(wx, self.x.scatter(), wx)
        vy = _quadratic(wy, self.y.scatter(), wy)
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
        if fit is None:
            # In sample only X's directions and the correlations are needed: the eigenvectors of
            # M Mᵀ (M the whitened cross-covariance) instead of a full SVD, about 2× faster.
            m, ix, ux, _, _ = self._whitened_cross(None, epsilon, "eigenvalue", None)
            values, vectors = np.linalg.eigh((m @ m.T + (m @ m.T).T) / 2)
            top = np.argsort(values)[::-1][: min(m.shape)]
            wx = ux @ (ix[:, None] * vectors[:, top])
            rho = np.clip(np.sqrt(np.clip(values[top], 0.0, None)), 0.0, 1.0)
        else:
            wx, wy, _ = source.cca_directions(None, epsilon)
            rho = self._score_directions(wx, wy)
        scatter = source.x.scatter()
        # ⟨hᵢ, xcⱼ⟩ = (Xc wᵢ)ᵀ Xc eⱼ = (wᵢᵀ S)ⱼ; ‖hᵢ‖ = sqrt(wᵢᵀ S wᵢ), S = XcᵀXc.
        proj = wx.T @ scatter
        norms = np.sqrt(np.clip(_quadratic(wx, scatter, wx), 1e-300, None))
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


def _whitener(view: ViewSums, keep: float | None, rule: str, dims: int | None, epsilon: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """The view's kept principal directions U (dim, k) and the scale (k,) that whitens XcU:
    ((n − 1)·λ + ε·max)^(−1/2), λ the kept eigenvalues of the covariance."""
    u = _reduce(view, keep, rule, dims)
    values = np.clip(view.pca()[0][: u.shape[1]] * max(view.n - 1, 1), 0, None)
    return 1.0 / np.sqrt(values + epsilon * max(values.max(), 1e-300)), u


def _quadratic(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """aₖᵀ M bₖ for every column k (k,): two BLAS products (an einsum over three operands is a
    naive loop, measured 20× slower at 768 dims)."""
    return np.sum(a * (m @ b), axis=0)


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

    def update_shifted(self, x, a, runs: list[tuple[int, object]]) -> None:
        """Add a shifted block x (rows, dim) (float32 or float64) with row norms `a` (rows,), split
        into `runs` of (group, row index) (`group_runs`)."""
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
        return ViewSums(self.dim, self.shift, int(self.n[m].sum()), self.sum[m].sum(0), sum_groups(self.gram, m),
                        float(self.norm4[m].sum()), self.norm2_x[m].sum(0))


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
        elif like is not None and _is_torch(like):
            import torch

            rows = torch.as_tensor(order[begin:end], device=like.device)
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
        """Add blocks (rows, dx), (rows, dy) whose rows belong to speakers `speaker` (rows,) in 0..S-1,
        their products taken in `dtype`. `y_too=False`: `y` is kept by someone else (shared); only x
        and the cross sums are added."""
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
