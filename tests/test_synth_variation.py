"""`phonorm synth --variation wide`: speakers that differ as real speakers do, measured with Praat.

The tests measure the audio rather than trusting the settings: each speaker's median F0 lands on
its drawn target and the sexes fall where the published figures put them (synth.F0_MEDIAN_HZ);
the time scaling of the vocal-tract trick moves the TextGrid boundaries exactly with the audio;
tone contours and voicing still sit inside the intervals after channel, EQ and noise.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from praatio import textgrid

from acoustics import speaker_f0, tonal_finals
from phonorm.corpus.synth import synthesize_corpus, synthesize_utterance
from phonorm.corpus.synth_plan import F0_MEDIAN_HZ, plan_corpus
from phonorm.errors import PhonormError


@pytest.fixture(scope="module")
def wide_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide_corpus")
    synthesize_corpus(out, n_speakers=12, n_utterances=4, seed=3, jobs=2, variation="wide")
    return out


def test_f0_by_sex_measured(wide_corpus):
    """Speaker median F0 (Praat) is on its target within 1.5 semitones, and the sexes' medians sit
    near the published centres (125 / 220 Hz) with speakers spread around them."""
    meta = json.loads((wide_corpus / "synth.json").read_text())
    assert meta["settings"]["variation"] == "wide"
    voices = {v["speaker"]: v for v in meta["speakers"]}
    medians = {speaker: float(np.median(v)) for speaker, v in speaker_f0(wide_corpus).items()}
    assert set(medians) == set(voices)
    for speaker, median in medians.items():
        off = 12 * np.log2(median / voices[speaker]["wide"]["f0_target"])
        assert abs(off) < 1.5, (speaker, median, voices[speaker]["wide"])
    by_sex = {sex: np.array([m for s, m in medians.items() if voices[s]["sex"] == sex]) for sex in "FM"}
    for sex, values in by_sex.items():
        assert abs(12 * np.log2(np.median(values) / F0_MEDIAN_HZ[sex])) < 2.5, (sex, values)
        assert np.ptp(12 * np.log2(values)) > 1.5, (sex, values)  # speakers differ
    assert np.median(by_sex["F"]) > 1.45 * np.median(by_sex["M"])


def test_voices_vary_beyond_pitch(wide_corpus):
    """Formant scale, rate, voice quality, channel and SNR all differ between speakers."""
    voices = json.loads((wide_corpus / "synth.json").read_text())["speakers"]
    assert len({v["variant"] for v in voices}) >= 6
    for key in ("formant_scale", "snr_db", "eq_centre"):
        assert len({v["wide"][key] for v in voices}) == len(voices), key
    assert np.ptp([v["wide"]["formant_scale"] for v in voices]) > 0.05
    assert np.ptp([v["rate"] for v in voices]) > 30


def test_tones_and_voicing_still_inside_the_intervals(wide_corpus):
    """After time scaling, channel and noise: tone-2 finals rise and tone-4 finals fall, finals are voiced."""
    slopes, voiced = collections.defaultdict(list), []
    for _, entry, times, f0 in tonal_finals(wide_corpus):
        ok = ~np.isnan(f0)
        voiced.append(ok.mean() if len(ok) else 0.0)
        if entry.label[-1] in "24" and ok.sum() >= 5:
            slopes[entry.label[-1]].append(np.polyfit(times[ok], 12 * np.log2(f0[ok]), 1)[0])
    assert np.mean(np.array(voiced) > 0.8) > 0.85
    assert (np.array(slopes["2"]) > 0).mean() > 0.7 and (np.array(slopes["4"]) < 0).mean() > 0.7


def test_formant_scaling_moves_boundaries_exactly(tmp_path):
    """One utterance said with formant scale 0.9 and 1.1: every boundary time x scale is the same
    in both (the audio is the same samples read at another rate; to eSpeak's own jitter), and the durations differ by the
    ratio of the scales; speech starts where the first word does."""
    import soundfile as sf

    from phonorm.corpus.espeak import Espeak

    voices, plan = plan_corpus(2, 1, seed=0, variation="wide")
    utterance = plan[voices[1].speaker][0]
    espeak = Espeak.get()
    espeak.set_voice(voices[1].voice_name, pitch=voices[1].pitch, pitch_range=voices[1].pitch_range, rate=voices[1].rate)
    quiet = replace(voices[1].wide, snr_db=80.0)
    grids, durations = {}, {}
    for scale in (0.9, 1.1):
        out = tmp_path / str(scale)
        (out / "wav").mkdir(parents=True)
        (out / "textgrid").mkdir()
        durations[scale] = synthesize_utterance(espeak, utterance, out, replace(quiet, formant_scale=scale))
        grid = textgrid.openTextgrid(str(out / "textgrid" / f"{utterance.utterance_id}.TextGrid"), includeEmptyIntervals=False)
        grids[scale] = [(e.start * scale, e.end * scale, e.label) for e in grid.getTier("phones").entries]
        audio, rate = sf.read(str(out / "wav" / f"{utterance.utterance_id}.wav"))
        frame = rate // 100  # 10 ms
        rms = np.sqrt(np.convolve(audio**2, np.ones(frame) / frame, mode="same"))
        onset = np.argmax(rms > 0.1 * rms.max()) / rate
        assert abs(onset - grid.getTier("words").entries[0].start) < 0.03, (scale, onset)
    assert [g[2] for g in grids[0.9]] == [g[2] for g in grids[1.1]]
    # eSpeak's hidden state (pitch-flutter phase) carries over between the two calls and moves a
    # few phoneme events by a few samples; a wrong time scale would be off by 10-20% (tens of ms).
    np.testing.assert_allclose([g[:2] for g in grids[0.9]], [g[:2] for g in grids[1.1]], atol=1e-3)
    assert abs(durations[0.9] / durations[1.1] - 1.1 / 0.9) < 0.01


def _digest(folder: Path) -> dict[str, str]:
    files = sorted([*folder.glob("wav/*"), *folder.glob("textgrid/*"), folder / "speakers.tsv"])
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_wide_is_deterministic_and_differs_from_none(tmp_path):
    for name in ("a", "b"):
        synthesize_corpus(tmp_path / name, n_speakers=2, n_utterances=2, seed=4, variation="wide")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synthesize_corpus(tmp_path / "none", n_speakers=2, n_utterances=2, seed=4)
    none = _digest(tmp_path / "none")
    assert all(none[k] != v for k, v in _digest(tmp_path / "a").items() if k.startswith("wav/"))
    with pytest.raises(PhonormError, match="other settings"):  # a folder made without variation is not resumed with it
        synthesize_corpus(tmp_path / "none", n_speakers=2, n_utterances=2, seed=4, variation="wide")
    with pytest.raises(PhonormError, match="--variation"):
        synthesize_corpus(tmp_path / "x", n_speakers=2, n_utterances=2, variation="huge")

