"""Sweeps: the `sweep:` section, points through the stage cache, the summary table and the page.

The fast tests use cheap fake stages (as test_experiment.py); the slow one sweeps three checkpoints
of a real tiny pre-training run end to end."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import FakeStages, render_check
from phonorm import experiment as ex
from phonorm.errors import InputError
from phonorm.records.card import ModelCard

SWEEP = {
    "name": "s",
    "corpus": {"synth": {"speakers": 4, "utterances": 2}},
    "pretrain": [{"name": "pre", "steps": 40}],
    "finetune": [
        {"name": "tone", "base": "pre", "tasks": ["tone"], "settings": {"epochs": 1}},
        {"name": "sex", "base": "pre", "tasks": ["sex"], "settings": {"epochs": 1}},
    ],
    "analyze": {"probe_max_iter": 50},
    "sweep": {"checkpoints": [10, 20, 30]},
}


def _write(folder: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _sweep(**changes) -> dict:
    data = json.loads(json.dumps(SWEEP))
    data["sweep"] = changes.pop("sweep", data["sweep"])
    data.update(changes)
    return data


# --------------------------------------------------------------------------- the sweep section
def test_points_are_the_grid_times_the_checkpoints(tmp_path):
    experiment, _ = ex.load_experiment(_write(tmp_path, _sweep(sweep={
        "grid": {"size": ["tiny", "small"], "seed": [0, 1]}, "checkpoints": [20, 10]})))
    points = experiment.sweep_points()
    assert [p.id for p in points][:3] == ["size-tiny_seed-0_step-10", "size-tiny_seed-0_step-20",
                                          "size-tiny_seed-1_step-10"]
    assert len(points) == 8 and len({p.run for p in points}) == 4
    assert points[-1].values == {"size": "small", "seed": 1, "checkpoint": 20}


def test_the_share_resamples_are_the_sweep_setting_and_key_the_summary(tmp_path):
    from phonorm.experiment.sweep import plan_sweep

    def summary(resamples=None):
        sweep = {"checkpoints": [10]} if resamples is None else {"checkpoints": [10], "resamples": resamples}
        path = _write(tmp_path, _sweep(sweep=sweep))
        return plan_sweep(ex.load_experiment(path)[0], path).summary

    default, fewer = summary(), summary(50)
    assert default.settings["resamples"] == 2000 and fewer.settings["resamples"] == 50
    assert default.key != fewer.key, "other resamples, another summary"


@pytest.mark.parametrize("sweep, expected", [
    ({"grid": {"sizes": ["tiny"]}}, ["sweep.grid", "'sizes' is no pre-training setting", "max_hours"]),
    ({"grid": {"size": ["huge"]}}, ["sweep point size-huge", "'tiny', 'small' or 'base'"]),
    ({"checkpoints": [10, 50]}, ["sweep point", "keep_steps: 50 outside the run's steps 1..40"]),
    ({"grid": {"steps": [5, 50]}, "checkpoints": [10]}, ["sweep point steps-5", "keep_steps: 10 outside"]),
    ({"checkpoints": [10, 10]}, ["distinct steps"]),
    ({}, ["give a grid of pre-training settings, checkpoints, or both"]),
    ({"pretrain": "nope", "checkpoints": [10]}, ["sweep.pretrain", "'nope'"]),
    ({"grid": {"max_hours": [-1]}}, ["sweep point max_hours--1", "greater than 0"]),
])
def test_a_wrong_sweep_section_is_one_clear_error(tmp_path, sweep, expected):
    path = _write(tmp_path, _sweep(sweep=sweep))
    with pytest.raises(InputError) as err:
        ex.load_experiment(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} missing from: {message}"


def test_point_option_needs_a_sweep_and_a_known_point(tmp_path, fakes):
    plain = _sweep()
    del plain["sweep"]
    with pytest.raises(InputError, match="no sweep"):
        ex.run_experiment(_write(tmp_path, plain, "plain.yaml"), points=["x"])
    with pytest.raises(InputError, match="step-10, step-20, step-30"):
        ex.run_experiment(_write(tmp_path, _sweep()), points=["step-99"])


# --------------------------------------------------------------------------- through the cache (fake stages)
class SweepFakes(FakeStages):
    """FakeStages whose pretrain keeps snapshots and whose analysis writes result tables whose
    numbers follow the pre-training steps (so the summary has something to read)."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        modules = sys.modules
        original_pretrain = modules["phonorm.models.pretrain"].pretrain
        original_analyze = modules["phonorm.analyze"].analyze

        def snapshot_folder(out, step):
            return Path(out) / "snapshots" / f"step-{step}"

        def pretrain(corpus, *, out, settings):
            original_pretrain(corpus, out=out, settings=settings)
            for step in settings.keep_steps:
                folder = snapshot_folder(out, step)
                folder.mkdir(parents=True)
                # a snapshot's card as pretrain writes it (the summary reads its curve through
                # ModelCard); the fake holds no weights
                ModelCard(complete=True, kind="pretrained", model_type="wav2vec2", corpus=str(corpus),
                          corpus_fingerprint="fake", settings={}, provenance={},
                          held_out_contrastive_accuracy=[(0, 0.1), (step, step / 100)]).save(folder)
            return "pretrained"

        def analyze(features, *, out, settings):
            original_analyze(features, out=out, settings=settings)
            step = int(re.search(r"step-(\d+)", str(out)).group(1))
            _fake_results(Path(out), step)
            return "analysed"

        modules["phonorm.models.pretrain"].pretrain = pretrain
        modules["phonorm.models.pretrain"].snapshot_folder = snapshot_folder
        modules["phonorm.analyze"].analyze = analyze


def _fake_results(out: Path, step: int) -> None:
    """probes.csv (with CIs), similarity.csv, normalization.csv and claims.json (no comparisons) for a
    reference `pre` and a tone model `tone` with 3 layers; more steps, more suppression of sex."""
    layers = ["L0", "L1", "L2"]
    probes = []
    for model in ("pre", "tone", "sex"):
        for i, layer in enumerate(layers):
            sex = 0.9 - (0.004 * step if model == "tone" else 0.0)
            tone = 0.5 + (0.1 * i if model == "tone" else 0.0)
            probes += [dict(model=model, layer=layer, label="sex", accuracy=sex, chance=0.5, ci_low=sex - 0.05,
                            ci_high=sex + 0.05, n=100, folds=2, classes=2, dropped=0),
                       dict(model=model, layer=layer, label="tone", accuracy=tone, chance=0.2, ci_low=tone - 0.05,
                            ci_high=tone + 0.05, n=100, folds=2, classes=5, dropped=0)]
    pd.DataFrame(probes).to_csv(out / "probes.csv", index=False)
    similarity = [dict(model="tone", reference="pre", layer=layer, measure=m, value=1.0 - 0.1 * i * (1 + step / 10),
                       n=100, held_out=False) for i, layer in enumerate(layers) for m in ("svcca", "cka")]
    pd.DataFrame(similarity).to_csv(out / "similarity.csv", index=False)
    pd.DataFrame([dict(model=m, layer="L2", measure="variance_share", label="speaker", value=0.3, n=100)
                  for m in ("pre", "tone")]).to_csv(out / "normalization.csv", index=False)
    (out / "claims.json").write_text(json.dumps({"claims": [
        {"claim": c, "statement": f"claim {c}", "criterion": "fake", "status": "holds" if step >= 20 else "does not hold",
         "holds": step >= 20, "measured": []}
        for c in ("C1", "C2", "C3", "C4")], "top_layer": {"pre": "L2", "tone": "L2", "sex": "L2"}}))


@pytest.fixture
def fakes(monkeypatch):
    return SweepFakes(monkeypatch)


def _point_stages(calls: list[str]) -> list[str]:
    return sorted(c for c in calls if not c.startswith(("synth", "corpus")))


def _own(point: str) -> list[str]:
    """The stages of one point the fakes record (the snapshot stage is real code, not recorded)."""
    return sorted(f"{kind}.{point}" for kind in ("finetune:tone", "finetune:sex", "evaluate:tone", "evaluate:sex",
                                                  "extract:extract", "analyze:analyze", "report:report"))


def test_points_share_stages_and_adding_a_point_runs_only_that_point(tmp_path, fakes):
    path = _write(tmp_path, _sweep())
    summary = ex.run_experiment(path)
    calls = fakes.take()
    # one pre-training run for the three checkpoints; per point: its own finetunes, extract, analyze, report
    assert calls.count("pretrain:pre") == 1 and calls.count("synth:synth") == 1
    for point in ("step-10", "step-20", "step-30"):
        for kind in ("finetune:tone", "finetune:sex", "extract:extract", "analyze:analyze", "report:report"):
            assert f"{kind}.{point}" in calls, (kind, point, calls)
    evaluated = [c for c in calls if c.startswith("evaluate")]
    assert len(evaluated) == 6, "evaluate stages per point and model"
    workdir = tmp_path / "runs" / "s"
    snapshots = sorted(p.name.rsplit("-", 1)[0] for p in (workdir / "snapshot").iterdir())
    assert snapshots == ["pre.step-10", "pre.step-20", "pre.step-30"]
    assert fakes.models["tone.step-20"].endswith(next((workdir / "snapshot").glob("pre.step-20-*")).name), \
        "each point fine-tunes from its own snapshot"

    table = pd.read_csv(workdir / "sweep.csv")
    assert list(table.columns[:2]) == ["checkpoint", "point"]
    assert set(table["checkpoint"]) == {10, 20, 30}
    drop = table[table.quantity == "sex_probe_top_tone_minus_reference"].set_index("checkpoint")["value"]
    assert drop.to_dict() == pytest.approx({10: -0.04, 20: -0.08, 30: -0.12})
    sex = table[table.quantity == "tone_model_top_sex_probe"].iloc[0]
    assert sex.ci_high - sex.ci_low == pytest.approx(0.1) and "probes.csv" in sex.ci_from
    cka = table[table.quantity == "cka_drop_lower_to_upper"].set_index("checkpoint")["value"]
    # lower half (L0, L1) minus top third (L2): 1 − (0.1·(1+s/10))/2 − (1 − 0.2·(1+s/10))
    assert cka[10] == pytest.approx(0.15 * 2)
    verdicts = table[table.quantity == "C1"].set_index("checkpoint")["verdict"]
    assert verdicts.to_dict() == {10: "does not hold", 20: "holds", 30: "holds"}
    held = table[table.quantity == "held_out_contrastive_accuracy"].set_index("checkpoint")["value"]
    assert held.to_dict() == pytest.approx({10: 0.1, 20: 0.2, 30: 0.3})
    share = table[table.quantity == "speaker_variance_share_top"].iloc[0]
    assert share.value == 0.3 and share.ci_from.startswith("none"), "no store here: the table's value, no CI"
    page = (workdir / "sweep.html").read_text()
    assert "sweep.csv" in summary and "step-20" in summary
    for point in ("step-10", "step-20", "step-30"):
        link = re.search(rf'<td>{point}</td>.*?<a href="([^"]+)">report</a>', page)
        assert link and (workdir / link.group(1)).is_file(), f"link to the report of {point}"

    # again: nothing to do
    ex.run_experiment(path)
    assert fakes.take() == []

    # a fourth checkpoint: the one pre-training run again (to keep step 40) and that point's stages only
    _write(tmp_path, _sweep(sweep={"checkpoints": [10, 20, 30, 40]}))
    ex.run_experiment(path)
    added = fakes.take()
    assert _point_stages(added) == sorted(["pretrain:pre", *_own("step-40")])
    assert len(pd.read_csv(workdir / "sweep.csv").query("quantity == 'C1'")) == 4

    # fewer checkpoints (a pre-training run with other keep_steps, never run): every snapshot is
    # cached, so it is not needed
    _write(tmp_path, _sweep(sweep={"checkpoints": [10, 30]}))
    summary = ex.run_experiment(path)
    assert fakes.take() == [] and "1 not needed" in summary
    assert len(pd.read_csv(workdir / "sweep.csv").query("quantity == 'C1'")) == 2
    from phonorm.validate import validate

    checked = validate(workdir)
    # validate looks inside every stage folder: the fakes' snapshots hold a card and no weights, nothing
    # else may be wrong (markers, keys, the other stage folders)
    assert checked.kind == "phonorm run folder" and len(checked.facts) > 10, checked.text()
    assert checked.problems and all(re.search(r"snapshot/pre\.step-[^/]+/(config\.json|model\.safetensors): missing", p)
                                    for p in checked.problems), checked.text()
    assert json.loads((workdir / "run.json").read_text())["not_needed"][0]["stage"] == "pretrain"


def test_a_grid_point_added_runs_only_that_point_and_points_run_apart_then_merge(tmp_path, fakes):
    import shutil

    data = _sweep(sweep={"grid": {"seed": [0, 1]}, "checkpoints": [10]})
    path = _write(tmp_path, data)
    workdir = tmp_path / "runs" / "s"
    # "machine A" runs one point; its work folder is moved away (as if it lived elsewhere)
    ex.run_experiment(path, points=["seed-0_step-10"])
    first = fakes.take()
    assert "pretrain:pre.seed-0" in first and "pretrain:pre.seed-1" not in first
    assert not (workdir / "sweep.csv").exists(), "a partial run writes no table"
    machine_a = tmp_path / "machine_a"
    workdir.rename(machine_a)
    # "machine B", same checkout and file, runs the other point
    ex.run_experiment(path, points=["seed-1_step-10"])
    second = fakes.take()
    assert "pretrain:pre.seed-1" in second and "pretrain:pre.seed-0" not in second
    # merge: copy A's stage folders in (content-addressed names: nothing collides)
    for stage in machine_a.iterdir():
        if stage.is_dir():
            shutil.copytree(stage, workdir / stage.name, dirs_exist_ok=True)
    ex.run_experiment(path)
    assert fakes.take() == [], "after the merge only the summary runs"
    table = pd.read_csv(workdir / "sweep.csv")
    assert sorted(table["seed"].unique()) == [0, 1] and list(table.columns[:3]) == ["seed", "checkpoint", "point"]

    # a third seed: only its stages
    _write(tmp_path, _sweep(sweep={"grid": {"seed": [0, 1, 2]}, "checkpoints": [10]}))
    ex.run_experiment(path)
    assert _point_stages(fakes.take()) == sorted(["pretrain:pre.seed-2", *_own("seed-2_step-10")])
    table = pd.read_csv(workdir / "sweep.csv")
    assert sorted(table["seed"].unique()) == [0, 1, 2]


def test_the_sweep_page_renders_in_chromium(tmp_path, fakes):
    path = _write(tmp_path, _sweep(sweep={"grid": {"seed": [0, 1]}, "checkpoints": [10, 20, 30]}))
    ex.run_experiment(path)
    page = tmp_path / "runs" / "s" / "sweep.html"
    text = page.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]*)"', text)
    assert len(images) >= 8 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:|//|file:)', text) and "<script" not in text
    assert "seeds are repeats" in text
    rendered, broken = render_check(page)
    assert rendered == len(images) and broken == 0


# --------------------------------------------------------------------------- the speaker bootstrap
def test_speaker_share_matches_the_analysis_and_its_ci_covers_it(tmp_path):
    from fake_store import make_feature_store
    from phonorm.analysis.normalization import GroupSums
    from phonorm.experiment.summary import speaker_share
    from phonorm.features.store import FeatureStore

    folder = make_feature_store(tmp_path / "F")
    store = FeatureStore(folder)
    model = store.models[0]
    layer = store.layers(model)[-1]
    value, low, high, speakers = speaker_share(folder, model, layer, resamples=200)
    codes = np.unique(store.frames["speaker"].astype(str), return_inverse=True)[1]
    x = store.layer(model, layer).astype(np.float64)
    expected = GroupSums(int(codes.max()) + 1, x.shape[1]).update(x, codes).variance_share()["share"]
    assert value == pytest.approx(expected, rel=1e-9)
    assert low <= value <= high and low < high and speakers == int(codes.max()) + 1


# --------------------------------------------------------------------------- end to end (real stages)
@pytest.mark.slow
def test_a_checkpoint_sweep_end_to_end(tmp_path):
    """Three checkpoints of one tiny pre-training run → fine-tune tone and sex → extract → analyze,
    the table (with feature-store speaker CIs), the page in Chromium; a fourth checkpoint runs only
    the pre-training again and its own point."""
    import torch

    from fakes import make_prepared_corpus

    torch.set_num_threads(1)
    speakers = {f"S{i:02d}": "test" if i >= 6 else "dev" if i >= 4 else "train" for i in range(10)}
    corpus = make_prepared_corpus(tmp_path / "corpus", n_speakers=10, n_utterances=4, seed=1, splits=speakers)
    finetune = {"max_steps": 6, "batch_seconds": 8, "lr": 0.0005, "eval_every": 6, "freeze_feature_encoder": False}
    data = {
        "name": "e2e", "workdir": "runs",
        "corpus": {"prepared": str(corpus)},
        "pretrain": [{"name": "pre", "size": "tiny", "steps": 12, "batch_seconds": 4, "lr": 0.002, "eval_every": 4,
                      "clusters": 20}],
        "finetune": [{"name": "tone", "base": "pre", "tasks": ["tone"], "settings": finetune},
                     {"name": "sex", "base": "pre", "tasks": ["sex"], "settings": finetune}],
        "extract": {"split": "test", "frames": "middle", "max_per_speaker_label": 10},
        "analyze": {"folds": 2, "umap": False, "layer_matrix": False, "sample_rows": 1000,
                    "silhouette_rows": 200, "probe_max_iter": 50, "figures": False, "progress": False},
        "sweep": {"checkpoints": [4, 8, 12]},
    }
    path = _write(tmp_path, data)
    ex.run_experiment(path)
    workdir = tmp_path / "runs"
    table = pd.read_csv(workdir / "sweep.csv")
    assert sorted(table["checkpoint"].unique()) == [4, 8, 12]
    for quantity in ("sex_probe_top_tone_minus_reference", "tone_probe_top_tone_minus_reference",
                     "cka_drop_lower_to_upper", "speaker_variance_share_top", "held_out_masked_accuracy"):
        values = table[table.quantity == quantity]
        assert len(values) == 3 and np.isfinite(values["value"]).all(), quantity
    share = table[table.quantity == "speaker_variance_share_top"]
    # 4 test speakers: a CI where the bootstrap can give one, else none with the reason
    with_ci = share[np.isfinite(share.ci_low)]
    assert (with_ci.ci_low <= with_ci.value).all() and (with_ci.value <= with_ci.ci_high).all()
    assert with_ci.ci_from.str.contains("feature store").all()
    assert share[~np.isfinite(share.ci_low)].ci_from.str.contains("too few for a bootstrap CI").all()
    assert set(table[table.quantity.isin(["C1", "C2", "C3", "C4"])]["verdict"].dropna()) <= {
        "holds", "does not hold", "inconclusive", "not testable"}
    held = table[table.quantity == "held_out_masked_accuracy"].sort_values("checkpoint")["value"].to_numpy()
    assert len(set(held)) == 3, "each checkpoint is its own model"
    page = workdir / "sweep.html"
    images = re.findall(r'<img src="([^"]*)"', page.read_text(encoding="utf-8"))
    assert render_check(page) == (len(images), 0) and len(images) >= 5

    # unchanged: nothing runs; a fourth checkpoint: the pre-training run and that point only
    ex.run_experiment(path)
    ran = [s for s in json.loads((workdir / "run.json").read_text())["stages"] if s["status"] in ("ran", "resumed")]
    assert [s["stage"] for s in ran] == []
    data["sweep"]["checkpoints"] = [4, 8, 12, 10]
    _write(tmp_path, data)
    ex.run_experiment(path)
    ran = [f"{s['stage']}:{s['name']}" for s in json.loads((workdir / "run.json").read_text())["stages"]
           if s["status"] in ("ran", "resumed")]
    assert sorted(ran) == sorted(["pretrain:pre", "snapshot:pre.step-10", "finetune:tone.step-10",
                                  "finetune:sex.step-10", "evaluate:tone.step-10", "evaluate:sex.step-10",
                                  "extract:extract.step-10", "analyze:analyze.step-10", "report:report.step-10",
                                  "sweep:sweep"])


def test_paired_cis_are_taken_from_claims_json_when_the_analysis_wrote_them(tmp_path):
    """claims.json with per-comparison estimates and CIs (verdicts holds / does not hold /
    inconclusive): the differences take their paired CI from it; without them, no CI is made up."""
    from phonorm.experiment.summary import summarize_point

    _fake_results(tmp_path, 20)
    claims = json.loads((tmp_path / "claims.json").read_text())
    claims["claims"][0]["status"] = "inconclusive"
    claims["claims"][0]["measured"] = [{"model": "tone", "comparisons": [
        {"key": "sex_suppressed", "name": "sex suppressed", "evidence": "probe", "estimate": -0.081, "ci_low": -0.12,
         "ci_high": -0.03, "verdict": "holds"},
        {"key": "tone_enhanced", "name": "tone enhanced (relative error reduction)", "evidence": "probe", "estimate": 0.25,
         "ci_low": -0.01, "ci_high": 0.5, "verdict": "inconclusive"}], "verdict": "inconclusive"}]
    claims["claims"][1]["measured"] = [{"model": "tone", "comparisons": [
        {"key": "cka_drop", "name": "CKA lower half − top third", "evidence": "similarity", "estimate": 0.3,
         "ci_low": 0.2, "ci_high": 0.4, "verdict": "holds"}], "verdict": "holds"}]
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    point = {"id": "p", "results": str(tmp_path), "features": str(tmp_path / "no-store"), "reference": "pre",
             "tone_model": "tone", "pretrained": None}
    with_cis = {r["quantity"]: r for r in summarize_point(point)[0]}
    (tmp_path / "claims.json").write_text(json.dumps({"claims": [{"claim": "C1", "status": "holds"}]}))
    without, notes = summarize_point(point)
    without = {r["quantity"]: r for r in without}

    sex = with_cis["sex_probe_top_tone_minus_reference"]
    assert (sex["value"], sex["ci_low"], sex["ci_high"]) == (-0.081, -0.12, -0.03) and "claims.json C1" in sex["ci_from"]
    assert with_cis["tone_relative_error_reduction"]["ci_low"] == -0.01
    assert with_cis["cka_drop_lower_to_upper"]["ci_high"] == 0.4
    assert with_cis["C1"]["verdict"] == "inconclusive"
    sex = without["sex_probe_top_tone_minus_reference"]
    assert sex["value"] == pytest.approx(-0.08) and np.isnan(sex["ci_low"]) and sex["ci_from"].startswith("none")
    assert "tone_relative_error_reduction" not in without
    assert any("feature store not read" in n for n in notes)
    assert any("claims.json missing or unreadable" in n for n in notes), "a claims file analyze did not write is named"
