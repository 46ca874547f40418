"""The similarity measures of two views from their streamed sums (`similarity.py`'s `ViewSums` and
`CrossSums`): `PairSums` with SVCCA, svcca_fixed, PWCCA, linear CKA and debiased CKA as methods
(`MEASURES`; the definitions are in `similarity.py`'s module docstring and docs/statistics.md)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from phonorm.analysis.similarity import (
    EPSILON,
    SVCCA_DIMS,
    SVCCA_KEEP,
    CrossSums,
    IllPosedWarning,
    ViewSums,
    as_block,
    head_shift,
)
from phonorm.settings import SVCCA_RULES


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

    def pwcca(self, epsilon: float = EPSILON, fit: "PairSums | None" = None, warn: bool = True) -> float:
        """Projection-weighted CCA as published (Morcos et al. 2018, "Insights on representational
        similarity in neural networks with canonical correlation", eq. for α̃ᵢ): CCA on every direction
        of both views; canonical correlation ρᵢ weighted by α̃ᵢ = Σⱼ |⟨hᵢ/‖hᵢ‖, xⱼ⟩|, hᵢ = Xc wᵢ the
        i-th canonical variate of X (rows,) and xⱼ neuron j's centred activations (rows,);
        PWCCA = Σ α̃ᵢρᵢ / Σ α̃ᵢ. Weighted on X (the first view, fixed). Not invariant to rotations of
        X's neuron basis (the weights refer to neurons), invariant to translation and scaling.

        `fit`: sums of other rows to fit the directions and weights on; these sums score ρᵢ.
        Warns (IllPosedWarning) when dx + dy > n of the fitting rows: full CCA is then degenerate
        (`warn=False`: the caller checks that itself; no warning filter is touched, which threads share).
        """
        source = fit or self
        if warn and source.x.dim + source.y.dim > source.n:
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
        """Every measure of `MEASURES` by name; `fit` as in `svcca` (CKA has nothing to fit: it is
        scored on these rows)."""
        options = MeasureOptions(fit=fit, keep=keep, rule=rule, dims=dims)
        return {name: measure.compute(self, options) for name, measure in MEASURES.items()}


@dataclass(frozen=True)
class MeasureOptions:
    """What a measure may be given besides the pair's sums: the rows its directions are fitted on
    (`fit`, None: these rows) and SVCCA's choice of directions."""

    fit: Optional[PairSums] = None
    keep: float = SVCCA_KEEP
    rule: str = "eigenvalue"
    dims: int = SVCCA_DIMS


@dataclass(frozen=True)
class Measure:
    """One similarity measure: its name (similarity.csv's `measure`), how it is computed from a pair's
    streamed sums, and one line saying what it is."""

    name: str
    compute: Callable[[PairSums, MeasureOptions], float]
    about: str


#: The similarity measures, in the order of the tables: the analysis computes every one for every
#: layer pair, the report and the tests take them from here. A new measure: a `PairSums` method and
#: an entry here (docs/architecture.md, "Where to change what").
MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("svcca", lambda p, o: p.svcca(o.keep, fit=o.fit, rule=o.rule),
            "SVCCA: mean canonical correlation of the directions keeping `svcca_keep` of the variance"),
    Measure("svcca_fixed", lambda p, o: p.svcca_fixed(o.dims, fit=o.fit),
            "SVCCA on a fixed number of directions (`svcca_dims`), comparable across layers"),
    # the analysis checks dx + dy > n itself (similarity.csv says so): no warning per layer pair
    Measure("pwcca", lambda p, o: p.pwcca(fit=o.fit, warn=False), "projection-weighted CCA (Morcos et al. 2018)"),
    Measure("cka", lambda p, o: p.cka(), "linear CKA (Kornblith et al. 2019): C2 decides on it"),
    Measure("cka_debiased", lambda p, o: p.cka_debiased(), "linear CKA with the unbiased HSIC estimator"),
)}


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
