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

    from phonorm.models.pretrain import snapshot_folder
    from phonorm.records.card import ModelCard

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
    from phonorm.models.pretrain import _train_utterances
    from phonorm.records.card import ModelCard

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

    from phonorm.records.card import ModelCard

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
    from phonorm.records.card import ModelCard

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


def _glide(seconds: float, f0_start: float, f0_end: float, silence: float = 0.3) -> np.ndarray:
    """A harmonic complex whose F0 glides linearly (Hz), after `silence` seconds of silence; 16 kHz."""
    n = int(seconds * 16000)
    f0 = np.linspace(f0_start, f0_end, n)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
    return np.concatenate([np.zeros(int(silence * 16000)), 0.3 * voiced]).astype(np.float32)


def test_pitch_targets_follow_f0_at_the_model_frames():
    """Each model frame gets the F0 at its centre: semitones re 100 Hz, the same relative to the
    utterance's voiced mean, the slope and voicing; a shift by one hop shifts the rows by one."""
    from phonorm.frames import FrameGeometry
    from phonorm.models.backbone import make_config
    from phonorm.models.targets import pitch_frames

    geometry = FrameGeometry.from_config(make_config("tiny", model_type="hubert"))
    wave = _glide(1.0, 150.0, 300.0)  # 0.3 s silence, then 1 s rising one octave
    n_frames = geometry.num_frames(len(wave))
    track = pitch_frames(wave, geometry, n_frames)
    assert track.shape == (n_frames, 4) and track.dtype == np.float32
    times = geometry.frame_times(n_frames)
    inside = (times > 0.40) & (times < 1.20)
    expected = 12 * np.log2((150.0 + 150.0 * (times[inside] - 0.3)) / 100.0)
    assert np.abs(track[inside, 0] - expected).max() < 0.5  # semitones
    assert np.all(track[inside, 3] == 1) and np.all(track[times < 0.25, 3] == 0)
    assert np.allclose(track[:, 1] - track[:, 0], track[inside, 1][0] - track[inside, 0][0], atol=1e-4)
    assert abs(track[inside, 1].mean()) < 1.5  # relative to the utterance's own mean
    assert np.all(track[inside, 2] > 5) and np.all(track[inside, 2] < 20)  # 12 semitones per second
    falling = pitch_frames(_glide(1.0, 300.0, 150.0), geometry, n_frames)
    assert np.all(falling[inside, 2] < -5)
    shifted = pitch_frames(np.concatenate([np.zeros(320, np.float32), wave]), geometry, n_frames + 1)
    assert np.abs(shifted[1:][inside, 0] - track[inside, 0]).max() < 0.2
    silent = pitch_frames(np.zeros(8000, np.float32), geometry, geometry.num_frames(8000))
    assert not silent.any()  # no voiced frame: zeros, no NaN


def test_pitch_cluster_targets_repeat_for_a_seed_and_separate_registers(fake_corpus):
    """The pitch stream's ids: one per model frame, the same for a seed, and the clusters of female
    and male voices differ (the register is kept, unlike MFCC's)."""
    from phonorm.corpus.audio import load_audio
    from phonorm.corpus.store import PreparedCorpus
    from phonorm.frames import FrameGeometry
    from phonorm.models.backbone import make_config
    from phonorm.models.data import normalize
    from phonorm.models.targets import fit_targets, pitch_frames

    prepared = PreparedCorpus(fake_corpus)
    geometry = FrameGeometry.from_config(make_config("tiny", model_type="hubert"))
    tables = {"train": prepared.utterances("train"), "held_out": prepared.utterances("dev")}

    def wave(row):
        return normalize(load_audio(row.audio_path))

    def fit(seed):
        return fit_targets(wave, tables, geometry, clusters=16, seed=seed, source="pitch",
                           features=lambda w, n: pitch_frames(w, geometry, n))

    first, again = fit(3), fit(3)
    assert first.source == "pitch" and np.array_equal(first.ids, again.ids)
    for row in tables["held_out"].itertuples(index=False):
        assert len(first.of(row.utterance_id)) == geometry.num_frames(len(load_audio(row.audio_path)))
    by_sex = {sex: np.concatenate([first.of(u) for u in table.utterance_id])
              for sex, table in tables["train"].groupby("sex")}
    shares = {sex: np.bincount(ids, minlength=16) / len(ids) for sex, ids in by_sex.items()}
    assert 0.5 * np.abs(shares["F"] - shares["M"]).sum() > 0.3  # total variation distance


def test_a_short_pretraining_lowers_the_loss_of_each_target_stream(fake_corpus, tmp_path):
    """MFCC units and pitch, each with its head: both training losses fall within a short run, both
    held-out accuracies are logged, and the card records the pitch targets."""
    from phonorm.records.card import ModelCard

    out = tmp_path / "ensemble"
    pretrain(fake_corpus, out=out, objective="hubert", size="tiny", steps=30, seed=0, batch_seconds=4.0, lr=3e-3,
             eval_every=30, clusters=12, pitch_clusters=8, unmasked_weight=0.5)
    log = pd.read_csv(out / "pretrain_log.csv")
    train = log.query("step > 0")
    for stream in ("masked_loss", "pitch_masked_loss"):
        assert train[stream].head(5).mean() > train[stream].tail(5).mean() + 0.1, (stream, train[stream].tolist())
    assert {"held_out_masked_accuracy", "held_out_pitch_masked_accuracy"} <= set(log.columns)
    assert (out / "targets.npz").is_file() and (out / "targets-pitch.npz").is_file()
    card = ModelCard.load(out)
    assert card.settings["pitch_clusters"] == 8 and "F0" in card.settings["pitch_targets"]


def test_hubert_masks_are_spans_over_about_half_the_frames():
    from phonorm.models.objectives.hubert import span_mask

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
    with pytest.raises(PhonormError, match="objective hubert"):
        PretrainSettings.parse({"objective": "contrastive", "pitch_clusters": 20})
    with pytest.raises(PhonormError, match="--feature-grad-mult"):
        PretrainSettings.parse({"feature_grad_mult": 0})


def test_the_pitch_stream_weight_scales_only_its_own_loss():
    """`--pitch-weight W`: the pitch stream's masked and unmasked losses count W times, the MFCC stream's once."""
    import torch

    from phonorm.models.objectives import hubert

    torch.manual_seed(0)
    logits = {hubert.TARGET: torch.randn(2, 10, 5), hubert.PITCH_TARGET: torch.randn(2, 10, 4)}
    targets = {hubert.TARGET: torch.randint(0, 5, (2, 10)), hubert.PITCH_TARGET: torch.randint(0, 4, (2, 10))}
    mask = torch.rand(2, 10) < 0.5
    one, row = hubert.masked_prediction_loss(logits, targets, mask, 0.5)
    three, _ = hubert.masked_prediction_loss(logits, targets, mask, 0.5, {hubert.PITCH_TARGET: 3.0})
    pitch = row["pitch_masked_loss"] + 0.5 * row["pitch_unmasked_loss"]
    assert float(three - one) == pytest.approx(2 * pitch, rel=1e-5)


def test_every_objective_the_settings_name_is_registered_and_nothing_else():
    """One protocol, one registry: the names `PretrainSettings.objective` accepts are `OBJECTIVES`' keys."""
    from typing import get_args

    from phonorm.models.objectives import OBJECTIVES
    from phonorm.settings import PretrainObjective

    assert sorted(OBJECTIVES) == sorted(get_args(PretrainObjective))
    for name, objective in OBJECTIVES.items():
        assert objective.name == name and objective.held_out_metric and objective.model_type in ("hubert", "wav2vec2")
        assert {"mask_prob", "mask_length"} <= set(objective.recipe())
