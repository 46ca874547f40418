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

    from phonorm.settings_analyze import AnalyzeSettings

    with pytest.raises(ValidationError, match="intervals are now analytic|every interval is now analytic"):
        AnalyzeSettings(reference="pre", bootstrap=200)
