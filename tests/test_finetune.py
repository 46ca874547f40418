"""Fine-tuning on the fake corpus with tiny models: learning, multitask, resume, batching, loss."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, Wav2Vec2Model

from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import PhonormError
from phonorm.frames import IGNORE_INDEX, FrameGeometry
from phonorm.models import finetune as finetune_module
from phonorm.models.backbone import load_backbone, make_config
from phonorm.models.data import (
    Collator,
    FrameDataset,
    LengthBucketSampler,
    inference_batches,
    length_bucketed_batches,
    random_batches,
    wasted_fraction,
)
from phonorm.models.finetune import FinetuneSettings, finetune
from phonorm.models.heads import MultitaskHeads, load_finetuned, multitask_loss, predict_tasks

torch.set_num_threads(2)


def _tiny(folder, stable_layer_norm=False):
    torch.manual_seed(0)
    Wav2Vec2Model(make_config("tiny", stable_layer_norm=stable_layer_norm)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model):
    return tiny_model(0)


def _settings(**kw):
    base = dict(tasks=["sex"], epochs=3, lr=1e-3, batch_seconds=8.0, eval_every=7, mixed_precision="auto", seed=0)
    base.update(kw)
    return FinetuneSettings(**base)


@pytest.mark.slow
def test_finetune_learns_sex_and_writes_the_model_folder(fake_corpus, tiny_dir, tmp_path):
    out = tmp_path / "sex"
    summary = finetune(fake_corpus, model=tiny_dir, out=out, settings=_settings(epochs=8))
    assert "dev frame accuracy" in summary
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["step"]) == list(range(1, len(log) + 1))
    assert log["loss"].head(5).mean() > log["loss"].tail(5).mean()
    metrics = json.loads((out / "metrics.json").read_text())
    dev = metrics["dev"]["sex"]
    assert dev["accuracy"] > dev["chance"] + 0.2, dev
    assert metrics["best_dev"]["sex"] == pytest.approx(max(h["sex"] for h in metrics["dev_history"]))
    # folder layout: HF backbone at the top level, heads, label maps, no leftovers
    assert isinstance(AutoModel.from_pretrained(out), Wav2Vec2Model)
    load_backbone(out)
    meta = json.loads((out / "phonorm.json").read_text())
    assert meta["complete"] and meta["tasks"] == ["sex"] and meta["label_maps"]["sex"] == ["F", "M"]
    from phonorm.validate import validate

    assert validate(out).ok and validate(out).kind == "finetuned model folder", validate(out).text()
    assert meta["settings"]["seed"] == 0 and "code_version" in meta["provenance"]
    assert not (out / "checkpoint").exists() and not (out / "best").exists()
    # the feature encoder stayed frozen
    base, tuned = load_backbone(tiny_dir), load_backbone(out)
    assert torch.equal(base.feature_extractor.conv_layers[0].conv.weight, tuned.feature_extractor.conv_layers[0].conv.weight)
    assert not torch.equal(base.encoder.layers[-1].feed_forward.output_dense.weight,
                           tuned.encoder.layers[-1].feed_forward.output_dense.weight)
    # a finished folder is not trained again, and not overwritten with other settings
    assert "already" in finetune(fake_corpus, model=tiny_dir, out=out, settings=_settings(epochs=8))
    with pytest.raises(PhonormError):
        finetune(fake_corpus, model=tiny_dir, out=out, settings=_settings(epochs=2))


def test_multitask_heads_and_weighted_loss(fake_corpus, tiny_dir, tmp_path):
    out = tmp_path / "tone_sex"
    finetune(fake_corpus, model=tiny_dir, out=out,
             settings=_settings(tasks=["tone", "sex"], loss_weights={"sex": 0.5}, max_steps=6, eval_every=3))
    backbone, heads, meta = load_finetuned(out)
    assert meta["tasks"] == ["tone", "sex"] and meta["loss_weights"] == {"tone": 1.0, "sex": 0.5}
    assert set(heads.heads) == {"tone", "sex"} and heads.heads["tone"].out_features == 5
    log = pd.read_csv(out / "train_log.csv")
    assert len(log) == 6
    np.testing.assert_allclose(log["loss"], log["loss_tone"] + 0.5 * log["loss_sex"], rtol=1e-5)
    assert {"dev_acc_tone", "dev_acc_sex"} <= set(log.columns)


def test_bad_settings_name_the_option():
    from phonorm.cli_settings import settings_from_options

    with pytest.raises(PhonormError, match="--tasks"):
        settings_from_options(FinetuneSettings, {"tasks": "pitch"})
    with pytest.raises(PhonormError, match="--loss-weights.*not among the tasks"):
        settings_from_options(FinetuneSettings, {"tasks": "sex", "loss_weights": "tone=1"})
    with pytest.raises(PhonormError, match="--lr"):
        settings_from_options(FinetuneSettings, {"tasks": "sex", "lr": -1.0})
    assert settings_from_options(FinetuneSettings, {"tasks": "tone,sex", "loss_weights": "sex=0.5"}).weight("sex") == 0.5


def test_finetune_refuses_a_model_folder_of_another_corpus(fake_corpus, tiny_dir, tmp_path):
    out = tmp_path / "sex"
    settings = _settings(max_steps=2, eval_every=2)
    finetune(fake_corpus, model=tiny_dir, out=out, settings=settings)
    assert "already" in finetune(fake_corpus, model=tiny_dir, out=out, settings=settings)
    other = tmp_path / "other_corpus"
    shutil.copytree(fake_corpus, other)
    labels = json.loads((other / "labels.json").read_text())
    labels["provenance"] = {"note": "another corpus"}  # other bytes, same labels: another fingerprint
    (other / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(PhonormError, match="other settings, base model or corpus"):
        finetune(other, model=tiny_dir, out=out, settings=settings)


@pytest.mark.slow
def test_resume_after_interruption_completes_the_same_run(fake_corpus, tiny_dir, tmp_path, monkeypatch):
    settings = _settings(tasks=["tone", "sex"], max_steps=12, eval_every=4)
    full = tmp_path / "full"
    finetune(fake_corpus, model=tiny_dir, out=full, settings=settings)

    real_loss, calls = finetune_module.multitask_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # during step 7: the last checkpoint is at step 4
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(finetune_module, "multitask_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(fake_corpus, model=tiny_dir, out=out, settings=settings)
    assert (out / "checkpoint" / "trainer_state.json").is_file() and not (out / "phonorm.json").exists()
    # the checkpoint needs no unpickling: safetensors, tensors-only optimizer state, JSON
    assert not [p for p in (out / "checkpoint").rglob("*") if p.suffix in (".pkl", ".bin")]
    torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)
    monkeypatch.setattr(finetune_module, "multitask_loss", real_loss)
    finetune(fake_corpus, model=tiny_dir, out=out, settings=settings)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == 4
    log, ref = pd.read_csv(out / "train_log.csv"), pd.read_csv(full / "train_log.csv")
    assert list(log["step"]) == list(range(1, 13))
    # same batches, crops, dropout and optimizer state after resuming: the same losses
    np.testing.assert_allclose(log["loss"], ref["loss"], rtol=1e-4)


def test_layer_norm_model_gets_padding_and_mask(fake_corpus, tmp_path):
    model_dir = _tiny(tmp_path / "ln", stable_layer_norm=True)
    out = tmp_path / "ln_sex"
    finetune(fake_corpus, model=model_dir, out=out, settings=_settings(max_steps=4, eval_every=4))
    meta = json.loads((out / "phonorm.json").read_text())
    assert meta["group_norm"] is False and "attention mask" in meta["batching"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["train"]["padded_fraction"] < 0.25


def test_padded_batches_of_layer_norm_models_match_single_utterances(fake_corpus, tmp_path):
    torch.manual_seed(0)
    backbone = Wav2Vec2Model(make_config("tiny", stable_layer_norm=True)).eval()
    heads = MultitaskHeads(backbone.config.hidden_size, {"tone": 5}).eval()
    corpus = PreparedCorpus(fake_corpus)
    dataset = FrameDataset(corpus, "dev", ["tone"], FrameGeometry.from_config(backbone.config))
    batches = list(inference_batches(dataset, group_norm=False, batch_seconds=30.0))
    examples, inputs = max(batches, key=lambda b: len(b[0]))
    assert len(examples) > 1 and "attention_mask" in inputs
    batched = predict_tasks(backbone, heads, inputs)["tone"]
    for row, e in enumerate(examples):
        with torch.no_grad():
            hidden = backbone(torch.from_numpy(e.wave[None])).last_hidden_state
        single = heads(hidden)["tone"][0].argmax(-1)
        agree = (batched[row, : len(single)] == single).float().mean()
        assert agree > 0.97


def test_group_norm_inference_never_pads(fake_corpus):
    corpus = PreparedCorpus(fake_corpus)
    dataset = FrameDataset(corpus, "test", ["tone"], FrameGeometry())
    for examples, inputs in inference_batches(dataset, group_norm=True):
        assert "attention_mask" not in inputs
        assert all(len(e.wave) == inputs["input_values"].shape[1] for e in examples)


def test_crop_batches_keep_labels_on_their_frames(fake_corpus):
    """A cropped row at offset k frames carries labels k.. of the full utterance, and the crop's
    frame count is the geometry's for the crop length."""
    corpus = PreparedCorpus(fake_corpus)
    geometry = FrameGeometry()
    dataset = FrameDataset(corpus, "train", ["phone"], geometry)
    examples = [dataset[i] for i in range(3)]
    np.random.seed(3)
    batch = Collator(geometry, ["phone"], crop=True)(examples)
    length = min(len(e.wave) for e in examples)
    assert batch["input_values"].shape == (3, length)
    assert batch["labels"]["phone"].shape == (3, geometry.num_frames(length))
    for row, e in enumerate(examples):
        wave = batch["input_values"][row].numpy()
        offset = next(k for k in range(len(e.wave) // geometry.hop + 1)
                      if np.array_equal(e.wave[k * geometry.hop: k * geometry.hop + length], wave))
        np.testing.assert_array_equal(batch["labels"]["phone"][row].numpy(),
                                      e.labels["phone"][offset: offset + geometry.num_frames(length)])


def test_length_bucketing_covers_every_utterance_and_pads_less_than_random(fake_corpus):
    durations = PreparedCorpus(fake_corpus).utterances()["duration"].to_numpy()
    sampler = LengthBucketSampler(durations, 6.0, seed=1)
    seen = sorted(i for batch in sampler for i in batch)
    assert seen == list(range(len(durations)))
    assert all(len(b) * durations[b].max() <= 6.0 or len(b) == 1 for b in map(np.array, sampler.batches))
    halves = [LengthBucketSampler(durations, 6.0, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    union = {i for s in halves for b in s for i in b}
    assert union == set(range(len(durations))) and len(halves[0]) == len(halves[1])
    buckets = length_bucketed_batches(durations, 6.0)
    shuffled = random_batches(durations, [len(b) for b in buckets], seed=0)
    assert wasted_fraction(durations, buckets)["padding"] < wasted_fraction(durations, shuffled)["padding"]


def test_ignored_frames_never_count_in_the_loss():
    torch.manual_seed(0)
    logits = {"tone": torch.randn(2, 10, 5), "sex": torch.randn(2, 10, 2)}
    tone = torch.randint(0, 5, (2, 10))
    tone[:, 6:] = IGNORE_INDEX
    sex = torch.full((2, 10), IGNORE_INDEX)
    spoiled = {k: v.clone() for k, v in logits.items()}
    spoiled["tone"][:, 6:] = 1e4 * torch.randn(2, 4, 5)  # anything on ignored frames
    loss, parts = multitask_loss(logits, {"tone": tone, "sex": sex}, {"tone": 1.0, "sex": 1.0})
    loss2, _ = multitask_loss(spoiled, {"tone": tone, "sex": sex}, {"tone": 1.0, "sex": 1.0})
    expected = torch.nn.functional.cross_entropy(logits["tone"][:, :6].reshape(-1, 5), tone[:, :6].reshape(-1))
    assert float(loss) == pytest.approx(float(expected)) == pytest.approx(float(loss2))
    assert parts["sex"] == 0.0 and np.isfinite(float(loss))


@pytest.mark.parametrize("task, blank", [("phone", {"phone": ""}), ("tone", {"tone": 0})])
def test_a_task_the_corpus_has_no_labels_for_is_refused_before_any_model_loads(task, blank, fake_corpus, tmp_path):
    """`finetune --tasks phone` on a corpus prepared without phone labels: one line naming labels.json
    and what to do, not a RuntimeError from a head with no classes."""
    corpus = tmp_path / "corpus"
    shutil.copytree(fake_corpus, corpus)
    segments = pd.read_parquet(corpus / "segments.parquet").assign(**blank)
    segments.to_parquet(corpus / "segments.parquet", index=False)
    labels = json.loads((corpus / "labels.json").read_text())
    labels["tasks"][task] = [""] if task == "phone" else []
    (corpus / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(PhonormError, match=rf"labels.json: task '{task}': this corpus has 0 {task} labels, so there "
                                           rf"is nothing to learn; fine-tune without --tasks {task}"):
        finetune(corpus, model="/no/model/loaded", out=tmp_path / "m", settings=_settings(tasks=[task]))
    labels["tasks"][task] = ["a", "b"]  # labels listed, none on a train segment
    (corpus / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(PhonormError, match="2 .* labels, none on a segment of the train split"):
        finetune(corpus, model="/no/model/loaded", out=tmp_path / "m", settings=_settings(tasks=[task]))


def test_a_base_model_with_nan_weights_is_refused_by_name(fake_corpus, tmp_path):
    """A diverged or damaged model (NaN in its weights) is refused when it is loaded: fine-tuning,
    extraction and evaluation all load through `load_backbone`; nothing is written."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(make_config("tiny"))
    with torch.no_grad():
        model.encoder.layers[1].attention.q_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan_base")
    with pytest.raises(PhonormError, match=r"nan_base.*1 weight tensor hold NaN or Inf \(first: encoder.layers.1"):
        finetune(fake_corpus, model=str(tmp_path / "nan_base"), out=tmp_path / "ft", settings=_settings(max_steps=2))
    assert not (tmp_path / "ft" / "phonorm.json").exists()


def test_a_loss_that_stops_being_finite_stops_training(fake_corpus, tiny_dir, tmp_path, monkeypatch):
    """A NaN loss from finite weights (a learning rate far too high, say): an error naming the run and
    the step after the first such step, no finished model."""
    real_loss = finetune_module.multitask_loss

    def nan_at_step_three(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        nan_at_step_three.calls += 1
        return (loss * float("nan"), parts) if nan_at_step_three.calls >= 3 else (loss, parts)

    nan_at_step_three.calls = 0
    monkeypatch.setattr(finetune_module, "multitask_loss", nan_at_step_three)
    out = tmp_path / "diverged"
    with pytest.raises(PhonormError, match=r"diverged.*loss is nan at step 3, not finite"):
        finetune(fake_corpus, model=tiny_dir, out=out, settings=_settings(max_steps=6, eval_every=10))
    assert not (out / "phonorm.json").exists() and not (out / "model.safetensors").exists()


# ---------------------------------------------------------------- the frozen front end, computed once
@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_precomputed_front_end_output_gives_the_same_model_output(fake_corpus, stable_layer_norm):
    """The backbone fed its own front end's output (what the cache holds) computes exactly what it
    computes from the waveform; batches of cached features are cropped (group norm) or padded with a
    mask (layer norm) frame for frame as the waveforms are."""
    from phonorm.models.frontend import accept_features, front_end_features, with_features

    torch.manual_seed(0)
    backbone = Wav2Vec2Model(make_config("tiny", stable_layer_norm=stable_layer_norm)).eval()
    geometry = FrameGeometry.from_config(backbone.config)
    dataset = FrameDataset(PreparedCorpus(fake_corpus), "train", ["tone"], geometry)
    wave = torch.from_numpy(dataset[0].wave[None])
    with torch.no_grad():
        expected = backbone(wave).last_hidden_state
        features, said = front_end_features(backbone, dataset, "cpu", limit_gb=1.0)
        accept_features(backbone)
        assert torch.equal(backbone(torch.from_numpy(features[dataset[0].utterance_id])[None]).last_hidden_state,
                           expected)
        assert torch.equal(backbone(wave).last_hidden_state, expected)  # a waveform still goes through the convolutions
    assert said.startswith("used") and len(features) == len(dataset)
    too_big, why = front_end_features(backbone, dataset, "cpu", limit_gb=1e-9)
    assert too_big is None and "over front_end_cache_gb" in why

    plain = [dataset[i] for i in range(4)]
    dataset.transform = with_features(features)
    cached = [dataset[i] for i in range(4)]
    collate = Collator(geometry, ["tone"], crop=not stable_layer_norm)
    np.random.seed(5)
    from_waves = collate(plain)
    np.random.seed(5)
    from_features = collate(cached)
    assert torch.equal(from_waves["labels"]["tone"], from_features["labels"]["tone"])
    assert from_features["input_values"].shape[:2] == (4, backbone.config.conv_dim[-1])
    with torch.no_grad():
        a = backbone(from_waves["input_values"], attention_mask=from_waves.get("attention_mask")).last_hidden_state
        b = backbone(from_features["input_values"], attention_mask=from_features.get("attention_mask")).last_hidden_state
    if stable_layer_norm:  # padded: every real frame as computed from the padded waveforms
        for row, e in enumerate(plain):
            n = geometry.num_frames(len(e.wave))
            torch.testing.assert_close(a[row, :n], b[row, :n], atol=1e-4, rtol=1e-4)
    else:  # cropped: group norm sees the crop or the whole utterance; the same frames, nearly the same values
        assert a.shape == b.shape and torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95


def test_finetune_says_whether_it_cached_the_front_end(fake_corpus, tiny_dir, tmp_path):
    runs = {}
    for name, gb in (("cached", 1.0), ("recomputed", 0.0)):
        finetune(fake_corpus, model=tiny_dir, out=tmp_path / name, settings=_settings(max_steps=4, eval_every=4,
                                                                                      front_end_cache_gb=gb))
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["train"]["front_end_cache"]
    assert runs["cached"].startswith("used (") and runs["recomputed"].startswith("off")
    finetune(fake_corpus, model=tiny_dir, out=tmp_path / "trained", settings=_settings(
        max_steps=2, eval_every=2, freeze_feature_encoder=False))
    assert "trained" in json.loads((tmp_path / "trained" / "metrics.json").read_text())["train"]["front_end_cache"]
