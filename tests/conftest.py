"""Shared fixtures. Corpora are built once per test session; tests must not modify them."""

from __future__ import annotations

import os

import pytest

# Tests run on 2-core machines beside other work: keep BLAS/torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def fake_corpus(tmp_path_factory):
    """A small prepared corpus of synthetic syllables (tests/fakes.py): 8 speakers × 6 utterances."""
    from fakes import make_prepared_corpus

    return make_prepared_corpus(tmp_path_factory.mktemp("fake_corpus"), n_speakers=8, n_utterances=6, seed=0)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """An eSpeak NG corpus from `phonorm synth` (8 speakers: 4 F, 4 M; × 6 utterances; seed 0):
    the folder holding wav/, textgrid/, speakers.tsv and synth.json. Read-only for tests."""
    from phonorm.corpus.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("synth_corpus")
    synthesize_corpus(out, n_speakers=8, n_utterances=6, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model(seed=0, stable_layer_norm=False)`: the folder of a tiny random wav2vec 2.0 (group-norm
    front end, or the large-style stable-layer-norm one), made once per session for each seed and kind.
    Read-only for tests: a test that damages a model folder makes its own."""
    made: dict[tuple[int, bool], str] = {}

    def folder(seed: int = 0, stable_layer_norm: bool = False) -> str:
        if (seed, stable_layer_norm) not in made:
            import torch
            from transformers import Wav2Vec2Model

            from phonorm.models.backbone import make_config

            out = tmp_path_factory.mktemp(f"tiny{seed}{'-ln' if stable_layer_norm else ''}")
            torch.manual_seed(seed)
            Wav2Vec2Model(make_config("tiny", stable_layer_norm=stable_layer_norm)).save_pretrained(out)
            made[seed, stable_layer_norm] = str(out)
        return made[seed, stable_layer_norm]

    return folder


@pytest.fixture(scope="session")
def analysed_store(tmp_path_factory):
    """A tiny feature store (tests/fake_store.py: pretrained and tone, 6 speakers, 3 layers, in 2 parts)
    and the results folder `phonorm analyze` wrote of it (UMAP, held-out halves, 3 folds), made once per
    session: (store, results, settings, summary line). Read-only for tests: copy the results folder to
    damage it."""
    from fake_store import make_feature_store
    from phonorm.analyze import analyze
    from phonorm.settings import AnalyzeSettings

    root = tmp_path_factory.mktemp("analysed")
    store = make_feature_store(root / "f", models=("pretrained", "tone"), n_speakers=6, n_utterances=2,
                               n_frames=30, n_layers=3, parts=2)
    settings = AnalyzeSettings(reference="pretrained", umap=True, held_out=True, folds=3, umap_fit_rows=150,
                               progress=False)
    summary = analyze(store, out=root / "r", settings=settings)
    return store, root / "r", settings, summary
