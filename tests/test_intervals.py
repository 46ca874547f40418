"""The interval methods on cases with known answers, and the equivalence (TOST) test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from phonorm.analysis.intervals import JACKKNIFE_T, Estimate, balanced_accuracy, equivalent, pooled_accuracy


def test_the_jackknife_of_a_mean_is_the_t_interval_of_the_means():
    values = np.array([0.3, 0.5, 0.45, 0.7, 0.62, 0.4, 0.55, 0.5])
    left_out = {f"s{i}": float(np.delete(values, i).mean()) for i in range(len(values))}
    low, high = Estimate(float(values.mean()), left_out, JACKKNIFE_T).interval()
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 7, loc=values.mean(), scale=stats.sem(values)))


def test_a_constant_guess_of_a_speaker_level_label_is_exactly_at_chance_on_balanced_accuracy():
    speakers = np.repeat([f"s{i}" for i in range(8)], 50)
    sex = np.where(np.repeat(np.arange(8), 50) % 2 == 0, "F", "M")
    hits = sex == "F"  # always guessing F: accuracy 1 on every F speaker, 0 on every M speaker
    plain = pooled_accuracy({s: (hits[speakers == s].sum(), 50) for s in set(speakers)})
    assert plain.interval()[1] - plain.interval()[0] > 0.5  # speaker-level interval of plain accuracy: wide
    balanced = balanced_accuracy(hits, sex, speakers)
    assert balanced.point == 0.5 and equivalent(balanced.shifted(0.5), 0.05)[0] is True


def test_equivalence_fails_when_the_interval_reaches_past_the_margin():
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{i}" for i in range(8)], 100)
    sex = np.tile(["F", "M"], 400)
    right = rng.random(800) < np.repeat(rng.uniform(0.3, 0.9, 8), 100)  # speakers read very differently
    at_chance, low, high = equivalent(balanced_accuracy(right, sex, speakers).shifted(0.5), 0.05)
    assert at_chance is False and (low < -0.05 or high > 0.05)


def test_removed_bootstrap_settings_are_refused_with_the_reason():
    from pydantic import ValidationError

    from phonorm.settings.analyze import AnalyzeSettings

    with pytest.raises(ValidationError, match="intervals are now analytic|every interval is now analytic"):
        AnalyzeSettings(reference="pre", bootstrap=200)


def test_clustering_by_fold_sums_the_speakers_of_a_fold_and_widens_a_shared_error():
    """Speakers scored by one fitted probe share its error: four folds of two speakers each, the two of a
    fold moving together. Clustered by fold the interval is wider (3 df, summed influences)."""
    by_speaker = {f"S{i}": (60 + (8 if (i // 2) % 2 else -8) + (i % 2), 100) for i in range(8)}
    estimate = pooled_accuracy(by_speaker)
    folds = estimate.clustered({f"S{i}": f"fold {i // 2}" for i in range(8)})
    assert folds.speakers == 4 and folds.point == estimate.point
    assert sum(folds.terms.values()) == pytest.approx(sum(estimate.terms.values()))
    low, high = estimate.interval()
    f_low, f_high = folds.interval()
    assert f_high - f_low > 1.5 * (high - low)
    with pytest.raises(ValueError, match="influence"):
        Estimate(0.5, {"S0": 0.4, "S1": 0.6}, JACKKNIFE_T).clustered({"S0": "a", "S1": "a"})


def test_the_number_a_jackknife_interval_is_about_is_the_one_reported():
    """The audit's case: a raw 0.310 reported beside an interval centred on the bias-corrected value
    could lie outside it. `judged` reports the centre, and the raw value as `uncorrected_estimate`."""
    from phonorm.analysis.intervals import judged

    estimate = Estimate(0.310, {f"S{i}": v for i, v in enumerate([0.36, 0.37, 0.35, 0.38, 0.36, 0.37, 0.35, 0.36])},
                        JACKKNIFE_T)
    row = judged(estimate, 0.0, ">")
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"]
    assert row["uncorrected_estimate"] == pytest.approx(0.310) and row["estimate"] != pytest.approx(0.310)
