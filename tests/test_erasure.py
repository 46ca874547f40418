"""LEACE erasure with probes (the causal test of C4): three speaker-disjoint roles, on planted stores
where erasure must reach chance (one sex direction shared by every speaker) and where it must not
(each speaker's sex direction differs)."""

from __future__ import annotations

import numpy as np
import pytest

from phonorm.analysis.erasure import erasure_probes, erasure_roles
from phonorm.analyze import TorchKernels

KERNELS = TorchKernels("cpu")


@pytest.fixture(scope="module")
def planted():
    """Tone and sex planted along independent directions, mixed by a random linear map, plus noise."""
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"S{i}" for i in range(10)], 150)
    sex = np.where(np.arange(len(speakers)) // 150 % 2 == 0, "F", "M")
    tone = rng.integers(1, 5, len(speakers))
    tone[rng.random(len(tone)) < 0.1] = 0  # rows without a tone are left out
    dim = 12
    x = (rng.normal(size=(5, dim))[tone] * 1.5 + np.where(sex == "F", 1.0, -1.0)[:, None] * rng.normal(size=dim)
         + rng.normal(size=(len(tone), dim)))
    x = x @ rng.normal(size=(dim, dim)) + 5.0
    rows = erasure_probes(x, tone, sex, speakers, kernels=KERNELS, folds=5, seed=0)
    return {(r["erased"], r["probed"]): r for r in rows}, int((tone > 0).sum())


def test_both_factors_decodable_before_erasure(planted):
    rows, n = planted
    assert rows["none", "tone"]["accuracy"] > 0.8 and rows["none", "sex"]["accuracy"] > 0.9
    assert rows["none", "tone"]["n"] == n and rows["none", "tone"]["change"] == 0
    assert rows["none", "sex"]["at_chance"] is False


def test_erasing_one_factor_removes_it_to_chance_and_leaves_the_other(planted):
    rows, _ = planted
    for erased, kept in (("sex", "tone"), ("tone", "sex")):
        gone = rows[erased, erased]
        assert gone["at_chance"] is True, gone                           # TOST: within ±0.05 of chance
        assert -0.05 < gone["above_chance_ci_low"] and gone["above_chance_ci_high"] < 0.05
        intact = rows[erased, kept]
        assert intact["change_ci_low"] > -0.02 and intact["change_ci_high"] < 0.02, intact  # independent: intact
        assert intact["accuracy"] > 0.8


def test_every_interval_names_its_method(planted):
    rows, _ = planted
    for row in rows.values():
        assert row["ci_method"].startswith("cluster-robust t") and row["chance_method"].startswith("class prior")
        assert row["above_chance_ci_level"] == 0.90 and row["ci_level"] == 0.95
        assert row["speakers"] == 10 and "disjoint" in row["roles"]


def sex_store(spread: float, n_speakers: int = 32, rows: int = 200, dim: int = 4, seed: int = 1):
    """Rows of `n_speakers` speakers (half F, half M) with tone and sex. Sex moves speaker s along
    d + e_s: d (norm 2) is shared by every speaker, e_s is the speaker's own direction of norm
    `spread` × 2 (0: one shared linear sex direction)."""
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"S{i:02d}" for i in range(n_speakers)], rows)
    sign = np.repeat(np.where(np.arange(n_speakers) % 2 == 0, 1.0, -1.0), rows)
    shared = rng.normal(size=dim)
    shared *= 2 / np.linalg.norm(shared)
    own = rng.normal(size=(n_speakers, dim))
    own *= spread * 2 / np.linalg.norm(own, axis=1, keepdims=True)
    tone = rng.integers(1, 5, len(speakers))
    direction = shared + np.repeat(own, rows, axis=0)
    x = (sign[:, None] * direction + rng.normal(size=(5, dim))[tone] * 1.5
         + np.repeat(rng.normal(size=(n_speakers, dim)) * 0.1, rows, axis=0) + rng.normal(size=(len(tone), dim)))
    return x, tone, np.where(sign > 0, "F", "M"), speakers


def erased_sex(spread: float) -> dict:
    x, tone, sex, speakers = sex_store(spread)
    rows = erasure_probes(x, tone, sex, speakers, kernels=KERNELS, folds=4, seed=0)
    return {(r["erased"], r["probed"]): r for r in rows}


def test_a_shared_linear_sex_direction_is_erased_to_chance():
    rows = erased_sex(0.0)
    assert rows["none", "sex"]["ci_low"] > 0.9
    sex = rows["sex", "sex"]
    assert sex["at_chance"] is True, sex
    assert rows["sex", "tone"]["change_ci_low"] > -0.02


def test_speaker_specific_sex_directions_are_not_erased_by_an_eraser_of_other_speakers():
    """Each speaker's sex direction differs: an eraser fitted on some speakers removes their mean
    direction, and the part shared with other speakers stays decodable on them. The same-rows version
    (eraser fitted on the probe's training rows) would call this chance by construction."""
    rows = erased_sex(1.0)
    sex = rows["sex", "sex"]
    assert sex["at_chance"] is False and sex["above_chance"] > 0.05, sex


@pytest.mark.parametrize("family", ["lda", "logistic"])
def test_the_same_rows_eraser_reaches_chance_by_construction_on_the_same_store(family):
    """Why the roles must be apart: fitted on the probe's own training rows, LEACE equalises the class
    means there, and the probe reads no sex at all even where other speakers still show it: logistic
    regression falls to a constant guess (its loss has no gradient towards sex), LDA's discriminant
    direction Σ⁻¹(μ_F − μ_M) vanishes and its guesses are rounding noise."""
    from phonorm.analysis.probes import ProbeSolver, fit_predict
    from phonorm.analyze import leace_eraser

    x, _, sex, speakers = sex_store(1.0)
    tested = ["S00", "S01", "S02", "S03"]
    train, test = np.flatnonzero(~np.isin(speakers, tested)), np.flatnonzero(np.isin(speakers, tested))
    unerased = fit_predict(x[train].astype(np.float32), sex[train], x[test].astype(np.float32), 0,
                           ProbeSolver(family)).predicted
    assert np.mean(unerased == sex[test]) > 0.8  # the test speakers do show sex
    erase = leace_eraser(x, sex[train], rows=train)
    predicted = fit_predict(erase(x, train, np.float32), sex[train], erase(x, test, np.float32), 0,
                            ProbeSolver(family)).predicted
    if family == "logistic":
        shares = [np.mean(predicted[speakers[test] == s] == "F") for s in tested]
        assert max(shares) - min(shares) < 0.2  # every test speaker gets the same guess: sex not read at all
    assert abs(np.mean(predicted == sex[test]) - 0.5) < 0.1


def test_roles_are_speaker_disjoint_and_every_speaker_is_tested_once():
    speakers = np.repeat([f"S{i}" for i in range(9)], 4)
    sex = np.where(np.repeat(np.arange(9), 4) < 5, "F", "M")  # 5 F, 4 M
    roles = erasure_roles(sex, speakers, folds=5, seed=0)
    assert len(roles) == 4  # at most the rarer sex's speakers
    tested = []
    for role in roles:
        parts = [set(speakers[r]) for r in (role.eraser, role.train, role.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        for r in (role.eraser, role.train, role.test):
            assert set(sex[r]) == {"F", "M"}  # both sexes in every role
        tested += sorted(parts[2])
    assert sorted(tested) == sorted(set(speakers))


def test_erasure_needs_three_speakers_of_each_sex_and_two_tones():
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="2 sexes"):
        erasure_probes(x, np.tile([1, 2], 20), np.full(40, "F"), np.repeat(["A", "B"], 20), kernels=KERNELS)
    speakers = np.repeat(["A", "B", "C", "D"], 10)
    with pytest.raises(ValueError, match="3 speakers of each sex"):
        erasure_probes(x, np.tile([1, 2], 20), np.repeat(["F", "M"], 20), speakers, kernels=KERNELS)
    with pytest.raises(ValueError, match="2 tones"):
        erasure_probes(x, np.ones(40, int), np.repeat(["F", "M"], 20), speakers, kernels=KERNELS)


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

    from phonorm.analyze import leace_eraser

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
