"""The file layout of a feature store folder, declared once (docs/architecture.md, "Feature store"):
the names every writer (extract, shards) and reader (store, manifest, validate) of a store uses.
"""

from __future__ import annotations

from pathlib import Path

FRAMES_FILE = "frames.parquet"
MANIFEST_FILE = "manifest.json"
CLASSIC_DIR = "classic"
PART_GLOB = "part-*.npy"
STORE_FORMAT = "phonorm-feature-store/1"


def part_name(index: int) -> str:
    """File name of the `index`-th row-ordered part of a layer written by several processes."""
    return f"part-{index:05d}.npy"


def stored_layer_files(folder: Path, model: str, layer: str) -> list[Path]:
    """The files of one layer of the store `folder`: `<model>/<layer>.npy`, or the row-ordered parts
    of `<model>/<layer>/`; [] when neither is there."""
    single = folder / model / f"{layer}.npy"
    if single.is_file():
        return [single]
    parts = folder / model / layer
    return sorted(parts.glob(PART_GLOB)) if parts.is_dir() else []
