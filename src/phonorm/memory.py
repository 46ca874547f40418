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

_M_ARENA_MAX = -8  # mallopt's parameter numbers in glibc's malloc.h
_M_MMAP_THRESHOLD = -3


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


def map_large_blocks(threshold: int = 4 << 20) -> None:
    """Serve every allocation of at least `threshold` bytes with its own memory map, returned to the
    system when freed. glibc's default threshold rises (up to 32 MB) each time a mapped block is
    freed, after which blocks of that size come from the heaps and leave them fragmented: one layer
    of a 300,000-row analysis peaked 270 MB higher that way (1,880 vs 1,609 MB). Each mapped block
    costs page faults when it is first written: the analysis ran ~4 % slower, and a 16 MB threshold
    kept most of the fragmentation (1,705 MB). A threshold the user set (`MALLOC_MMAP_THRESHOLD_`)
    is kept."""
    import os

    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))


_last_release = 0.0


def release_free_memory(every: float = 0.0) -> None:
    """Return the free pages of every malloc heap and Arrow's unused pool memory (a few ms a call).
    `every` > 0: skip the call when the last one was less than `every` seconds ago (a loop over many
    small units of work: extraction calls it per batch, and 20 batches of a small model spent 60 ms,
    a tenth of their forward passes, trimming heaps that had not grown)."""
    import time

    import pyarrow as pa

    global _last_release
    now = time.monotonic()
    if every > 0 and now - _last_release < every:
        return
    _last_release = now
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
