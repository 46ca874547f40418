"""Every JSON artifact file of a small run loads through its type (`phonorm.records`, the model card,
the store manifest), and a file that drifts from its type is refused naming the file and the field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from corpus_inputs import SIX_SPEAKERS, make_corpus
from fake_store import make_feature_store
from phonorm.analyze import analyze
from phonorm.artifacts import write_json
from phonorm.errors import InputError
from phonorm.features.manifest import StoreManifest
from phonorm.records.analysis import AnalysisRecord, ClaimsFile, EvaluationFile
from phonorm.records.corpus import LabelsFile
from phonorm.records.sweep import SweepPoints, load_points
from phonorm.records.tables import SWEEP
from phonorm.settings import AnalyzeSettings


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A prepared corpus, a feature store, its analysis (with an evaluation file) and a sweep summary
    of that analysis as a point."""
    from phonorm.corpus.prepare import prepare_corpus
    from phonorm.experiment.summary import summarize

    root = tmp_path_factory.mktemp("records")
    inputs = make_corpus(root / "in", SIX_SPEAKERS)
    prepare_corpus(root / "corpus", audio_dir=inputs["audio"], alignments=inputs["alignments"],
                   speakers_file=inputs["speakers"], fmt="textgrid", scheme="mandarin", tone_mode="surface",
                   split_file=None, skip_bad=False, seed=0)
    store = make_feature_store(root / "store", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=20, n_layers=2)
    frames = pd.read_parquet(store / "frames.parquet")
    by = {s: {"correct": 9, "n_frames": 10} for s in sorted(set(frames.speaker))}
    EvaluationFile.write(root / "eval", {"model": "tone", "split": "test",
                                         "tasks": {"tone": {"accuracy": 0.9, "chance": 0.3, "by_speaker": by}}})
    analyze(store, out=root / "results", settings=AnalyzeSettings(
        reference="pretrained", folds=2, labels=["sex", "tone"], umap=False, erasure=False, figures=False,
        progress=False, evaluations={"tone": str(root / "eval" / "evaluation.json")}))
    summarize([{"id": "p1", "values": {"steps": 10}, "results": str(root / "results"), "features": str(store),
                "report": str(root / "report.html"), "reference": "pretrained", "tone_model": "tone",
                "pretrained": None}], root / "sweep", resamples=20)
    return root


def test_every_file_of_a_run_loads_through_its_type(small_run):
    labels = LabelsFile.load(small_run / "corpus")
    assert labels.scheme == "mandarin" and labels.split is not None and labels.split.by == "speaker"
    assert labels.speakers is not None and sum(labels.speakers.matched.values()) > 0
    assert StoreManifest.load(small_run / "store").models[0].name == "pretrained"
    evaluation = EvaluationFile.load(small_run / "eval")
    assert evaluation.tasks["tone"]["accuracy"] == 0.9
    claims = ClaimsFile.load(small_run / "results")
    assert [c.claim for c in claims.claims] == ["C1", "C2", "C3", "C4"]
    assert claims.evaluations["tone"].per_speaker is True and claims.reference == "pretrained"
    keys = {c.key for claim in claims.claims for check in claim.measured for c in check.comparisons}
    assert None not in keys and "sex_suppressed" in keys
    record = AnalysisRecord.load(small_run / "results")
    assert record.models == ["pretrained", "tone"] and record.settings["folds"] == 2 and record.figures == []
    table, points = load_points(small_run / "sweep")
    assert isinstance(points, SweepPoints) and [p.id for p in points.points] == ["p1"]
    assert set(table["point"]) == {"p1"} and points.settings == ["steps"]
    assert list(table.columns) == ["steps", *SWEEP.columns]  # one column per swept setting, then SweepRow's


def test_a_sweep_table_without_a_column_of_its_type_is_named(small_run, tmp_path):
    import shutil

    shutil.copytree(small_run / "sweep", tmp_path / "sweep")
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv").drop(columns=["ci_from"])
    table.to_csv(tmp_path / "sweep" / "sweep.csv", index=False)
    with pytest.raises(InputError, match=r"sweep.csv.*ci_from"):
        load_points(tmp_path / "sweep")


def test_a_file_that_drifts_from_its_type_is_named(small_run, tmp_path):
    claims = json.loads((small_run / "results" / "claims.json").read_text())
    claims["claims"][0]["status"] = None  # a status every claim must have
    write_json(tmp_path / "claims.json", claims)
    with pytest.raises(InputError, match=r"claims.json: not a valid claims file .*claims\.0\.status"):
        ClaimsFile.load(tmp_path)
    with pytest.raises(ValueError, match="tasks"):  # a writer that drifts fails when it writes
        EvaluationFile.write(tmp_path, {"model": "tone", "split": "test"})
    assert not (tmp_path / "evaluation.json").exists()


# ---------------------------------------------------------------- the result tables' row types
def test_each_table_is_written_with_exactly_its_row_types_columns(small_run):
    from phonorm.records.tables import CSV_TABLES

    for table in CSV_TABLES:  # erasure.csv too: its header alone, this analysis ran without erasure
        assert list(pd.read_csv(small_run / "results" / table.file).columns) == table.columns, table.file


def test_a_misspelt_or_missing_key_is_an_error_not_a_dropped_column():
    from phonorm.records.tables import NORMALIZATION

    good = {"model": "pre", "layer": "L0", "measure": "variance_share", "label": "sex", "value": 0.1, "n": 9}
    assert list(NORMALIZATION.frame([good]).columns) == NORMALIZATION.columns
    with pytest.raises(ValueError, match=r"unknown keys \['valeu'\], missing keys \['value'\]"):
        NORMALIZATION.frame([good, {**{k: v for k, v in good.items() if k != "value"}, "valeu": 0.2}])


def test_validate_names_a_table_without_a_column_of_its_row_type(small_run, tmp_path):
    import shutil

    from phonorm.validate import check_results

    results = tmp_path / "R"
    shutil.copytree(small_run / "results", results)
    assert check_results(results).ok
    probes = pd.read_csv(results / "probes.csv").drop(columns=["gradient"])
    probes.to_csv(results / "probes.csv", index=False)
    verdict = check_results(results)
    assert not verdict.ok and any("lacks the column gradient of ProbeRow" in p for p in verdict.problems)
