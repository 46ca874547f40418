"""Is a file whole? Checks of the binary formats phonorm writes, from their headers and sizes.

Each check reads only a file's header (and its size on disk) and returns the defect in words, or
None when the file is whole: `.npy` (header, shape × dtype against the bytes there), safetensors
(header JSON, every tensor's byte range against its shape and dtype and against the file size),
Parquet (the footer and its row count), JSON (parses, is an object). `nonfinite_rows` streams a
2-D array through a memory map to count rows holding NaN or inf. None of them raises on a damaged
file: `phonorm validate` turns their words into one line per problem, never a traceback.
Torch-free, nothing loaded into memory beyond a header or a block of rows.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

# Bytes per element of each safetensors dtype (the format's own names).
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                      "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# A safetensors header larger than this is not a header but damage (the format caps it at 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000


@dataclass
class NpyHeader:
    """What a `.npy` header says: shape, dtype, where the data starts and how many bytes it needs."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(path: Path) -> NpyHeader | str:
    """The header of the `.npy` file `path`, or the defect in words (unreadable, not .npy, truncated,
    trailing bytes, object dtype)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(handle)
            offset = handle.tell()
        size = path.stat().st_size
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    except ValueError as err:  # numpy's words for a bad magic string or header
        return f"not a valid .npy file ({err})"
    header = NpyHeader(tuple(int(n) for n in shape), np.dtype(dtype), offset)
    if header.dtype.hasobject:
        return "holds Python objects, not numbers (not written by phonorm)"
    expected = offset + header.data_bytes
    if size < expected:
        return f"truncated: {size} bytes, its header (shape {header.shape}, {header.dtype}) needs {expected}"
    if size > expected:
        return f"{size - expected} bytes after the array its header describes (shape {header.shape}, {header.dtype})"
    return header


def nonfinite_rows(path: Path, block: int = 65536) -> tuple[int, Optional[int]]:
    """(rows holding NaN or inf, the first such row or None) of a whole 2-D `.npy` file, read
    `block` rows at a time through a memory map (memory bounded whatever the file's size)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    count, first = 0, None
    for begin in range(0, array.shape[0], block):
        bad = ~np.isfinite(np.asarray(array[begin:begin + block])).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            if first is None:
                first = begin + int(np.argmax(bad))
    return count, first


@dataclass
class SafetensorsHeader:
    """What a safetensors header says: name → (dtype, shape, (begin, end) in the data buffer)."""

    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]
    data_start: int

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]


def read_safetensors_header(path: Path) -> SafetensorsHeader | str:
    """The header of the safetensors file `path`, checked against the file, or the defect in words:
    unreadable, a header length or JSON that is damage, an unknown dtype, a tensor whose byte range
    does not match its shape, or a data buffer shorter or longer than the tensors need."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes, not even the 8-byte header length of a safetensors file"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"truncated or not a safetensors file: header length {length} but the file has {size} bytes"
            raw = handle.read(length)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "damaged safetensors header (not valid JSON)"
    if not isinstance(header, dict):
        return "damaged safetensors header (not a JSON object)"
    tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
    for name, entry in header.items():
        if name != "__metadata__":
            tensor = _tensor_entry(name, entry)
            if isinstance(tensor, str):
                return tensor
            tensors[name] = tensor
    buffer, end_max = size - 8 - length, max((end for _, _, (_, end) in tensors.values()), default=0)
    if buffer < end_max:
        return f"truncated: {size} bytes, its tensors need {8 + length + end_max}"
    if buffer > end_max:
        return f"{buffer - end_max} bytes after the tensors its header describes"
    return SafetensorsHeader(tensors, 8 + length)


def _tensor_entry(name: str, entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]] | str:
    """(dtype, shape, (begin, end)) of one tensor of a safetensors header, or its defect in words."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        return f"damaged safetensors header (tensor {name!r} lacks dtype, shape or data_offsets)"
    if dtype not in SAFETENSORS_DTYPES:
        return f"tensor {name!r} has an unknown dtype {dtype!r}"
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        return f"tensor {name!r}: its bytes {begin}..{end} do not hold shape {list(shape)} {dtype}"
    return dtype, shape, (int(begin), int(end))


_FLOAT_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def nonfinite_tensors(path: Path, header: SafetensorsHeader) -> list[str]:
    """Names of the float tensors (F16/F32/F64) of a checked safetensors file holding NaN or inf,
    read through a memory map one tensor at a time (weights of a healthy model are all finite)."""
    bad = []
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, (dtype, _, (begin, end)) in header.tensors.items():
        if dtype in _FLOAT_DTYPES and end > begin:
            values = data[header.data_start + begin:header.data_start + end].view(_FLOAT_DTYPES[dtype])
            # In pieces: the isfinite mask of a large embedding matrix would be as large as the matrix.
            if not all(np.isfinite(values[at:at + _SCAN]).all() for at in range(0, len(values), _SCAN)):
                bad.append(name)
    return bad


_SCAN = 1 << 22  # values checked at once (a 4 MiB mask)


def parquet_problem(path: Path) -> tuple[Optional[int], Optional[str]]:
    """(rows, None) of a readable Parquet file, or (None, the defect in words). Every row group is
    decoded, a batch at a time: a damaged page behind an intact footer is found here, not later as a
    traceback of the stage that reads it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        decoded = sum(batch.num_rows for batch in parquet.iter_batches(batch_size=65_536))
        rows = parquet.metadata.num_rows
        if decoded != rows:
            return None, f"damaged Parquet file ({decoded} rows decoded, its footer says {rows})"
        return rows, None
    except OSError as err:
        if not path.is_file():
            return None, "missing"
        return None, f"damaged Parquet file ({err})"
    except (pa.ArrowException, ValueError) as err:
        return None, f"damaged Parquet file ({err})"


def read_json_object(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the JSON object in `path`, None), or (None, the defect in words: missing, unreadable, not
    valid JSON, not an object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    except (UnicodeDecodeError, ValueError) as err:
        return None, f"not valid JSON ({err})"
    if not isinstance(value, dict):
        return None, f"not a JSON object (found {type(value).__name__})"
    return value, None
