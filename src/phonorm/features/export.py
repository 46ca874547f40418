"""`phonorm export`: one layer of one model as a flat table (labels + e0..e{dim-1}) for pandas or R.

Written block by block (bounded memory) to a temporary name, renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.errors import InputError
from phonorm.features.store import FeatureStore

FORMATS = (".parquet", ".csv")


def export(features: str | Path, *, model: str, layer: str, out: str | Path, block: int = 65536) -> str:
    """Write every row of `frames.parquet` with the embedding of `model`'s `layer` as columns
    `e0..e{dim-1}` (float32) to `out` (.parquet or .csv). Returns a one-line summary."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(out, f"unknown output format {out.suffix or '(none)'!r}; use a .parquet or .csv file name")
    store = FeatureStore(features)
    store.layer(model, layer)  # checks the model and the layer with a clear error before writing anything
    frames = store.frames
    dim = store.dim(model)
    names = [f"e{i}" for i in range(dim)]
    begin = 0
    with atomic_path(out) as tmp:
        writer = None
        try:
            for values in store.iter_blocks(model, layer, block=block):
                finite = np.isfinite(values).all(axis=1)
                if not finite.all():  # as analyze: a NaN row is a damaged store, never exported as data
                    bad = begin + int(np.argmin(finite))
                    files = store.layer_files(model, layer)
                    raise InputError(files[0] if len(files) == 1 else store.folder / model,
                                     f"layer {layer}: row {bad} holds NaN or inf ({int((~finite).sum())} such rows in this block); "
                                     "the layer is damaged or its model diverged: extract it again")
                labels = frames.iloc[begin:begin + len(values)].reset_index(drop=True)
                table = pd.concat([labels, pd.DataFrame(values, columns=names)], axis=1)
                if suffix == ".csv":
                    table.to_csv(tmp, mode="w" if begin == 0 else "a", header=begin == 0, index=False,
                                 float_format="%.6g")
                else:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    arrow = pa.Table.from_pandas(table, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, arrow.schema)
                    writer.write_table(arrow)
                begin += len(values)
            if begin == 0:  # an empty store still gets a file with the header
                pd.DataFrame(columns=list(frames.columns) + names).to_csv(tmp, index=False) if suffix == ".csv" \
                    else frames.assign(**{n: np.float32(0) for n in names}).iloc[:0].to_parquet(tmp, index=False)
        finally:
            if writer is not None:
                writer.close()
    return f"{out}: {begin} rows × ({len(frames.columns)} label columns + {dim} embedding columns) of {model} {layer}"
