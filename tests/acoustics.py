"""Praat measurements of a synthetic corpus that the synth tests check (one place, every language)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import numpy as np
import parselmouth
from praatio import textgrid


def speaker_f0(corpus: Path) -> dict[str, np.ndarray]:
    """speaker → voiced F0 values (Hz) of all their utterances (Praat, 10 ms step, 60-450 Hz)."""
    f0 = collections.defaultdict(list)
    for wav in sorted((corpus / "wav").glob("*.wav")):
        pitch = parselmouth.Sound(str(wav)).to_pitch(time_step=0.01, pitch_floor=60, pitch_ceiling=450)
        values = pitch.selected_array["frequency"]
        f0[wav.stem.split("_")[0]].extend(values[values > 0])
    return {speaker: np.array(v) for speaker, v in f0.items()}


def tonal_finals(corpus: Path) -> Iterator[tuple[str, object, np.ndarray, np.ndarray]]:
    """(utterance, phones-tier interval, times (s), F0 (Hz, NaN unvoiced)) for every phone whose label
    ends in a tone digit: Praat pitch sampled every 5 ms inside the interval (60-450 Hz)."""
    for grid_path in sorted((corpus / "textgrid").glob("*.TextGrid")):
        grid = textgrid.openTextgrid(str(grid_path), includeEmptyIntervals=False)
        pitch = parselmouth.Sound(str(corpus / "wav" / f"{grid_path.stem}.wav")).to_pitch(
            time_step=0.005, pitch_floor=60, pitch_ceiling=450)
        for entry in grid.getTier("phones").entries:
            if not entry.label[-1].isdigit():
                continue
            times = np.arange(entry.start + 0.0025, entry.end, 0.005)
            yield grid_path.stem, entry, times, np.array([pitch.get_value_at_time(t) for t in times])
