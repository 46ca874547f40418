"""phonorm info: counts of a prepared corpus, frame counts by brute force on the 20 ms grid."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from corpus_inputs import SIX_SPEAKERS, make_corpus
from phonorm.corpus.info import corpus_info, format_info
from phonorm.corpus.prepare import prepare_corpus
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    corpus = make_corpus(root / "c", SIX_SPEAKERS, n_utts=2, rates=(16_000, 44_100))
    prepare_corpus(root / "p", audio_dir=corpus["audio"], alignments=corpus["alignments"], speakers_file=corpus["speakers"])
    return root / "p"


def _brute_force_frames(folder):
    """Frame i of an utterance of N samples (16 kHz) exists when i*320 + 400 <= N and sits at
    (i*320 + 200) / 16000 s; it takes the label of the segment that holds that time."""
    corpus = PreparedCorpus(folder)
    counts = {"tone": Counter(), "phone": Counter(), "sex": Counter()}
    for utt in corpus.all_utterances.itertuples():
        n_samples = round(utt.duration * 16_000)
        segments = corpus.segments_of(utt.utterance_id)
        i = 0
        while i * 320 + 400 <= n_samples:
            t = (i * 320 + 200) / 16_000
            for seg in segments.itertuples():
                if seg.start <= t < seg.end:
                    counts["phone"][seg.phone] += 1
                    counts["sex"][utt.sex] += 1
                    if seg.tone > 0:
                        counts["tone"][str(seg.tone)] += 1
            i += 1
    return counts


def test_info_counts(prepared):
    info = corpus_info(prepared)
    utts = PreparedCorpus(prepared).all_utterances
    assert info["utterances"] == 12 and info["speakers"] == 6 and info["sex"] == {"F": 3, "M": 3}
    assert info["splits"] == utts["split"].value_counts().reindex(["train", "dev", "test"], fill_value=0).to_dict()
    assert info["hours"] == pytest.approx(utts["duration"].sum() / 3600, abs=1e-6)
    expected = _brute_force_frames(prepared)
    for task in ("tone", "phone", "sex"):
        got = {label: n for label, n in info["labels"][task].items() if n}
        assert got == dict(expected[task]), task
    assert set(info["labels"]["tone"]) == {"1", "2", "3", "4", "5"}
    text = format_info(info)
    assert "speakers    6   F 3   M 3" in text and "tone" in text and "phone" in text


def test_info_json_on_the_command_line(prepared):
    result = subprocess.run([sys.executable, "-m", "phonorm.cli", "info", str(prepared), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert isinstance(info, dict)
    assert {"utterances", "speakers", "hours", "sex", "splits", "labels"} <= set(info)
    assert set(info["labels"]) == {"tone", "phone", "sex"}


def test_info_on_the_fake_corpus_and_a_non_corpus(fake_corpus, tmp_path):
    info = corpus_info(fake_corpus)
    assert info["speakers"] == 8 and info["sex"] == {"F": 4, "M": 4}
    assert info["splits"] == {"train": 24, "dev": 12, "test": 12}
    assert sum(info["labels"]["sex"].values()) == sum(info["labels"]["phone"].values()) > 0
    with pytest.raises(InputError, match="not a prepared corpus"):
        corpus_info(tmp_path)


def test_prepare_and_info_on_the_synth_corpus(request, tmp_path):
    """End to end on `phonorm synth` output (the corpus layer's acceptance check, smaller)."""
    try:
        synth = request.getfixturevalue("synth_corpus")
    except pytest.FixtureLookupError:
        pytest.skip("no synth_corpus fixture in conftest.py")
    prepare_corpus(tmp_path / "p", audio_dir=synth / "wav", alignments=synth / "textgrid",
                   speakers_file=synth / "speakers.tsv")
    info = corpus_info(tmp_path / "p")
    assert info["speakers"] == 8 and info["sex"] == {"F": 4, "M": 4}
    assert all(info["labels"]["tone"][t] > 0 for t in "12345")
    assert sum(1 for n in info["labels"]["phone"].values() if n) >= 20
    assert all(info["splits"][s] > 0 for s in ("train", "dev", "test"))
    segments = PreparedCorpus(tmp_path / "p").segments
    finals = segments[segments["is_final"]]
    assert (finals["syllable"].str[-1] == finals["tone"].astype(str)).all()
    assert not (tmp_path / "p" / "skipped.tsv").exists()
