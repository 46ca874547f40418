"""Giving freed memory back to the operating system (glibc's malloc; elsewhere these do nothing).

glibc keeps freed pages in its heaps, fragmented between blocks still in use, and gives each thread
that allocates its own heap ("arena", up to 8 per core); Arrow's memory pool keeps what writing a
parquet file used. Long stages that allocate and free arrays of changing sizes (extraction: planning,
and one activation size per utterance length; analysis: per-layer blocks, probe folds in worker
threads) then hold far more resident memory than they use: measured 2.3 GB instead of about 1 GB for
an analysis with two threads, and extraction's memory grew with the rows stored (bench/scale_extract.py).
`limit_arenas` caps the heaps threads get; `release_free_memory` returns the free pages (and Arrow's
pool) after each unit of work (milliseconds).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = 2) -> None:
    """Cap the number of malloc heaps (threads share them beyond that); takes effect for heaps
    created from now on."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, int(arenas))


def release_free_memory() -> None:
    """Return the free pages of every malloc heap and Arrow's unused pool memory (milliseconds)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
