"""`phonorm synth --language yue`: a Cantonese corpus (eSpeak NG, Jyutping), its files, labels and
alignments, the six tones measured with Praat, its preparation under the tonal scheme, and (slow)
`phonorm run` through to a report.

As in test_synth.py the tone checks do not trust eSpeak: they measure F0 inside the finals the
TextGrids give, in semitones relative to each speaker's median over all finals.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from praatio import textgrid

from acoustics import speaker_f0, tonal_finals
from phonorm.corpus.jyutping_syllables import load_syllable_table
from phonorm.corpus.languages import YUE
from phonorm.corpus.synth import synthesize_corpus
from phonorm.corpus.synth_align import align_syllables
from phonorm.corpus.synth_plan import SyllableDrawer, plan_corpus
from phonorm.errors import PhonormError

TABLE = {s.jyutping: s for s in load_syllable_table()}
CHECKED_TONES = {"1", "3", "6"}


@pytest.fixture(scope="module")
def yue_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("yue_corpus")
    synthesize_corpus(out, n_speakers=8, n_utterances=6, seed=0, jobs=2, language="yue")
    return out


def _grids(corpus: Path) -> dict[str, textgrid.Textgrid]:
    return {p.stem: textgrid.openTextgrid(str(p), includeEmptyIntervals=True)
            for p in sorted((corpus / "textgrid").glob("*.TextGrid"))}


def _digest(folder: Path) -> dict[str, str]:
    files = sorted([*folder.glob("wav/*"), *folder.glob("textgrid/*"), folder / "speakers.tsv"])
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --------------------------------------------------------------------------- the syllable table
def test_table_is_cantonese_and_every_syllable_splits_into_initial_and_final():
    """The whole shipped table, said by eSpeak's Cantonese voice in every tone a syllable may carry
    (ten syllables an utterance), splits into the initial's phonemes and a final (align_syllables
    raises otherwise); the table agrees with PyCantonese's own analysis when it is installed."""
    from phonorm.corpus.espeak import Espeak

    table = list(TABLE.values())
    assert len(table) > 500 and {s.initial for s in table} == set(YUE.initials) | {""}
    assert not {"m", "ng", "hm", "hng"} & set(TABLE)  # syllabic nasals left out
    assert sum(s.checked for s in table) > 150
    try:
        from pycantonese import parse_jyutping
    except ImportError:
        parse_jyutping = None
    if parse_jyutping is not None:
        for s in table:
            (parsed,) = parse_jyutping(f"{s.jyutping}1")
            assert (parsed.onset, parsed.nucleus + parsed.coda) == (s.initial, s.final), s
    espeak = Espeak.get()
    espeak.set_voice(f"{YUE.voice}+f2")
    said = collections.Counter()
    for tone_round in range(3):  # every syllable three times, each time in another drawn tone
        rng = np.random.default_rng(tone_round)
        for i in range(0, len(table), 10):
            chunk = [(s, int(rng.choice(YUE.tones_of(s)))) for s in table[i:i + 10]]
            words = [f"{s.jyutping}{t}" for s, t in chunk]
            positions = list(np.cumsum([1] + [len(w) + 1 for w in words[:-1]]))
            samples, events = espeak.synthesize(" ".join(words))
            words_tier, phones_tier = align_syllables(events, words, chunk, positions, len(samples), YUE)
            assert [w.label for w in words_tier] == words
            expected = [p for s, t in chunk for p in ([s.initial] if s.initial else []) + [f"{s.final}{t}"]]
            assert [p.label for p in phones_tier] == expected
            said.update(t for _, t in chunk)
    assert set(said) == set(YUE.tones)


def test_alignment_refuses_a_wrong_initial():
    """`gong2` is said `g 'ong`: claimed as `gwong2` its initial `gw` (eSpeak's `g w`) is not there."""
    from phonorm.corpus.espeak import Espeak

    espeak = Espeak.get()
    espeak.set_voice(f"{YUE.voice}+m1")
    samples, events = espeak.synthesize("gong2")
    with pytest.raises(PhonormError, match="initial 'gw' should be eSpeak's 'g w'"):
        align_syllables(events, ["gwong2"], [(TABLE["gwong"], 2)], [1], len(samples), YUE)
    _, phones = align_syllables(events, ["gong2"], [(TABLE["gong"], 2)], [1], len(samples), YUE)
    assert [p.label for p in phones] == ["g", "ong2"]


def test_drawer_keeps_checked_syllables_to_tones_1_3_6_and_balances():
    drawer = SyllableDrawer(list(TABLE.values()), np.random.default_rng(0), language=YUE)
    drawn = [pair for _ in range(300) for pair in drawer.draw(8)]
    tones = collections.Counter(t for _, t in drawn)
    assert set(tones) == set(YUE.tones) and min(tones.values()) >= 0.9 * max(tones.values()), tones
    assert all(t in (1, 3, 6) for s, t in drawn if s.checked)
    assert any(s.checked for s, _ in drawn) and any(not s.checked and t in (2, 4, 5) for s, t in drawn)
    initials = collections.Counter(s.initial for s, _ in drawn)
    assert set(initials) == set(YUE.initials) | {""}
    assert min(initials.values()) >= 0.8 * max(initials.values()), initials


# --------------------------------------------------------------------------- the corpus
def test_files_labels_and_settings(yue_corpus):
    lines = (yue_corpus / "speakers.tsv").read_text().splitlines()
    assert lines[0] == "speaker\tsex" and len(lines) == 9
    grids = _grids(yue_corpus)
    assert sorted(p.stem for p in (yue_corpus / "wav").glob("*.wav")) == sorted(grids) and len(grids) == 48
    tones = collections.Counter()
    for utt, grid in grids.items():
        info = sf.info(str(yue_corpus / "wav" / f"{utt}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert list(grid.tierNames) == ["words", "phones"] and abs(grid.maxTimestamp - info.duration) < 1e-9
        words = [e for e in grid.getTier("words").entries if e.label]
        phones = [e for e in grid.getTier("phones").entries if e.label]
        assert 4 <= len(words) <= 12
        used = 0
        for word in words:
            # Jyutping syllable + tone digit; its phones tile it: initial (gw) + tonal final (ong2)
            match = re.fullmatch(r"([a-z]+)([1-6])", word.label)
            assert match and match.group(1) in TABLE, (utt, word.label)
            syllable, tone = TABLE[match.group(1)], match.group(2)
            if syllable.checked:
                assert tone in CHECKED_TONES, (utt, word.label)
            inside = [p for p in phones if p.start >= word.start and p.end <= word.end]
            assert [p.label for p in inside] == ([syllable.initial] if syllable.initial else []) + [syllable.final + tone]
            assert inside[0].start == word.start and inside[-1].end == word.end
            assert all(a.end == b.start and a.start < a.end for a, b in zip(inside, inside[1:]))
            used += len(inside)
            tones[tone] += 1
        assert used == len(phones), utt
    assert set(tones) == set("123456") and min(tones.values()) >= 0.8 * max(tones.values()), tones
    meta = json.loads((yue_corpus / "synth.json").read_text())
    assert meta["complete"] and meta["settings"]["language"] == "yue"
    assert meta["settings"]["voice"] == "yue-Latn-jyutping" and list(meta["counts"]["tones"]) == list("123456")
    assert all(v["language"] == "yue" for v in meta["speakers"])


def test_deterministic_resumes_and_differs_from_mandarin(tmp_path):
    first, again = tmp_path / "a", tmp_path / "b"
    synthesize_corpus(first, n_speakers=2, n_utterances=2, seed=4, language="yue")
    synthesize_corpus(again, n_speakers=2, n_utterances=2, seed=4, language="yue")
    assert _digest(first) == _digest(again) and len(_digest(first)) == 9
    (again / "textgrid" / "F01_0002.TextGrid").unlink()
    assert "1 speaker synthesised, 1 already complete" in synthesize_corpus(again, n_speakers=2, n_utterances=2,
                                                                             seed=4, language="yue")
    assert _digest(again) == _digest(first)
    with pytest.raises(PhonormError, match="other settings"):  # the language is part of the corpus
        synthesize_corpus(first, n_speakers=2, n_utterances=2, seed=4)
    with pytest.raises(PhonormError, match="--language 'fr'"):
        synthesize_corpus(tmp_path / "c", n_speakers=2, n_utterances=1, language="fr")
    voices, plan = plan_corpus(2, 1, seed=4, language="cmn")
    assert all(v.voice_name.startswith("cmn-latn-pinyin+") for v in voices)


def test_wide_variation_lands_on_target_f0(tmp_path):
    """Variation "wide" sets pitch from the Cantonese voice's own measured F0 per variant: each
    speaker's median F0 (Praat) is within 1.5 semitones of its drawn target (as for Mandarin)."""
    out = tmp_path / "wide"
    synthesize_corpus(out, n_speakers=4, n_utterances=2, seed=1, jobs=2, variation="wide", language="yue")
    voices = {v["speaker"]: v for v in json.loads((out / "synth.json").read_text())["speakers"]}
    for speaker, values in speaker_f0(out).items():
        off = 12 * np.log2(np.median(values) / voices[speaker]["wide"]["f0_target"])
        assert abs(off) < 1.5, (speaker, off, voices[speaker])


# --------------------------------------------------------------------------- the tones, measured
def _tone_contours(corpus: Path) -> dict[int, np.ndarray]:
    """tone → (finals, 3): F0 at 10 %, 50 % and 90 % of each final (linear interpolation over its
    voiced 5 ms Praat frames), in semitones relative to the speaker's median over all its finals."""
    rows = []
    for utterance, entry, times, f0 in tonal_finals(corpus):
        voiced = ~np.isnan(f0)
        if voiced.sum() < 5:
            continue
        where = (times[voiced] - entry.start) / (entry.end - entry.start)
        semitones = 12 * np.log2(f0[voiced] / 100)
        rows.append((utterance.split("_")[0], int(entry.label[-1]), np.interp([0.1, 0.5, 0.9], where, semitones)))
    by_speaker = collections.defaultdict(list)
    for speaker, _, values in rows:
        by_speaker[speaker].extend(values)
    median = {speaker: np.median(v) for speaker, v in by_speaker.items()}
    out = collections.defaultdict(list)
    for speaker, tone, values in rows:
        out[tone].append(values - median[speaker])
    return {tone: np.array(v) for tone, v in out.items()}


def test_six_tones_measured(yue_corpus):
    """Cantonese tones (Chao 55, 25, 33, 21, 23, 22): 1, 3, 6 level at high, mid, low-mid heights;
    4 falls to the lowest end; 2 and 5 rise, 2 ending higher; measured on every final."""
    contours = _tone_contours(yue_corpus)
    assert sorted(contours) == [1, 2, 3, 4, 5, 6] and min(len(v) for v in contours.values()) >= 40
    mean = {tone: v.mean(axis=0) for tone, v in contours.items()}  # (start, mid, end) in semitones
    change = {tone: v[:, 2] - v[:, 0] for tone, v in contours.items()}  # per final, end - start
    for level in (1, 3, 6):
        assert abs(mean[level][2] - mean[level][0]) < 0.5, (level, mean[level])
    for rising in (2, 5):
        assert mean[rising][2] - mean[rising][0] > 1.0 and (change[rising] > 0).mean() > 0.8, (rising, mean[rising])
    assert mean[4][2] - mean[4][0] < -0.5 and (change[4] < 0).mean() > 0.8, mean[4]
    assert mean[1][1] > max(m[1] for t, m in mean.items() if t != 1) + 0.5  # 1: the highest level
    assert mean[4][2] < min(m[2] for t, m in mean.items() if t != 4)  # 4: the lowest end
    assert mean[2][2] > mean[5][2] + 1.0  # 2 (25) ends higher than 5 (23)
    assert mean[3][1] > mean[6][1] + 0.5  # 3 (33) is above 6 (22)
    assert mean[1][1] > mean[3][1] > mean[6][1]


# --------------------------------------------------------------------------- prepared under the tonal scheme
def test_prepares_under_the_tonal_scheme_with_six_tones(yue_corpus, tmp_path):
    from phonorm.corpus.prepare import prepare_corpus
    from phonorm.corpus.store import PreparedCorpus
    from phonorm.experiment.config import SynthCorpus
    from phonorm.frames import IGNORE_INDEX, FrameGeometry, frame_labels

    settings = SynthCorpus(language="yue", dev=0.25, test=0.25).prepare_settings()
    assert (settings.scheme, settings.tones) == ("tonal", [1, 2, 3, 4, 5, 6])
    assert (SynthCorpus().prepare_settings().scheme, SynthCorpus().prepare_settings().tones) == ("mandarin", None)
    out = tmp_path / "prepared"
    prepare_corpus(out, audio_dir=yue_corpus / "wav", alignments=yue_corpus / "textgrid",
                   speakers_file=yue_corpus / "speakers.tsv", settings=settings)
    corpus = PreparedCorpus(out)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["scheme"] == "tonal" and labels["tasks"]["tone"] == ["1", "2", "3", "4", "5", "6"]
    assert not (out / "skipped.tsv").exists()
    segments = corpus.segments
    finals = segments[segments.is_final]
    assert set(finals.tone) == {1, 2, 3, 4, 5, 6} and (segments[~segments.is_final].tone == 0).all()
    assert set(segments[~segments.is_final].phone) <= set(YUE.initials)
    # every segment knows its syllable: the word interval (gwong2) it lies in
    assert (segments.syllable == segments.word).all() and (segments.syllable != "").all()
    assert all(s.endswith(str(t)) for s, t in zip(finals.syllable, finals.tone))
    # frame labels: a final's frames carry its tone's class (index in labels.json), initials' frames none
    geometry = FrameGeometry()
    utt = corpus.utterances("train").iloc[0]
    seg = corpus.segments_of(utt.utterance_id)
    n_frames = geometry.frames_for_duration(utt.duration)
    grid = frame_labels(seg, utt, n_frames, labels["tasks"], geometry, tasks=["tone"])
    times = geometry.frame_times(n_frames)
    toned = 0
    for row in seg.itertuples():
        inside = (times >= row.start) & (times < row.end)
        expected = labels["tasks"]["tone"].index(str(row.tone)) if row.is_final else IGNORE_INDEX
        assert (grid["tone"][inside] == expected).all(), row
        toned += int(inside.sum()) if row.is_final else 0
    assert toned == int((grid["tone"] != IGNORE_INDEX).sum()) > 0


# --------------------------------------------------------------------------- end to end
SMALL_STUDY = {
    "name": "cantonese-e2e",
    "corpus": {"synth": {"language": "yue", "speakers": 6, "utterances": 3, "seed": 0, "dev": 0.34, "test": 0.34}},
    "pretrain": [{"name": "pre", "size": "tiny", "steps": 4, "batch_seconds": 4, "seed": 0}],
    "finetune": [{"name": "tone", "base": "pre", "tasks": ["tone"],
                  "settings": {"epochs": 1, "batch_seconds": 12, "eval_every": 5, "seed": 0}}],
    "evaluate": {"split": "test"},
    "extract": {"split": "test", "frames": "middle", "max_per_speaker_label": 10},
    # the slowest analyses off or small (UMAP, permutation floors): the point is the six tones, not the numbers
    "analyze": {"reference": "pre", "folds": 2, "sample_rows": 500,
                "umap": False, "similarity_floor": False, "silhouette_rows": 100, "probe_max_iter": 50},
}


@pytest.mark.slow
def test_cantonese_study_runs_to_a_report_with_six_tones(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**SMALL_STUDY, "workdir": str(tmp_path / "run")}), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "phonorm.cli", "run", str(path)], capture_output=True, text=True,
                          timeout=600, env=env)
    seconds = time.perf_counter() - tic
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["synth", "corpus", "pretrain", "finetune", "evaluate", "extract",
                                            "analyze", "report"]
    labels = json.loads(next((run / "corpus").glob("corpus-*/labels.json")).read_text())
    assert labels["scheme"] == "tonal" and labels["tasks"]["tone"] == ["1", "2", "3", "4", "5", "6"]
    text = (run / "report.html").read_text(encoding="utf-8")
    # the corpus section's table of frames per tone lists the six tones
    corpus_section = text[text.index('<section id="corpus">'):]
    corpus_section = corpus_section[:corpus_section.index("</section>")]
    tone_rows = re.findall(r"<tr><td>([1-9])</td><td>\d+</td></tr>", corpus_section)
    assert tone_rows == ["1", "2", "3", "4", "5", "6"], tone_rows
    missing = re.findall(r'class="missing">([^<]*)', text)
    # only what was turned off is missing, and the erasure this small corpus cannot support (2 test speakers,
    # 3 speaker-disjoint roles needed) says so instead of passing for an analysis run without it
    assert all(m.startswith("UMAP maps") or m.startswith("concept erasure: skipped: erasure needs at least 3 speakers")
               for m in missing), missing
    tone = json.loads(next((run / "evaluate").glob("tone-*/evaluation.json")).read_text())["tasks"]["tone"]
    assert tone["labels"] == ["1", "2", "3", "4", "5", "6"] and np.array(tone["confusion"]).shape == (6, 6)
    print(f"cantonese study: {seconds:.1f} s")


def test_experiment_synthesises_yue_and_prepares_it_with_the_tonal_scheme(tmp_path, monkeypatch):
    """`corpus: synth: {language: yue}` reaches synth, and the corpus stage prepares with the tonal
    scheme, tones 1-6 (cheap stand-in stages, as in test_experiment.py)."""
    from helpers import BASE, FakeStages
    from helpers import write_yaml as _write
    from phonorm import experiment as ex

    fakes = FakeStages(monkeypatch)
    seen: dict[str, object] = {}
    synth_module, prepare_module = sys.modules["phonorm.corpus.synth"], sys.modules["phonorm.corpus.prepare"]
    fake_synth, fake_prepare = synth_module.synthesize_corpus, prepare_module.prepare_corpus

    def synthesize_corpus(out, **kwargs):
        seen["language"] = kwargs["language"]
        return fake_synth(out, **kwargs)

    def prepare_corpus(out, **kwargs):
        seen["settings"] = kwargs["settings"]
        return fake_prepare(out, **kwargs)

    monkeypatch.setattr(synth_module, "synthesize_corpus", synthesize_corpus)
    monkeypatch.setattr(prepare_module, "prepare_corpus", prepare_corpus)
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["corpus"]["synth"]["language"] = "yue"
    ex.run_experiment(_write(tmp_path, data))
    assert seen["language"] == "yue" and "synth:synth" in fakes.kinds()
    assert (seen["settings"].scheme, seen["settings"].tones) == ("tonal", [1, 2, 3, 4, 5, 6])
