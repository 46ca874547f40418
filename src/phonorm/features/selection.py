"""Which frames a feature store keeps: decided once, from the corpus and one frame geometry.

Every model of a store is then indexed on these very rows (pitfalls 3 and 10, docs/pitfalls.md): the selection
is a table (`frames.parquet`), and `pooling_index` maps its rows onto any model's frame grid by
time, which for models of the same geometry gives exactly the frames that were selected.

Rules (half-open intervals everywhere, as `frames.frame_labels`):
- a frame belongs to a segment when its centre lies in `[start, end)`;
- `middle` keeps frames whose centre lies in the middle third `[start + d/3, end - d/3)`;
- `segment` pooling averages the selected frames of a segment (segments with none are dropped
  and counted);
- caps keep at most N rows per (speaker, phone), drawn without replacement with a seeded RNG.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.corpus.store import PreparedCorpus
from phonorm.frames import SAMPLE_RATE, FrameGeometry, segment_index_per_frame

FRAME_MODES = ("labelled", "middle", "all")
POOL_MODES = ("frame", "segment")

FRAME_COLUMNS = ("row", "utterance_id", "speaker", "sex", "split", "time", "frame", "n_frames",
                 "segment_id", "start", "end", "phone", "tone", "syllable")


# String columns of frames.parquet. In memory they are pandas categoricals (a small integer code
# per row): as one Python/Arrow string per row they cost several hundred bytes per row, and the
# transient copies made while building them left the heap fragmented, so an extraction's resident
# memory grew by ~0.5-1 KB per stored row. They become plain strings only in `write_frames`.
STRING_COLUMNS = ("utterance_id", "speaker", "sex", "split", "phone", "syllable")
# What extraction reads per row once frames.parquet is written (`pooling_index`: time, and start/end
# for segment pooling; the classic baselines' per-speaker z-scores: speaker).
ROW_INDEX_COLUMNS = ("time", "start", "end", "speaker")


@dataclass
class Selection:
    """The rows of a store (`frames`, columns `FRAME_COLUMNS`, string columns as categoricals) and
    the utterances they come from (`utterances`: the corpus rows of utterances with at least one
    selected row, in row order, with `row_begin`/`row_end` added). `key`: content hash of the rows
    (`frames_hash`): two runs resume into one store only when it matches."""

    frames: pd.DataFrame
    utterances: pd.DataFrame
    counts: dict
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = frames_hash(self.frames)

    def keep_row_index(self) -> None:
        """Drop every column extraction no longer reads (`ROW_INDEX_COLUMNS` stay), once
        frames.parquet is written: the index then costs ~25 bytes per row. `key` is kept."""
        self.frames = self.frames[[c for c in ROW_INDEX_COLUMNS if c in self.frames.columns]]


def write_frames(path: str | Path, frames: pd.DataFrame, block: int = 16384) -> None:
    """Write the row index to `path` (parquet, atomically), its string columns as plain strings.

    Written `block` rows at a time, so the strings exist only for one block at once; the file is
    the same as `frames.astype(str columns).to_parquet(path, index=False)`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = {c: "str" for c in STRING_COLUMNS if c in frames.columns}
    with atomic_path(path) as tmp:
        writer = None
        try:
            for begin in range(0, max(len(frames), 1), block):
                part = frames.iloc[begin:begin + block].astype(strings)
                table = pa.Table.from_pandas(part, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


def frames_hash(frames: pd.DataFrame) -> str:
    digest = hashlib.sha256(pd.util.hash_pandas_object(frames, index=False).to_numpy().tobytes())
    digest.update(",".join(frames.columns).encode())
    return digest.hexdigest()[:16]


def segment_windows(starts: np.ndarray, ends: np.ndarray, frames_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The span of each segment whose frames are kept: the whole segment, or its middle third
    for `frames_mode == "middle"`. Seconds, float64."""
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    if frames_mode == "middle":
        third = (ends - starts) / 3.0
        return starts + third, ends - third
    return starts, ends


def nearest_frames(times: np.ndarray, geometry: FrameGeometry, n_frames: int, what: str) -> np.ndarray:
    """Index of the frame of `geometry` whose centre is nearest each time (s); int64.
    Raises when a time lies more than one hop outside the utterance's frames (a grid mismatch)."""
    times = np.asarray(times, dtype=np.float64)
    if n_frames <= 0:
        raise ValueError(f"{what}: the audio is too short for a single frame")
    hop_s = geometry.hop / geometry.sample_rate
    offset_s = geometry.receptive_field / 2.0 / geometry.sample_rate
    index = np.clip(np.rint((times - offset_s) / hop_s), 0, n_frames - 1).astype(np.int64)
    gap = np.abs(geometry.frame_times(n_frames)[index] - times) if times.size else np.zeros(0)
    if gap.size and gap.max() > hop_s:
        raise ValueError(f"{what}: a row at {times[int(gap.argmax())]:.3f} s lies outside the model's "
                         f"{n_frames} frames (frame grids or audio lengths disagree)")
    return index


def pooling_index(
    rows: pd.DataFrame | dict, geometry: FrameGeometry, n_frames: int, pool: str, frames_mode: str, what: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Map one utterance's store rows onto a frame grid.

    `rows`: the utterance's rows of frames.parquet (columns `time`, `start`, `end`); `geometry`,
    `n_frames`: the model's frame grid for this utterance. Returns `(frame_index, row_of)`, both
    int64 of equal length: the embedding of store row r is the mean of the model frames
    `frame_index[row_of == r]` (r counted from 0 within the utterance). For `pool == "frame"` each
    row takes the nearest frame; for `"segment"` the frames whose centre lies in the row's pooled
    span (the nearest frame to the row's time when none does).
    """
    times = np.asarray(rows["time"], dtype=np.float64)
    n_rows = times.size
    if pool == "frame":
        return nearest_frames(times, geometry, n_frames, what), np.arange(n_rows, dtype=np.int64)
    window_start, window_end = segment_windows(rows["start"], rows["end"], frames_mode)
    centres = geometry.frame_times(n_frames)
    low = np.searchsorted(centres, window_start, side="left")
    high = np.searchsorted(centres, window_end, side="left")
    count = np.maximum(high - low, 0)
    empty = count == 0
    if empty.any():
        low = low.copy()
        low[empty] = nearest_frames(times[empty], geometry, n_frames, what)
        count = np.where(empty, 1, count)
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), count)
    first = np.repeat(low, count)
    within = np.arange(row_of.size, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    return (first + within).astype(np.int64), row_of


def select_rows(
    corpus: PreparedCorpus,
    split: str,
    geometry: FrameGeometry,
    frames_mode: str = "labelled",
    pool: str = "frame",
    max_per_speaker_label: int | None = None,
    seed: int = 0,
) -> Selection:
    """Decide the rows of a store from the corpus's segments and one frame geometry.

    The frame count of each utterance comes from its duration at 16 kHz (`FrameGeometry.num_frames`).
    Rows are ordered by utterance (corpus order) then time. Memory is O(rows), ~70 bytes per row
    (string columns as categoricals, `STRING_COLUMNS`).
    """
    if frames_mode not in FRAME_MODES:
        raise ValueError(f"frames must be one of {', '.join(FRAME_MODES)}, not {frames_mode!r}")
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {', '.join(POOL_MODES)}, not {pool!r}")
    utterances = corpus.utterances(split)
    # Built column by column, each array once: the per-utterance pieces are consumed as they are
    # joined and the table wraps the arrays without copying, so the peak stays near the table's
    # own ~70 bytes per row (copies of a whole table per step made it several hundred).
    pieces: list[dict[str, np.ndarray]] = []
    no_rows: list[str] = []
    segments, bounds = _split_segments(corpus.segments, utterances["utterance_id"])
    for position, utt in enumerate(utterances.itertuples(index=False)):
        n_frames = geometry.num_frames(int(round(float(utt.duration) * SAMPLE_RATE)))
        begin, end = bounds[position], bounds[position + 1]
        piece = _rows_of_utterance({k: v[begin:end] for k, v in segments.items()}, geometry, n_frames, frames_mode,
                                   pool)
        n = len(piece["time"])
        if n == 0:
            no_rows.append(utt.utterance_id)
            continue
        piece["utterance"] = np.full(n, position, dtype=np.int64)  # position in `utterances`
        pieces.append(piece)
    columns: dict[str, np.ndarray] = {
        key: np.concatenate([p.pop(key) for p in pieces]) if pieces else np.zeros(0, dtype=dtype)
        for key, dtype in _PIECE_DTYPES.items()
    }
    del pieces
    utterance = columns.pop("utterance")
    # speaker, sex, split: one code per row through the row's utterance (a join would copy strings).
    per_utterance = {c: pd.Categorical(utterances[c].astype(str)) for c in ("utterance_id", "speaker", "sex", "split")}
    candidates = len(utterance)
    if max_per_speaker_label is not None and candidates:
        phone = pd.Categorical(columns["phone"])
        keep = _cap(per_utterance["speaker"].codes[utterance], phone.codes, len(phone.categories),
                    int(max_per_speaker_label), seed)
        utterance = utterance[keep]
        for key in list(columns):
            columns[key] = columns[key][keep]
    n_rows = len(utterance)
    data: dict[str, Any] = {"row": np.arange(n_rows, dtype=np.int64)}
    for column, categorical in per_utterance.items():
        data[column] = pd.Categorical.from_codes(categorical.codes[utterance], dtype=categorical.dtype)
    for column in FRAME_COLUMNS:
        if column in columns:
            data[column] = columns.pop(column)
    for column in STRING_COLUMNS:  # categories without rows (utterances without rows, caps) go
        data[column] = pd.Categorical(data[column]).remove_unused_categories()
    data["tone"] = data["tone"].astype(np.int16)
    table = pd.DataFrame({c: data.pop(c) for c in FRAME_COLUMNS}, copy=False)

    positions = np.unique(utterance)
    kept = utterances.iloc[positions].reset_index(drop=True)
    kept["row_begin"] = np.searchsorted(utterance, positions, side="left")
    kept["row_end"] = np.searchsorted(utterance, positions, side="right")
    counts = {
        "utterances_in_split": int(len(utterances)),
        "utterances_with_rows": int(len(kept)),
        "utterances_without_rows": int(len(no_rows)),
        "utterances_without_rows_examples": no_rows[:10],
        "candidate_rows": int(candidates),
        "rows": int(len(table)),
        "rows_dropped_by_cap": int(candidates - len(table)),
    }
    return Selection(frames=table, utterances=kept, counts=counts)


# The columns `_rows_of_utterance` returns (plus `utterance`, the utterance's position) and their
# dtypes when there is no row at all.
_PIECE_DTYPES = {"utterance": np.int64, "time": np.float64, "frame": np.int64, "n_frames": np.int64,
                 "segment_id": np.int64, "start": np.float64, "end": np.float64, "phone": object,
                 "tone": np.int64, "syllable": object}


def _split_segments(segments: pd.DataFrame, utterance_ids: pd.Series) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The segments of `utterance_ids` as flat arrays (start, end float64; segment_id, tone int64;
    phone, syllable str objects), grouped by utterance in the order of `utterance_ids` (each
    utterance's segments in their stored order), and the bounds: utterance i's segments are
    `[bounds[i], bounds[i + 1])`. Flat arrays rather than one small table per utterance (as
    `PreparedCorpus.segments_of` keeps them), whose overhead of tens of KB each made the resident
    memory of an extraction grow with the number of utterances."""
    codes = pd.Index(utterance_ids).get_indexer(segments["utterance_id"])  # -1: another split's
    order = np.flatnonzero(codes >= 0)
    order = order[np.argsort(codes[order], kind="stable")]
    bounds = np.searchsorted(codes[order], np.arange(len(utterance_ids) + 1), side="left")
    arrays = {
        "start": segments["start"].to_numpy(dtype=np.float64)[order],
        "end": segments["end"].to_numpy(dtype=np.float64)[order],
        "segment_id": segments["segment_id"].to_numpy(dtype=np.int64)[order],
        "tone": segments["tone"].to_numpy().astype(np.int64)[order],
        "phone": segments["phone"].to_numpy().astype(str).astype(object)[order],
        "syllable": segments["syllable"].to_numpy().astype(str).astype(object)[order],
    }
    return arrays, bounds


def _rows_of_utterance(segments: dict[str, Any], geometry: FrameGeometry, n_frames: int,
                       frames_mode: str, pool: str) -> dict[str, np.ndarray]:
    """The rows of one utterance from its segments (`_split_segments` arrays, sliced)."""
    starts = segments["start"]
    ends = segments["end"]
    centres = geometry.frame_times(max(n_frames, 0))
    seg_of_frame = segment_index_per_frame(starts, ends, centres)
    window_start, window_end = segment_windows(starts, ends, frames_mode)
    inside = seg_of_frame >= 0
    seg_safe = np.clip(seg_of_frame, 0, None)
    if frames_mode == "all":
        keep = np.ones(len(centres), dtype=bool)
    elif frames_mode == "labelled":
        keep = inside
    else:
        keep = inside & (centres >= window_start[seg_safe]) & (centres < window_end[seg_safe])
    # Per-segment labels; one dummy entry when there are no segments, so that indexing with
    # `np.clip(seg, 0, None)` stays valid (those frames are masked out by `has` below).
    pad = [] if len(starts) else [0]
    seg_ids = np.concatenate([segments["segment_id"], np.full(len(pad), -1)])
    phones = np.concatenate([segments["phone"], np.full(len(pad), "", dtype=object)])
    tones = np.concatenate([segments["tone"], np.zeros(len(pad), dtype=np.int64)])
    syllables = np.concatenate([segments["syllable"],
                                np.full(len(pad), "", dtype=object)])
    bounds_start = np.concatenate([starts, np.full(len(pad), np.nan)])
    bounds_end = np.concatenate([ends, np.full(len(pad), np.nan)])
    if pool == "frame":
        frame = np.flatnonzero(keep)
        seg = seg_of_frame[frame]
        has = seg >= 0
        pick = np.clip(seg, 0, None)
        return dict(
            time=centres[frame], frame=frame.astype(np.int64), n_frames=np.ones(frame.size, dtype=np.int64),
            segment_id=np.where(has, seg_ids[pick], -1).astype(np.int64),
            start=np.where(has, bounds_start[pick], np.nan), end=np.where(has, bounds_end[pick], np.nan),
            phone=np.where(has, phones[pick], "").astype(object), tone=np.where(has, tones[pick], 0).astype(np.int64),
            syllable=np.where(has, syllables[pick], "").astype(object),
        )
    # pool == "segment": one row per segment with at least one selected frame.
    counts = np.bincount(seg_of_frame[keep & inside], minlength=len(starts))
    chosen = np.flatnonzero(counts > 0)
    return dict(
        time=(window_start[chosen] + window_end[chosen]) / 2.0, frame=np.full(chosen.size, -1, dtype=np.int64),
        n_frames=counts[chosen].astype(np.int64), segment_id=seg_ids[chosen], start=starts[chosen],
        end=ends[chosen], phone=phones[chosen], tone=tones[chosen], syllable=syllables[chosen],
    )


def _cap(speaker: np.ndarray, phone: np.ndarray, n_phones: int, cap: int, seed: int) -> np.ndarray:
    """Keep-mask: at most `cap` rows per (speaker, phone), drawn without replacement, order kept.

    `speaker`, `phone`: per-row codes of categories sorted as strings, so groups are visited in
    (speaker, phone) order and the draws depend only on `seed` and the rows."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(speaker), dtype=bool)
    group = speaker.astype(np.int64) * max(n_phones, 1) + phone.astype(np.int64)
    order = np.argsort(group, kind="stable")  # rows of a group stay in row order
    edges = np.flatnonzero(np.diff(group[order])) + 1
    for index in np.split(order, edges):
        if index.size > cap:
            drop = np.setdiff1d(index, rng.choice(index, size=cap, replace=False))
            keep[drop] = False
    return keep
