"""Reading a feature store folder (the contract between `phonorm extract` and the analyses).

Layout of a store `F` (docs/architecture.md, "Feature store"):

- `F/frames.parquet`: one row per stored frame (or segment with `--pool segment`), rows in order.
- `F/<model>/L<k>.npy`: shape (rows, dim), float16 or float32, memory-mappable; or, when several
  processes wrote it, a folder `F/<model>/L<k>/part-00000.npy, part-00001.npy, ...` whose parts
  concatenated in name order give the rows in order.
- `F/classic/<name>.npy`: (rows, k) float32 baselines on the same rows (f0_hz, f0_semitone_z, mfcc).
- `F/manifest.json`: written last; a folder without it is an incomplete store.

Analyses read layers block by block (`iter_blocks`), so memory stays bounded by the block size
however large the store is.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from phonorm.errors import InputError
from phonorm.features.layout import CLASSIC_DIR, FRAMES_FILE, MANIFEST_FILE, stored_layer_files
from phonorm.features.manifest import StoreManifest, StoreModel
from phonorm.layers import layer_name


class FeatureStore:
    """A complete feature store folder, read-only.

    `frames` is the row index (pandas DataFrame of frames.parquet); `layer(model, "L4")` gives the
    (rows, dim) embeddings of one layer, row-aligned with `frames`; `iter_blocks` streams them.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(self.folder, "not a folder: expected a feature store written by phonorm extract")
        if not (self.folder / MANIFEST_FILE).is_file():
            raise InputError(
                self.folder / MANIFEST_FILE,
                "missing: the feature store is incomplete (extraction unfinished? run phonorm extract again "
                "with the same options to resume)",
            )
        if not (self.folder / FRAMES_FILE).is_file():
            raise InputError(self.folder / FRAMES_FILE, "missing: not a complete feature store")

    # ------------------------------------------------------------------ index and metadata
    @cached_property
    def record(self) -> StoreManifest:
        """The manifest, typed (`features.manifest.StoreManifest`), checked when read."""
        return StoreManifest.load(self.folder)

    @cached_property
    def frames(self) -> pd.DataFrame:
        """One row per stored frame or segment: `row`, `utterance_id`, `speaker`, `sex`, `split`,
        `time` (s), `frame`, `n_frames`, `segment_id` (-1 none), `start`, `end` (s, of the
        segment; NaN none), `phone` (str, "" none), `tone` (int, 0 none), `syllable` (str)."""
        table = pd.read_parquet(self.folder / FRAMES_FILE)
        if len(table) != self.rows:
            raise InputError(self.folder / FRAMES_FILE,
                             f"{len(table)} rows but the manifest says {self.rows}: store is inconsistent")
        return table

    @property
    def rows(self) -> int:
        """Number of stored rows (frames or segments)."""
        return self.record.rows

    @property
    def models(self) -> list[str]:
        """Model names in the order they were given to `phonorm extract`."""
        return [entry.name for entry in self.record.models]

    def model_record(self, model: str) -> StoreModel:
        """The manifest entry of one model, typed (InputError naming the store when it holds no such model)."""
        for entry in self.record.models:
            if entry.name == model:
                return entry
        raise InputError(self.folder, f"no model {model!r} in this feature store; it holds: {', '.join(self.models)}")

    def layers(self, model: str) -> list[str]:
        """Stored layer names of a model, in depth order, e.g. ["L0", "L1", ..., "L12"]."""
        return list(self.model_record(model).layers)

    def dim(self, model: str) -> int:
        return self.model_record(model).dim

    @property
    def settings(self) -> dict:
        return dict(self.record.settings)

    # ------------------------------------------------------------------ embeddings
    def layer_files(self, model: str, layer: str | int) -> list[Path]:
        """The .npy file of one layer, or its row-ordered parts."""
        layer = self._check_layer(model, layer)
        files = stored_layer_files(self.folder, model, layer)
        if not files:
            raise InputError(self.folder / model / f"{layer}.npy",
                             "missing: the manifest lists this layer but its file is not there")
        return files

    def _check_layer(self, model: str, layer: str | int) -> str:
        layers = self.layers(model)
        name = layer_name(layer) if isinstance(layer, (int, np.integer)) else str(layer)
        if name not in layers:
            raise InputError(self.folder, f"model {model!r} has no stored layer {name!r}; stored: {', '.join(layers)}")
        return name

    def _open(self, path: Path, mmap: bool) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(path, f"unreadable array ({err})") from None
        if array.ndim != 2:
            raise InputError(path, f"expected a 2-D (rows, dim) array, found shape {array.shape}")
        return array

    def layer(self, model: str, layer: str | int, mmap: bool = True) -> np.ndarray:
        """Embeddings of one layer, shape (rows, dim), in the stored dtype (float16 or float32).

        Memory-mapped (read-only) when `mmap` and the layer is one file; a layer written in parts
        is concatenated into memory (use `iter_blocks` to stream it instead).
        """
        arrays = [self._open(p, mmap) for p in self.layer_files(model, layer)]
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        if array.shape[0] != self.rows:
            raise InputError(self.layer_files(model, layer)[0],
                             f"{array.shape[0]} rows but frames.parquet has {self.rows}: store is inconsistent")
        return array

    def iter_blocks(
        self, model: str, layer: str | int, rows: Sequence[int] | np.ndarray | None = None, block: int = 65536,
        dtype: Any = np.float32,
    ) -> Iterator[np.ndarray]:
        """Stream a layer as arrays of shape (≤ block, dim), in row order: float32, or `dtype`
        (None: as stored, e.g. float16, for a caller that converts anyway).

        `rows`: optional row numbers to read (in the order given; e.g. a boolean-mask's
        `np.flatnonzero`); all rows when None. Memory is bounded by `block` rows whatever the store size.
        """
        if block <= 0:
            raise ValueError("block must be positive")
        parts = [self._open(p, mmap=True) for p in self.layer_files(model, layer)]
        dtype = parts[0].dtype if dtype is None else np.dtype(dtype)
        starts = np.cumsum([0] + [p.shape[0] for p in parts])
        if starts[-1] != self.rows:
            raise InputError(self.folder / model / str(layer),
                             f"{starts[-1]} rows but frames.parquet has {self.rows}: store is inconsistent")
        if rows is None:
            for part in parts:
                for begin in range(0, part.shape[0], block):
                    yield np.asarray(part[begin:begin + block], dtype=dtype)
            return
        wanted = np.asarray(rows)
        if wanted.dtype == bool:
            raise ValueError("rows must be row numbers, not a boolean mask (use np.flatnonzero(mask))")
        wanted = wanted.astype(np.int64, copy=False)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.rows):
            raise IndexError(f"row numbers must lie in [0, {self.rows})")
        for begin in range(0, wanted.size, block):
            chunk = wanted[begin:begin + block]
            out = np.empty((chunk.size, parts[0].shape[1]), dtype=dtype)
            which = np.searchsorted(starts, chunk, side="right") - 1
            for p in np.unique(which):
                sel = which == p
                out[sel] = parts[p][chunk[sel] - starts[p]]
            yield out

    # ------------------------------------------------------------------ classic baselines
    def classic_names(self) -> list[str]:
        """Names of the stored classic baselines, e.g. ["f0_hz", "f0_semitone_z", "mfcc"]."""
        return list(self.record.classic)

    def classic(self, name: str) -> np.ndarray:
        """A classic baseline, float32 of shape (rows, k); NaN where undefined (unvoiced F0)."""
        if name not in self.classic_names():
            known = ", ".join(self.classic_names()) or "none (extracted with --no-classic)"
            raise InputError(self.folder, f"no classic feature {name!r} in this store; stored: {known}")
        array = self._open(self.folder / CLASSIC_DIR / f"{name}.npy", mmap=False)
        if array.shape[0] != self.rows:
            raise InputError(self.folder / CLASSIC_DIR / f"{name}.npy",
                             f"{array.shape[0]} rows but frames.parquet has {self.rows}")
        return array.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, rows={self.rows}, models={self.models})"
