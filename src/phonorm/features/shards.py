"""One process's share of an extraction: chunks of utterances through each model, rows written as they come.

Under `accelerate launch`, process p of n takes a contiguous, duration-balanced share of the
utterances (`share_of`) and writes `F/<model>/L<k>/part-<p>.npy`. Work is cut into chunks of about
`chunk_seconds` of audio; after each chunk the files are synced (`writer.RowWriter`: bounded
memory, hidden partial files renamed when complete) and the progress recorded, so an interrupted
run resumes at the next chunk. Group-norm models get only utterances of equal length per batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from phonorm.artifacts import read_json, write_json
from phonorm.errors import PhonormError
from phonorm.features import layout
from phonorm.features.classic import CLASSIC_DIMS, classic_features
from phonorm.features.frames_file import RowIndex
from phonorm.features.plan import ModelSpec, Plan
from phonorm.features.selection import pooling_index
from phonorm.features.writer import RowWriter, partial_matches, partial_path
from phonorm.frames import SAMPLE_RATE
from phonorm.memory import release_free_memory
from phonorm.progress import progress as progress_bar


def share_of(utterances: pd.DataFrame, process_index: int, num_processes: int) -> pd.DataFrame:
    """Contiguous block `process_index` of `num_processes`, balanced by audio duration, so the
    parts concatenated in process order give the rows in order."""
    if num_processes <= 1:
        return utterances
    cumulative = np.cumsum(utterances["duration"].to_numpy(dtype=np.float64))
    edges = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, num_processes) / num_processes, side="left")
    bounds = np.clip(np.concatenate([[0], edges + 1, [len(utterances)]]), 0, len(utterances))
    return utterances.iloc[bounds[process_index]:bounds[process_index + 1]]


def chunks_of(share: pd.DataFrame, chunk_seconds: float) -> list[pd.DataFrame]:
    """Consecutive runs of utterances of about `chunk_seconds` of audio (at least one each)."""
    chunks, begin, total = [], 0, 0.0
    durations = share["duration"].to_numpy(dtype=np.float64)
    for i, seconds in enumerate(durations):
        if i > begin and total + seconds > chunk_seconds:
            chunks.append(share.iloc[begin:i])
            begin, total = i, 0.0
        total += seconds
    if begin < len(share):
        chunks.append(share.iloc[begin:])
    return chunks


def run_share(plan: Plan, process_index: int = 0, num_processes: int = 1, device: Any = "cpu",
              progress: bool = True) -> None:
    """Extract this process's share of the utterances for every model left to do (and the
    classic baselines' raw parts)."""
    share = share_of(plan.selection.utterances, process_index, num_processes)
    for spec in plan.todo_models:
        _run_model(plan, spec, share, process_index, num_processes, device, progress)
    if plan.todo_classic:
        _run_classic(plan, share, process_index, num_processes, progress)


def _row_index(plan: Plan) -> RowIndex:
    """The rows' times, read back from frames.parquet a row group at a time (memory flat in the rows)."""
    return RowIndex(plan.out / layout.FRAMES_FILE)


def _layer_path(plan: Plan, model: str, layer: str, process_index: int, num_processes: int) -> Path:
    if num_processes == 1:
        return plan.out / model / f"{layer}.npy"
    return plan.out / model / layer / layout.part_name(process_index)


def _share_rows(share: pd.DataFrame) -> tuple[int, int]:
    if len(share) == 0:
        return 0, 0
    return int(share["row_begin"].iloc[0]), int(share["row_end"].iloc[-1])


def _run_chunked(
    *, plan: Plan, what: str, key: str, folder: Path, share: pd.DataFrame, process_index: int,
    num_processes: int, outputs: dict[str, tuple[Path, int, Any]], progress: bool,
    process_chunk: Callable[[pd.DataFrame, dict[str, RowWriter], int, Callable[[pd.Series], None]], dict],
) -> dict:
    """The resumable loop shared by models and classic baselines.

    `outputs`: name → (final path, dim, dtype). `process_chunk(utterances, writers, first_row, tick)`
    writes the chunk's rows (row numbers relative to the share's first row) and calls `tick(utt)`
    after each utterance. Progress is recorded in `folder/.progress-p-of-n.json` after each chunk.
    """
    tag = f"{process_index}-of-{num_processes}"
    progress_path = folder / f".progress-{tag}.json"
    done_path = folder / f".done-{tag}.json"
    chunks = chunks_of(share, plan.settings.chunk_seconds)
    row_begin, row_end = _share_rows(share)
    chunk_plan = hashlib.sha256(json.dumps([len(c) for c in chunks] + [row_begin, row_end]).encode()).hexdigest()[:12]
    if done_path.is_file() and read_json(done_path).get("key") == key:
        return read_json(done_path)
    record = read_json(progress_path) if progress_path.is_file() else {}
    resume, done_chunks = _resume_point(record, key, chunk_plan, len(chunks), outputs, row_end - row_begin)
    counters = dict(record.get("counters", {})) if resume else {}
    writers: dict[str, RowWriter] = {}
    if done_chunks < len(chunks):
        writers = {name: RowWriter(path, row_end - row_begin, dim, dtype, resume=resume)
                   for name, (path, dim, dtype) in outputs.items()}
    seconds = share["duration"].to_numpy(dtype=np.float64)
    done_utts = sum(len(c) for c in chunks[:done_chunks])
    bar = progress_bar(total=float(seconds.sum()), initial=float(seconds[:done_utts].sum()), unit="s", desc=what,
               enabled=progress, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
               "[{elapsed}<{remaining}{postfix}]", dynamic_ncols=True)
    state = {"utts": done_utts}

    def tick(utt) -> None:
        state["utts"] += 1
        bar.update(min(float(utt.duration), max(bar.total - bar.n, 0.0)))  # float sums may overshoot
        bar.set_postfix_str(f"{state['utts']}/{len(share)} utterances", refresh=False)

    try:
        for index in range(done_chunks, len(chunks)):
            found = process_chunk(chunks[index], writers, row_begin, tick)
            for name, value in found.items():
                counters[name] = counters.get(name, 0) + value
            for writer in writers.values():
                writer.sync()
            write_json(progress_path, dict(key=key, chunk_plan=chunk_plan, chunks_done=index + 1,
                                           chunks=len(chunks), counters=counters))
        for writer in writers.values():
            writer.finish()
        writers = {}
        _finish_outputs(outputs)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    result = dict(key=key, rows=row_end - row_begin, utterances=len(share), seconds=float(seconds.sum()),
                  counters=counters)
    write_json(done_path, result)
    progress_path.unlink(missing_ok=True)
    return result


def _resume_point(record: dict, key: str, chunk_plan: str, n_chunks: int, outputs: dict[str, tuple[Path, int, Any]],
                  rows: int) -> tuple[bool, int]:
    """(resume?, chunks already done) from a share's progress record; without a resume, the share's
    output files of an older run are deleted (a stale file must not look complete)."""
    resume = record.get("key") == key and record.get("chunk_plan") == chunk_plan
    done_chunks = int(record.get("chunks_done", 0)) if resume else 0
    if resume and done_chunks < n_chunks and not all(
            partial_matches(partial_path(path), rows, dim, dtype) for path, dim, dtype in outputs.values()):
        resume, done_chunks = False, 0  # a partial file went missing or changed: start this share again
    if not resume:
        for path, _, _ in outputs.values():
            path.unlink(missing_ok=True)
    return resume, done_chunks


def _finish_outputs(outputs: dict[str, tuple[Path, int, Any]]) -> None:
    """Every output under its final name; a partial file finished by an earlier run that stopped
    right after its last chunk is renamed now."""
    for path, _, _ in outputs.values():
        partial = partial_path(path)
        if partial.is_file() and not path.is_file():
            partial.replace(path)
        if not path.is_file():
            raise PhonormError(f"{path}: missing after extraction (was the store modified meanwhile?)")


def _load(utt) -> np.ndarray:
    from phonorm.corpus.audio import load_audio

    return load_audio(utt.audio_path, recorded_seconds=float(utt.duration))


def _rows_of(index: RowIndex, utt) -> pd.DataFrame:
    return index.rows(int(utt.row_begin), int(utt.row_end))


def _run_model(plan: Plan, spec: ModelSpec, share: pd.DataFrame, process_index: int, num_processes: int,
               device: Any, progress: bool) -> None:
    import torch

    from phonorm.models.upstream import Upstream

    upstream = Upstream(spec.source, device=device, normalize=spec.normalize, name=spec.name)
    out_dtype = torch.float16 if plan.settings.dtype == "float16" else torch.float32
    outputs = {name: (_layer_path(plan, spec.name, name, process_index, num_processes), spec.dim, plan.settings.dtype)
               for name in spec.layer_names}
    index = _row_index(plan)

    def process_chunk(chunk: pd.DataFrame, writers: dict[str, RowWriter], first_row: int, tick) -> dict:
        passes = 0
        for batch in plan_batches(chunk, spec.group_norm, plan.settings.batch_seconds):
            waves = [_load(utt) for utt in batch]
            for group in _equal_length_groups(batch, waves) if spec.group_norm else [list(range(len(batch)))]:
                hidden, n_frames = upstream([waves[i] for i in group], spec.layers)  # (L, B, T, D) selected layers
                passes += 1
                for slot, i in enumerate(group):
                    utt = batch[i]
                    rows = _rows_of(index, utt)
                    frame_index, row_of = pooling_index(rows, spec.geometry, n_frames[slot], plan.settings.pool,
                                                        plan.settings.frames, what=f"{spec.name} {utt.utterance_id}")
                    values = _pool(hidden[:, slot], frame_index, row_of, len(rows), device).to(out_dtype).cpu().numpy()
                    for position, name in enumerate(spec.layer_names):
                        writers[name].write(int(utt.row_begin) - first_row, values[position])
            for utt in batch:
                tick(utt)
            release_free_memory(every=2.0)
        return {"forward_passes": passes}

    _run_chunked(plan=plan, what=spec.name, key=spec.key, folder=plan.out / spec.name, share=share,
                 process_index=process_index, num_processes=num_processes, outputs=outputs,
                 progress=progress, process_chunk=process_chunk)


def plan_batches(utterances: pd.DataFrame, group_norm: bool, batch_seconds: float) -> list[list]:
    """Batches of utterances (namedtuples) holding at most `batch_seconds` of (padded) audio each.

    Group-norm models: only utterances of equal sample count share a batch (padding would change
    their outputs). Layer-norm models: sorted by length so padding stays small. One utterance longer
    than `batch_seconds` forms its own batch.
    """
    items = list(utterances.itertuples(index=False))
    samples = [int(round(float(u.duration) * SAMPLE_RATE)) for u in items]
    limit = batch_seconds * SAMPLE_RATE
    order = sorted(range(len(items)), key=lambda i: (-samples[i], i))
    batches: list[list] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = samples[current[0]]
            fits = longest * (len(current) + 1) <= limit
            if group_norm:
                fits = fits and samples[i] == longest
            if not fits:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return [[items[i] for i in batch] for batch in batches]


def _equal_length_groups(batch: list, waves: list[np.ndarray]) -> list[list[int]]:
    """Indices of `batch` grouped by exact sample count (durations can round differently from the
    loaded audio; a group-norm batch must be of one length)."""
    groups: dict[int, list[int]] = {}
    for i, wave in enumerate(waves):
        groups.setdefault(len(wave), []).append(i)
    return list(groups.values())


def _pool(hidden, frame_index: np.ndarray, row_of: np.ndarray, n_rows: int, device: Any):
    """Rows of one utterance from its (layers, frames, dim) states: frame picks, or means."""
    import torch

    index = torch.from_numpy(frame_index).to(device)
    picked = hidden.index_select(1, index)
    if len(frame_index) == n_rows and np.array_equal(row_of, np.arange(n_rows)):
        return picked
    rows = torch.from_numpy(row_of).to(device)
    sums = torch.zeros(hidden.shape[0], n_rows, hidden.shape[2], dtype=hidden.dtype, device=device)
    sums.index_add_(1, rows, picked)
    counts = torch.bincount(rows, minlength=n_rows).clamp_min(1).to(hidden.dtype)
    return sums / counts[None, :, None]


def _run_classic(plan: Plan, share: pd.DataFrame, process_index: int, num_processes: int, progress: bool) -> None:
    folder = plan.out / layout.CLASSIC_DIR / ".parts"
    outputs = {name: (classic_part(folder, name, process_index, num_processes), dim, "float32")
               for name, dim in CLASSIC_DIMS.items()}
    index = _row_index(plan)

    def process_chunk(chunk: pd.DataFrame, writers: dict[str, RowWriter], first_row: int, tick) -> dict:
        for utt in chunk.itertuples(index=False):
            wave = _load(utt)
            rows = _rows_of(index, utt)
            values = classic_features(wave, utt.sex, rows, plan.geometry, plan.geometry.num_frames(len(wave)),
                                      plan.settings.pool, plan.settings.frames, what=utt.utterance_id)
            for name, array in values.items():
                writers[name].write(int(utt.row_begin) - first_row, array)
            tick(utt)
        return {}

    _run_chunked(plan=plan, what="classic F0/MFCC", key=plan.key, folder=folder, share=share,
                 process_index=process_index, num_processes=num_processes, outputs=outputs,
                 progress=progress, process_chunk=process_chunk)




def classic_part(folder: Path, name: str, process_index: int, num_processes: int) -> Path:
    """Where process `process_index` writes its rows of classic baseline `name` before assembly."""
    return folder / f"{name}.part-{process_index:05d}-of-{num_processes}.npy"
