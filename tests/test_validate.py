"""`phonorm validate`: each artifact folder is recognised and checked; corruption is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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


@pytest.fixture(autouse=True)
def _analysed(analysed_store):
    """conftest's analysed store, for `_results_folder`."""
    _ANALYSED["R"] = analysed_store[1]


_ANALYSED: dict[str, Path] = {}


def _results_folder(folder: Path) -> Path:
    """A copy of a results folder phonorm analyze wrote (conftest's `analysed_store`)."""
    import shutil

    shutil.copytree(_ANALYSED["R"], folder)
    return folder


def test_results_folder_lists_its_figures(tmp_path):
    _results_folder(tmp_path / "R")
    assert validate(tmp_path / "R").ok, validate(tmp_path / "R").text()
    figure = json.loads((tmp_path / "R" / "settings.json").read_text())["figures"][0]
    (tmp_path / "R" / figure).unlink()
    assert f"{figure}: listed in settings.json but missing" in validate(tmp_path / "R").problems


def test_claims_or_settings_that_are_not_what_analyze_writes_are_named(tmp_path):
    folder = _results_folder(tmp_path / "R")
    (folder / "claims.json").write_text(json.dumps({"claims": []}))  # JSON, but not a claims file
    problems = validate(folder).problems
    assert len(problems) == 1 and problems[0].startswith("claims.json: not a valid claims file"), problems
    record = json.loads((folder / "settings.json").read_text())
    record["figures"] = "figures/a.png"  # a list of paths, not one
    (folder / "settings.json").write_text(json.dumps(record))
    result = validate(folder)
    assert not result.ok and any(p.startswith("settings.json: not a valid completion record") and "figures" in p
                                 for p in result.problems), result.text()


def test_a_results_folder_without_its_last_record_is_unfinished(tmp_path):
    _results_folder(tmp_path / "R")
    (tmp_path / "R" / "settings.json").unlink()  # analyze removes it before writing and writes it last
    result = validate(tmp_path / "R")
    assert result.kind == "unfinished analysis results"
    assert result.problems == [result.problems[0]] and result.problems[0].startswith("settings.json: missing")
    assert "run phonorm analyze again" in result.problems[0]


# --------------------------------------------------------------------------- damaged files
def _model_folder(folder: Path, layers: int = 2, dim: int = 8) -> Path:
    """A fine-tuned model folder as phonorm finetune writes it (tiny, numpy-made weights)."""
    from safetensors.numpy import save_file

    from phonorm.records.card import ModelCard

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "num_hidden_layers": layers,
                                                    "hidden_size": dim}))
    weights = {f"encoder.layers.{i}.feed_forward.weight": np.full((dim, dim), 0.1, np.float32) for i in range(layers)}
    save_file({**weights, "feature_projection.weight": np.ones((dim, 4), np.float32)}, str(folder / "model.safetensors"))
    save_file({"tone.weight": np.ones((5, dim), np.float32), "tone.bias": np.zeros(5, np.float32)},
              str(folder / "heads.safetensors"))
    ModelCard(complete=True, kind="finetuned", model_type="wav2vec2", corpus="/c", corpus_fingerprint="x",
              settings={}, provenance={}, tasks=["tone"], label_maps={"tone": ["1", "2", "3", "4", "5"]}).save(folder)
    return folder


def _cut(path: Path, keep: float = 0.5) -> None:
    """Truncate `path` to a share of its bytes (a copy or a write cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _overwrite(path: Path, at: int, data: bytes) -> None:
    """Overwrite bytes of `path` at offset `at` (negative: from the end)."""
    raw = bytearray(path.read_bytes())
    at = at % len(raw)
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def _nan_row(path: Path, row: int) -> None:
    array = np.load(path)
    array[row, 3] = np.nan
    np.save(path, array)


def _model(tmp_path: Path) -> Path:
    return _model_folder(tmp_path / "model")


def _store(tmp_path: Path) -> Path:
    return make_feature_store(tmp_path / "store", models=("pretrained", "tone"), n_layers=2)


# case → (build the folder, damage it, the file named, the defect named)
DAMAGES = {
    "truncated npy layer": (_store, lambda f: _cut(f / "tone" / "L1.npy", 0.7), "tone/L1.npy", "truncated"),
    "npy layer with a NaN row": (_store, lambda f: _nan_row(f / "tone" / "L1.npy", 7), "tone/L1.npy",
                                 "1 row(s) hold NaN or inf (first: row 7"),
    "corrupt frames.parquet": (_store, lambda f: _overwrite(f / "frames.parquet", -12, b"\0" * 12), "frames.parquet",
                               "damaged Parquet file"),
    "classic mfcc.npy with a NaN row": (_store, lambda f: _nan_row(f / "classic" / "mfcc.npy", 4), "classic/mfcc.npy",
                                        "1 row(s) without a value (NaN or inf), extraction recorded 0"),
    "truncated classic npy": (_store, lambda f: _cut(f / "classic" / "mfcc.npy"), "classic/mfcc.npy", "truncated"),
    "truncated heads.safetensors": (_model, lambda f: _cut(f / "heads.safetensors"), "heads.safetensors",
                                    "truncated"),
    "model.safetensors with a damaged header": (_model, lambda f: _overwrite(f / "model.safetensors", 0, b"\xff" * 8),
                                                "model.safetensors", "not a safetensors file"),
    "model.safetensors with damaged weights": (_model, lambda f: _overwrite(f / "model.safetensors", -64, b"\xff" * 16),
                                               "model.safetensors", "hold NaN or inf"),
    "truncated model.safetensors": (_model, lambda f: _cut(f / "model.safetensors", 0.9), "model.safetensors",
                                    "truncated"),
    "config.json cut short": (_model, lambda f: _cut(f / "config.json"), "config.json", "not valid JSON"),
    "config.json of another model": (_model, lambda f: (f / "config.json").write_text(json.dumps(
        {"model_type": "wav2vec2", "num_hidden_layers": 12, "hidden_size": 8})), "model.safetensors",
        "holds 2 Transformer layers, config.json says num_hidden_layers = 12"),
    "config.json of no speech model": (_model, lambda f: (f / "config.json").write_text('{"model_type": "bert"}'),
                                       "config.json", "not a supported speech model"),
    "corrupt utterances.parquet": (lambda t: _copy_corpus(t), lambda f: _cut(f / "utterances.parquet"),
                                   "utterances.parquet", "damaged Parquet file"),
    "claims.json cut short": (lambda t: _results_folder(t / "R"), lambda f: _cut(f / "claims.json"), "claims.json",
                              "not valid JSON"),
    "frames.parquet with a zeroed page, its footer intact": (
        _store, lambda f: _overwrite(f / "frames.parquet", (f / "frames.parquet").stat().st_size // 3, b"\0" * 200),
        "frames.parquet", "damaged Parquet file"),
    "similarity.csv cut mid-line": (lambda t: _results_folder(t / "R"), lambda f: _cut_mid_line(f / "similarity.csv"),
                                    "similarity.csv", "the file was cut or edited"),
    "probes.csv cut at a line boundary": (lambda t: _results_folder(t / "R"), lambda f: _drop_last_line(f / "probes.csv"),
                                          "probes.csv", "data rows, settings.json records"),
}


def _cut_mid_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 8])


def _drop_last_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


def _copy_corpus(tmp_path: Path) -> Path:
    from fakes import make_prepared_corpus

    return make_prepared_corpus(tmp_path / "corpus", n_speakers=4, n_utterances=2, seed=0)


def _cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Exit status and stderr of `phonorm ARGS`, run in this process (main() as the console script)."""
    from phonorm.cli import main

    monkeypatch.setattr(sys, "argv", ["phonorm", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("case", list(DAMAGES))
def test_every_damaged_file_is_one_line_naming_it(case, tmp_path, monkeypatch, capsys):
    build, damage, file, defect = DAMAGES[case]
    folder = build(tmp_path)
    assert validate(folder).ok, validate(folder).text()
    damage(folder)
    status, err = _cli(["validate", str(folder)], monkeypatch, capsys)
    assert status == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip().startswith("problem:")]
    assert len(lines) == 1 and file in lines[0] and defect in lines[0], err


def test_a_run_folder_is_validated_stage_by_stage(tmp_path):
    """validate on a `phonorm run` work folder looks inside each stage folder, not only at its marker."""
    work = tmp_path / "work"
    store = make_feature_store(work / "extract" / "extract-0123456789ab", models=("pretrained", "tone"), n_layers=2)
    model = _model_folder(work / "finetune" / "tone-abcdefabcdef")
    stages = []
    for kind, name, folder in (("extract", "extract", store), ("finetune", "tone", model)):
        (folder / ".phonorm-stage.json").write_text(json.dumps({"key": folder.name[-12:] + "0" * 52, "stage": kind}))
        stages.append({"stage": kind, "name": name, "key": folder.name[-12:], "folder": str(folder)})
    (work / "run.json").write_text(json.dumps({"report": str(work / "report.html"), "stages": stages}))
    result = validate(work)
    assert result.ok and any("extract/extract-0123456789ab: feature store" in f for f in result.facts), result.text()
    _cut(model / "heads.safetensors")
    _nan_row(store / "tone" / "L0.npy", 3)
    problems = validate(work).problems
    assert len(problems) == 2, problems
    assert any(p.startswith("finetune/tone-abcdefabcdef/heads.safetensors: truncated") for p in problems)
    assert any(p.startswith("extract/extract-0123456789ab/tone/L0.npy: 1 row(s) hold NaN") for p in problems)


def test_a_copied_run_folder_is_validated_where_it_now_lies(tmp_path):
    """run.json lists absolute paths of the folder it was made in; a copy (or a moved folder) is judged
    by its own stage folders, not skipped: a damaged file in the copy is named."""
    import shutil

    work = tmp_path / "work"
    store = make_feature_store(work / "extract" / "extract-0123456789ab", models=("pretrained", "tone"), n_layers=2)
    (store / ".phonorm-stage.json").write_text(json.dumps({"key": "0123456789ab" + "0" * 52, "stage": "extract"}))
    stage = {"stage": "extract", "name": "extract", "key": "0123456789ab", "folder": str(store)}
    (work / "run.json").write_text(json.dumps({"report": str(work / "report.html"), "stages": [stage]}))
    copy = tmp_path / "elsewhere" / "work"
    shutil.copytree(work, copy)
    shutil.rmtree(work)
    result = validate(copy)
    assert result.ok and any("extract/extract-0123456789ab: feature store" in f for f in result.facts), result.text()
    _cut(copy / "extract" / "extract-0123456789ab" / "tone" / "L1.npy", 0.7)
    problems = validate(copy).problems
    assert len(problems) == 1 and problems[0].startswith("extract/extract-0123456789ab/tone/L1.npy: truncated"), problems


def test_a_run_killed_over_an_earlier_one_is_not_complete(tmp_path):
    """`phonorm run` marks the earlier run.json `complete: false` before its first stage; until it writes
    its own, validate says the last run did not finish instead of judging the earlier run's stages."""
    from phonorm.experiment.run import mark_running

    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"report": str(work / "report.html"), "stages": [], "complete": True}))
    assert validate(work).ok
    mark_running(work)
    problems = validate(work).problems
    assert problems == ["run.json: the last phonorm run in this folder did not finish (killed or failed); run it again"]


def test_audio_deleted_or_replaced_after_prepare_is_named(tmp_path):
    import soundfile as sf

    folder = _copy_corpus(tmp_path)
    assert validate(folder).ok, validate(folder).text()
    utterances = pd.read_parquet(folder / "utterances.parquet")
    first, second = utterances.audio_path.iloc[0], utterances.audio_path.iloc[1]
    wave, rate = sf.read(second)
    sf.write(second, np.concatenate([wave, wave]), rate)
    Path(first).unlink()
    problems = validate(folder).problems
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"utterances.parquet: 1 audio file missing or unreadable (first: {first})")
    assert problems[1].startswith(f"utterances.parquet: 1 audio file changed length since prepare (first: {second}")
