"""Reading audio of any rate, channel count and common format as 16 kHz mono float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from phonorm.errors import InputError
from phonorm.frames import SAMPLE_RATE

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".sph")


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration in s, sample rate in Hz, channels) of a file, without reading the samples."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises its own LibsndfileError, RuntimeError or TypeError
        raise InputError(path, f"unreadable audio ({err})") from None
    if info.frames <= 0:
        raise InputError(path, "empty audio (0 samples)")
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of `path` as float32, shape (samples,), mono (channel mean), at `sample_rate` Hz
    (resampled with soxr's high-quality filter when the file has another rate)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise InputError(path, f"unreadable audio ({err})") from None
    if data.shape[0] == 0:
        raise InputError(path, "empty audio (0 samples)")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
