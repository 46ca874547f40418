"""frames.parquet of a feature store: its columns, how it is written (`write_frames`, a chunk of
rows at a time, strings as plain strings), read back per row (`RowIndex`) and fingerprinted
(`frames_hash`: two extraction runs resume into one store only when their rows match)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path

FRAME_COLUMNS = ("row", "utterance_id", "speaker", "sex", "split", "time", "frame", "n_frames",
                 "segment_id", "start", "end", "phone", "tone", "syllable")


# String columns of frames.parquet. In memory (one chunk of rows at a time) they are pandas
# categoricals; they become plain strings only in `write_frames`.
STRING_COLUMNS = ("utterance_id", "speaker", "sex", "split", "phone", "syllable")
# What extraction reads back per row from frames.parquet (`RowIndex`, for `pooling_index`).
ROW_INDEX_COLUMNS = ("time", "start", "end")
CHUNK_ROWS = 16384  # rows per table of `Selection.iter_frames` (and per row group of frames.parquet)


# The columns `selection._rows_of_utterance` returns (plus `utterance`, the utterance's position) and their
# dtypes when there is no row at all.
PIECE_DTYPES = {"utterance": np.int64, "time": np.float64, "frame": np.int64, "n_frames": np.int64,
                 "segment_id": np.int64, "start": np.float64, "end": np.float64, "phone": object,
                 "tone": np.int64, "syllable": object}


def write_frames(path: str | Path, frames: pd.DataFrame | Iterable[pd.DataFrame], block: int = CHUNK_ROWS) -> None:
    """Write the rows (one table, or tables in row order as `Selection.iter_frames` gives) to `path`
    (parquet, atomically), their string columns as plain strings, at most `block` rows per row group:
    the strings exist only for one block at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [frames] if isinstance(frames, pd.DataFrame) else frames
    with atomic_path(path) as tmp:
        writer = None
        try:
            for table in tables:
                strings = {c: "str" for c in STRING_COLUMNS if c in table.columns}
                for begin in range(0, len(table), block):
                    part = pa.Table.from_pandas(table.iloc[begin:begin + block].astype(strings), preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, part.schema)
                    writer.write_table(part.cast(writer.schema))
            if writer is None:  # no row at all: an empty file with the columns
                writer = pq.ParquetWriter(tmp, pa.Table.from_pandas(empty_frames().astype(
                    {c: "str" for c in STRING_COLUMNS}), preserve_index=False).schema)
        finally:
            if writer is not None:
                writer.close()


class RowIndex:
    """What extraction reads back per row from a written frames.parquet (`ROW_INDEX_COLUMNS`), a row
    group at a time, so that its memory does not grow with the store: `rows(begin, end)` is a table
    of rows [begin, end). Made for reading in row order (the last row groups read are kept)."""

    def __init__(self, path: str | Path, columns: tuple[str, ...] = ROW_INDEX_COLUMNS):
        import pyarrow.parquet as pq

        self.path, self.columns = Path(path), list(columns)
        self._file = pq.ParquetFile(self.path)
        meta = self._file.metadata
        self.bounds = np.concatenate([[0], np.cumsum([meta.row_group(i).num_rows
                                                      for i in range(meta.num_row_groups)])]).astype(np.int64)
        self._groups: dict[int, pd.DataFrame] = {}

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _group(self, index: int) -> pd.DataFrame:
        if index not in self._groups:
            if len(self._groups) >= 2:
                del self._groups[min(self._groups)]
            self._groups[index] = self._file.read_row_group(index, columns=self.columns).to_pandas()
        return self._groups[index]

    def rows(self, begin: int, end: int) -> pd.DataFrame:
        """Rows [begin, end) (row numbers of the whole file), columns `columns`."""
        if not 0 <= begin <= end <= len(self):
            raise ValueError(f"{self.path}: rows [{begin}, {end}) outside [0, {len(self)})")
        if end == begin:
            return pd.DataFrame({c: np.zeros(0) for c in self.columns})
        first = int(np.searchsorted(self.bounds, begin, side="right")) - 1
        last = int(np.searchsorted(self.bounds, end, side="left")) - 1
        parts = [self._group(g) for g in range(first, last + 1)]
        table = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        offset = begin - int(self.bounds[first])
        return table.iloc[offset:offset + end - begin].reset_index(drop=True)


def frames_hash(frames: pd.DataFrame | Iterable[pd.DataFrame]) -> str:
    """Content hash of the rows: of one table, or of its consecutive pieces in row order (the same
    value: each row is hashed on its own, string columns alike whether categorical or not)."""
    digest = hashlib.sha256()
    columns: Any = FRAME_COLUMNS
    for table in [frames] if isinstance(frames, pd.DataFrame) else frames:
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
        columns = table.columns
    digest.update(",".join(columns).encode())
    return digest.hexdigest()[:16]


def empty_frames() -> pd.DataFrame:
    """A table of `FRAME_COLUMNS` without rows, with the dtypes of `Selection.iter_frames`' tables."""
    data: dict[str, Any] = {"row": np.zeros(0, dtype=np.int64), "tone": np.zeros(0, dtype=np.int16)}
    for column in STRING_COLUMNS:
        data[column] = pd.Categorical(np.zeros(0, dtype=object))
    for column, dtype in PIECE_DTYPES.items():
        data.setdefault(column, np.zeros(0, dtype=dtype))
    return pd.DataFrame({c: data[c] for c in FRAME_COLUMNS})
