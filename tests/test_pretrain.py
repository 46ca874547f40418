"""Self-supervised pre-training of a tiny wav2vec 2.0: it learns, and its folder loads."""

from __future__ import annotations

import json

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
    summary = pretrain(fake_corpus, out=out, size="tiny", steps=120, seed=0, batch_seconds=8.0, lr=2e-3, eval_every=60)
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
    assert "already" in pretrain(fake_corpus, out=out, size="tiny", steps=120, seed=0, batch_seconds=8.0, lr=2e-3)


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
        assert [s for s, _ in card.held_out_contrastive_accuracy][-1] == step
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
