"""A fast stand-in prepared corpus for unit tests of the later stages (no synthesizer needed).

Speech-like enough for the tasks to be learnable: each syllable is an initial (a band of noise
whose centre frequency names the phone) and a final (a harmonic complex whose F0 contour follows
the tone and whose spectral peak names the vowel). Female speakers have higher F0 than male ones.
The corpus that the acceptance runs use comes from `phonorm synth` (eSpeak NG); this is for speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from phonorm.artifacts import write_json

SR = 16_000
INITIALS = {"b": 1500.0, "d": 3000.0, "s": 5000.0, "zh": 2200.0}
FINALS = {"a": 800.0, "i": 2400.0, "u": 500.0, "e": 1400.0}
TONE_SHAPES = {1: (1.0, 1.0), 2: (0.8, 1.15), 3: (0.8, 0.7), 4: (1.15, 0.7), 5: (0.9, 0.9)}


def _final(f0_start: float, f0_end: float, peak: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SR)
    f0 = np.linspace(f0_start, f0_end, n)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wave = np.zeros(n)
    for h in range(1, 30):
        freq = f0 * h
        weight = np.exp(-((freq - peak) / 400.0) ** 2) + 0.3 / h
        wave += np.where(freq < SR / 2, weight * np.sin(h * phase), 0.0)
    envelope = np.minimum(1.0, np.minimum(np.arange(n), n - np.arange(n)) / (0.01 * SR))
    return 0.1 * wave * envelope / np.max(np.abs(wave)) + 0.002 * rng.standard_normal(n)


def _initial(centre: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spectrum *= np.exp(-((freqs - centre) / 500.0) ** 2)
    wave = np.fft.irfft(spectrum, n)
    return 0.05 * wave / (np.max(np.abs(wave)) + 1e-9)


def make_prepared_corpus(
    folder: str | Path,
    n_speakers: int = 8,
    n_utterances: int = 6,
    seed: int = 0,
    splits: dict[str, str] | None = None,
) -> Path:
    """Write a prepared corpus (utterances.parquet, segments.parquet, labels.json, wav/) to `folder`.

    Speakers alternate F/M; by default the last two speakers are test, the two before dev, the rest
    train (`splits` maps speaker → split to override).
    """
    folder = Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utterances, segments = [], []
    segment_id = 0
    for s in range(n_speakers):
        speaker = f"S{s:02d}"
        sex = "F" if s % 2 == 0 else "M"
        base = rng.uniform(190, 250) if sex == "F" else rng.uniform(95, 140)
        split = (splits or {}).get(speaker) or (
            "test" if s >= n_speakers - 2 else "dev" if s >= n_speakers - 4 else "train"
        )
        for u in range(n_utterances):
            utt = f"{speaker}_U{u:03d}"
            pieces, t = [np.zeros(int(0.15 * SR))], 0.15
            for _ in range(int(rng.integers(4, 8))):
                initial = str(rng.choice(list(INITIALS)))
                final = str(rng.choice(list(FINALS)))
                tone = int(rng.integers(1, 6))
                d_init, d_final = 0.06 + 0.02 * rng.random(), (0.12 if tone == 5 else 0.22) + 0.05 * rng.random()
                start_shape, end_shape = TONE_SHAPES[tone]
                pieces += [_initial(INITIALS[initial], d_init, rng),
                           _final(base * start_shape, base * end_shape, FINALS[final], d_final, rng)]
                syllable = f"{initial}{final}{tone}"
                for phone, d, is_final in ((initial, d_init, False), (final, d_final, True)):
                    segments.append(dict(
                        utterance_id=utt, segment_id=segment_id, start=round(t, 6), end=round(t + d, 6),
                        phone=phone, tone=np.int8(tone if is_final else 0), syllable=syllable,
                        word=syllable, is_final=is_final,
                    ))
                    segment_id += 1
                    t += d
            pieces.append(np.zeros(int(0.15 * SR)))
            wave = np.concatenate(pieces).astype(np.float32)
            path = (folder / "wav" / f"{utt}.wav").resolve()
            sf.write(path, wave, SR)
            utterances.append(dict(
                utterance_id=utt, speaker=speaker, sex=sex, split=split, audio_path=str(path),
                duration=len(wave) / SR, sample_rate=SR, channels=1,
            ))
    utt_table = pd.DataFrame(utterances)
    seg_table = pd.DataFrame(segments)
    seg_table["tone"] = seg_table["tone"].astype("int8")
    utt_table.to_parquet(folder / "utterances.parquet", index=False)
    seg_table.to_parquet(folder / "segments.parquet", index=False)
    write_json(folder / "labels.json", {
        "scheme": "mandarin", "tone_mode": "surface",
        "tasks": {"tone": ["1", "2", "3", "4", "5"], "phone": sorted(INITIALS) + sorted(FINALS), "sex": ["F", "M"]},
        "provenance": {"settings": {"fake": True, "seed": seed}},
    })
    return folder
