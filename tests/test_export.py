"""phonorm export: one layer of one model as a flat table (labels + e0..e{dim-1})."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonorm.errors import InputError
from phonorm.features.export import export
from phonorm.features.extract import ExtractSettings, extract
from phonorm.features.store import FeatureStore


@pytest.fixture(scope="module")
def small_store(fake_corpus, tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("export") / "F"
    extract(fake_corpus, models={"pre": tiny_model(1)}, out=out,
            settings=ExtractSettings(pool="segment", layers="0,4", classic=False))
    return out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_labels_and_embedding_columns(small_store, tmp_path, suffix):
    out = tmp_path / f"pre_L4{suffix}"
    message = export(small_store, model="pre", layer="L4", out=out, block=7)  # several blocks
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    store = FeatureStore(small_store)
    assert str(store.rows) in message and len(table) == store.rows
    assert list(table.columns) == list(store.frames.columns) + [f"e{i}" for i in range(64)]
    assert (table["phone"].astype(str).to_numpy() == store.frames["phone"].to_numpy()).all()
    assert (table["tone"].to_numpy() == store.frames["tone"].to_numpy()).all()
    embedding = table[[f"e{i}" for i in range(64)]].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(embedding, store.layer("pre", "L4").astype(np.float32), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed


def test_export_errors_name_the_problem(small_store, tmp_path):
    with pytest.raises(InputError, match="no model 'tone'.*holds: pre"):
        export(small_store, model="tone", layer="L4", out=tmp_path / "x.csv")
    with pytest.raises(InputError, match="no stored layer 'L2'.*L0, L4"):
        export(small_store, model="pre", layer="L2", out=tmp_path / "x.csv")
    with pytest.raises(InputError, match=r"\.parquet or \.csv"):
        export(small_store, model="pre", layer="L4", out=tmp_path / "x.xlsx")
    with pytest.raises(InputError, match="incomplete"):
        (tmp_path / "half").mkdir()
        export(tmp_path / "half", model="pre", layer="L4", out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_layer_with_nan_rows_is_refused_not_exported(small_store, tmp_path):
    """As analyze: NaN rows are a damaged layer, never data in a table handed to R; nothing is written."""
    import shutil

    store = shutil.copytree(small_store, tmp_path / "F")
    path = FeatureStore(store).layer_files("pre", "L4")[0]
    array = np.load(path)
    array[5, 2] = np.nan
    np.save(path, array)
    with pytest.raises(InputError, match=r"L4\.npy: layer L4: row 5 holds NaN or inf"):
        export(store, model="pre", layer="L4", out=tmp_path / "x.csv", block=3)
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob(".*.tmp"))
