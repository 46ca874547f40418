"""Evaluation of a fine-tuned model: keys, chance level, ignored frames, syllable voting."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError
from phonorm.frames import IGNORE_INDEX, FrameGeometry, frame_labels
from phonorm.models.evaluate import Predictions, evaluate, format_evaluation, score_predictions
from phonorm.models.finetune import FinetuneSettings, finetune
from phonorm.settings.evaluate import EvaluateSettings

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model_dir(fake_corpus, tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("eval_models")
    settings = FinetuneSettings(tasks=["tone", "phone", "sex"], max_steps=4, eval_every=4, lr=1e-3, batch_seconds=8.0)
    finetune(fake_corpus, model=tiny_model(0), out=root / "m", settings=settings)
    return root / "m"


def _reference_labels(fake_corpus, split):
    """Frame labels of the split computed straight from frames.frame_labels (not through evaluate)."""
    corpus = PreparedCorpus(fake_corpus)
    geometry = FrameGeometry()
    grids = {t: [] for t in ("tone", "phone", "sex")}
    sexes = []
    for _, row in corpus.utterances(split).iterrows():
        from phonorm.corpus.audio import load_audio

        n = geometry.num_frames(len(load_audio(row["audio_path"])))
        labels = frame_labels(corpus.segments_of(row["utterance_id"]), row, n, corpus.label_maps, geometry)
        for t in grids:
            grids[t].append(labels[t])
        sexes.append(np.full(n, row["sex"]))
    return {t: np.concatenate(v) for t, v in grids.items()}, np.concatenate(sexes)


def test_evaluate_keys_chance_and_scored_frames(fake_corpus, model_dir):
    result = evaluate(fake_corpus, model_dir=model_dir, settings=EvaluateSettings(split="test"))
    assert list(result) == ["tone", "phone", "sex"]
    truth, sexes = _reference_labels(fake_corpus, "test")
    for task, entry in result.items():
        assert {"accuracy", "macro_f1", "chance", "confusion", "labels", "by_sex", "n_frames"} <= set(entry)
        scored = truth[task][truth[task] != IGNORE_INDEX]
        # ignored frames are never scored: exactly the labelled frames are counted
        assert entry["n_frames"] == len(scored) == int(np.sum(entry["confusion"]))
        label, count = Counter(scored.tolist()).most_common(1)[0]
        assert entry["chance"] == pytest.approx(count / len(scored))
        assert entry["majority_label"] == entry["labels"][label]
        assert np.trace(entry["confusion"]) / len(scored) == pytest.approx(entry["accuracy"])
        assert 0 <= entry["macro_f1"] <= 1
        assert set(entry["by_sex"]) == {"F", "M"}
        assert sum(v["n_frames"] for v in entry["by_sex"].values()) == entry["n_frames"]
        female = truth[task][(sexes == "F") & (truth[task] != IGNORE_INDEX)]
        assert entry["by_sex"]["F"]["n_frames"] == len(female)
    segments = PreparedCorpus(fake_corpus).segments
    test_utts = set(PreparedCorpus(fake_corpus).utterances("test")["utterance_id"])
    finals = segments[segments["utterance_id"].isin(test_utts) & segments["is_final"]]
    assert result["tone"]["syllable"]["n_syllables"] == len(finals)  # every final has frames here
    assert "syllable" not in result["sex"]
    text = format_evaluation(result)
    assert "tone" in text and "syllables" in text


def test_evaluate_cli_json(fake_corpus, model_dir):
    run = subprocess.run([sys.executable, "-m", "phonorm.cli", "evaluate", str(fake_corpus), "--model", str(model_dir),
                          "--split", "dev", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result) == {"tone", "phone", "sex"}
    assert all({"accuracy", "macro_f1", "chance"} <= set(v) for v in result.values())


def test_evaluate_rejects_a_folder_that_is_not_a_model(fake_corpus, tmp_path):
    with pytest.raises(InputError, match="phonorm.json"):
        evaluate(fake_corpus, model_dir=tmp_path)


def test_scores_and_syllable_majority_vote_by_hand():
    p = Predictions(["tone"])
    # one utterance, two finals (segments 0 and 2) and an initial without tone (segment 1)
    labels = {"tone": np.array([0, 0, 0, IGNORE_INDEX, IGNORE_INDEX, 3, 3, 3, 3])}
    pred = {"tone": np.array([0, 1, 0, 4, 4, 3, 2, 2, 3])}
    segment = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    p.add(0, "F", labels, pred, segment)
    scores = score_predictions(p, {"tone": ["1", "2", "3", "4", "5"]})["tone"]
    assert scores["n_frames"] == 7
    assert scores["accuracy"] == pytest.approx(4 / 7)
    assert scores["chance"] == pytest.approx(4 / 7) and scores["majority_label"] == "4"
    # votes: final 0 → 0 (2 of 3), final 2 → tie 2 vs 3 → lowest id 2 (wrong)
    assert scores["syllable"]["n_syllables"] == 2
    assert scores["syllable"]["accuracy"] == pytest.approx(0.5)
    assert scores["confusion"][0] == [2, 1, 0, 0, 0]


def test_per_speaker_counts_for_speaker_bootstraps():
    p = Predictions(["sex"])
    p.add(0, "F", {"sex": np.array([0, 0, 0, IGNORE_INDEX])}, {"sex": np.array([0, 1, 0, 1])}, np.zeros(4, int),
          speaker="F01")
    p.add(1, "M", {"sex": np.array([1, 1])}, {"sex": np.array([1, 1])}, np.zeros(2, int), speaker="M02")
    p.add(2, "F", {"sex": np.array([0])}, {"sex": np.array([1])}, np.zeros(1, int), speaker="F01")
    scores = score_predictions(p, {"sex": ["F", "M"]})["sex"]
    assert scores["by_speaker"] == {"F01": {"correct": 2, "n_frames": 4}, "M02": {"correct": 2, "n_frames": 2}}
    assert sum(v["correct"] for v in scores["by_speaker"].values()) / scores["n_frames"] == scores["accuracy"]
    # without speakers (older callers) there are no per-speaker counts rather than one anonymous speaker
    q = Predictions(["sex"])
    q.add(0, "F", {"sex": np.array([0])}, {"sex": np.array([0])}, np.zeros(1, int))
    assert "by_speaker" not in score_predictions(q, {"sex": ["F", "M"]})["sex"]


def test_a_corpus_prepared_again_after_fine_tuning_is_refused(fake_corpus, model_dir, tmp_path):
    """The model's own corpus folder, prepared again with other splits: evaluate names both
    fingerprints instead of scoring the model on what may be its training speakers; the unchanged
    corpus and another corpus folder (cross-corpus) are evaluated as before."""
    import shutil

    import pandas as pd

    from phonorm.records.card import ModelCard

    corpus, model = tmp_path / "corpus", tmp_path / "model"
    shutil.copytree(fake_corpus, corpus)
    shutil.copytree(model_dir, model)
    card = ModelCard.load(model)
    card.corpus = str(corpus.resolve())
    card.save(model)
    assert "tone" in evaluate(corpus, model_dir=model)  # same bytes as the corpus it was trained on
    utterances = pd.read_parquet(corpus / "utterances.parquet")
    train_speaker = utterances.loc[utterances.split == "train", "speaker"].iloc[0]
    utterances.loc[utterances.speaker == train_speaker, "split"] = "test"
    utterances.to_parquet(corpus / "utterances.parquet", index=False)
    with pytest.raises(InputError, match=rf"changed since .*model was fine-tuned on it \(corpus fingerprint "
                                         rf"{card.corpus_fingerprint[:12]} then, [0-9a-f]{{12}} now\)"):
        evaluate(corpus, model_dir=model)
    assert "tone" in evaluate(fake_corpus, model_dir=model)  # another folder: a cross-corpus evaluation
