"""Reading audio of any rate, channel count and common format as 16 kHz mono float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from phonorm.errors import InputError
from phonorm.frames import SAMPLE_RATE, FrameGeometry

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".sph")


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration in s, sample rate in Hz, channels) of a file, without reading the samples."""
    info = _info(path)
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def _info(path: str | Path):
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises its own LibsndfileError, RuntimeError or TypeError
        raise InputError(path, f"unreadable audio ({err})") from None
    if info.frames <= 0:
        raise InputError(path, "empty audio (0 samples)")
    return info


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
"""soundfile subtypes that store floating-point samples: the only ones that can hold NaN or inf."""


def check_audio(path: str | Path, geometry: FrameGeometry = FrameGeometry()) -> tuple[float, int, int]:
    """`audio_info` of a file a model can read: at least one frame of `geometry` long once at
    16 kHz (400 samples, 25 ms, for wav2vec 2.0 / HuBERT / WavLM) and, for floating-point files,
    every sample finite (NaN or inf would become NaN embeddings). Raises `InputError` naming the
    file otherwise."""
    info = _info(path)
    duration, rate, channels = info.frames / info.samplerate, int(info.samplerate), int(info.channels)
    samples = info.frames * SAMPLE_RATE // info.samplerate  # after resampling to 16 kHz
    if geometry.num_frames(samples) < 1:
        need = geometry.receptive_field
        raise InputError(path, f"audio too short: {duration * 1000:.1f} ms ({samples} samples at 16 kHz), shorter than "
                               f"one model frame ({need} samples, {need * 1000 // SAMPLE_RATE} ms)")
    if info.subtype in FLOAT_SUBTYPES:
        bad, first = 0, 0
        try:
            for start, block in _blocks(path):
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    if not bad:
                        first = start + int(np.argmin(finite))
                    bad += int((~finite).sum())
        except Exception as err:  # soundfile's errors on a file that breaks while reading
            raise InputError(path, f"unreadable audio ({err})") from None
        if bad:
            raise InputError(path, f"{bad} NaN or infinite sample(s) in the audio (first at {first / rate:.3f} s); "
                                   "models would turn them into NaN embeddings")
    return duration, rate, channels


def _blocks(path: str | Path, size: int = 1 << 18):
    """(first sample, float32 block (samples, channels)) over a file, a block at a time."""
    start = 0
    for block in sf.blocks(str(path), blocksize=size, dtype="float32", always_2d=True):
        yield start, block
        start += len(block)


RECORDED_DURATION_TOLERANCE_S = 0.001
"""Prepare records the exact duration (samples / rate); a file loaded later must have it to a millisecond."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, *, recorded_seconds: float | None = None) -> np.ndarray:
    """Samples of `path` as float32, shape (samples,), mono (channel mean), at `sample_rate` Hz
    (resampled with soxr's high-quality filter when the file has another rate).

    `recorded_seconds`: the duration `phonorm prepare` recorded for the file; audio of another length
    was replaced after the corpus was prepared, and its alignment no longer fits it: refused."""
    if not Path(path).is_file():
        raise InputError(path, "audio file missing" + (" (it was there when the corpus was prepared)"
                                                       if recorded_seconds is not None else ""))
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise InputError(path, f"unreadable audio ({err})") from None
    if data.shape[0] == 0:
        raise InputError(path, "empty audio (0 samples)")
    if recorded_seconds is not None and abs(data.shape[0] / rate - recorded_seconds) > RECORDED_DURATION_TOLERANCE_S:
        raise InputError(path, f"{data.shape[0] / rate:.3f} s of audio where `phonorm prepare` recorded "
                               f"{recorded_seconds:.3f} s: the file was replaced after the corpus was prepared, so its "
                               "alignment no longer fits; prepare the corpus again")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)
