"""Claim checks C1-C4: on designed stores (true where planted, false where not) and on planted
evidence for each branch of the decision rule (holds / does not hold / inconclusive / not testable)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phonorm.analysis.claims import TOLERANCE, check_claims
from phonorm.analysis.evidence import Evidence, model_tasks
from phonorm.analysis.intervals import combine, decide, difference, pooled_accuracy
from phonorm.analyze import analyze
from phonorm.settings import AnalyzeSettings

FAST = dict(reference="pretrained", umap=False, layer_matrix=False, folds=3, labels=["tone", "sex"], progress=False)


def claims_of(tmp_path, design, **store):
    from fake_store import make_feature_store

    store = {"n_speakers": 8, "n_utterances": 3, "n_frames": 30, "n_layers": 4, **store}
    folder = make_feature_store(tmp_path / design, design=design, **store)
    analyze(folder, out=tmp_path / f"r_{design}", settings=AnalyzeSettings(**FAST))
    result = json.loads((tmp_path / f"r_{design}" / "claims.json").read_text())
    return {row["claim"]: row for row in result["claims"]}, result


def comparisons(claim, model=None, deciding=True):
    """The deciding (primary) comparisons of a claim by name (every comparison with `deciding` False)."""
    return {c["name"]: c for check in claim["measured"] if model in (None, check.get("model"))
            for c in check["comparisons"] if c["primary"] or not deciding}


def test_claims_hold_where_planted(tmp_path):
    # speakers differ only by sex, along one shared direction: an eraser fitted on other speakers removes it
    # (no phone model: with labels tone and sex only, whether it learned phone would be unknown)
    claims, result = claims_of(tmp_path, "normalizes", tasks_in_manifest=True, speaker_scale=0.0, dim=8, n_frames=60,
                               models=("pretrained", "tone", "sex", "tone_sex"))
    assert result["tasks_found_from"]["tone_sex"] == "manifest"
    assert result["model_tasks"]["tone_sex"] == ["tone", "sex"]
    for name in ("C1", "C2", "C3", "C4"):
        assert claims[name]["holds"] is True, (name, claims[name])
    suppressed = comparisons(claims["C1"], "tone")["sex suppressed"]
    assert suppressed["ci_high"] < -0.05 and suppressed["a_value"] < suppressed["b_value"]
    assert comparisons(claims["C1"], "sex")["tone suppressed"]["verdict"] == "holds"
    # no evaluation.json here: the probes decide C3/C4, and the claims say so
    assert claims["C3"]["fallback"] and "no evaluation" in claims["C3"]["fallback"][0]
    assert result["evaluations_missing"] == ["tone", "sex", "tone_sex"]
    causal = comparisons(claims["C4"])["tone unchanged after erasing sex (top layer)"]
    assert causal["verdict"] == "holds" and causal["sex_at_chance"] is True and causal["sex_after_erasure"] < 0.6
    for claim in claims.values():  # every interval names its method
        for c in (c for check in claim["measured"] for c in check["comparisons"] if c.get("ci_low") is not None):
            assert c["ci_method"].startswith(("cluster-robust t", "delete-one-speaker jackknife", "Fieller")), c
    assert result["intervals"]["similarity"].startswith("delete-one-speaker jackknife")


def test_a_sex_direction_that_an_eraser_of_other_speakers_cannot_remove_makes_the_causal_test_untestable(tmp_path):
    """The same design with speaker offsets in random directions: with 8 speakers, the eraser fitted on a
    few of them removes a direction the offsets have turned away from sex, and sex stays decodable on
    the others. The same-rows version called this "at chance"; now (c) is not testable, said so."""
    claims, _ = claims_of(tmp_path, "normalizes", tasks_in_manifest=True, models=("pretrained", "tone", "tone_sex"))
    causal = comparisons(claims["C4"], deciding=False)["tone unchanged after erasing sex (top layer)"]
    assert causal["verdict"] == "not testable" and causal["sex_at_chance"] is False and not causal["primary"]
    assert "did not bring sex to chance" in causal["reason"]
    # C4 then rests on its observational parts, and says so
    check = claims["C4"]["measured"][0]
    assert check["basis"] == claims["C4"]["basis"] == "observational" and check["causal_status"] == "not testable"


def test_claims_fail_where_not_planted(tmp_path):
    claims, result = claims_of(tmp_path, "keeps")
    assert result["tasks_found_from"]["tone"] == "name"
    for name in ("C1", "C2", "C3", "C4"):
        assert claims[name]["holds"] is False, (name, claims[name])
        assert claims[name]["criterion"]


def test_claims_not_testable_without_their_models(tmp_path):
    claims, _ = claims_of(tmp_path, "normalizes", models=("pretrained", "tone"))
    assert claims["C1"]["holds"] is True
    assert claims["C3"]["status"] == claims["C4"]["status"] == "not testable"
    assert claims["C3"]["holds"] is None and "tone+sex" in claims["C3"]["reason"]


# ---------------------------------------------------------------- planted evidence
SPEAKERS = [f"S{i}" for i in range(8)]


def evaluation(per_speaker_accuracy, frames=200):
    by = {s: {"correct": int(round(a * frames)), "n_frames": frames} for s, a in zip(SPEAKERS, per_speaker_accuracy)}
    return {"accuracy": float(np.mean(per_speaker_accuracy)), "chance": 0.25, "by_speaker": by}


def c3_with(multi_tone, single_tone, **kw):
    tasks = {"pre": [], "tone": ["tone"], "ts": ["tone", "sex"]}
    ev = Evidence(probes={}, layers={m: ["L0"] for m in tasks}, reference="pre", tasks=tasks,
                  evaluations={"tone": {"tone": evaluation(single_tone)},
                               "ts": {"tone": evaluation(multi_tone), "sex": evaluation(np.full(8, 0.95))}}, **kw)
    claim = check_claims(ev)[2]
    return claim, comparisons(claim)["tone: ts − tone"]


def test_difference_whose_ci_straddles_the_margin_is_inconclusive():
    rng = np.random.default_rng(1)
    single = np.clip(0.6 + rng.normal(0, 0.1, 8), 0, 1)
    # the multitask model is 0.02 worse on average (exactly the margin), speaker by speaker it varies
    multi = np.clip(single - TOLERANCE + rng.normal(0, 0.05, 8), 0, 1)
    claim, c = c3_with(multi, single)
    assert c["evidence"] == "task accuracy" and c["primary"]
    assert c["ci_low"] < -TOLERANCE < c["ci_high"]
    assert c["verdict"] == "inconclusive" and claim["status"] == "inconclusive" and claim["holds"] is None


def test_clear_differences_hold_or_fail():
    single = np.linspace(0.5, 0.7, 8)
    claim, c = c3_with(single + 0.001, single)  # as good, speaker by speaker: CI well above −0.02
    assert c["verdict"] == "holds" and c["ci_low"] > -TOLERANCE
    # no sex-only model: the sex half of C3 was never compared, so C3 cannot "hold"
    assert claim["status"] == "partly tested" and claim["holds"] is None
    assert "no sex-only model" in claim["untested"][0] and "no sex-only model" in claim["reason"]
    claim, c = c3_with(single - 0.10, single)   # clearly worse
    assert c["verdict"] == claim["status"] == "does not hold" and c["ci_high"] < -TOLERANCE


def test_task_accuracy_decides_and_the_probe_stands_beside_it():
    single = np.linspace(0.5, 0.7, 8)
    # probes say the multitask model is far worse; task accuracy says it is as good: task accuracy decides
    probe = lambda hits: {"by_speaker": {s: [h, 100, 30] for s, h in zip(SPEAKERS, hits)}}  # noqa: E731
    probes = {("tone", "L0", "tone"): probe([70] * 8), ("ts", "L0", "tone"): probe([40] * 8)}
    tasks = {"pre": [], "tone": ["tone"], "ts": ["tone", "sex"]}
    ev = Evidence(probes=probes, layers={m: ["L0"] for m in tasks}, reference="pre", tasks=tasks,
                  evaluations={"tone": {"tone": evaluation(single)}, "ts": {"tone": evaluation(single)}})
    claim = check_claims(ev)[2]
    rows = claim["measured"][0]["comparisons"]
    assert [r["evidence"] for r in rows] == ["task accuracy", "probe"]
    assert rows[0]["primary"] and not rows[1]["primary"]
    assert rows[1]["verdict"] == "does not hold" and claim["measured"][0]["verdict"] == "holds"
    # without per-speaker counts the probe decides, and the comparison says why
    ev.evaluations["ts"]["tone"].pop("by_speaker")
    claim = check_claims(ev)[2]
    decided = [r for r in claim["measured"][0]["comparisons"] if r["primary"]]
    assert decided[0]["evidence"] == "probe" and "per-speaker" in decided[0]["reason"]
    assert claim["status"] == "does not hold" and claim["fallback"]


def probe_counts(hits, baseline, rows=100):
    return {"accuracy": float(np.mean(hits)) / rows, "by_speaker": {s: [h, rows, b] for s, h, b in
                                                                    zip(SPEAKERS, hits, baseline)}}


def test_c1_near_chance_reference_and_ceiling_are_not_testable():
    tasks = {"pre": [], "tone": ["tone"]}
    half = [50] * 8
    probes = {("pre", "L0", "sex"): probe_counts([52, 48, 50, 51, 49, 50, 50, 52], half),   # sex at chance
              ("tone", "L0", "sex"): probe_counts([50] * 8, half),
              ("pre", "L0", "tone"): probe_counts([100] * 8, [25] * 8),                     # tone at ceiling
              ("tone", "L0", "tone"): probe_counts([100] * 8, [25] * 8)}
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks)
    c1 = check_claims(ev)[0]
    rows = comparisons(c1)
    assert rows["sex suppressed"]["verdict"] == "not testable" and "chance" in rows["sex suppressed"]["reason"]
    assert rows["tone enhanced (relative error reduction)"]["verdict"] == "not testable"
    assert "ceiling" in rows["tone enhanced (relative error reduction)"]["reason"]
    assert c1["status"] == "not testable" and c1["holds"] is None


def test_c1_is_not_testable_when_the_reference_does_not_decode_sex_whatever_enhancement_says():
    """The demo's case: tone clearly enhanced, but the reference's sex probe is at chance. Deciding C1 on
    enhancement alone would call it "holds"; suppression cannot be observed, so C1 is not testable."""
    tasks = {"pre": [], "tone": ["tone"]}
    probes = {("pre", "L0", "sex"): probe_counts([60, 40, 55, 45, 52, 48, 50, 50], [50] * 8),   # sex at chance
              ("tone", "L0", "sex"): probe_counts([50] * 8, [50] * 8),
              ("pre", "L0", "tone"): probe_counts([60, 62, 58, 61, 59, 60, 63, 57], [25] * 8),
              ("tone", "L0", "tone"): probe_counts([90, 92, 88, 91, 89, 90, 93, 87], [25] * 8)}
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks)
    c1 = check_claims(ev)[0]
    rows = comparisons(c1)
    assert rows["tone enhanced (relative error reduction)"]["verdict"] == "holds"   # enhancement alone would pass
    assert rows["sex suppressed"]["verdict"] == "not testable"
    assert c1["status"] == "not testable" and c1["holds"] is None
    assert "suppression of sex" in c1["reason"] and "chance" in c1["reason"]
    # the same evidence with a reference that decodes sex: C1 is decided (here it holds)
    probes[("pre", "L0", "sex")] = probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8)
    assert check_claims(ev)[0]["status"] == "holds"


def test_c1_is_not_testable_without_the_models_own_probe_of_the_irrelevant_factor():
    tasks = {"pre": [], "tone": ["tone"]}
    probes = {("pre", "L0", "sex"): probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8),
              ("pre", "L0", "tone"): probe_counts([60] * 8, [25] * 8),
              ("tone", "L0", "tone"): probe_counts([90] * 8, [25] * 8)}
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks)
    c1 = check_claims(ev)[0]
    assert c1["status"] == "not testable" and "no top-layer sex probe of tone" in c1["reason"]


def test_c1_enhancement_is_relative_to_the_reference_error():
    tasks = {"pre": [], "tone": ["tone"]}
    probes = {("pre", "L0", "sex"): probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8),
              ("tone", "L0", "sex"): probe_counts([50] * 8, [50] * 8),
              ("pre", "L0", "tone"): probe_counts([96] * 8, [25] * 8),
              ("tone", "L0", "tone"): probe_counts([99] * 8, [25] * 8)}  # +0.03 absolute, 75% of errors removed
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks)
    c1 = check_claims(ev)[0]
    rows = comparisons(c1)
    assert rows["tone enhanced (relative error reduction)"]["estimate"] == pytest.approx(0.75)
    assert rows["sex suppressed"]["verdict"] == "holds" and c1["status"] == "holds"


# ---------------------------------------------------------------- the bootstrap and the rule
def test_decision_rule_and_combination():
    assert decide(0.01, 0.05, 0.0, ">") == "holds" and decide(-0.05, -0.01, 0.0, ">") == "does not hold"
    assert decide(-0.01, 0.01, 0.0, ">") == "inconclusive" and decide(-0.05, -0.01, 0.0, "<") == "holds"
    assert decide(float("nan"), 1, 0, ">") == "not testable"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    assert combine(["holds", "inconclusive", "does not hold"]) == "does not hold"
    assert combine(["holds", "not testable"]) == "partly tested" and combine(["not testable"]) == "not testable"
    assert combine(["does not hold", "not testable"]) == "does not hold" and combine([]) == "not testable"
    assert combine(["holds", "holds"]) == "holds"


def test_paired_differences_cancel_what_both_sides_share():
    # speakers differ a lot, the two models by a constant 0.01: the paired CI is narrow around it
    level = np.linspace(0.3, 0.9, 8)
    a = pooled_accuracy({s: (100 * (v + 0.01), 100) for s, v in zip(SPEAKERS, level)})
    b = pooled_accuracy({s: (100 * v, 100) for s, v in zip(SPEAKERS, level)})
    assert a.interval()[1] - a.interval()[0] > 0.2  # one model alone: wide
    d = difference(a, b, 0.0, ">")
    assert d["estimate"] == pytest.approx(0.01) and d["ci_high"] - d["ci_low"] < 1e-9 and d["verdict"] == "holds"
    assert d["ci_method"].startswith("cluster-robust t") and d["speakers"] == 8


@pytest.mark.parametrize("name, tasks", [("tone_sex", ["tone", "sex"]), ("ft-phone", ["phone"]),
                                         ("tone+sex", ["tone", "sex"]), ("pretrained", []), ("w2v", [])])
def test_tasks_from_names(name, tasks):
    assert sorted(model_tasks(name, "given")[0]) == sorted(tasks)


def test_tasks_come_from_the_store_for_models_phonorm_trained():
    assert model_tasks("tone", "pretrained", []) == ([], "manifest")
    assert model_tasks("mine", "finetuned", ["sex"]) == (["sex"], "manifest")
    assert model_tasks("tone", "given", []) == (["tone"], "name")


def test_c4_is_not_testable_when_the_reference_carries_no_sex_information():
    """Tone as good in the multitask model, but the reference decodes sex at chance: nothing could have
    been suppressed, so C4 must not pass by default."""
    single = np.linspace(0.5, 0.7, 8)
    chance_sex = {"by_speaker": {s: [50, 100, 50] for s in SPEAKERS}}  # hits, frames, majority-class hits
    probes = {(m, "L0", "sex"): chance_sex for m in ("pre", "tone", "ts")}
    tasks = {"pre": [], "tone": ["tone"], "ts": ["tone", "sex"]}
    ev = Evidence(probes=probes, layers={m: ["L0"] for m in tasks}, reference="pre", tasks=tasks,
                  evaluations={"tone": {"tone": evaluation(single)}, "ts": {"tone": evaluation(single + 0.001)}})
    c4 = check_claims(ev)[3]
    assert c4["status"] == "not testable" and c4["holds"] is None
    assert "decodes sex" in c4["reason"]


# ---------------------------------------------------------------- premises (issue 30)
def test_a_model_that_did_not_learn_its_task_gets_no_verdict():
    """The demo's tone model at 0.36 with chance 0.22: its C1 and C2 checks are not testable, said so,
    whatever its probes say; the same evidence with the model at 0.9 is decided."""
    tasks = {"pre": [], "tone": ["tone"]}
    probes = {("pre", "L0", "sex"): probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8),
              ("tone", "L0", "sex"): probe_counts([50] * 8, [50] * 8),
              ("pre", "L0", "tone"): probe_counts([30] * 8, [25] * 8),
              ("tone", "L0", "tone"): probe_counts([40] * 8, [25] * 8),
              ("classic", "f0_semitone_z", "tone"): {"accuracy": 0.63}}
    low = {"tone": {"tone": {**evaluation([0.33, 0.35, 0.34, 0.36, 0.35, 0.34, 0.33, 0.35]), "chance": 0.25}}}
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks,
                  evaluations=low)
    c1 = check_claims(ev)[0]
    check = c1["measured"][0]
    assert check["verdict"] == "not testable" and check["premise"] is False
    assert "the tone model did not learn tone" in check["reason"] and "chance 0.250" in check["reason"]
    assert c1["status"] == "not testable" and "did not learn tone" in c1["reason"]
    assert any("below the best classic baseline" in w and "f0_semitone_z" in w for w in check["warnings"])
    ev.evaluations["tone"]["tone"] = {**evaluation([0.9] * 8), "chance": 0.25}
    check = check_claims(ev)[0]["measured"][0]
    assert check["premise"] is True and check["verdict"] != "not testable" and "warnings" not in check


def erasure_rows(before_low, after_at_chance, tone_change=(-0.01, 0.01)):
    """Planted erasure.csv rows of model ts, layer L0: sex before erasure (balanced accuracy with its
    95% CI lower bound), sex after (at chance or not), tone change with its CI."""
    base = dict(chance=0.5, balanced_chance=0.5, ci_method="cluster-robust t over folds (CR1, K-1 df)", speakers=8)
    return {("ts", "L0", "none", "sex"): {**base, "balanced_accuracy": before_low + 0.05, "balanced_ci_low": before_low,
                                          "balanced_ci_high": before_low + 0.1},
            ("ts", "L0", "sex", "sex"): {**base, "accuracy": 0.5, "balanced_accuracy": 0.5, "at_chance": after_at_chance,
                                         "above_chance_ci_low": -0.03, "above_chance_ci_high": 0.03,
                                         "balanced_change": before_low - 0.45, "balanced_change_ci_low": -0.5,
                                         "balanced_change_ci_high": -0.3},
            ("ts", "L0", "sex", "tone"): {**base, "accuracy": 0.7, "change": sum(tone_change) / 2,
                                          "change_ci_low": tone_change[0], "change_ci_high": tone_change[1]}}


def c4_with(erasure):
    single = np.linspace(0.5, 0.7, 8)
    sex = probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8)
    tasks = {"pre": [], "tone": ["tone"], "ts": ["tone", "sex"]}
    ev = Evidence(probes={("pre", "L0", "sex"): sex, ("ts", "L0", "sex"): sex}, layers={m: ["L0"] for m in tasks},
                  reference="pre", tasks=tasks, erasure=erasure,
                  evaluations={"tone": {"tone": evaluation(single)},
                               "ts": {"tone": evaluation(single + 0.001), "sex": evaluation(np.full(8, 0.95))}})
    claim = check_claims(ev)[3]
    return claim, comparisons(claim, deciding=False)["tone unchanged after erasing sex (top layer)"]


def test_the_causal_check_needs_something_to_erase_and_erasure_to_reach_chance():
    # the audit's case: sex at chance before erasure already, and "at chance" after: nothing was erased
    claim, causal = c4_with(erasure_rows(before_low=0.48, after_at_chance=True))
    assert causal["verdict"] == "not testable" and "nothing to erase" in causal["reason"]
    assert claim["basis"] == "observational" and claim["status"] == "holds"   # (a) and (b) hold, said on what basis
    # sex clearly decoded before, not at chance after: not testable, both numbers named
    claim, causal = c4_with(erasure_rows(before_low=0.8, after_at_chance=False))
    assert causal["verdict"] == "not testable" and "did not bring sex to chance" in causal["reason"]
    assert "before" in causal["reason"] and "after" in causal["reason"]
    # both: the causal check decides beside the observational parts, and its drop has an interval
    claim, causal = c4_with(erasure_rows(before_low=0.8, after_at_chance=True))
    assert causal["verdict"] == "holds" and causal["primary"] and claim["basis"] == "observational and causal"
    assert causal["sex_drop_ci"][1] < 0
    claim, causal = c4_with(erasure_rows(before_low=0.8, after_at_chance=True, tone_change=(-0.09, -0.05)))
    assert causal["verdict"] == "does not hold" and claim["status"] == "does not hold"


def test_c1_enhancement_near_ceiling_is_decided_on_the_reference_interval():
    """A reference at 0.97 whose interval reaches 0.98: enhancement is not testable (the point alone,
    0.03 of error, would have let the delta method decide), so C1 cannot hold on that model."""
    tasks = {"pre": [], "tone": ["tone"]}
    probes = {("pre", "L0", "sex"): probe_counts([95, 90, 92, 96, 94, 93, 91, 95], [50] * 8),
              ("tone", "L0", "sex"): probe_counts([50] * 8, [50] * 8),
              ("pre", "L0", "tone"): probe_counts([94, 99, 95, 99, 96, 98, 97, 98], [25] * 8),
              ("tone", "L0", "tone"): probe_counts([100] * 8, [25] * 8)}
    ev = Evidence(probes=probes, layers={"pre": ["L0"], "tone": ["L0"]}, reference="pre", tasks=tasks)
    c1 = check_claims(ev)[0]
    enhanced = comparisons(c1)["tone enhanced (relative error reduction)"]
    assert enhanced["verdict"] == "not testable" and "ceiling" in enhanced["reason"]
    assert c1["status"] == "partly tested" and c1["holds"] is None and "ceiling" in c1["untested"][0]


def test_below_the_measured_speaker_count_nothing_is_decided():
    """bench/coverage.py: at 4 speakers Fieller's interval covered 0.74; from 6 on every deciding
    interval meets its target. A clear difference over 4 speakers is therefore not decided."""
    from phonorm.analysis.intervals import RELIABLE_FROM

    few = [f"S{i}" for i in range(RELIABLE_FROM - 2)]
    single = {s: (100 + 10 * i, 200) for i, s in enumerate(few)}
    row = difference(pooled_accuracy({s: (c + 40, t) for s, (c, t) in single.items()}), pooled_accuracy(single),
                     -TOLERANCE, ">")
    assert row["ci_low"] > -TOLERANCE  # the interval alone would say "holds"
    assert row["verdict"] == "not testable" and "too few speakers for a reliable interval" in row["reason"]
    enough = {f"S{i}": (100 + 10 * i, 200) for i in range(RELIABLE_FROM)}
    row = difference(pooled_accuracy({s: (c + 40, t) for s, (c, t) in enough.items()}), pooled_accuracy(enough),
                     -TOLERANCE, ">")
    assert row["verdict"] == "holds" and "reason" not in row
