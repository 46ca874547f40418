"""Small hand-made corpus inputs for the prepare/aishell/info tests: wav files, MFA-style TextGrids
written with praatio, CTM text, speakers tables. Everything is tiny (well under a second each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000

# (word, [(phone, seconds), ...]) per syllable: pinyin words, AISHELL-style phones.
SYLLABLES = [
    ("zhong1", [("zh", 0.06), ("ong1", 0.16)]),
    ("guo2", [("g", 0.05), ("uo2", 0.18)]),
    ("ni3", [("n", 0.05), ("i3", 0.20)]),
    ("hao3", [("h", 0.06), ("ao3", 0.18)]),
    ("shi4", [("sh", 0.07), ("i4", 0.15)]),
    ("de5", [("d", 0.04), ("e5", 0.10)]),
    ("yang2", [("iang2", 0.20)]),
]


def write_wav(path: Path, seconds: float, rate: int = SR, channels: int = 1, seed: int = 0, subtype=None) -> Path:
    """A short sine + noise file."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    wave = 0.1 * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(n)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), rate, subtype=subtype)
    return path


def utterance_plan(n_syllables: int, offset: int = 0, lead: float = 0.1):
    """Word and phone intervals of an utterance: silence `lead`, syllables, silence `lead`."""
    words, phones, t = [], [], lead
    for k in range(n_syllables):
        word, parts = SYLLABLES[(k + offset) % len(SYLLABLES)]
        start = t
        for phone, d in parts:
            phones.append((round(t, 4), round(t + d, 4), phone))
            t += d
        words.append((round(start, 4), round(t, 4), word))
    return words, phones, round(t + lead, 4)


def write_textgrid(path: Path, words, phones, end: float, word_tier: str = "words", phone_tier: str = "phones") -> Path:
    from praatio import textgrid
    from praatio.data_classes.interval_tier import IntervalTier

    grid = textgrid.Textgrid()
    grid.addTier(IntervalTier(word_tier, words, 0, end))
    grid.addTier(IntervalTier(phone_tier, phones, 0, end))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(str(path), format="long_textgrid", includeBlankSpaces=True)
    return path


def make_corpus(root: Path, speakers: dict[str, str], n_utts: int = 2, nested: bool = False, rates=(SR,)) -> dict:
    """wav/ (flat `SPK_UTT.wav` or nested `SPK/SPK_UTT.wav`), textgrid/, speakers.tsv.

    Returns the paths and the expected phone intervals per utterance.
    """
    plan = {}
    for s, (spk, _) in enumerate(speakers.items()):
        for u in range(n_utts):
            utt = f"{spk}_{u:03d}"
            words, phones, end = utterance_plan(3 + (s + u) % 4, offset=s + u)
            rate = rates[(s + u) % len(rates)]
            wav = root / "wav" / (spk if nested else "") / f"{utt}.wav"
            write_wav(wav, end, rate=rate, seed=s * 100 + u)
            write_textgrid(root / "textgrid" / f"{utt}.TextGrid", words, phones, end)
            plan[utt] = dict(speaker=spk, words=words, phones=phones, end=end, wav=wav)
    (root / "speakers.tsv").write_text("speaker\tsex\n" + "".join(f"{k}\t{v}\n" for k, v in speakers.items()))
    return dict(audio=root / "wav", alignments=root / "textgrid", speakers=root / "speakers.tsv", plan=plan)


def ctm_text(plan: dict, suffixes: bool = False) -> str:
    lines = []
    for utt, info in plan.items():
        for start, end, phone in info["phones"]:
            label = phone
            if suffixes:
                label += "_B" if not phone[-1].isdigit() else "_E"
            lines.append(f"{utt} 1 {start:.3f} {end - start:.3f} {label}")
    return "\n".join(lines) + "\n"


SIX_SPEAKERS = {"spkA": "F", "spkB": "M", "spkC": "F", "spkD": "M", "spkE": "F", "spkF": "M"}
