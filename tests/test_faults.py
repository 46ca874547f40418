"""Faults a new (or unlucky) user meets, each through the command line as they would: one line naming the
file and the fault, exit status 2, no traceback, nothing wrong written. The cases of the fault audit that
are not already in the damaged-file table of test_validate.py or next to the stage they concern."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from phonorm.models.finetune import FinetuneSettings, finetune

torch.set_num_threads(2)


def _cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Exit status and stderr of `phonorm ARGS`, run in this process (main() as the console script)."""
    from phonorm.cli import main

    monkeypatch.setattr(sys, "argv", ["phonorm", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


def _one_line(status: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("phonorm: error:")]
    assert status == 2 and "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def models(fake_corpus, tmp_path_factory, tiny_model):
    """A tiny random base model (a copy: tests damage it) and a model fine-tuned from it (a few steps)."""
    root = tmp_path_factory.mktemp("fault_models")
    shutil.copytree(tiny_model(0), root / "base")
    finetune(fake_corpus, model=str(root / "base"), out=root / "tone",
             settings=FinetuneSettings(tasks=["tone"], max_steps=2, eval_every=2, batch_seconds=8.0))
    return root


def _damage(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at: at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_evaluate_with_truncated_heads(fake_corpus, models, tmp_path, monkeypatch, capsys):
    model = shutil.copytree(models / "tone", tmp_path / "tone")
    heads = model / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[: heads.stat().st_size // 2])
    _one_line(*_cli(["evaluate", fake_corpus, "--model", model], monkeypatch, capsys), "heads.safetensors",
              "damaged safetensors file")


def test_extract_from_weights_with_a_damaged_header(fake_corpus, models, tmp_path, monkeypatch, capsys):
    base = shutil.copytree(models / "base", tmp_path / "base")
    _damage(base / "model.safetensors", 0, b"\xff" * 8)
    _one_line(*_cli(["extract", fake_corpus, "--model", f"base={base}", "--out", tmp_path / "F"], monkeypatch, capsys),
              str(base), "cannot load model weights")
    assert not (tmp_path / "F" / "manifest.json").exists()


def test_a_corrupt_segments_table(fake_corpus, models, tmp_path, monkeypatch, capsys):
    corpus = shutil.copytree(fake_corpus, tmp_path / "corpus")
    segments = corpus / "segments.parquet"
    _damage(segments, 4, b"\0" * (segments.stat().st_size // 2))  # the column pages; the footer intact
    for command in (["info", corpus], ["finetune", corpus, "--model", models / "base", "--tasks", "tone",
                                       "--out", tmp_path / "m"]):
        _one_line(*_cli(command, monkeypatch, capsys), "segments.parquet", "damaged Parquet file")


def test_epochs_beyond_any_run(fake_corpus, models, tmp_path, monkeypatch, capsys):
    _one_line(*_cli(["finetune", fake_corpus, "--model", models / "base", "--tasks", "tone", "--epochs", "1e308",
                     "--out", tmp_path / "m"], monkeypatch, capsys), "--epochs")


def test_an_output_folder_that_is_the_input_is_refused(fake_corpus, models, tmp_path, monkeypatch, capsys):
    """`finetune --out` the corpus folder, `analyze --out` the store or a folder inside it: refused before
    anything is written (they mixed their files into what they read)."""
    from fake_store import make_feature_store

    corpus = shutil.copytree(fake_corpus, tmp_path / "corpus")
    before = sorted(p.name for p in corpus.iterdir())
    _one_line(*_cli(["finetune", corpus, "--model", models / "base", "--tasks", "tone", "--out", corpus],
                    monkeypatch, capsys), "--out must be a folder of its own, not the prepared corpus")
    assert sorted(p.name for p in corpus.iterdir()) == before
    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_layers=1)
    for out in (store, store / "results"):
        _one_line(*_cli(["analyze", store, "--reference", "pretrained", "--out", out], monkeypatch, capsys),
                  "--out must be a folder of its own, not the feature store")
    assert not (store / "results").exists() and not (store / "settings.json").exists()


def test_a_synthetic_corpus_beyond_any_use_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """`--speakers 1e8` planned for minutes in silence; the settings now bound it (10,000 voices)."""
    _one_line(*_cli(["synth", tmp_path / "c", "--speakers", "100000000"], monkeypatch, capsys), "--speakers")
    assert not (tmp_path / "c").exists()
