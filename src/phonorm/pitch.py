"""Praat pitch conventions shared by the classic F0 baselines (features/classic.py) and the pitch targets
of pre-training (models/targets.py), declared once."""

from __future__ import annotations

import numpy as np

DEFAULT_PITCH_RANGE_HZ = (60.0, 500.0)
"""Praat's pitch floor and ceiling when a voice's sex is not used (Praat's manual advises 75-300 Hz for
male and 100-500 Hz for female voices; 60 Hz leaves room for creaky low tones)."""
SEMITONE_REFERENCE_HZ = 100.0


def semitones(f0_hz: np.ndarray) -> np.ndarray:
    """F0 in Hz → semitones re `SEMITONE_REFERENCE_HZ` (float64; NaN and 0 Hz give NaN and -inf)."""
    return 12.0 * np.log2(np.asarray(f0_hz, dtype=np.float64) / SEMITONE_REFERENCE_HZ)
