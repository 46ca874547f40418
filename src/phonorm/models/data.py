"""Utterances → model batches: audio, frame label grids, length-bucketed batches.

Padding policy (pitfall 4, docs/pitfalls.md), one choice per feature-encoder kind:
- **group-norm** feature encoders (wav2vec2-base, HuBERT-base; `uses_group_norm`) normalise each
  conv channel over the whole time axis, so zero padding changes every frame's output, and they
  must not get an attention mask. Training batches are therefore *cropped*, never padded: every
  utterance of a batch is cut to the batch's shortest length at a random offset that is a whole
  number of frame hops, and its label grid is cut at the same frame. Each batch row is then exactly
  what the model would compute for that crop alone. Length bucketing keeps the audio cut away
  small (`bench/finetune.py` measures it). Inference on these models runs on batches of equal
  length only (in practice one utterance at a time), so results equal one-at-a-time results.
- **layer-norm** feature encoders (large-style) are padded with zeros to the batch's longest
  utterance and get an attention mask; padded frames carry `IGNORE_INDEX` labels.

Waveforms are normalised per utterance (zero mean, unit variance over the whole utterance, as the
feature extractors of released checkpoints do) before any crop or padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from phonorm.corpus.audio import load_audio
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError
from phonorm.frames import IGNORE_INDEX, SAMPLE_RATE, FrameGeometry, frame_labels


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the utterance (float32, same shape); the numpy twin of
    `backbone.normalize_waveform`."""
    wave = wave.astype(np.float32, copy=False)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)


@dataclass
class Example:
    """One utterance ready for a model: `wave` (samples,) float32 normalised at 16 kHz;
    `labels[task]` (frames,) int64 class ids or IGNORE_INDEX; `segment` (frames,) row position of
    the frame's segment in the utterance's segments or -1; `features` (channels, frames) float32: the
    frozen front end's output of the whole utterance, when fine-tuning caches it (models/frontend.py)."""

    utterance_id: str
    speaker: str
    sex: str
    wave: np.ndarray
    labels: dict[str, np.ndarray]
    segment: np.ndarray
    features: Optional[np.ndarray] = None


class FrameDataset(torch.utils.data.Dataset):
    """The utterances of one split with their frame label grids for the model's frame geometry.

    Audio is cached in memory when the split holds at most `cache_seconds` of audio (reading and
    resampling dominates the cost of small models otherwise).
    """

    def __init__(
        self,
        corpus: PreparedCorpus,
        split: str | None,
        tasks: Sequence[str],
        geometry: FrameGeometry,
        label_maps: dict[str, list[str]] | None = None,
        cache_seconds: float = 3600.0,
        utterances: pd.DataFrame | None = None,
    ):
        self.corpus = corpus
        self.tasks = list(tasks)
        self.geometry = geometry
        self.label_maps = label_maps or corpus.label_maps
        missing = [t for t in self.tasks if t not in self.label_maps]
        if missing:
            raise InputError(corpus.folder / "labels.json", f"no label list for task(s) {', '.join(missing)}")
        table = utterances if utterances is not None else corpus.utterances(split)
        self.table = table.reset_index(drop=True)
        if len(self.table) == 0:
            raise InputError(corpus.folder / "utterances.parquet", f"split {split!r} has no utterances")
        self.durations = self.table["duration"].to_numpy(dtype=np.float64)
        self._cache: dict[int, np.ndarray] | None = {} if self.durations.sum() <= cache_seconds else None
        self.transform: Callable[[Example], Example] | None = None
        """Applied to each example as it is read (pre-training adds its cluster targets this way)."""

    def __len__(self) -> int:
        return len(self.table)

    def wave(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        wave = normalize(load_audio(self.table.at[index, "audio_path"],
                                    recorded_seconds=float(self.table.at[index, "duration"])))
        if self._cache is not None:
            self._cache[index] = wave
        return wave

    def __getitem__(self, index: int) -> Example:
        row = self.table.iloc[index]
        wave = self.wave(index)
        n_frames = self.geometry.num_frames(len(wave))
        if n_frames == 0:
            raise InputError(row["audio_path"], f"audio too short for one frame ({len(wave)} samples)", row["utterance_id"])
        grids = frame_labels(self.corpus.segments_of(row["utterance_id"]), row, n_frames, self.label_maps,
                             self.geometry, self.tasks)
        segment = grids.pop("segment")
        example = Example(row["utterance_id"], row["speaker"], row["sex"], wave, grids, segment)
        return example if self.transform is None else self.transform(example)


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of utterances of similar length, each holding at most `batch_seconds` of (padded)
    audio; a single longer utterance forms its own batch.

    The batches are fixed once (sorted by duration, filled greedily), as fairseq does; each epoch
    shuffles their order with `seed + epoch`. For `num_replicas` processes, the epoch's batch list
    is extended by its first batches to a multiple of `num_replicas` and process `rank` takes every
    `num_replicas`-th batch (the pattern of torch's DistributedSampler, done here so that epoch
    shuffling and skipping already-done batches on resume live in one place).
    """

    def __init__(self, durations: Sequence[float], batch_seconds: float, *, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        if batch_seconds <= 0:
            raise ValueError("batch_seconds must be positive")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_seconds = float(batch_seconds)
        self.seed, self.shuffle = seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, 0
        self.batches = length_bucketed_batches(self.durations, batch_seconds)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch to iterate next; `skip` batches of this process are left out (resuming mid-epoch)."""
        self.epoch, self.skip = int(epoch), int(skip)

    def epoch_batches(self) -> list[list[int]]:
        """This process's batches of the current epoch, in order (before skipping)."""
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.batches))
        batches = [self.batches[i] for i in order]
        total = -(-len(batches) // self.num_replicas) * self.num_replicas
        batches += batches[: total - len(batches)]
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.skip:]

    def __len__(self) -> int:
        return -(-len(self.batches) // self.num_replicas)


def length_bucketed_batches(durations: np.ndarray, batch_seconds: float) -> list[list[int]]:
    """Indices grouped into batches of neighbouring durations with len(batch) × longest ≤ batch_seconds."""
    order = np.argsort(-np.asarray(durations), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for index in order:
        d = float(durations[index])
        if current and (len(current) + 1) * max(longest, d) > batch_seconds:
            batches.append(current)
            current, longest = [], 0.0
        current.append(int(index))
        longest = max(longest, d)
    if current:
        batches.append(current)
    return batches


def random_batches(durations: np.ndarray, sizes: Sequence[int], seed: int = 0) -> list[list[int]]:
    """Random batches with the given sizes (the baseline that `bench/finetune.py` compares with)."""
    order = np.random.default_rng(seed).permutation(len(durations))
    out, start = [], 0
    for size in sizes:
        out.append([int(i) for i in order[start:start + size]])
        start += size
    return out


def wasted_fraction(durations: np.ndarray, batches: Sequence[Sequence[int]]) -> dict[str, float]:
    """Fraction of audio that is padding (pad to longest) or cut away (crop to shortest)."""
    real = padded = kept = 0.0
    for batch in batches:
        d = np.asarray(durations)[list(batch)]
        real += d.sum()
        padded += len(d) * d.max()
        kept += len(d) * d.min()
    return {"padding": 1.0 - real / padded, "cropped": 1.0 - kept / real}


class Collator:
    """Stacks `Example`s into a batch dict: `input_values` (batch, samples) float32,
    `labels` {task: (batch, frames) int64}, `attention_mask` (batch, samples) long for layer-norm
    models, `audio_seconds` (float, real audio in the batch), `frames` and `padded_frames` (ints).

    `crop=True` (group-norm models): cut every example to the batch's shortest (at most
    `max_samples`) at a random offset
    that is a multiple of the frame hop (numpy's global generator, seeded and checkpointed by the
    trainer). `crop=False`: zero-pad to the longest and add an attention mask.

    Examples that carry `features` (the frozen front end's output, models/frontend.py) are cropped or
    padded the same way, frame for frame, and `input_values` is then (batch, channels, frames).
    """

    def __init__(self, geometry: FrameGeometry, tasks: Sequence[str], crop: bool, random_offset: bool = True,
                 max_samples: int | None = None):
        self.geometry, self.tasks, self.crop, self.random_offset = geometry, list(tasks), crop, random_offset
        self.max_samples = max_samples

    def __call__(self, examples: Sequence[Example]) -> dict:
        hop, geo = self.geometry.hop, self.geometry
        lengths = [len(e.wave) for e in examples]
        if self.crop:
            length = min(lengths) if self.max_samples is None else min(min(lengths), self.max_samples)
            n_frames = geo.num_frames(length)
            crops: list[np.ndarray] = []
            label_crops: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
            for e in examples:
                max_offset_frames = (len(e.wave) - length) // hop
                first = int(np.random.randint(0, max_offset_frames + 1)) if self.random_offset else 0
                crops.append(e.wave[first * hop: first * hop + length] if e.features is None
                             else e.features[:, first: first + n_frames])
                for t in self.tasks:
                    label_crops[t].append(e.labels[t][first: first + n_frames])
            batch = {
                "input_values": torch.from_numpy(np.stack(crops)),
                "labels": {t: torch.from_numpy(np.stack(v)) for t, v in label_crops.items()},
            }
            batch["audio_seconds"] = len(examples) * length / SAMPLE_RATE
            batch["frames"] = len(examples) * n_frames
            batch["padded_frames"] = 0
            return batch
        length = max(lengths)
        n_frames = geo.num_frames(length)
        waves = np.zeros((len(examples), length), dtype=np.float32)
        mask = np.zeros((len(examples), length), dtype=np.int64)
        labels = {t: np.full((len(examples), n_frames), IGNORE_INDEX, dtype=np.int64) for t in self.tasks}
        real_frames = 0
        for i, e in enumerate(examples):
            waves[i, : len(e.wave)] = e.wave
            mask[i, : len(e.wave)] = 1
            real_frames += len(e.labels[self.tasks[0]]) if self.tasks else geo.num_frames(len(e.wave))
            for t in self.tasks:
                labels[t][i, : len(e.labels[t])] = e.labels[t]
        cached = [e.features for e in examples if e.features is not None]
        if cached:  # every example carries its front end's output: pad those instead of the waveforms
            features = np.zeros((len(examples), cached[0].shape[0], n_frames), dtype=np.float32)
            for i, f in enumerate(cached):
                features[i, :, : f.shape[1]] = f
        return {
            "input_values": torch.from_numpy(features if cached else waves),
            "attention_mask": torch.from_numpy(mask),
            "labels": {t: torch.from_numpy(v) for t, v in labels.items()},
            "audio_seconds": sum(lengths) / SAMPLE_RATE,
            "frames": len(examples) * n_frames,
            "padded_frames": len(examples) * n_frames - real_frames,
        }


def inference_batches(dataset: FrameDataset, group_norm: bool, batch_seconds: float = 60.0,
                      indices: Sequence[int] | None = None) -> Iterator[tuple[list[Example], dict]]:
    """Whole utterances for evaluation/extraction, as (examples, model inputs) pairs.

    Group-norm models: only utterances of exactly equal sample count share a batch (no padding, no
    mask), so every output equals the one-at-a-time output. Layer-norm models: length-bucketed
    batches, zero padding and an attention mask. Model inputs: `input_values` and, for layer-norm
    models, `attention_mask`.
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    durations = dataset.durations[indices]
    if group_norm:
        samples = np.round(durations * SAMPLE_RATE).astype(np.int64)
        groups: dict[int, list[int]] = {}
        for position, n in zip(indices, samples):
            groups.setdefault(int(n), []).append(position)
        batches = []
        for members in groups.values():
            size = max(1, int(batch_seconds // max(dataset.durations[members[0]], 1e-3)))
            batches += [members[i:i + size] for i in range(0, len(members), size)]
    else:
        batches = [[indices[i] for i in b] for b in length_bucketed_batches(durations, batch_seconds)]
    for batch in batches:
        examples = [dataset[i] for i in batch]
        lengths = {len(e.wave) for e in examples}
        if group_norm and len(lengths) > 1:  # durations rounded alike but sample counts differ
            for e in examples:
                yield [e], {"input_values": torch.from_numpy(e.wave[None])}
            continue
        length = max(lengths)
        waves = np.zeros((len(examples), length), dtype=np.float32)
        mask = np.zeros((len(examples), length), dtype=np.int64)
        for i, e in enumerate(examples):
            waves[i, : len(e.wave)] = e.wave
            mask[i, : len(e.wave)] = 1
        inputs = {"input_values": torch.from_numpy(waves)}
        if not group_norm:
            inputs["attention_mask"] = torch.from_numpy(mask)
        yield examples, inputs
