"""`phonorm synth`: the files, their formats, determinism, and alignments checked by measurement.

The alignment tests do not trust eSpeak: they measure the audio with Praat (parselmouth) inside
the intervals the TextGrids give - F0 rises along tone-2 finals and falls along tone-4 finals,
finals are voiced while voiceless initials are not, silence is quiet, women are higher than men.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import parselmouth
import pytest
import soundfile as sf
from praatio import textgrid
from pypinyin.contrib.tone_convert import to_finals, to_initials

from phonorm.corpus.languages import ESPEAK_INITIALS
from phonorm.corpus.synth import synthesize_corpus
from phonorm.corpus.synth_align import align_syllables
from phonorm.errors import PhonormError

VOICELESS_INITIALS = {"p", "t", "k", "f", "h", "j", "q", "x", "zh", "ch", "sh", "z", "c", "s", "b", "d", "g"}


def _grids(corpus: Path) -> dict[str, textgrid.Textgrid]:
    return {
        p.stem: textgrid.openTextgrid(str(p), includeEmptyIntervals=True)
        for p in sorted((corpus / "textgrid").glob("*.TextGrid"))
    }


def _speakers(corpus: Path) -> dict[str, str]:
    lines = (corpus / "speakers.tsv").read_text().splitlines()
    assert lines[0] == "speaker\tsex"
    return dict(line.split("\t") for line in lines[1:])


@pytest.fixture(scope="module")
def measured(synth_corpus):
    """Praat pitch of every utterance (5 ms step) with its TextGrid; computed once for the module."""
    out = {}
    for utt, grid in _grids(synth_corpus).items():
        sound = parselmouth.Sound(str(synth_corpus / "wav" / f"{utt}.wav"))
        pitch = sound.to_pitch(time_step=0.005, pitch_floor=60, pitch_ceiling=450)
        out[utt] = (sound, pitch, grid)
    return out


def _f0_in(pitch, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Times and F0 (Hz, NaN where unvoiced) at 5 ms steps inside [start, end]."""
    times = np.arange(start + 0.0025, end, 0.005)
    return times, np.array([pitch.get_value_at_time(t) for t in times])


# --------------------------------------------------------------------------- structure
def test_files_formats_and_speakers(synth_corpus):
    speakers = _speakers(synth_corpus)
    assert len(speakers) == 8 and collections.Counter(speakers.values()) == {"F": 4, "M": 4}
    assert all(s[0] == sex for s, sex in speakers.items())  # ids F01 / M01
    wavs = sorted(p.stem for p in (synth_corpus / "wav").glob("*.wav"))
    grids = _grids(synth_corpus)
    assert wavs == sorted(grids) and len(wavs) == 8 * 6
    assert {utt.split("_")[0] for utt in wavs} == set(speakers)
    for utt in wavs:
        info = sf.info(str(synth_corpus / "wav" / f"{utt}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        grid = grids[utt]
        assert list(grid.tierNames) == ["words", "phones"]
        assert grid.minTimestamp == 0 and abs(grid.maxTimestamp - info.duration) < 1e-9
        for name in grid.tierNames:
            tier = grid.getTier(name)
            assert tier.entries[0].start == 0 and abs(tier.entries[-1].end - info.duration) < 1e-9
            assert tier.entries[0].label == "" and tier.entries[-1].label == ""  # leading / trailing silence
        n_words = sum(1 for e in grid.getTier("words").entries if e.label)
        assert 4 <= n_words <= 12
    meta = json.loads((synth_corpus / "synth.json").read_text())
    assert meta["complete"] and meta["settings"]["seed"] == 0 and "code_version" in meta["provenance"]
    assert len({(s["variant"], s["pitch"], s["rate"]) for s in meta["speakers"]}) == 8


def test_labels_cover_tones_and_phones(synth_corpus):
    tones, phones = collections.Counter(), set()
    for grid in _grids(synth_corpus).values():
        for entry in grid.getTier("phones").entries:
            if entry.label:
                phones.add(entry.label.rstrip("12345"))
                if entry.label[-1].isdigit():
                    tones[entry.label[-1]] += 1
    assert set(tones) == set("12345")
    assert min(tones.values()) >= 0.8 * max(tones.values())  # balanced
    assert len(phones) >= 20


def test_phones_tile_words_and_follow_pinyin(synth_corpus):
    """Every syllable is covered exactly by its phones (initial + tonal final, as pypinyin splits
    the word label); every phone lies inside a syllable; silences match in both tiers."""
    for utt, grid in _grids(synth_corpus).items():
        phones = [e for e in grid.getTier("phones").entries if e.label]
        words = [e for e in grid.getTier("words").entries if e.label]
        used = 0
        for word in words:
            inside = [p for p in phones if p.start >= word.start and p.end <= word.end]
            assert inside and inside[0].start == word.start and inside[-1].end == word.end, (utt, word)
            assert all(a.end == b.start for a, b in zip(inside, inside[1:])), (utt, word)
            initial, final = to_initials(word.label, strict=True), to_finals(word.label, strict=True)
            expected = ([initial] if initial else []) + [final + word.label[-1]]
            assert [p.label for p in inside] == expected, (utt, word)
            used += len(inside)
        assert used == len(phones), utt


def test_all_syllables_split_into_initial_and_final():
    """Every syllable of the table, said by eSpeak, splits into the initial phoneme and a final
    (align_syllables raises otherwise), and the table agrees with pypinyin's analysis."""
    from phonorm.corpus.espeak import Espeak
    from phonorm.corpus.pinyin_table import load_syllable_table

    table = load_syllable_table()
    assert len(table) > 350 and {s.initial for s in table} == set(ESPEAK_INITIALS) | {""}
    for s in table:
        assert (to_initials(s.pinyin, strict=True), to_finals(s.pinyin, strict=True)) == (s.initial, s.final)
    espeak = Espeak.get()
    espeak.set_voice("cmn-latn-pinyin+m3")
    rng = np.random.default_rng(1)
    for i in range(0, len(table), 10):
        chunk = [(s, int(t)) for s, t in zip(table[i : i + 10], rng.choice([1, 2, 4, 5], size=10))]
        words = [f"{s.pinyin}{t}" for s, t in chunk]
        positions = list(np.cumsum([1] + [len(w) + 1 for w in words[:-1]]))
        samples, events = espeak.synthesize(" ".join(words))
        words_tier, phones_tier = align_syllables(events, words, chunk, positions, len(samples))
        assert [w.label for w in words_tier] == words
        assert len(phones_tier) == len(words) + sum(1 for s, _ in chunk if s.initial)


# --------------------------------------------------------------------------- alignment by measurement
def test_tone_contours_measured(measured):
    """F0 rises along most tone-2 finals and falls along most tone-4 finals (Praat pitch,
    slope of a line fitted to semitones)."""
    slopes = collections.defaultdict(list)
    for _sound, pitch, grid in measured.values():
        for entry in grid.getTier("phones").entries:
            if entry.label[-1:] in ("2", "4"):
                times, f0 = _f0_in(pitch, entry.start, entry.end)
                voiced = ~np.isnan(f0)
                if voiced.sum() >= 5:
                    slopes[entry.label[-1]].append(np.polyfit(times[voiced], 12 * np.log2(f0[voiced]), 1)[0])
    rising, falling = np.array(slopes["2"]), np.array(slopes["4"])
    assert len(rising) >= 30 and len(falling) >= 30
    assert (rising > 0).mean() > 0.7, np.median(rising)
    assert (falling < 0).mean() > 0.7, np.median(falling)


def test_initials_finals_and_silence_measured(measured):
    """Finals are voiced and loud, voiceless initials mostly unvoiced, silences quiet: the
    initial/final and speech/silence boundaries sit where the audio changes."""
    voiced_share = collections.defaultdict(list)
    rms = collections.defaultdict(list)
    for sound, pitch, grid in measured.values():
        samples, rate = sound.values[0], sound.sampling_frequency
        for entry in grid.getTier("phones").entries:
            kind = "silence" if not entry.label else "final" if entry.label[-1].isdigit() else (
                "voiceless" if entry.label in VOICELESS_INITIALS else "voiced_initial"
            )
            _, f0 = _f0_in(pitch, entry.start, entry.end)
            if len(f0):
                voiced_share[kind].append(np.mean(~np.isnan(f0)))
            rms[kind].append(np.sqrt(np.mean(samples[int(entry.start * rate) : int(entry.end * rate)] ** 2)))
    assert np.mean(np.array(voiced_share["final"]) > 0.8) > 0.9
    assert np.mean(np.array(voiced_share["voiceless"]) < 0.5) > 0.8
    assert np.median(rms["silence"]) < 0.1 * np.median(rms["final"])


def test_female_speakers_higher_than_male(measured, synth_corpus):
    sexes = _speakers(synth_corpus)
    f0_by_speaker = collections.defaultdict(list)
    for utt, (_sound, pitch, _grid) in measured.items():
        f0 = pitch.selected_array["frequency"]
        f0_by_speaker[utt.split("_")[0]].extend(f0[f0 > 0])
    medians = {spk: np.median(v) for spk, v in f0_by_speaker.items()}
    female = [m for spk, m in medians.items() if sexes[spk] == "F"]
    male = [m for spk, m in medians.items() if sexes[spk] == "M"]
    assert np.median(female) > np.median(male) * 1.3
    assert all(60 < m < 350 for m in medians.values())


# --------------------------------------------------------------------------- determinism, resume, bad input
def _digest(folder: Path) -> dict[str, str]:
    files = sorted([*folder.glob("wav/*"), *folder.glob("textgrid/*"), folder / "speakers.tsv"])
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_deterministic_for_a_seed_and_resumes(tmp_path):
    first = tmp_path / "a"
    synthesize_corpus(first, n_speakers=2, n_utterances=2, seed=5)
    again = tmp_path / "b"
    synthesize_corpus(again, n_speakers=2, n_utterances=2, seed=5)
    assert _digest(first) == _digest(again) and len(_digest(first)) == 2 * 2 * 2 + 1
    other = tmp_path / "c"
    synthesize_corpus(other, n_speakers=2, n_utterances=2, seed=6)
    assert _digest(other) != _digest(first)

    # An interrupted run: one file gone. The re-run redoes that speaker and gets the same bytes.
    (again / "wav" / "M01_0002.wav").unlink()
    summary = synthesize_corpus(again, n_speakers=2, n_utterances=2, seed=5)
    assert "1 speaker synthesised, 1 already complete" in summary
    assert _digest(again) == _digest(first)


def test_refuses_bad_settings_and_foreign_folders(tmp_path):
    with pytest.raises(PhonormError, match="at least 2"):
        synthesize_corpus(tmp_path / "x", n_speakers=1, n_utterances=2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PhonormError, match="not empty"):
        synthesize_corpus(foreign, n_speakers=2, n_utterances=1)
    made = tmp_path / "made"
    synthesize_corpus(made, n_speakers=2, n_utterances=1, seed=0)
    with pytest.raises(PhonormError, match="other settings"):
        synthesize_corpus(made, n_speakers=2, n_utterances=1, seed=1)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "synth.json").write_text(json.dumps({"settings": {}}))  # no `complete`: not what synth writes
    with pytest.raises(PhonormError, match=r"synth.json: not a valid synthetic corpus record .*\(complete: Field required\); use a new folder"):
        synthesize_corpus(damaged, n_speakers=2, n_utterances=1)


def test_a_write_failure_in_a_synth_worker_is_one_line_and_exit(tmp_path):
    """A write that fails inside a worker process (here a file-size limit, as a full disk would) reaches
    the main process as the worker's own error: one line naming the file, exit 2, within seconds; before,
    the error could not be unpickled and the pool waited forever."""
    import resource
    import subprocess
    import sys

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    phonorm = Path(sys.executable).with_name("phonorm")
    result = subprocess.run([str(phonorm), "synth", str(tmp_path / "c"), "--speakers", "2", "--utterances", "3"],
                            preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert ".wav: cannot write: file larger than this process may write" in lines[0]


def test_every_phonorm_error_crosses_a_process_boundary_whole():
    import pickle

    from phonorm.errors import InputError, PhonormError, WriteError

    for error in (WriteError("/out/a.wav", 28), InputError("/in/b.TextGrid", "no phones tier", "u1"),
                  PhonormError("plain")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.__dict__ == error.__dict__
