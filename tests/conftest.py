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
