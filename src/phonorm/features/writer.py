"""Writing a (rows, dim) `.npy` file in pieces, in bounded memory, resumable, never half-finished.

The file is created at a hidden temporary name (`.NAME.partial`) with `np.lib.format.open_memmap`
(which writes the .npy header and sizes the file), then rows are written at their offsets with
plain file writes. Plain writes, not a memory map, because pages written through a map stay in the
process's resident memory until the kernel evicts them, so resident memory would grow with the
store. `finish()` renames the file onto its final name: a file with the final name is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from phonorm.artifacts import writing


class RowWriter:
    """Write rows of a `(rows, dim)` array of `dtype` to `path`, in any order, then `finish()`.

    `resume=True` reopens an existing partial file of the same shape and dtype (rows already
    written stay); otherwise a fresh partial file is created.
    """

    def __init__(self, path: str | Path, rows: int, dim: int, dtype: str | np.dtype, resume: bool = False):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.rows, self.dim, self.dtype = int(rows), int(dim), np.dtype(dtype)
        with writing(self.partial):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not (resume and self.partial_matches()):
                self._create()
            self._offset = _data_offset(self.partial)
            self._file = open(self.partial, "r+b")

    def _create(self) -> None:
        """A fresh partial file of the full size (its rows zero until written)."""
        if self.rows == 0:  # a process with an empty share: numpy cannot map an empty file
            with open(self.partial, "wb") as handle:  # a handle: np.save would append ".npy" to the name
                np.save(handle, np.zeros((0, self.dim), dtype=self.dtype), allow_pickle=False)
        else:
            array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=self.dtype, shape=(self.rows, self.dim))
            del array

    def partial_matches(self) -> bool:
        """Whether a partial file of this shape and dtype exists (what a resume continues)."""
        return partial_matches(self.partial, self.rows, self.dim, self.dtype)

    def write(self, row: int, block: np.ndarray) -> None:
        """Write `block` (n, dim) at rows [row, row + n), converting to the file's dtype."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"{self.path.name}: expected (n, {self.dim}) rows, got {block.shape}")
        if row < 0 or row + block.shape[0] > self.rows:
            raise ValueError(f"{self.path.name}: rows [{row}, {row + block.shape[0]}) outside [0, {self.rows})")
        with writing(self.partial):  # a full disk shows here (the file was created sparse)
            self._file.seek(self._offset + row * self.dim * self.dtype.itemsize)
            self._file.write(block.tobytes())

    def sync(self) -> None:
        """Make every row written so far durable (before recording progress)."""
        with writing(self.partial):
            self._file.flush()
            os.fsync(self._file.fileno())

    def finish(self) -> Path:
        """Sync, close and rename the partial file onto its final name."""
        self.sync()
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without finishing (the partial file stays for a later resume)."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def partial_path(path: str | Path) -> Path:
    """The hidden name a `RowWriter` writes `path` under until it is complete."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def partial_matches(partial: Path, rows: int, dim: int, dtype: str | np.dtype) -> bool:
    """Whether `partial` is a readable .npy file of shape (rows, dim) and `dtype`."""
    if not Path(partial).is_file():
        return False
    try:
        existing = np.load(partial, mmap_mode="r") if rows else np.load(partial)
    except (ValueError, OSError):
        return False
    return existing.shape == (int(rows), int(dim)) and existing.dtype == np.dtype(dtype)


def _data_offset(path: Path) -> int:
    """Byte offset of the array data in a .npy file (after its header)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)
        return handle.tell()
