"""The reference model that ships in the package (`phonorm:tiny-hubert`): it loads by name, it reads
speaker sex on speakers it never heard, and its card records the recipe that examples/pretrain-reference.yaml
runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phonorm.errors import PhonormError
from phonorm.models.shipped import SHIPPED_FOLDER, resolve_model, shipped_models

REFERENCE = "phonorm:tiny-hubert"
ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_ships_with_weights_card_and_readme():
    assert "tiny-hubert" in shipped_models()
    folder = Path(resolve_model(REFERENCE))
    assert folder == SHIPPED_FOLDER / "tiny-hubert"
    for name in ("config.json", "model.safetensors", "phonorm.json", "README.md", "pretrain_log.csv"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < 5 * 2**20  # a few MB in the package
    with pytest.raises(PhonormError, match="no such shipped model"):
        resolve_model("phonorm:nonexistent")
    assert resolve_model("org/name") == "org/name"


def test_the_reference_loads_by_name_as_a_hubert_model():
    from transformers import AutoModel, HubertModel

    from phonorm.models.backbone import load_backbone

    backbone = load_backbone(REFERENCE)
    assert isinstance(backbone, HubertModel) and backbone.config.num_hidden_layers == 4
    assert isinstance(AutoModel.from_pretrained(resolve_model(REFERENCE)), HubertModel)


def test_the_card_records_the_recipe_of_the_example_that_makes_it():
    """The settings in the shipped card are those examples/pretrain-reference.yaml gives `pretrain`,
    and the card's fixed recipe is the code's; the corpus is the example's synth settings."""
    from phonorm.experiment.load import load_experiment
    from phonorm.models.pretrain import recorded_settings
    from phonorm.records.card import ModelCard, binding_settings
    from phonorm.settings import PretrainSettings

    card = ModelCard.load(resolve_model(REFERENCE))
    experiment, _ = load_experiment(ROOT / "examples" / "pretrain-reference.yaml")
    entry = experiment.pretrain[0]
    settings = PretrainSettings(**{k: v for k, v in entry.model_dump().items() if k in PretrainSettings.model_fields})
    assert binding_settings(card.settings) == binding_settings(recorded_settings(settings))
    assert card.objective == "hubert" and card.kind == "pretrained" and card.trained_steps == settings.steps
    assert card.held_out_accuracy[-1][1] > 5 * card.held_out_accuracy[0][1]
    readme = (Path(resolve_model(REFERENCE)) / "README.md").read_text(encoding="utf-8")
    synth = experiment.corpus.synth
    assert synth is not None and f"--speakers {synth.speakers}" in readme and f"--seed {synth.seed}" in readme
    assert "bench/fidelity.py" in readme and "examples/pretrain-reference.yaml" in readme


def test_the_reference_reads_sex_on_unseen_speakers(fake_corpus, tmp_path):
    """A short probe: logistic regression on the reference's top-layer (L4) frames, trained on some speakers of a
    small synthetic corpus (tests/fakes.py, never part of pre-training) and tested on the others,
    reads sex far above chance; the untrained architecture does not."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from transformers import HubertModel

    from phonorm.corpus.audio import load_audio
    from phonorm.corpus.store import PreparedCorpus
    from phonorm.models.backbone import make_config
    from phonorm.models.upstream import Upstream

    prepared = PreparedCorpus(fake_corpus)
    table = prepared.utterances(None)
    waves = [load_audio(row.audio_path) for row in table.itertuples(index=False)]

    def held_out_sex_accuracy(upstream: Upstream) -> float:
        rows, sexes, speakers = [], [], []
        for row, wave in zip(table.itertuples(index=False), waves):
            states, frames = upstream([wave], [4])
            x = states[0, 0, : frames[0]].numpy()
            rows.append(x)
            sexes += [row.sex] * len(x)
            speakers += [row.speaker] * len(x)
        x, y, speaker = np.concatenate(rows), np.array(sexes), np.array(speakers)
        accuracies = []
        ids = sorted(set(speakers))
        for held in zip(ids[0::2], ids[1::2]):  # each fold holds out one F and one M speaker (they alternate)
            test = np.isin(speaker, held)
            scaler = StandardScaler().fit(x[~test])
            probe = LogisticRegression(max_iter=500).fit(scaler.transform(x[~test]), y[~test])
            accuracies.append(probe.score(scaler.transform(x[test]), y[test]))
        return float(np.mean(accuracies))

    shipped = held_out_sex_accuracy(Upstream(REFERENCE))
    random_folder = tmp_path / "random"
    torch.manual_seed(0)
    HubertModel(make_config("tiny", model_type="hubert")).save_pretrained(random_folder)
    untrained = held_out_sex_accuracy(Upstream(str(random_folder)))
    assert shipped >= 0.65 and shipped >= untrained + 0.08, (shipped, untrained)


def test_the_reference_hears_pitch_reading_tone_above_one_frame_of_f0(fake_corpus):
    """The reference is not pitch-deaf: a tone probe on its best layer, trained on some speakers of a small
    synthetic corpus (never part of pre-training) and tested on others, beats the same probe on one frame
    of F0 in Hz (Praat), which reads tone badly across voices. A model pre-trained on MFCC clusters alone
    did not (docs/pretraining-study.md)."""
    import parselmouth
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from phonorm.corpus.store import PreparedCorpus
    from phonorm.frames import IGNORE_INDEX, sample_nearest
    from phonorm.models.data import FrameDataset
    from phonorm.models.upstream import Upstream

    prepared = PreparedCorpus(fake_corpus)
    upstream = Upstream(REFERENCE)
    dataset = FrameDataset(prepared, None, ["tone"], upstream.geometry, utterances=prepared.utterances(None))
    rows: dict[str, list[np.ndarray]] = {f"L{k}": [] for k in range(upstream.n_layers + 1)}
    f0, tones, speakers = [], [], []
    for i in range(len(dataset)):
        example = dataset[i]
        raw = dataset.table.at[i, "audio_path"]
        labelled = example.labels["tone"] != IGNORE_INDEX
        states, frames = upstream([example.wave], list(range(upstream.n_layers + 1)))
        for k in range(upstream.n_layers + 1):
            rows[f"L{k}"].append(states[k, 0, : frames[0]].float().numpy()[labelled])
        pitch = parselmouth.Sound(str(raw)).to_pitch(time_step=0.005, pitch_floor=60, pitch_ceiling=500)
        times = upstream.geometry.frame_times(len(labelled))[labelled]
        f0.append(sample_nearest(pitch.xs(), pitch.selected_array["frequency"][:, None], times, 0.005)[:, 0])
        tones.append(example.labels["tone"][labelled])
        speakers += [example.speaker] * int(labelled.sum())
    y, speaker = np.concatenate(tones), np.array(speakers)
    hz = np.nan_to_num(np.concatenate(f0))[:, None]  # unvoiced: 0 Hz

    def held_out_accuracy(x: np.ndarray) -> float:
        ids = sorted(set(speaker))
        scores = []
        for held in zip(ids[0::2], ids[1::2]):  # one F and one M speaker held out per fold
            test = np.isin(speaker, held)
            scaler = StandardScaler().fit(x[~test])
            probe = LogisticRegression(max_iter=1000).fit(scaler.transform(x[~test]), y[~test])
            scores.append(probe.score(scaler.transform(x[test]), y[test]))
        return float(np.mean(scores))

    best = max(held_out_accuracy(np.concatenate(v)) for v in rows.values())
    one_frame_f0 = held_out_accuracy(hz)
    assert best >= one_frame_f0 + 0.05, (best, one_frame_f0)
