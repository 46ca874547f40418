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

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, get_args

import numpy as np
import pandas as pd

from phonorm.corpus.store import PreparedCorpus
from phonorm.features.frames_file import (
    CHUNK_ROWS,
    FRAME_COLUMNS,
    PIECE_DTYPES,
    STRING_COLUMNS,
    empty_frames,
    frames_hash,
)
from phonorm.frames import SAMPLE_RATE, FrameGeometry, segment_index_per_frame
from phonorm.settings.vocabulary import FrameMode, PoolMode

FRAME_MODES: tuple[str, ...] = get_args(FrameMode)
POOL_MODES: tuple[str, ...] = get_args(PoolMode)

@dataclass
class Selection:
    """The rows of a store, decided but not held in memory: `iter_frames()` regenerates them, in row
    order, a chunk of whole utterances at a time (columns `FRAME_COLUMNS`, string columns as
    categoricals), so that deciding and writing the rows of a large corpus takes memory flat in the
    number of rows. `utterances`: the corpus rows of the utterances with at least one selected row,
    in row order, with `row_begin`/`row_end` added; `rows`: how many rows; `key`: content hash of the
    rows (`frames_hash` of all of them): two runs resume into one store only when it matches."""

    utterances: pd.DataFrame
    counts: dict
    key: str
    rows: int
    _chunks: Callable[[], Iterator[pd.DataFrame]] = field(repr=False)

    def iter_frames(self) -> Iterator[pd.DataFrame]:
        """The rows as tables of about `CHUNK_ROWS` rows (whole utterances), in row order."""
        return self._chunks()

    def close(self) -> None:
        """Let go of what regenerating the rows needs (the split's segments, ~200 bytes each), once
        they are written: `iter_frames` and `frames` are no longer available."""
        def closed() -> Iterator[pd.DataFrame]:
            raise RuntimeError("the selection was closed after its rows were written; read frames.parquet")
        self._chunks = closed

    @property
    def frames(self) -> pd.DataFrame:
        """Every row in one table (memory O(rows): for small selections and tests)."""
        chunks = list(self.iter_frames())
        if not chunks:
            return empty_frames()
        table = pd.concat(chunks, ignore_index=True)
        for column in STRING_COLUMNS:  # categoricals of different chunks concatenate as strings
            table[column] = pd.Categorical(table[column].astype(str))
        return table


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
    chunk_rows: int = CHUNK_ROWS,
) -> Selection:
    """Decide the rows of a store from the corpus's segments and one frame geometry.

    The frame count of each utterance comes from its duration at 16 kHz (`FrameGeometry.num_frames`).
    Rows are ordered by utterance (corpus order) then time. The rows are generated here (for their
    count, key and utterance bounds) and again by each `Selection.iter_frames`, a chunk at a time,
    never all at once: memory is that of the corpus's segments and utterances, one chunk of rows,
    and with a cap the kept positions of each capped (speaker, phone) group.
    """
    if frames_mode not in FRAME_MODES:
        raise ValueError(f"frames must be one of {', '.join(FRAME_MODES)}, not {frames_mode!r}")
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {', '.join(POOL_MODES)}, not {pool!r}")
    utterances = corpus.utterances(split)
    segments, bounds = _split_segments(corpus.segments, utterances["utterance_id"])
    # speaker, sex, split: one code per row through the row's utterance (a join would copy strings).
    per_utterance = {c: pd.Categorical(utterances[c].astype(str)) for c in ("utterance_id", "speaker", "sex", "split")}
    n_frames = [geometry.num_frames(int(round(float(d) * SAMPLE_RATE))) for d in utterances["duration"]]
    with_rows = np.zeros(len(utterances), dtype=bool)  # with a selected frame (before the cap)

    def candidates() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(position in `utterances`, rows) of every utterance with a selected frame, before the cap."""
        for position in range(len(utterances)):
            begin, end = bounds[position], bounds[position + 1]
            piece = _rows_of_utterance({k: v[begin:end] for k, v in segments.items()}, geometry, n_frames[position],
                                       frames_mode, pool)
            if len(piece["time"]):
                with_rows[position] = True
                yield position, piece

    speaker_codes = per_utterance["speaker"].codes
    cap = None if max_per_speaker_label is None else \
        _Cap(((speaker_codes[position], piece["phone"]) for position, piece in candidates()),
             int(max_per_speaker_label), seed)

    def chunks() -> Iterator[pd.DataFrame]:
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        size, first_row = 0, 0
        seen: collections.Counter = collections.Counter()
        for position, piece in candidates():
            batch.append((position, piece))
            size += len(piece["time"])
            if size >= chunk_rows:
                table = _chunk_table(batch, per_utterance, cap, seen, first_row)
                first_row += len(table)
                batch, size = [], 0
                yield table
        if batch:
            yield _chunk_table(batch, per_utterance, cap, seen, first_row)

    ids = pd.Index(utterances["utterance_id"].astype(str))
    row_counts = np.zeros(len(utterances), dtype=np.int64)

    def counted() -> Iterator[pd.DataFrame]:
        for table in chunks():  # rows per utterance, as the tables pass by
            column = table["utterance_id"].cat
            row_counts[:] += np.bincount(ids.get_indexer(column.categories)[column.codes], minlength=len(utterances))
            yield table

    key = frames_hash(counted())
    positions = np.flatnonzero(row_counts > 0)
    kept = utterances.iloc[positions].reset_index(drop=True)
    ends = np.cumsum(row_counts[positions])
    kept["row_begin"] = ends - row_counts[positions]
    kept["row_end"] = ends
    rows = int(row_counts.sum())
    no_rows = utterances["utterance_id"].to_numpy()[~with_rows]
    candidate_rows = rows if cap is None else cap.candidate_rows
    counts = {
        "utterances_in_split": int(len(utterances)),
        "utterances_with_rows": int(len(kept)),
        "utterances_without_rows": int(len(no_rows)),
        "utterances_without_rows_examples": [str(u) for u in no_rows[:10]],
        "candidate_rows": int(candidate_rows),
        "rows": rows,
        "rows_dropped_by_cap": int(candidate_rows - rows),
    }
    return Selection(utterances=kept, counts=counts, key=key, rows=rows, _chunks=chunks)


def _chunk_table(batch: list[tuple[int, dict[str, np.ndarray]]], per_utterance: dict[str, pd.Categorical],
                 cap: "_Cap | None", seen: collections.Counter, first_row: int) -> pd.DataFrame:
    """The rows of consecutive utterances (`batch`: (position, rows) pairs) as one table of
    `FRAME_COLUMNS`, the cap applied, row numbers from `first_row`."""
    columns = {key: np.concatenate([piece[key] for _, piece in batch]) for key in PIECE_DTYPES if key != "utterance"}
    utterance = np.concatenate([np.full(len(piece["time"]), position, dtype=np.int64) for position, piece in batch])
    if cap is not None:
        keep = cap.keep(per_utterance["speaker"].codes[utterance], columns["phone"], seen)
        utterance = utterance[keep]
        columns = {key: value[keep] for key, value in columns.items()}
    data: dict[str, Any] = {"row": np.arange(first_row, first_row + len(utterance), dtype=np.int64)}
    for column, categorical in per_utterance.items():
        data[column] = pd.Categorical.from_codes(categorical.codes[utterance], dtype=categorical.dtype)
    data.update(columns)
    for column in STRING_COLUMNS:  # the chunk's own categories (one code per row, not one string)
        data[column] = pd.Categorical(data[column]).remove_unused_categories()
    data["tone"] = data["tone"].astype(np.int16)
    return pd.DataFrame({c: data[c] for c in FRAME_COLUMNS}, copy=False)




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


class _Cap:
    """At most `cap` rows per (speaker, phone) group, drawn without replacement with a seeded RNG, in
    row order, decided from the group sizes alone.

    Groups are visited in (speaker, phone) order (speaker codes of categories sorted as strings,
    phones sorted as strings); a group of `size > cap` rows keeps the `cap` positions (0 = the group's
    first row in row order) of `rng.choice(size, cap, replace=False)`. `keep` then tells, for rows
    given in row order chunk by chunk, which are kept. Memory: the groups and their kept positions,
    not the rows."""

    def __init__(self, pieces: Iterable[tuple[int, np.ndarray]], cap: int, seed: int):
        sizes: collections.Counter = collections.Counter()
        for speaker, phones in pieces:  # (speaker code, phones of one utterance's rows)
            values, counts = np.unique(phones, return_counts=True)
            for phone, count in zip(values, counts):
                sizes[(int(speaker), str(phone))] += int(count)
        self.candidate_rows = int(sum(sizes.values()))
        self.phones = np.array(sorted({phone for _, phone in sizes}), dtype=object)
        rng = np.random.default_rng(seed)
        self.kept: dict[int, np.ndarray] = {}
        for speaker, phone in sorted(sizes):
            size = sizes[(speaker, phone)]
            if size > cap:
                self.kept[self._group(speaker, phone)] = np.sort(rng.choice(size, size=cap, replace=False))

    def _group(self, speaker: Any, phone: Any) -> Any:
        return speaker * len(self.phones) + np.searchsorted(self.phones, phone)

    def keep(self, speakers: np.ndarray, phones: np.ndarray, seen: collections.Counter) -> np.ndarray:
        """Keep-mask of the next rows (in row order): their speaker codes and phones. `seen`: the rows
        of each group given so far in this pass over the rows (updated; a new pass starts empty)."""
        group = self._group(speakers.astype(np.int64), phones)
        keep = np.ones(len(group), dtype=bool)
        order = np.argsort(group, kind="stable")  # rows of a group stay in row order
        edges = np.flatnonzero(np.diff(group[order])) + 1
        for index in np.split(order, edges) if len(order) else []:
            g = int(group[index[0]])
            first = seen[g]
            seen[g] += len(index)
            if g in self.kept:
                keep[index] = np.isin(np.arange(first, first + len(index)), self.kept[g])
        return keep
