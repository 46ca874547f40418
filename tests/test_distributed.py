"""Fine-tuning in two CPU processes (torchrun, gloo) agrees with the one-process run."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from phonorm.corpus.store import PreparedCorpus
from phonorm.models.data import length_bucketed_batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command, env):
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_two_processes_agree_with_one(fake_corpus, tmp_path, tiny_model):
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1")
    args = ["finetune", str(fake_corpus), "--model", tiny_model(0), "--tasks", "tone,sex", "--epochs", "8",
            "--eval-every", "4", "--lr", "2e-3", "--batch-seconds", "8", "--seed", "0"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    _run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          "-m", "phonorm.cli", *args, "--out", str(tmp_path / "two")], env)
    _run([sys.executable, "-m", "phonorm.cli", *args, "--out", str(tmp_path / "one")], env)

    meta = {k: json.loads((tmp_path / k / "phonorm.json").read_text()) for k in ("one", "two")}
    metrics = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("one", "two")}
    assert meta["one"]["label_maps"] == meta["two"]["label_maps"]
    assert metrics["two"]["train"]["num_processes"] == 2 and metrics["one"]["train"]["num_processes"] == 1

    durations = PreparedCorpus(fake_corpus).utterances("train")["duration"].to_numpy()
    n_batches = len(length_bucketed_batches(durations, 8.0))
    assert metrics["one"]["train"]["optimizer_steps"] == 8 * n_batches
    assert metrics["two"]["train"]["optimizer_steps"] == 8 * math.ceil(n_batches / 2)
    # every epoch covers the whole train split in both runs; two processes repeat at most one batch
    seen_one, seen_two = metrics["one"]["train"]["utterances"], metrics["two"]["train"]["utterances"]
    assert seen_one == 8 * len(durations)
    assert seen_one <= seen_two <= seen_one + 8 * max(len(b) for b in length_bucketed_batches(durations, 8.0))
    # both learn sex (far above chance) and land close to each other
    sex = {k: metrics[k]["dev"]["sex"] for k in ("one", "two")}
    assert all(s["accuracy"] > s["chance"] + 0.05 for s in sex.values()), sex
    assert (tmp_path / "two" / "model.safetensors").is_file() and not (tmp_path / "two" / "checkpoint").exists()


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_two_process_extraction_writes_parts_equal_to_one_process(fake_corpus, tmp_path, tiny_model):
    from phonorm.features.store import FeatureStore

    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1")
    args = ["extract", str(fake_corpus), "--model", f"m={tiny_model(0)}", "--no-classic"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    _run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          "-m", "phonorm.cli", *args, "--out", str(tmp_path / "two")], env)
    _run([sys.executable, "-m", "phonorm.cli", *args, "--out", str(tmp_path / "one")], env)
    one, two = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two" / "m" / "L2").glob("part-*.npy")) == ["part-00000.npy",
                                                                                           "part-00001.npy"]
    assert one.frames.equals(two.frames)
    for layer in ("L0", "L4"):
        assert (one.layer("m", layer) == two.layer("m", layer)).all()


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_several_processes_that_do_not_see_each_other_are_refused(fake_corpus, tmp_path):
    """torchrun on CPU without ACCELERATE_USE_CPU: each process would think it runs alone."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_USE_CPU", None)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "phonorm.cli", "extract", str(fake_corpus), "--model", "m=x",
                           "--out", str(tmp_path / "F")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "ACCELERATE_USE_CPU=1 torchrun" in done.stdout + done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "F").exists()
