"""What every step of an analysis is given: the settings its numbers depend on (`LayerSettings`),
how it runs (`Execution`), and the row structure shared by every layer (`Rows`: the sample, the
speaker groups and held-out halves, the permutation of the floor).

`LayerSettings` is what a saved per-layer result is keyed by: a step reads its settings only from
it, so a setting that changes a number is part of the key by construction, and one that changes
only how the work runs (`Execution`: block size, device, threads, progress bar) is not.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from phonorm.analysis.grouped import SpeakerSums
from phonorm.analysis.kernels import Kernels
from phonorm.analysis.probes import sample_rows
from phonorm.errors import InputError
from phonorm.labels import LABELS
from phonorm.settings.analyze import AnalyzeSettings

#: The labels whose groups the variance shares and the speaker structure use (`labels.LABELS`).
FACTORS = tuple(LABELS)


@dataclass(frozen=True)
class LayerSettings:
    """The settings the per-layer numbers (similarity, probes, erasure, normalization, projections)
    depend on; `erasure_models`: the models erased (resolved from the settings and the store)."""

    reference: str
    held_out: bool
    folds: int
    seed: int
    labels: tuple[str, ...]
    layer_matrix: bool
    sample_rows: Optional[int]
    umap: bool
    umap_fit_rows: int
    umap_dims: int
    umap_all_layers: bool
    silhouette_rows: int
    probe: str
    probe_max_iter: int
    similarity_jackknife: bool
    svcca_keep: float
    svcca_rule: str
    svcca_dims: int
    similarity_floor: bool
    speaker_sums_max_bytes: int
    products: str
    erasure_models: tuple[str, ...]

    @classmethod
    def of(cls, settings: AnalyzeSettings, erasure_models: list[str]) -> LayerSettings:
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if f.name != "erasure_models"}
        return cls(**{**values, "labels": tuple(settings.labels), "erasure_models": tuple(erasure_models)})

    def svcca(self) -> dict[str, Any]:
        """The keyword arguments of every `PairSums.measures` call."""
        return dict(keep=self.svcca_keep, rule=self.svcca_rule, dims=self.svcca_dims)


@dataclass(frozen=True)
class Execution:
    """How the analysis runs; changes no number beyond rounding. `kernels`: the tensor library's work
    (LEACE, and, on a GPU, the streamed d×d products and logistic probes; analysis/kernels.py);
    `workers`: threads for independent products and fits."""

    block: int
    kernels: Kernels
    workers: int
    progress: bool

    @classmethod
    def of(cls, settings: AnalyzeSettings, kernels: Kernels) -> Execution:
        return cls(block=settings.block, kernels=kernels,
                   workers=settings.workers or os.cpu_count() or 1, progress=settings.progress)

    @property
    def device(self) -> str:
        """Where the streamed products and logistic probes run: "cpu", or e.g. "cuda"."""
        return self.kernels.device

    def pool(self) -> ThreadPoolExecutor:
        """Worker threads for independent d×d products and decompositions. BLAS itself runs with one
        thread (`analyze`): OpenBLAS's own threads were measured 100-1000× slower on small and skinny
        products when the machine's cores are busy."""
        return ThreadPoolExecutor(max_workers=self.workers)


def run_jobs(pool: ThreadPoolExecutor, jobs: dict) -> dict:
    """Run the callables of `jobs` (name → () → value) on the worker threads; {name: value}."""
    futures = {name: pool.submit(job) for name, job in jobs.items()}
    return {name: future.result() for name, future in futures.items()}


class Seconds:
    """Wall time per part of the analysis (settings.json's `seconds`: where an analysis spends its time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        import time

        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Seconds per part added since the copy `before` (3 decimals)."""
        return {part: round(value - before.get(part, 0.0), 3) for part, value in self.seconds.items()
                if value - before.get(part, 0.0) > 0}


@dataclass(frozen=True)
class Rows:
    """The rows of a store as every layer sees them.

    `sample`: row numbers (sample,) of the rows read into memory (probes, silhouettes, projections,
    layer matrix), the same for every model; `sample_frames`: their frames. `codes[factor]`: integer
    group codes (rows,) of each factor, −1 for unlabelled rows. `part`: per row 0 = fit half, 1 =
    score half of the speakers (held-out similarity), None with fewer than 2 speakers. `permutation`:
    a row order mapping each row to a random row of the same speaker (the permutation floor), None
    without the floor. The pair sums are kept per `group_codes` group (speakers when their sums fit in
    speaker_sums_max_bytes, else the halves, else one group); `half_masks`: groups of each half.
    """

    sample: np.ndarray
    sample_frames: pd.DataFrame
    codes: dict[str, np.ndarray]
    part: Optional[np.ndarray]
    speaker_names: np.ndarray
    speaker_codes: np.ndarray
    permutation: Optional[np.ndarray]
    groups_are_speakers: bool
    group_codes: np.ndarray
    n_groups: int
    half_masks: Optional[list[np.ndarray]]

    @classmethod
    def of(cls, frames: pd.DataFrame, settings: LayerSettings, dim: int, frames_file: Any) -> Rows:
        """`dim`: the largest layer dimension of the store (the memory of per-speaker sums)."""
        sample = sample_rows(frames, settings.sample_rows, settings.seed)
        part = _held_out_parts(frames, settings, frames_file)
        speakers = frames["speaker"].astype(str).to_numpy()
        names, speaker_codes = np.unique(speakers, return_inverse=True)
        permutation = _within_speaker_permutation(speaker_codes, settings.seed) if settings.similarity_floor else None
        n_speakers = len(names)
        by_speaker = (SpeakerSums.nbytes(n_speakers, dim, dim) + 8 * n_speakers * dim * dim
                      <= settings.speaker_sums_max_bytes)
        half_masks: Optional[list[np.ndarray]] = None
        if by_speaker:
            group_codes, n_groups = speaker_codes.astype(np.int64), n_speakers
            half_of = np.zeros(n_speakers, dtype=np.int8)
            if part is not None:
                half_of[speaker_codes] = part
                half_masks = [half_of == 0, half_of == 1]
        elif part is not None:
            group_codes, n_groups = part.astype(np.int64), 2
            half_masks = [np.array([True, False]), np.array([False, True])]
        else:
            group_codes, n_groups = np.zeros(len(frames), dtype=np.int64), 1
        return cls(sample=sample, sample_frames=frames.iloc[sample].reset_index(drop=True),
                   codes={f: _codes(frames, f) for f in FACTORS}, part=part, speaker_names=names,
                   speaker_codes=speaker_codes, permutation=permutation, groups_are_speakers=by_speaker,
                   group_codes=group_codes, n_groups=n_groups, half_masks=half_masks)

    def held_out_summary(self, frames: pd.DataFrame) -> dict | None:
        if self.part is None:
            return None
        spk = frames["speaker"].astype(str).to_numpy()
        return {"fit_speakers": sorted(set(spk[self.part == 0])), "score_speakers": sorted(set(spk[self.part == 1]))}

    def sample_parts(self, held_out: bool) -> list[np.ndarray]:
        """Rows of the sample per part (positions in the sample): [fit rows, score rows] with
        --held-out (and two speaker halves), else [every row]."""
        if held_out and self.part is not None:
            part = self.part[self.sample]
            return [np.flatnonzero(part == 0), np.flatnonzero(part == 1)]
        return [np.arange(len(self.sample))]


def _held_out_parts(frames: pd.DataFrame, settings: LayerSettings, frames_file: Any) -> np.ndarray | None:
    """Per row: 0 = fit half, 1 = score half of the speakers (held-out similarity); None with fewer
    than 2 speakers (held-out values are then NaN; an error when --held-out asked for them)."""
    speakers = np.unique(frames["speaker"].astype(str))
    if len(speakers) < 2:
        if settings.held_out:
            raise InputError(frames_file, "--held-out needs at least 2 speakers")
        return None
    rng = np.random.default_rng(settings.seed)
    fit = set(rng.permutation(speakers)[: len(speakers) // 2])
    return np.where(frames["speaker"].astype(str).isin(fit).to_numpy(), 0, 1).astype(np.int8)


def _within_speaker_permutation(codes: np.ndarray, seed: int) -> np.ndarray:
    """Row order (rows,) that maps every row to a random row of the same speaker (codes (rows,))."""
    rng = np.random.default_rng([seed, 13])
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    perm = np.empty_like(order)
    for group in np.split(order, bounds):
        perm[group] = rng.permutation(group)
    return perm


def _codes(frames: pd.DataFrame, factor: str) -> np.ndarray:
    """Integer group codes (rows,) of a factor; −1 for rows without that label (`LabelSpec.present`).
    A numeric label (tone) keeps its values as codes."""
    spec = LABELS[factor]
    column = frames[factor].to_numpy()
    present = spec.present(column)
    if isinstance(spec.missing, int):
        return np.where(present, column, -1).astype(np.int64)
    _, codes = np.unique(spec.values(column), return_inverse=True)
    return np.where(present, codes, -1).astype(np.int64)


