"""The HTML report: built from a small fake results folder; rendered in headless Chromium."""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import render_check
from phonorm.analysis.claims import intervals_used
from phonorm.analysis.intervals import CLUSTER_T
from phonorm.analysis.probes import CHANCE_METHOD
from phonorm.errors import InputError
from phonorm.records.analysis import AnalysisRecord, ClaimsFile, EvaluationFile
from phonorm.records.card import ModelCard
from phonorm.records.context import RunContext
from phonorm.records.tables import ERASURE, NORMALIZATION, PROBES, SIMILARITY
from phonorm.report.html import build_report
from phonorm.report.page import esc
from phonorm.settings.report import ReportSettings

LAYERS = ["L0", "L1", "L2"]
#: The static page (report --static): these tests count its figures and check it has no script; the
#: interactive explorer is tested on a real run in test_explorer.py.
_build = functools.partial(build_report, settings=ReportSettings(static=True))
SECTIONS = ["glance", "corpus", "training", "accuracy", "similarity", "matrices", "probes", "normalization",
            "umap", "erasure", "claims", "methods"]


def _png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(seed).random((4, 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


@pytest.fixture(scope="module")
def results(fake_corpus, tmp_path_factory):
    """A results folder as `phonorm run` leaves it: CSVs, claims, settings, two analysis figures (the
    similarity and probe figures are left out so that the report draws its own), context.json
    pointing to a corpus, a pre-trained and a fine-tuned model folder and an evaluation."""
    root = tmp_path_factory.mktemp("report")
    pre, tone, results = root / "pre", root / "tone", root / "R"
    for folder in (pre, tone, results):
        folder.mkdir()
    steps = np.arange(1, 21)
    pd.DataFrame({"step": steps, "loss": 5 - steps / 10, "held_out_contrastive_accuracy":
                  np.where(steps % 5 == 0, steps / 40, np.nan)}).to_csv(pre / "pretrain_log.csv", index=False)
    pd.DataFrame({"step": steps, "loss": 2 - steps / 20, "dev_acc_tone": np.where(steps % 10 == 0, 0.6, np.nan)}
                 ).to_csv(tone / "train_log.csv", index=False)
    ModelCard(complete=True, kind="finetuned", tasks=["tone"], label_maps={"tone": ["1", "2", "3", "4", "5"]},
              settings={"lr": 0.000321, "epochs": 3}, model_type="wav2vec2", base_model=str(pre),
              corpus=str(fake_corpus), corpus_fingerprint="x", provenance={}).save(tone)
    EvaluationFile.write(root, {"model": "tone", "split": "test", "tasks": {"tone": {
        "accuracy": 0.8125, "macro_f1": 0.79, "chance": 0.25, "n_frames": 400,
        "by_sex": {"F": {"accuracy": 0.8}, "M": {"accuracy": 0.82}}, "syllable": {"accuracy": 0.9}}}})
    # Every file through the type analyze writes it with (records/tables.py, records/analysis.py): a
    # row with a missing or unknown column, or a claims file of another shape, is refused here.
    SIMILARITY.frame([
        {"model": "tone", "reference": "pre", "layer": layer, "measure": measure, "value": 1 - int(layer[1]) * 0.2,
         "ci_low": 0.5, "ci_high": 0.9, "ci_method": "jackknife", "floor": 0.0123, "held_out_value": 0.4567,
         "held_out_floor": 0.01, "n": 100, "n_fit": 50, "n_score": 50, "speakers": 6}
        for layer in LAYERS for measure in ("svcca", "cka")]).to_csv(results / SIMILARITY.file, index=False)
    probe = {"chance": 0.3, "chance_method": CHANCE_METHOD, "ci_low": 0.4, "ci_high": 0.7, "ci_method": CLUSTER_T,
             "n": 100, "folds": 2, "classes": 2, "dropped": 0, "probe": "logistic", "gradient": 1e-7}
    stopped = ("tone", "L2", "sex")  # a probe that stopped at its iteration limit
    probes = [{**probe, "model": m, "layer": layer, "label": label, "accuracy": 0.5 + 0.1 * i,
               "iterations": 300 if (m, layer, label) == stopped else 17, "converged": (m, layer, label) != stopped}
              for m in ("pre", "tone") for i, layer in enumerate(LAYERS) for label in ("tone", "sex")]
    probes += [{**probe, "model": "classic", "layer": "f0_semitone_z", "label": "tone", "accuracy": 0.555,
                "ci_low": 0.5, "ci_high": 0.6, "classes": 5, "dropped": 3, "iterations": 12, "converged": True}]
    PROBES.frame(probes).to_csv(results / PROBES.file, index=False)
    NORMALIZATION.frame([{"model": "pre", "layer": "L0", "measure": "variance_share", "label": "sex", "value": 0.1,
                          "n": 9}]).to_csv(results / NORMALIZATION.file, index=False)
    ERASURE.frame([
        {"model": "tone", "layer": layer, "erased": erased, "probed": probed, "accuracy": 0.6, "chance": 0.3,
         "chance_method": CHANCE_METHOD, "ci_low": 0.5, "ci_high": 0.7, "ci_method": "cluster-robust t over folds",
         "ci_level": 0.95, "change": -0.0111, "change_ci_low": -0.03, "change_ci_high": 0.01,
         "balanced_accuracy": 0.6, "balanced_chance": 0.5, "balanced_ci_low": 0.5, "balanced_ci_high": 0.7,
         "balanced_change": -0.01, "balanced_change_ci_low": -0.03, "balanced_change_ci_high": 0.01,
         "above_chance": 0.3, "above_chance_ci_low": 0.2, "above_chance_ci_high": 0.4, "above_chance_ci_level": 0.9,
         "at_chance": False, "equivalence_margin": 0.05, "n": 90, "speakers": 6, "folds": 2, "sex_eraser": "sex",
         "roles": "eraser / probe-train / probe-test", "probe": "logistic", "iterations": 10, "converged": True,
         "gradient": 1e-7}
        for layer in LAYERS for erased in ("none", "sex", "tone") for probed in ("tone", "sex")]
    ).to_csv(results / ERASURE.file, index=False)
    comparison = {"key": "sex_suppressed", "name": "sex suppressed", "evidence": "probe", "a": "tone", "b": "pre",
                  "primary": True, "a_value": 0.51, "b_value": 0.9, "estimate": -0.39, "ci_low": -0.6123,
                  "ci_high": -0.2, "margin": -0.05, "direction": "<", "verdict": "holds"}
    straddle = {**comparison, "key": "tone_kept", "name": "tone: ts − tone", "evidence": "task accuracy",
                "estimate": -0.02, "ci_low": -0.0456, "ci_high": 0.01, "margin": -0.02, "direction": ">",
                "verdict": "inconclusive"}
    ClaimsFile.write(results, {"reference": "pre", "constants": {"change": 0.05}, "intervals": intervals_used(),
                               "claims": [
        {"claim": "C1", "statement": "Fine-tuning normalizes.", "criterion": "sex drops by 0.05", "holds": True,
         "status": "holds", "measured": [{"model": "tone", "comparisons": [comparison], "verdict": "holds"}]},
        {"claim": "C3", "statement": "Multitask keeps both.", "criterion": "within 0.02", "holds": None,
         "status": "inconclusive", "measured": [{"model": "ts", "comparisons": [straddle], "verdict": "inconclusive"}],
         "reason": "a confidence interval contains its margin"},
        {"claim": "C4", "statement": "Suppression not needed.", "criterion": "within 0.02", "holds": None,
         "status": "not testable", "measured": [], "reason": "needs a tone+sex model"}]})
    AnalysisRecord.write(results, {"settings": {"reference": "pre", "folds": 7, "umap": True},
                                   "features": str(root / "F"), "models": ["pre", "tone"],
                                   "figures": [f"figures/{name}.png" for name in (
                                       "layer_matrix_tone__svcca", "umap_tone", "normalization_per_layer",
                                       "erasure_per_layer")],
                                   "provenance": {"code_version": "0.1.0+test", "versions": {"numpy": "1"}}})
    _png(results / "figures" / "layer_matrix_tone__svcca.png", 0)
    _png(results / "figures" / "umap_tone.png", 1)
    _png(results / "figures" / "normalization_per_layer.png", 2)
    _png(results / "figures" / "erasure_per_layer.png", 3)
    RunContext(
        experiment={"name": "fake", "file": "exp.yaml", "config": {"name": "fake", "analyze": {"folds": 7}}},
        corpus=str(fake_corpus), features=str(root / "F"), results=str(results), reference="pre",
        models=[{"name": "pre", "kind": "pretrained", "trained_here": True, "folder": str(pre)},
                {"name": "tone", "kind": "finetuned", "trained_here": True, "folder": str(tone), "tasks": ["tone"],
                 "base": "pre"}],
        evaluations={"tone": str(root / "evaluation.json")},
        stages=[{"stage": "finetune", "name": "tone", "status": "ran", "seconds": 12.5, "key": "abc"}],
    ).save(_context(results).parent)
    return results


def _context(results):
    """Where `phonorm run` would have put the run context: the report stage's own folder."""
    (results.parent / "report-stage").mkdir(exist_ok=True)
    return results.parent / "report-stage" / "context.json"


def _images(text: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', text)


def test_report_has_every_section_and_only_embedded_figures(results, tmp_path):
    out = tmp_path / "report.html"
    message = _build(results, out=out, context=_context(results))
    text = out.read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text
    images = _images(text)
    # corpus counts, training curves, similarity (drawn here), matrix, probes (drawn here), shares, umap, erasure
    assert len(images) == 8, message
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(https?:|//|file:)', text), "no external resources"
    assert "<script" not in text and "<link" not in text
    # the numbers a reader looks for
    assert "0.812 (chance 0.250)" in text            # accuracy table, from the evaluation
    assert "0.555" in text and "f0_semitone_z" in text  # classic baseline
    # each claim's status as computed from claims.json: C1 holds (glance list and claims table), C4 not testable
    assert '<li><span class="status ok">C1: ' in text and 'class="status ok">holds</span>' in text
    assert '<li><span class="status na">C4: ' in text and "needs a tone+sex model" in text
    # claims: estimate, CI, margin and verdict of each comparison; inconclusive has its own colour
    assert "[-0.612, -0.200]" in text and "&lt; -0.05" in text and "[-0.046, +0.010]" in text
    assert 'class="status unsure">inconclusive' in text and "task accuracy" in text
    assert esc(intervals_used()["accuracies_and_differences"]) in text
    assert "floor 0.012" in text and "held out 0.457" in text  # similarity with its noise floor
    assert "-0.011 [-0.030, +0.010]" in text                   # erasure change with its CI
    assert "stopped at the iteration limit" in text
    # model and analysis settings in methods, each in its own table row
    assert "&quot;lr&quot;: 0.000321" in text and "<tr><td>folds</td><td>7</td></tr>" in text
    assert "12.5" in text                              # stage timing
    assert "PCA explained variance" in message         # the one missing figure is named ...
    assert text.count('class="missing"') == 1          # ... and shown as a note in the page


def test_report_without_context_or_figures_says_what_is_missing(results, tmp_path):
    bare = tmp_path / "R"
    bare.mkdir()
    for name in ("similarity.csv", "probes.csv", "normalization.csv", "claims.json"):
        shutil.copy(results / name, bare / name)
    (bare / "settings.json").write_text('{"settings": {"reference": "pre"}}')
    out = tmp_path / "bare.html"
    message = _build(bare, out=out)
    text = out.read_text(encoding="utf-8")
    assert "no prepared corpus found" in text and "training curves" in text
    assert "no evaluation of a fine-tuned model" in text
    assert len(_images(text)) == 2  # similarity and probes, drawn from the CSVs
    assert "skipped" in message


def test_report_shows_only_this_analysis_and_refuses_an_unfinished_one(results, tmp_path):
    shutil.copytree(results, tmp_path / "R")
    _png(tmp_path / "R" / "figures" / "umap_stale.png", 5)  # left by an earlier run, not in settings.json
    out = tmp_path / "r.html"
    _build(tmp_path / "R", out=out, context=_context(results))
    assert "umap_stale" not in out.read_text(encoding="utf-8")
    with pytest.raises(InputError, match="is a folder"):
        _build(tmp_path / "R", out=tmp_path, context=_context(results))
    (tmp_path / "R" / "settings.json").unlink()  # analysis killed before its last file
    with pytest.raises(InputError, match="did not finish"):
        _build(tmp_path / "R", out=out)


@pytest.mark.parametrize("damage", ["claims.json", "normalization.csv"])
def test_report_refuses_results_missing_a_table_or_the_claims(results, tmp_path, damage):
    """A results folder missing a file analyze writes is not built into a page with a note: refused, naming it."""
    shutil.copytree(results, tmp_path / "R")
    (tmp_path / "R" / damage).unlink()
    with pytest.raises(InputError, match=rf"{damage}: missing.*run phonorm analyze again"):
        _build(tmp_path / "R", out=tmp_path / "r.html", context=_context(results))
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(InputError, match="no analysis results"):
        _build(tmp_path, out=tmp_path / "r.html")
    with pytest.raises(InputError, match="no such results folder"):
        _build(tmp_path / "absent", out=tmp_path / "r.html")


# --------------------------------------------------------------------------- rendering
def test_every_figure_renders_in_headless_chromium(results, tmp_path):
    out = tmp_path / "report.html"
    _build(results, out=out, context=_context(results))
    images, broken = render_check(out)
    assert images == len(_images(out.read_text(encoding="utf-8"))) == 8
    assert broken == 0


def test_the_render_check_catches_a_broken_figure(results, tmp_path):
    out = tmp_path / "report.html"
    _build(results, out=out, context=_context(results))
    text = out.read_text(encoding="utf-8")
    first = _images(text)[0]
    out.write_text(text.replace(first, "data:image/png;base64,iVBORw0KGgoAAAAA"), encoding="utf-8")
    images, broken = render_check(out)
    assert images == 8 and broken == 1


def test_report_shows_the_speaker_caveat_and_words_the_split_as_it_was_made(results, fake_corpus, tmp_path):
    """Verdicts on few speakers carry analyze's caveat; a corpus split by utterance is not called held-out speakers."""
    shutil.copytree(results, tmp_path / "R")
    claims = json.loads((tmp_path / "R" / "claims.json").read_text())
    claims["caveat"] = "the analysed rows hold 1 female speaker and 1 male speaker: read every verdict as indicative only"
    (tmp_path / "R" / "claims.json").write_text(json.dumps(claims))
    corpus = tmp_path / "corpus"
    shutil.copytree(fake_corpus, corpus)
    labels = json.loads((corpus / "labels.json").read_text())
    labels["split"] = {"by": "utterance", "speaker_disjoint": False, "problems": []}
    (corpus / "labels.json").write_text(json.dumps(labels))
    utterances = pd.read_parquet(corpus / "utterances.parquet")
    utterances.loc[utterances.groupby("speaker").head(1).index, "split"] = "test"  # every speaker in test too
    utterances.to_parquet(corpus / "utterances.parquet", index=False)
    context = RunContext.load_file(_context(results)).model_copy(update={"corpus": str(corpus)})
    context_file = context.save(tmp_path / "stage")
    _build(tmp_path / "R", out=tmp_path / "r.html", context=context_file)
    text = tmp_path.joinpath("r.html").read_text(encoding="utf-8")
    assert text.count("<b>Caveat:</b> the analysed rows hold 1 female speaker") == 2  # at a glance and in the checks
    assert "held-out utterances of speakers also heard in training (the corpus was split by utterance" in text
    assert "on held-out speakers" not in text
    _build(results, out=tmp_path / "plain.html", context=_context(results))  # the speaker-disjoint fake corpus
    plain = tmp_path.joinpath("plain.html").read_text(encoding="utf-8")
    assert "Caveat:" not in plain and "on held-out speakers" in plain


def test_the_interactive_page_without_projections_keeps_its_curves_and_names_the_gap(results, tmp_path):
    out = tmp_path / "report.html"
    message = build_report(results, out=out, context=_context(results))
    text = out.read_text(encoding="utf-8")
    assert '<section id="explorer">' in text and "No explorer: no projections in the results" in text
    assert "linear CKA to the reference" in text and "probe accuracy: tone" in text  # the hover-able curves
    assert "explorer: no projections" in message
