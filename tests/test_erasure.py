"""LEACE erasure with probes (the causal test of C4) on planted, independent factors."""

from __future__ import annotations

import numpy as np
import pytest

from phonorm.analysis.erasure import erasure_probes


@pytest.fixture(scope="module")
def planted():
    """Tone and sex planted along independent directions, mixed by a random linear map, plus noise."""
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"S{i}" for i in range(10)], 150)
    sex = np.where(np.arange(len(speakers)) // 150 % 2 == 0, "F", "M")
    utterances = np.char.add(speakers, np.char.mod("_%d", rng.integers(0, 6, len(speakers))))
    tone = rng.integers(1, 5, len(speakers))
    tone[rng.random(len(tone)) < 0.1] = 0  # rows without a tone are left out
    dim = 12
    x = (rng.normal(size=(5, dim))[tone] * 1.5 + np.where(sex == "F", 1.0, -1.0)[:, None] * rng.normal(size=dim)
         + rng.normal(size=(len(tone), dim)))
    x = x @ rng.normal(size=(dim, dim)) + 5.0
    rows = erasure_probes(x, tone, sex, speakers, utterances, folds=5, seed=0, bootstrap=2000)
    return {(r["erased"], r["probed"]): r for r in rows}, int((tone > 0).sum())


def test_both_factors_decodable_before_erasure(planted):
    rows, n = planted
    assert rows["none", "tone"]["accuracy"] > 0.8 and rows["none", "sex"]["accuracy"] > 0.9
    assert rows["none", "tone"]["n"] == n and rows["none", "tone"]["change"] == 0


def test_erasing_one_factor_removes_it_to_chance_and_leaves_the_other(planted):
    rows, _ = planted
    for erased, kept in (("sex", "tone"), ("tone", "sex")):
        gone = rows[erased, erased]
        assert gone["above_chance_ci_high"] <= 0.05, gone            # erased factor: at chance
        assert abs(gone["accuracy"] - gone["chance"]) < 0.05
        intact = rows[erased, kept]
        assert intact["change_ci_low"] > -0.02 and intact["change_ci_high"] < 0.02, intact  # independent: intact
        assert intact["accuracy"] > 0.8


def test_erasure_needs_both_factors():
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="2 sexes"):
        erasure_probes(x, np.tile([1, 2], 20), np.full(40, "F"), np.repeat(["A", "B"], 20), np.arange(40))


def test_rows_carry_each_speakers_out_of_fold_tallies(planted):
    rows, n = planted
    for row in rows.values():
        tallies = row["by_speaker"]
        assert set(tallies) == {f"S{i}" for i in range(10)}
        hits, total, baseline = np.array(list(tallies.values())).sum(axis=0)
        assert total == n and hits == round(row["accuracy"] * n) and baseline == round(row["chance"] * n)


def test_the_eraser_fitted_and_applied_in_chunks_is_leace_fitted_at_once():
    import torch
    from concept_erasure import LeaceEraser

    from phonorm.analysis.erasure import leace_eraser

    rng = np.random.default_rng(3)
    concept = rng.integers(0, 3, 500)
    x = ((rng.normal(size=(3, 8))[concept] + rng.normal(size=(500, 8))) @ rng.normal(size=(8, 8)) + 4.0).astype(np.float32)
    rows = np.flatnonzero(rng.random(500) < 0.8)
    onehot = np.eye(3)[concept[rows]]
    at_once = LeaceEraser.fit(torch.from_numpy(x[rows].astype(np.float64)), torch.from_numpy(onehot))
    erase = leace_eraser(x, concept[rows], rows=rows, chunk=64)
    expected = at_once(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(erase(x), expected, rtol=0, atol=1e-9)
    edited = erase(x, rows[:100], np.float32)
    assert edited.dtype == np.float32 and edited.shape == (100, 8)
    np.testing.assert_allclose(edited, expected[rows[:100]], rtol=1e-6)
    fitted = erase(x, rows)  # after erasure, every class has the same mean
    means = np.array([fitted[concept[rows] == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(means - means.mean(axis=0), 0, atol=1e-9)
