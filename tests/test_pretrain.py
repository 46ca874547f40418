"""Self-supervised pre-training of a tiny model (HuBERT masked prediction or wav2vec 2.0's contrastive
objective): it learns, its targets are right, and its folder loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Wav2Vec2Model

from phonorm.errors import PhonormError
from phonorm.models.backbone import load_backbone
from phonorm.models.pretrain import pretrain

torch.set_num_threads(2)


@pytest.mark.slow
def test_pretraining_learns_on_held_out_audio_and_loads(fake_corpus, tmp_path):
    out = tmp_path / "pre"
    summary = pretrain(fake_corpus, out=out, objective="contrastive", size="tiny", steps=120, seed=0, batch_seconds=8.0,
                       lr=2e-3, eval_every=60)
    assert "contrastive accuracy" in summary
    log = pd.read_csv(out / "pretrain_log.csv")
    assert {"loss", "contrastive_loss", "diversity_loss", "perplexity", "held_out_contrastive_accuracy"} <= set(log.columns)
    train = log[log["step"] > 0]
    assert train["contrastive_loss"].head(15).mean() > train["contrastive_loss"].tail(15).mean()
    meta = json.loads((out / "phonorm.json").read_text())
    curve = meta["held_out_contrastive_accuracy"]
    assert [step for step, _ in curve] == [0, 60, 120]
    assert curve[-1][1] > curve[0][1] + 0.01, curve  # held-out contrastive accuracy rises
    model = Wav2Vec2Model.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    load_backbone(out)
    assert not (out / "checkpoint").exists()
    from phonorm.validate import validate

    assert validate(out).ok and validate(out).kind == "pretrained model folder", validate(out).text()
    assert "already" in pretrain(fake_corpus, out=out, objective="contrastive", size="tiny", steps=120, seed=0,
                                 batch_seconds=8.0, lr=2e-3)


def test_pretrain_rejects_unknown_size(fake_corpus, tmp_path):
    with pytest.raises(PhonormError, match="--size"):
        pretrain(fake_corpus, out=tmp_path / "x", size="huge", steps=1)


def test_kept_snapshots_load_and_do_not_change_the_run(fake_corpus, tmp_path):
    """keep_steps leaves a loadable model folder per step; saving them does not alter training (the
    final weights equal those of a run without snapshots), so a snapshot at step k is the same model
    whichever other steps are kept."""
    from safetensors.torch import load_file

    from phonorm.models.card import ModelCard
    from phonorm.models.pretrain import snapshot_folder

    common = dict(size="tiny", steps=6, seed=0, batch_seconds=4.0, lr=2e-3, eval_every=6)
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise equal runs need one thread (parallel CPU reductions may reorder sums)
    try:
        pretrain(fake_corpus, out=plain, **common)
        summary = pretrain(fake_corpus, out=kept, keep_steps=[3, 6], **common)
    finally:
        torch.set_num_threads(threads)
    assert "snapshots at steps 3, 6" in summary
    final = load_file(str(plain / "model.safetensors"))
    for step in (3, 6):
        folder = snapshot_folder(kept, step)
        card = ModelCard.load(folder)
        assert card.trained_steps == step and card.kind == "pretrained"
        assert [s for s, _ in card.held_out_accuracy][-1] == step
        load_backbone(folder)
    at_end = load_file(str(snapshot_folder(kept, 6) / "model.safetensors"))
    at_three = load_file(str(snapshot_folder(kept, 3) / "model.safetensors"))
    assert all(torch.equal(final[k], at_end[k]) for k in final), "snapshots changed the training run"
    assert any(not torch.equal(final[k], at_three[k]) for k in final)
    assert not list((kept / "snapshots").glob(".*")), "no temporary snapshot folder left"


def test_max_hours_caps_the_pretraining_audio(fake_corpus, tmp_path):
    from phonorm.corpus.store import PreparedCorpus
    from phonorm.models.card import ModelCard
    from phonorm.models.pretrain import _train_utterances

    prepared = PreparedCorpus(fake_corpus)
    total = prepared.utterances("train")["duration"].sum() / 3600
    half = _train_utterances(prepared, total / 2)
    assert 0 < half["duration"].sum() / 3600 <= total / 2
    assert set(half.utterance_id) < set(_train_utterances(prepared, total * 0.9).utterance_id), "nested subsets"
    pretrain(fake_corpus, out=tmp_path / "p", size="tiny", steps=2, batch_seconds=4.0, max_hours=total / 2)
    assert ModelCard.load(tmp_path / "p").train_hours == pytest.approx(half["duration"].sum() / 3600, abs=1e-3)
    with pytest.raises(Exception, match="max_hours"):
        _train_utterances(prepared, 1e-6)


# ---------------------------------------------------------------- the hubert objective
def _hubert_folder(corpus: Path, out: Path, steps: int, eval_every: int) -> str:
    """A hubert pre-training run of the tiny model on the fake corpus; its summary line."""
    from transformers import AutoModel, HubertModel

    from phonorm.models.card import ModelCard

    summary = pretrain(corpus, out=out, objective="hubert", size="tiny", steps=steps, seed=0,
                       batch_seconds=8.0, lr=3e-3, eval_every=eval_every, clusters=20, unmasked_weight=0.5)
    log = pd.read_csv(out / "pretrain_log.csv")
    assert {"masked_loss", "unmasked_loss", "masked_accuracy", "held_out_masked_accuracy"} <= set(log.columns)
    card = ModelCard.load(out)
    assert card.objective == "hubert" and card.model_type == "hubert" and card.held_out_metric == "masked_accuracy"
    assert [step for step, _ in card.held_out_accuracy] == list(range(0, steps + 1, eval_every))
    assert isinstance(AutoModel.from_pretrained(out), HubertModel)
    backbone = load_backbone(out)
    assert backbone.config.model_type == "hubert" and backbone.config.num_hidden_layers == 4
    assert not (out / "checkpoint").exists()
    from phonorm.validate import validate

    assert validate(out).ok, validate(out).text()
    return summary


def test_a_hubert_run_leaves_a_folder_that_loads_as_a_hubert_model(fake_corpus, tmp_path):
    """The folder, card and log of a short run (learning itself: the slow test below)."""
    out = tmp_path / "hubert"
    assert "masked accuracy" in _hubert_folder(fake_corpus, out, steps=4, eval_every=2)


@pytest.mark.slow
def test_hubert_loss_falls_and_the_folder_loads_as_a_hubert_model(fake_corpus, tmp_path):
    from phonorm.models.card import ModelCard

    out = tmp_path / "hubert"
    assert "masked accuracy" in _hubert_folder(fake_corpus, out, steps=60, eval_every=30)
    train = pd.read_csv(out / "pretrain_log.csv").query("step > 0")
    assert train["masked_loss"].head(10).mean() > train["masked_loss"].tail(10).mean() + 0.2
    curve = ModelCard.load(out).held_out_accuracy
    assert curve[-1][1] > curve[0][1] + 0.05, curve  # held-out masked prediction rises well above its start


def test_cluster_targets_align_with_the_model_frames_and_repeat_for_a_seed(fake_corpus):
    from phonorm.corpus.audio import load_audio
    from phonorm.corpus.store import PreparedCorpus
    from phonorm.frames import FrameGeometry
    from phonorm.models.backbone import make_config
    from phonorm.models.data import normalize
    from phonorm.models.targets import fit_targets, mfcc_frames

    prepared = PreparedCorpus(fake_corpus)
    geometry = FrameGeometry.from_config(make_config("tiny", model_type="hubert"))
    tables = {"train": prepared.utterances("train"), "held_out": prepared.utterances("dev")}

    def wave(row):
        return normalize(load_audio(row.audio_path))

    first = fit_targets(wave, tables, geometry, clusters=12, seed=3)
    again = fit_targets(wave, tables, geometry, clusters=12, seed=3)
    other = fit_targets(wave, tables, geometry, clusters=12, seed=4)
    assert np.array_equal(first.ids, again.ids) and np.allclose(first.centroids, again.centroids)
    assert not np.array_equal(first.ids, other.ids)
    for row in tables["held_out"].itertuples(index=False):  # one id per model frame: (samples - 400) // 320 + 1
        samples = len(load_audio(row.audio_path))
        assert len(first.of(row.utterance_id)) == (samples - 400) // 320 + 1 == geometry.num_frames(samples)
    assert first.usage()["used"] >= 10
    # features at the frame centres: a tone shifted by one hop (20 ms) shifts the MFCC rows by one
    t = np.arange(16000) / 16000.0
    sweep = np.sin(2 * np.pi * (200 + 1500 * t) * t).astype(np.float32)
    shifted = np.concatenate([np.zeros(320, np.float32), sweep])
    a = mfcc_frames(sweep, geometry, geometry.num_frames(len(sweep)))
    b = mfcc_frames(shifted, geometry, geometry.num_frames(len(shifted)))
    assert a.shape == (49, 39)
    assert np.abs(a[10:40, :13] - b[11:41, :13]).mean() < 0.1 * np.abs(a[10:40, :13] - b[10:40, :13]).mean()


def test_hubert_masks_are_spans_over_about_half_the_frames():
    from phonorm.models.hubert import span_mask

    np.random.seed(0)
    mask = span_mask(64, 200).numpy()
    assert 0.40 < mask.mean() < 0.60  # mask_prob 0.65 with spans of 10 that overlap, as in fairseq
    starts = mask[:, 1:] & ~mask[:, :-1]
    assert (mask.sum(1) / np.maximum(starts.sum(1) + mask[:, 0], 1)).mean() >= 10  # runs of at least one span


def test_hubert_settings_check_iteration_two_fields():
    from phonorm.settings import PretrainSettings

    with pytest.raises(PhonormError, match="--targets-from"):
        PretrainSettings.parse({"targets_from": "somewhere"})
    with pytest.raises(PhonormError, match="objective hubert"):
        PretrainSettings.parse({"objective": "contrastive", "targets_from": "x", "targets_layer": 2})
    assert PretrainSettings().objective == "hubert"
