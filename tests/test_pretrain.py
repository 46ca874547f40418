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
