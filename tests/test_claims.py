"""Claim checks C1-C4 on designed stores: true where the structure was planted, false where not."""

from __future__ import annotations

import json

import pytest

from phonorm.analysis.claims import model_tasks
from phonorm.analysis.run import AnalyzeSettings, analyze

FAST = dict(reference="pretrained", umap=False, layer_matrix=False, folds=3, bootstrap=50,
            labels=["tone", "sex"], progress=False)


def claims_of(tmp_path, design, **store):
    from fake_store import make_feature_store

    folder = make_feature_store(tmp_path / design, design=design, n_speakers=8, n_utterances=3, n_frames=30,
                                n_layers=4, **store)
    analyze(folder, out=tmp_path / f"r_{design}", settings=AnalyzeSettings(**FAST))
    result = json.loads((tmp_path / f"r_{design}" / "claims.json").read_text())
    return {row["claim"]: row for row in result["claims"]}, result


def test_claims_hold_where_planted(tmp_path):
    claims, result = claims_of(tmp_path, "normalizes", tasks_in_manifest=True)
    assert result["tasks_found_from"]["tone_sex"] == "manifest"
    assert result["model_tasks"]["tone_sex"] == ["tone", "sex"]
    for name in ("C1", "C2", "C3", "C4"):
        assert claims[name]["holds"] is True, (name, claims[name])
    c1 = {m["model"]: m for m in claims["C1"]["measured"]}
    assert c1["tone"]["model_irrelevant_accuracy"] < c1["tone"]["reference_irrelevant_accuracy"]
    assert c1["sex"]["irrelevant"] == "tone"


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
    assert claims["C3"]["holds"] is None


@pytest.mark.parametrize("name, tasks", [("tone_sex", ["tone", "sex"]), ("ft-phone", ["phone"]),
                                         ("tone+sex", ["tone", "sex"]), ("pretrained", []), ("w2v", [])])
def test_tasks_from_names(name, tasks):
    assert sorted(model_tasks(name, {"source": "/no/such/folder", "kind": "given"})[0]) == sorted(tasks)


def test_tasks_come_from_the_store_for_models_phonorm_trained():
    assert model_tasks("tone", {"kind": "pretrained", "tasks": []}) == ([], "manifest")
    assert model_tasks("mine", {"kind": "finetuned", "tasks": ["sex"]}) == (["sex"], "manifest")
    assert model_tasks("tone", {"kind": "given", "tasks": []}) == (["tone"], "name")
