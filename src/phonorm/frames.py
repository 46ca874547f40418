"""Samples → frames, the one place it is done, and per-frame label grids derived from it.

Every stage that needs a frame count or a frame time calls `FrameGeometry` (pitfall 3, docs/pitfalls.md: frame
counts off by one or two between APIs and labels). The geometry comes from the model config's
convolutional feature encoder (`conv_kernel`, `conv_stride`), so it is right for wav2vec 2.0,
HuBERT, WavLM and data2vec-audio of any size.

Frame `i` covers samples `[i * hop, i * hop + receptive_field)`; its time is the centre of that span.
A frame carries a segment's label when its centre lies in `[start, end)` of the segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from phonorm.labels import LABELS
from phonorm.settings import TASKS

IGNORE_INDEX = -100
"""Label of frames a task does not score (torch's CrossEntropyLoss ignore_index)."""

SAMPLE_RATE = 16_000
"""Every model input in phonorm is 16 kHz mono."""

# wav2vec 2.0 / HuBERT / WavLM feature encoder: 20 ms hop, 25 ms receptive field at 16 kHz.
DEFAULT_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
DEFAULT_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)



@dataclass(frozen=True)
class FrameGeometry:
    """The frame grid of a convolutional feature encoder.

    `conv_kernel` and `conv_stride` are in samples, one entry per conv layer.
    """

    conv_kernel: tuple[int, ...] = DEFAULT_CONV_KERNEL
    conv_stride: tuple[int, ...] = DEFAULT_CONV_STRIDE
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_config(cls, config: Any) -> "FrameGeometry":
        """From a transformers config (or a dict of one) with `conv_kernel` and `conv_stride`."""
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        kernel, stride = get("conv_kernel"), get("conv_stride")
        if kernel is None or stride is None:
            raise ValueError("model config has no conv_kernel/conv_stride: not a wav2vec2-style speech model")
        if len(kernel) != len(stride):
            raise ValueError(f"conv_kernel {kernel} and conv_stride {stride} differ in length")
        return cls(tuple(int(k) for k in kernel), tuple(int(s) for s in stride))

    @property
    def hop(self) -> int:
        """Samples between consecutive frames (320 = 20 ms for the default encoder)."""
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 = 25 ms for the default encoder)."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * stride + kernel
        return field

    def num_frames(self, num_samples: int) -> int:
        """Frames the encoder outputs for `num_samples` input samples (the conv stack's formula,
        as transformers' `_get_feat_extract_output_lengths`)."""
        length = int(num_samples)
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each frame in seconds, shape (n_frames,)."""
        starts = np.arange(n_frames, dtype=np.float64) * self.hop
        return (starts + self.receptive_field / 2.0) / self.sample_rate

    def frames_for_duration(self, seconds: float) -> int:
        return self.num_frames(int(round(seconds * self.sample_rate)))


def segment_index_per_frame(starts: Sequence[float], ends: Sequence[float], times: np.ndarray) -> np.ndarray:
    """Index of the segment whose `[start, end)` holds each frame time, -1 where none does.

    `starts`/`ends` in seconds, sorted by start and not overlapping (one alignment tier).
    Returns int64, shape (len(times),).
    """
    start = np.asarray(starts, dtype=np.float64)
    end = np.asarray(ends, dtype=np.float64)
    if start.size == 0:
        return np.full(len(times), -1, dtype=np.int64)
    candidate = np.searchsorted(start, times, side="right") - 1
    inside = (candidate >= 0) & (times < end[np.clip(candidate, 0, None)])
    return np.where(inside, candidate, -1).astype(np.int64)


def frame_labels(
    segments: Any,
    utterance: Mapping[str, Any],
    n_frames: int,
    label_maps: Mapping[str, Sequence[str]],
    geometry: FrameGeometry | None = None,
    tasks: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame class indices for each task of one utterance.

    `segments`: the utterance's rows of segments.parquet (columns `start`, `end` in s, `phone`,
    `tone` with 0 for none), sorted by start; `utterance`: its row of utterances.parquet (speaker-level
    labels: `sex`, `speaker`). `label_maps[task]` lists the task's labels; the index in that list is
    the class id. A segment-level label (`labels.LabelSpec`) labels the frames of the segments that
    carry it (tone: finals only, tone > 0; phone: every phone), a speaker-level one (sex) every speech
    frame; everything else is `IGNORE_INDEX`.
    Returns task → int64 array of shape (n_frames,), plus `"segment"` → segment row position or -1.
    """
    geometry = geometry or FrameGeometry()
    tasks = list(tasks or label_maps.keys())
    times = geometry.frame_times(n_frames)
    seg_of_frame = segment_index_per_frame(segments["start"].to_numpy(), segments["end"].to_numpy(), times)
    speech = seg_of_frame >= 0
    out: dict[str, np.ndarray] = {"segment": seg_of_frame}
    for task in tasks:
        index = {label: i for i, label in enumerate(label_maps[task])}
        grid = np.full(n_frames, IGNORE_INDEX, dtype=np.int64)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        spec = LABELS[task]
        if spec.speaker_level:
            value = str(utterance[task])
            if value in index:
                grid[speech] = index[value]
        else:
            names = spec.names(segments[task].to_numpy())
            seg_class = np.array([index.get(name, IGNORE_INDEX) for name in names], dtype=np.int64)
            if seg_class.size:
                grid[speech] = seg_class[seg_of_frame[speech]]
        out[task] = grid
    return out


def sample_nearest(xs: np.ndarray, values: np.ndarray, times: np.ndarray, max_gap: float) -> np.ndarray:
    """The rows of `values` (analysis frames, k) at the analysis frame nearest each of `times` (seconds):
    (len(times), k) float64, NaN where the nearest frame time in `xs` (seconds, sorted) is farther than
    `max_gap` seconds. Samples Praat's 5 ms analyses at the model's 20 ms frames."""
    if len(xs) == 0:
        return np.full((times.size, values.shape[1] if values.ndim == 2 else 1), np.nan)
    position = np.clip(np.searchsorted(xs, times), 1, len(xs) - 1) if len(xs) > 1 else np.zeros(times.size, int)
    if len(xs) > 1:
        left_closer = np.abs(times - xs[position - 1]) <= np.abs(xs[position] - times)
        position = np.where(left_closer, position - 1, position)
    out = values[position].astype(np.float64)
    out[np.abs(xs[position] - times) > max_gap] = np.nan
    return out
