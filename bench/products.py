"""Float32 against float64 products on the study's size, pair by pair: a spot check of `--products`.

    .venv/bin/python bench/products.py --store S [--pairs tone:L12,sex:L6,phone:L0]

For each MODEL:LAYER of a feature store (e.g. one that `bench/scale.py --store S` built), streams all
its rows against the reference layer of the same name ("pre") twice, once with each block's products
in float32 and once in float64 (the sums always accumulate in float64), per speaker, and compares
every similarity measure of the whole rows and of every delete-one-speaker jackknife set. Prints one
line per pair and, last, a JSON object with the largest absolute difference over all of them.

Cheaper than `bench/scale.py --check-products` (which analyses the whole store a second time): two
streamed passes per pair, no probes, no maps. Speed and rounding depend on the machine's BLAS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from phonorm.analysis.grouped import SpeakerSums
from phonorm.analysis.measures import MEASURES
from phonorm.features.store import FeatureStore


def pair_sums(store: FeatureStore, model: str, layer: str, reference: str, speaker: np.ndarray, n_speakers: int,
              dtype, block: int = 8192) -> SpeakerSums:
    """Per-speaker sums of `model`/`layer` against `reference`/`layer` over every row, products in `dtype`."""
    shift_x = next(store.iter_blocks(model, layer, block=4096, dtype=np.float64)).mean(axis=0)
    shift_y = next(store.iter_blocks(reference, layer, block=4096, dtype=np.float64)).mean(axis=0)
    sums = SpeakerSums.empty(n_speakers, store.dim(model), store.dim(reference), shift_x, shift_y)
    begin = 0
    for x, y in zip(store.iter_blocks(model, layer, block=block, dtype=None),
                    store.iter_blocks(reference, layer, block=block, dtype=None)):
        sums.update(x, y, speaker[begin:begin + len(x)], dtype=dtype)
        begin += len(x)
    return sums


def measures_of(sums: SpeakerSums) -> np.ndarray:
    """(1 + speakers, measures): the whole rows, then each speaker left out."""
    speakers = len(sums.x.n)
    masks = [None] + [~np.eye(speakers, dtype=bool)[s] for s in range(speakers)]
    values = [sums.pair(m).measures() for m in masks]
    return np.array([[v[name] for name in MEASURES] for v in values])


def main() -> None:
    from threadpoolctl import threadpool_limits

    # One BLAS thread, as `phonorm analyze` runs its products: several BLAS threads on a busy machine
    # were measured many times slower.
    threadpool_limits(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--reference", default="pre")
    parser.add_argument("--pairs", default="tone:L12,sex:L6,phone:L0", help="MODEL:LAYER,...")
    args = parser.parse_args()
    store = FeatureStore(args.store)
    names, speaker = np.unique(store.frames["speaker"].astype(str).to_numpy(), return_inverse=True)
    worst: dict[str, float] = {}
    for item in args.pairs.split(","):
        model, layer = item.split(":")
        tic = time.perf_counter()
        values = {str(np.dtype(d)): measures_of(pair_sums(store, model, layer, args.reference, speaker, len(names), d))
                  for d in (np.float32, np.float64)}
        diff = np.abs(values["float32"] - values["float64"])
        worst[item] = float(np.nanmax(diff))
        per_measure = ", ".join(f"{m} {diff[:, i].max():.1e}" for i, m in enumerate(MEASURES))
        print(f"{item} vs {args.reference}:{layer} ({store.rows} rows, {len(names)} speakers, whole + each left out): "
              f"largest difference {worst[item]:.2e} ({per_measure}); {time.perf_counter() - tic:.0f} s", flush=True)
    print(json.dumps({"rows": store.rows, "pairs": worst, "max": max(worst.values())}))


if __name__ == "__main__":
    main()
