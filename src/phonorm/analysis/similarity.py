"""Representational similarity (SVCCA, PWCCA, linear CKA, debiased CKA) from streamed d×d sums.

No measure here ever holds the rows of a layer or an n×n Gram matrix (pitfall 6, docs/pitfalls.md): every one is
computed from sums accumulated in float64 over row blocks (each block's products taken in float32 or
float64: `as_block`, `PRODUCT_DTYPES`), and sums of separate shards add up (`a + b`) to the sums of
the whole.

- `ViewSums`  one view X (rows, d): n, Σx (d,), XᵀX (d, d), and Σ‖x‖⁴, Σ‖x‖²x for debiased CKA.
- `CrossSums` two views on the same rows: XᵀY (dx, dy) plus the O(d) terms debiased CKA needs.
- `PairSums`  (ViewSums x, ViewSums y, CrossSums) with the measures as methods (`measures.py`).

All sums are taken about a fixed `shift` vector per view (`PairSums.empty`: zero unless given;
`PairSums.of` and `analyze`: the mean of the first rows) so that large common offsets do not cancel
catastrophically in float64. Every measure is translation invariant, so the shift changes nothing but
rounding; shards to be merged must share one shift (chosen once, before they are summed).

Hand-written rather than taken from a library because no maintained library computes these measures
from mergeable streamed sums (google/svcca and netrep hold the rows in memory); the heavy lifting is
BLAS (`XᵀX`, `XᵀY`: NumPy's matmul, which uses a symmetric rank-k update for `XᵀX`) and LAPACK
(`eigh`, `svd`). Blocks may also be torch tensors (on a GPU: `analysis/sums.py`, `LayerSums._put`, `Kernels.to_device`): the
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

Sums kept per speaker (`grouped.py`) give linear CKA of any set of speakers, e.g. each speaker left
out (the jackknife), from per-speaker sums, never touching the rows again.

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

from dataclasses import dataclass, field

import numpy as np

from phonorm.settings.analyze import ANALYZE_DEFAULTS

#: Fraction of variance (by squared singular value) the SVD step of SVCCA keeps (`AnalyzeSettings.svcca_keep`).
SVCCA_KEEP: float = ANALYZE_DEFAULTS["svcca_keep"]
#: Directions `svcca_fixed` keeps per view (fewer when a view has fewer dimensions; `AnalyzeSettings.svcca_dims`).
SVCCA_DIMS: int = ANALYZE_DEFAULTS["svcca_dims"]


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
    if _is_device_tensor(block):
        if block.ndim != 2:
            raise ValueError(f"expected a (rows, dim) block, got shape {tuple(block.shape)}")
        block = block.float() if np.dtype(dtype) == np.float32 else block.double()
        # new_tensor: the shift on the block's device, in the block's dtype (tensor methods only: kernels.py)
        return block - block.new_tensor(np.asarray(shift, dtype=np.dtype(dtype))) if shift is not None else block
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


def _is_device_tensor(block) -> bool:
    """Whether `block` is a tensor of the kernels' library (`Kernels.to_device`), not a NumPy array."""
    return type(block).__module__.startswith("torch")


def _host(value) -> np.ndarray:
    """A block's product or sum as a float64 NumPy array (copied from the device for a torch tensor),
    whatever precision it was taken in: the sums across blocks accumulate in float64."""
    if _is_device_tensor(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def row_norms(x):
    """‖xᵢ‖² per row (rows,), in the block's dtype."""
    if _is_device_tensor(x):
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
    if _is_device_tensor(x):
        return _host(x.double().sum(0))
    return x.sum(0, dtype=np.float64)


def _norm_dot(a, b) -> float:
    """Σᵢ aᵢ bᵢ of two (rows,) vectors, in float64."""
    if _is_device_tensor(a):
        return float((a.double() * b.double()).sum())
    return float(np.dot(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)))


@dataclass
class ViewSums:
    """Sums of one view X (rows, dim) about `shift`: `n`, `sum` = Σx (dim,), `gram` = XᵀX (dim, dim)."""

    dim: int
    shift: np.ndarray | None = None
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    gram: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    #: Σ‖xᵢ‖⁴ and Σ‖xᵢ‖² xᵢ (dim,): the O(d) extras of debiased CKA's self-HSIC.
    norm4: float = 0.0
    norm2_x: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__

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
    xy: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    ab: float = 0.0
    a_y: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    b_x: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__

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
