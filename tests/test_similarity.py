"""Similarity measures from streamed sums: exactness, invariances, merging, held-out scoring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from phonorm.analysis.grouped import SpeakerSums
from phonorm.analysis.measures import MEASURES, PairSums
from phonorm.analysis.similarity import SVCCA_KEEP, IllPosedWarning, ViewSums


def related(n=2000, dx=12, dy=9, seed=0, offset=4.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) @ rng.normal(size=(dx, dx)) + offset
    y = x[:, :dy] @ rng.normal(size=(dy, dy)) + 0.8 * rng.normal(size=(n, dy)) - offset
    return x, y


# ---------------------------------------------------------------- in-memory references (textbook formulas)
def cka_in_memory(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def cka_debiased_gram(x, y):
    """Unbiased HSIC (Song et al. 2012) on explicit n×n Gram matrices of centred features."""
    def hsic(k, m):
        n = len(k)
        k, m = k.copy(), m.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(m, 0)
        return (np.sum(k * m) + k.sum() * m.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * k.sum(0) @ m.sum(0))
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, m = x @ x.T, y @ y.T
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def svcca_in_memory(x, y, keep=SVCCA_KEEP):
    def reduce(a):
        a = a - a.mean(0)
        _, s, vt = np.linalg.svd(a, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep - 1e-12) + 1)
        return a @ vt[:k].T
    a, b = reduce(x), reduce(y)
    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(w)) @ v.T
    t = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
    return np.linalg.svd(t, compute_uv=False).mean()


def pwcca_paper(x, y):
    """PWCCA written from Morcos et al. 2018 (§2, "projection weighting") on rows in memory: CCA on
    every direction (QR of each centred view, SVD of Qxᵀ Qy: canonical correlations ρ and the
    canonical variates H = Qx U of X, orthonormal columns), weights α̃ᵢ = Σⱼ |⟨hᵢ, xⱼ⟩| over X's
    centred neurons xⱼ, PWCCA = Σ α̃ᵢρᵢ / Σ α̃ᵢ."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, qy = np.linalg.qr(xc)[0], np.linalg.qr(yc)[0]
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    alpha = np.abs((qx @ u).T @ xc).sum(axis=1)
    return float(np.sum(alpha * rho) / np.sum(alpha))


# ---------------------------------------------------------------- tests
def test_pwcca_is_the_published_one():
    # centred, full rank, dx + dy < n: where google/svcca's compute_pwcca is the paper's formula when X
    # is also whitened (docs/statistics.md); our PWCCA equals the formula on any such data
    for seed in range(3):
        x, y = related(n=700, seed=seed)
        assert PairSums.of(x, y).pwcca() == pytest.approx(pwcca_paper(x, y), abs=1e-6)
        white = np.linalg.qr(x - x.mean(0))[0] * np.sqrt(len(x))
        assert PairSums.of(white, y).pwcca() == pytest.approx(pwcca_paper(white, y), abs=1e-6)
    # translation invariant (google's adds the means back: it is not), fixed side X: not symmetric
    x, y = related(n=700, seed=5)
    assert PairSums.of(x + 100, y - 7).pwcca() == pytest.approx(PairSums.of(x, y).pwcca(), abs=1e-9)
    assert PairSums.of(y, x).pwcca() == pytest.approx(pwcca_paper(y, x), abs=1e-6)


def test_pwcca_warns_when_cca_on_every_direction_is_degenerate():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 20)), rng.normal(size=(30, 15))
    with pytest.warns(IllPosedWarning, match="dx \\+ dy = 35 > 30"):
        PairSums.of(x, y).pwcca()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairSums.of(x[:, :10], y[:, :10]).pwcca()


def test_svcca_truncation_rule_and_fixed_directions():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3000, 30)) * np.geomspace(10, 0.01, 30)
    y = x @ rng.normal(size=(30, 30)) + rng.normal(size=(3000, 30))
    pair = PairSums.of(x, y)
    pair.svcca(rule="eigenvalue")
    by_variance = pair._kept[0]
    pair.svcca(rule="singular_value")
    by_singular = pair._kept[0]
    assert by_singular > by_variance  # s decays more slowly than s²: more directions for 99%
    pair.svcca_fixed(dims=7)
    assert pair._kept == (7, 7)
    with pytest.raises(ValueError, match="unknown SVCCA rule"):
        pair.svcca(rule="bogus")


def test_speaker_resampled_cka_from_per_speaker_sums():
    x, y = related(n=900, seed=11)
    speaker = np.random.default_rng(0).integers(0, 5, len(x))
    sums = SpeakerSums.empty(5, x.shape[1], y.shape[1], x[:20].mean(0), y[:20].mean(0))
    for begin in range(0, len(x), 128):
        sums.update(x[begin:begin + 128], y[begin:begin + 128], speaker[begin:begin + 128])
    assert sums.cka(np.ones((1, 5)))[0] == pytest.approx(cka_in_memory(x, y), abs=1e-10)
    weights = np.array([[2, 0, 1, 0, 2]])  # speakers 0 and 4 twice, speaker 2 once
    rows = np.concatenate([np.flatnonzero(speaker == s) for s, w in enumerate(weights[0]) for _ in range(w)])
    assert sums.cka(weights)[0] == pytest.approx(cka_in_memory(x[rows], y[rows]), abs=1e-10)


def test_identical_views_score_one():
    x, _ = related()
    values = PairSums.of(x, x.copy()).measures()
    for name in MEASURES:
        assert values[name] == pytest.approx(1.0, abs=1e-6), name


def test_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = related(seed=1)
    q = np.linalg.qr(np.random.default_rng(5).normal(size=(x.shape[1], x.shape[1])))[0]
    base = PairSums.of(x, y).measures()
    rotated = PairSums.of(x @ q * 7.5, y * 0.01).measures()
    for name in ("svcca", "cka", "cka_debiased"):
        assert rotated[name] == pytest.approx(base[name], abs=1e-9), name
    scaled = PairSums.of(x * 1e3, y * 1e-3).measures()
    for name in MEASURES:  # PWCCA's weights refer to neurons: invariant to scaling, not to rotations
        assert scaled[name] == pytest.approx(base[name], abs=1e-9), name
    assert 0.3 < base["svcca"] < 1.0 and 0.1 < base["cka"] < 1.0


def test_unrelated_views_score_near_zero_with_many_rows():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30000, 8)), rng.normal(size=(30000, 6))
    values = PairSums.of(x, y).measures()
    assert values["svcca"] < 0.03 and values["pwcca"] < 0.03
    assert values["cka"] < 0.005 and abs(values["cka_debiased"]) < 0.002


def test_streamed_equals_in_memory():
    x, y = related(n=1500, seed=3)
    streamed = PairSums.of(x, y, block=37)
    whole = PairSums.of(x, y)
    for a, b in [(streamed.x.gram, whole.x.gram), (streamed.cross.xy, whole.cross.xy), (streamed.y.sum, whole.y.sum)]:
        np.testing.assert_allclose(a, b, rtol=1e-12)
    values = streamed.measures()
    assert values["cka"] == pytest.approx(cka_in_memory(x, y), abs=1e-10)
    assert values["svcca"] == pytest.approx(svcca_in_memory(x, y), abs=1e-8)  # ε ridge: 1e-10 of λmax
    assert values["svcca"] == pytest.approx(whole.svcca(), abs=1e-10)
    small_x, small_y = x[:300], y[:300]
    assert PairSums.of(small_x, small_y, block=41).cka_debiased() == pytest.approx(
        cka_debiased_gram(small_x, small_y), abs=1e-10)


def test_shift_keeps_sums_exact_far_from_the_origin():
    x, y = related(n=800, seed=4, offset=1e4)
    centred = PairSums.of(x - x.mean(0), y - y.mean(0)).measures()
    shifted = PairSums.empty(x.shape[1], y.shape[1], x[:50].mean(0), y[:50].mean(0)).update(x, y).measures()
    assert shifted["cka_debiased"] == pytest.approx(cka_debiased_gram(x, y), abs=1e-9)
    for name in MEASURES:
        assert shifted[name] == pytest.approx(centred[name], abs=1e-9), name
    unshifted = PairSums.empty(x.shape[1], y.shape[1]).update(x, y)
    # Without a shift the fourth-moment terms cancel catastrophically (why `analyze` shifts).
    assert abs(unshifted.cka_debiased() - shifted["cka_debiased"]) > 1e-6


def test_shard_sums_merge_to_the_whole():
    x, y = related(n=1200, seed=6)
    cuts = [0, 100, 555, 1200]
    sx, sy = x[:10].mean(0), y[:10].mean(0)  # shards share one shift, chosen once (as `analyze` does)
    shards = [PairSums.empty(12, 9, sx, sy) for _ in cuts[1:]]
    for shard, a, b in zip(shards, cuts, cuts[1:]):
        for begin in range(a, b, 64):
            shard.update(x[begin:min(b, begin + 64)], y[begin:min(b, begin + 64)])
    merged = shards[0] + shards[1] + shards[2]
    whole = PairSums.empty(12, 9, sx, sy).update(x, y)
    assert merged.n == whole.n == 1200
    for field in ("gram", "sum", "norm2_x"):
        np.testing.assert_allclose(getattr(merged.x, field), getattr(whole.x, field), rtol=1e-12)
    np.testing.assert_allclose(merged.cross.a_y, whole.cross.a_y, rtol=1e-12)
    for name, value in whole.measures().items():
        assert merged.measures()[name] == pytest.approx(value, abs=1e-10), name
    with pytest.raises(ValueError):
        ViewSums(3, np.ones(3)) + ViewSums(3)


def test_held_out_scoring_removes_overfitting():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(600, 25)), rng.normal(size=(600, 25))
    fit, score = PairSums.of(x[:300], y[:300]), PairSums.of(x[300:], y[300:])
    in_sample = score.svcca()
    held_out = score.svcca(fit=fit)
    assert in_sample > 0.1          # CCA overfits with 12 rows per dimension
    assert held_out < in_sample / 2
    xr, yr = related(n=1200, seed=8)
    same = PairSums.of(xr[:600], yr[:600])
    other = PairSums.of(xr[600:], yr[600:])
    assert other.svcca(fit=same) == pytest.approx(other.svcca(), abs=0.05)  # real relation survives


def test_store_streaming_matches_in_memory(tmp_path):
    from fake_store import make_feature_store
    from phonorm.features.store import FeatureStore

    store = FeatureStore(make_feature_store(tmp_path / "f", models=("pretrained", "tone"), n_speakers=4,
                                            n_utterances=2, n_frames=20, n_layers=2, parts=3))
    pair = PairSums.empty(16, 16)
    for a, b in zip(store.iter_blocks("tone", "L1", block=50), store.iter_blocks("pretrained", "L1", block=50)):
        pair.update(a, b)
    x = np.asarray(store.layer("tone", "L1"), dtype=np.float64)
    y = np.asarray(store.layer("pretrained", "L1"), dtype=np.float64)
    assert pair.cka() == pytest.approx(cka_in_memory(x, y), abs=1e-10)


def test_speaker_sums_give_the_pair_sums_of_any_set_of_speakers():
    x, y = related(n=700, seed=12)
    speaker = np.random.default_rng(1).integers(0, 4, len(x))
    sums = SpeakerSums.empty(4, x.shape[1], y.shape[1], x[:20].mean(0), y[:20].mean(0))
    for begin in range(0, len(x), 100):
        sums.update(x[begin:begin + 100], y[begin:begin + 100], speaker[begin:begin + 100])
    for mask in (None, np.array([True, False, True, False])):
        rows = np.ones(len(x), bool) if mask is None else np.isin(speaker, np.flatnonzero(mask))
        expected = PairSums.of(x[rows], y[rows]).measures()
        got = sums.pair(mask).measures()
        for name in MEASURES:
            assert got[name] == pytest.approx(expected[name], abs=1e-8), name


def test_torch_blocks_give_the_numpy_sums():
    """The device path (torch tensors, here on the CPU) accumulates the same float64 sums."""
    torch = pytest.importorskip("torch")
    x, y = related(n=600, seed=13)
    speaker = np.random.default_rng(2).integers(0, 3, len(x))
    on_numpy = PairSums.empty(x.shape[1], y.shape[1], x[:10].mean(0), y[:10].mean(0))
    on_torch = PairSums.empty(x.shape[1], y.shape[1], x[:10].mean(0), y[:10].mean(0))
    by_speaker = [SpeakerSums.empty(3, x.shape[1], y.shape[1], x[:10].mean(0), y[:10].mean(0)) for _ in range(2)]
    for begin in range(0, len(x), 128):
        xb, yb, sb = x[begin:begin + 128], y[begin:begin + 128], speaker[begin:begin + 128]
        on_numpy.update(xb, yb)
        on_torch.update(torch.from_numpy(xb), torch.from_numpy(yb))
        by_speaker[0].update(xb, yb, sb)
        by_speaker[1].update(torch.from_numpy(xb), torch.from_numpy(yb), sb)
    for a, b in ((on_numpy.x.gram, on_torch.x.gram), (on_numpy.cross.xy, on_torch.cross.xy),
                 (on_numpy.cross.a_y, on_torch.cross.a_y), (by_speaker[0].cross.xy, by_speaker[1].cross.xy),
                 (by_speaker[0].y.gram, by_speaker[1].y.gram)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    numpy_values, torch_values = on_numpy.measures(), on_torch.measures()
    for name in MEASURES:
        assert torch_values[name] == pytest.approx(numpy_values[name], abs=1e-6), name


def test_float32_products_move_no_measure_beyond_1e6():
    """Float16 rows (as stored) far from the origin, 256-wide views, blocks of 2048 rows: every measure
    from float32 products (accumulated in float64) within 1e-6 of the float64 path, on numpy and torch;
    the sums themselves differ (the test would pass vacuously if float32 were never used)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    n, d = 8192, 256
    common = rng.normal(size=(n, 64))
    x = (common @ rng.normal(size=(64, d)) + rng.normal(size=(n, d)) + 30).astype(np.float16)
    y = (common @ rng.normal(size=(64, d)) * 0.5 + rng.normal(size=(n, d)) * 2 - 10).astype(np.float16)
    speaker = np.repeat(np.arange(8), n // 8)
    shift_x, shift_y = x[:1024].astype(np.float64).mean(0), y[:1024].astype(np.float64).mean(0)
    sums = {(dtype, device): SpeakerSums.empty(8, d, d, shift_x, shift_y)
            for dtype in (np.float32, np.float64) for device in ("numpy", "torch")}
    for begin in range(0, n, 2048):
        xb, yb, sb = x[begin:begin + 2048], y[begin:begin + 2048], speaker[begin:begin + 2048]
        for (dtype, device), s in sums.items():
            blocks = (xb, yb) if device == "numpy" else (torch.from_numpy(xb), torch.from_numpy(yb))
            s.update(*blocks, sb, dtype=dtype)
    exact = sums[(np.float64, "numpy")].pair().measures()
    assert not np.array_equal(sums[(np.float32, "numpy")].cross.xy, sums[(np.float64, "numpy")].cross.xy)
    for (dtype, device), s in sums.items():
        values = s.pair().measures()
        for name in MEASURES:
            assert values[name] == pytest.approx(exact[name], abs=1e-6), (name, dtype, device)


def test_shared_views_are_computed_once_per_mask_and_dropped_when_the_sums_change():
    from phonorm.analysis.grouped import GroupedViewSums

    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 5))
    runs = [(0, slice(0, 20)), (1, slice(20, 40)), (2, slice(40, 60))]
    grouped = GroupedViewSums(3, 5)
    grouped.update_shifted(x, np.einsum("ij,ij->i", x, x), runs)
    mask = np.array([True, False, True])
    assert grouped.view(mask) is not grouped.view(mask)  # not shared unless asked
    grouped.share_views()
    first = grouped.view(mask)
    assert grouped.view(mask) is first and grouped.view(mask.copy()) is first
    values = first.pca()[0]
    np.testing.assert_allclose(values, np.sort(np.linalg.eigvalsh(np.cov(np.r_[x[:20], x[40:]].T)))[::-1], atol=1e-12)
    grouped.update_shifted(x[:20], np.einsum("ij,ij->i", x[:20], x[:20]), [(0, slice(0, 20))])
    again = grouped.view(mask)
    assert again is not first and again.n == first.n + 20
