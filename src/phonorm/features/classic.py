"""The phonetician's baselines on the very rows of a feature store: F0 and MFCC from Praat.

Praat (through parselmouth) computes pitch and MFCC of each utterance; they are sampled at the
store rows' frame times (nearest Praat frame), and for pooled rows averaged over the pooled frames.
Unvoiced frames have no F0: NaN (kept, so rows stay aligned; analyses drop them and count them).
Per-speaker z-scoring of semitones needs every row of a speaker, so it is done once at the end
(`semitone_z`), not per utterance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from phonorm.features.selection import pooling_index
from phonorm.frames import SAMPLE_RATE, FrameGeometry, sample_nearest
from phonorm.pitch import DEFAULT_PITCH_RANGE_HZ
from phonorm.pitch import semitones as to_semitones

PITCH_RANGE_HZ = {"F": (100.0, 500.0), "M": (60.0, 300.0)}
"""Praat pitch floor and ceiling by speaker sex (Praat's manual advises 100-500 Hz for female and
75-300 Hz for male voices; 60 Hz leaves room for creaky low tones). Other sexes: 60-500 Hz."""
PITCH_STEP_S = 0.005
N_MFCC = 13  # c0..c12

CLASSIC_DIMS = {"f0_hz": 1, "mfcc": N_MFCC}
"""Baselines computed per utterance; `f0_semitone_z` (1 column) is derived from `f0_hz` at the end."""


def classic_features(
    wave: np.ndarray, sex: str, rows: pd.DataFrame, geometry: FrameGeometry, n_frames: int,
    pool: str, frames_mode: str, what: str = "",
) -> dict[str, np.ndarray]:
    """F0 (Hz) and MFCC (c0..c12) of one utterance at its store rows.

    `wave`: float32 (samples,) at 16 kHz; `rows`: the utterance's rows of frames.parquet; `geometry`,
    `n_frames`: the store's frame grid. Returns `{"f0_hz": (rows, 1), "mfcc": (rows, 13)}` float32.
    """
    import parselmouth  # imported here: Praat objects never leave this function (pitfall 12, docs/pitfalls.md)

    frame_index, row_of = pooling_index(rows, geometry, n_frames, pool, frames_mode, what)
    times = geometry.frame_times(n_frames)[frame_index]
    sound = parselmouth.Sound(wave.astype(np.float64), sampling_frequency=SAMPLE_RATE)
    floor, ceiling = PITCH_RANGE_HZ.get(sex, DEFAULT_PITCH_RANGE_HZ)
    try:
        pitch = sound.to_pitch(time_step=PITCH_STEP_S, pitch_floor=floor, pitch_ceiling=ceiling)
        f0 = sample_nearest(pitch.xs(), pitch.selected_array["frequency"][:, None], times, PITCH_STEP_S)[:, 0]
        f0[f0 <= 0] = np.nan  # Praat writes 0 for unvoiced frames
    except parselmouth.PraatError:  # too short for the pitch floor's analysis window
        f0 = np.full(times.size, np.nan)
    try:
        mfcc_obj = sound.to_mfcc(number_of_coefficients=N_MFCC - 1)
        mfcc = sample_nearest(mfcc_obj.xs(), mfcc_obj.to_array().T, times, np.inf)
    except parselmouth.PraatError:
        mfcc = np.full((times.size, N_MFCC), np.nan)
    n_rows = len(rows)
    return {"f0_hz": _pool_mean(f0[:, None], row_of, n_rows), "mfcc": _pool_mean(mfcc, row_of, n_rows)}


def _pool_mean(values: np.ndarray, row_of: np.ndarray, n_rows: int) -> np.ndarray:
    """Mean over each row's frames, ignoring NaN (NaN when all are NaN); float32 (n_rows, k)."""
    valid = ~np.isnan(values)
    sums = np.zeros((n_rows, values.shape[1]))
    counts = np.zeros((n_rows, values.shape[1]))
    np.add.at(sums, row_of, np.where(valid, values, 0.0))
    np.add.at(counts, row_of, valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32)


def semitone_z(f0_hz: np.ndarray, speakers: np.ndarray) -> tuple[np.ndarray, dict]:
    """Semitones re 100 Hz, z-scored per speaker over that speaker's voiced rows.

    `f0_hz`: (rows, 1) with NaN unvoiced; `speakers`: (rows,) labels. Returns float32 (rows, 1)
    (NaN where unvoiced, or where the speaker has fewer than 2 voiced rows) and counts.
    """
    semitones = to_semitones(f0_hz[:, 0])
    table = pd.DataFrame({"speaker": np.asarray(speakers), "st": semitones})
    grouped = table.groupby("speaker")["st"]
    mean = grouped.transform("mean")
    std = grouped.transform(lambda s: s.std(ddof=0) if s.count() >= 2 else np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = ((table["st"] - mean) / std.where(std > 0)).to_numpy(dtype=np.float64)
    counts = {"rows": int(len(z)), "voiced_rows": int(np.isfinite(semitones).sum()),
              "unvoiced_rows": int((~np.isfinite(semitones)).sum())}
    return z.astype(np.float32)[:, None], counts
