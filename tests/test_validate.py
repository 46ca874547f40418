"""`phonorm validate`: each artifact folder is recognised and checked; corruption is named."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fake_store import make_feature_store
from phonorm.errors import InputError, PhonormError
from phonorm.validate import validate, validate_or_raise


def test_a_store_is_complete_and_consistent(tmp_path):
    store = make_feature_store(tmp_path / "store", n_layers=3, tasks_in_manifest=True)
    result = validate(store)
    assert result.ok and result.kind == "feature store", result.text()
    assert "tone_sex (finetuned, tone,sex" in result.text()


def test_a_corrupted_manifest_or_layer_is_named(tmp_path):
    store = make_feature_store(tmp_path / "store", n_layers=3)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["rows"] = "many"
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PhonormError, match=r"manifest.json.*rows"):
        validate_or_raise(store)

    store = make_feature_store(tmp_path / "store2", n_layers=3)
    layer = store / "tone" / "L1.npy"
    np.save(layer, np.load(layer)[:-5])
    result = validate(store)
    assert not result.ok and any("tone/L1" in p for p in result.problems), result.text()

    (tmp_path / "store3").mkdir()
    (tmp_path / "store3" / "manifest.json").write_text("{not json")
    with pytest.raises(PhonormError, match="not valid JSON"):
        validate_or_raise(tmp_path / "store3")


def test_a_prepared_corpus_and_a_foreign_folder(fake_corpus, tmp_path):
    assert validate(fake_corpus).ok and validate(fake_corpus).kind == "prepared corpus"
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not a phonorm artifact folder"):
        validate(tmp_path / "x")


def test_cli_exit_status(tmp_path):
    store = make_feature_store(tmp_path / "store", n_layers=2)
    ok = subprocess.run([sys.executable, "-m", "phonorm.cli", "validate", str(store)], capture_output=True, text=True)
    assert ok.returncode == 0 and "complete and consistent" in ok.stdout
    (store / "frames.parquet").unlink()
    bad = subprocess.run([sys.executable, "-m", "phonorm.cli", "validate", str(store)], capture_output=True, text=True)
    assert bad.returncode == 2 and "frames.parquet" in bad.stderr and "Traceback" not in bad.stderr


def test_results_folder_lists_its_figures(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"\x89PNG")
    for name in ("similarity.csv", "probes.csv", "normalization.csv", "claims.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "settings.json").write_text(json.dumps({"settings": {}, "figures": ["figures/a.png"]}))
    assert validate(tmp_path).ok, validate(tmp_path).text()
    (tmp_path / "figures" / "a.png").unlink()
    assert "figures/a.png: listed in settings.json but missing" in validate(tmp_path).problems
