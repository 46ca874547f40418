"""Extraction at the study's size: speed of a random base-size model, and memory flat in the rows.

Each measurement is one `phonorm extract` (every layer, `frames: all`, so rows = every frame, ~50
per second of audio; no classic baselines) of a random wav2vec 2.0 (`models.backbone.make_config`,
nothing downloaded) over a synthetic corpus (tests/fakes.py, two speakers), in a fresh process
that samples its own anonymous resident memory (RssAnon, /proc/self/status) every 20 ms. Reported:
rows stored, seconds of audio, wall seconds of the extraction, audio seconds per second, RssAnon
before the extraction and its peak, and VmHWM (peak resident memory of the whole process, file
pages such as shared libraries included).

- memory: extraction at each of `--rows` (default 10000,300000) with a `--memory-size` model
  (default tiny: 300k rows are ~100 min of audio, hours for a base model on 2 CPU cores; what
  extraction keeps per row, the row index, does not depend on the model). `growth_mb` = peak RssAnon at the largest
  minus at the smallest row count; `growth_bytes_per_row` divides it by the extra rows. With three or
  more row counts, `growth_tail_mb` / `growth_tail_bytes_per_row` compare the two largest: the
  smallest run (one chunk of ~100 utterances) has not yet filled the fixed-size caches that every
  longer run fills within its first few hundred utterances (torch's and malloc's).
- speed: `--speed-rows` (default 10000, ~200 s of audio) with a `--size` model (default base).

On a machine with a GPU, extraction runs on it (Accelerate's device); each run then also reports the
GPU's name and its peak allocated memory (`peak_gpu_memory_mb`).

Usage: PYTHONPATH=src .venv/bin/python bench/scale_extract.py [--rows 10000,300000] [--size base]
       [--speed-rows 10000] [--memory-size tiny] [--threads 2] [--workdir DIR]
Prints one JSON object on its last line. `bench_extraction(rows, size)` is the function
bench/scale.py imports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # fakes.py: the synthetic corpus

FRAMES_PER_UTTERANCE = 96  # mean frames of a tests/fakes.py utterance (~1.9 s): sizes the corpus


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MiB (Linux)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = int(value.split()[0]) / 1024
    return found


def make_model(size: str, folder: Path) -> Path:
    """A random wav2vec 2.0 of `size` (settings.MODEL_SIZES) saved to `folder` (kept when present)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import Wav2Vec2Model

    from phonorm.models.backbone import make_config

    torch.manual_seed(0)
    Wav2Vec2Model(make_config(size)).save_pretrained(folder)
    return folder


def make_corpus(folder: Path, rows: int) -> Path:
    """A synthetic prepared corpus of two speakers with about `rows` frames (kept when present)."""
    if (folder / "labels.json").is_file():
        return folder
    from fakes import make_prepared_corpus

    per_speaker = max(1, math.ceil(rows / FRAMES_PER_UTTERANCE / 2))
    return make_prepared_corpus(folder, n_speakers=2, n_utterances=per_speaker, seed=1)


def child(corpus: str, model: str, out: str, threads: int) -> None:
    """In a fresh process: one extraction, its wall time and its memory (JSON on stdout)."""
    import pandas as pd
    import torch
    import transformers  # noqa: F401  (imports are not the extraction's memory)

    from phonorm.features.extract import ExtractSettings, extract

    torch.set_num_threads(threads)
    peak = {"anon": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["anon"] = max(peak["anon"], _status_mb("RssAnon")["RssAnon"])
            done.wait(0.02)

    before = _status_mb("RssAnon")["RssAnon"]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    extract(corpus, models={"m": model}, out=out, settings=ExtractSettings(frames="all", classic=False))
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    end = _status_mb("RssAnon", "VmHWM")
    gpu = {}
    if torch.cuda.is_available():  # extraction runs where Accelerate puts it: the GPU when there is one
        gpu = {"gpu": torch.cuda.get_device_name(0),
               "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    rows = len(pd.read_parquet(Path(out) / "frames.parquet", columns=["row"]))
    audio = float(pd.read_parquet(Path(corpus) / "utterances.parquet", columns=["duration"])["duration"].sum())
    print(json.dumps({
        "rows": rows, "audio_s": round(audio, 1), "wall_s": round(wall, 2),
        "audio_s_per_s": round(audio / wall, 2),
        "rss_anon_before_mb": round(before, 1), "peak_rss_anon_mb": round(max(peak["anon"], end["RssAnon"]), 1),
        "rss_anon_end_mb": round(end["RssAnon"], 1), "vm_hwm_mb": round(end["VmHWM"], 1), **gpu,
    }))


def bench_extraction(rows: int, size: str = "base", *, threads: int = 2, workdir: str | Path | None = None) -> dict:
    """Extract a random `size` model over a synthetic corpus of about `rows` frames (`frames: all`)
    in a fresh process. Returns {rows, audio_s, wall_s, audio_s_per_s, rss_anon_before_mb,
    peak_rss_anon_mb, rss_anon_end_mb, vm_hwm_mb, model_size, threads}. `workdir` keeps the model
    and corpus for reuse (a temporary folder when None); the store is deleted after."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="phonorm-scale-extract-") as scratch:
        work = Path(workdir) if workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model = make_model(size, work / f"model-{size}")
        corpus = make_corpus(work / f"corpus-{rows}", rows)
        out = Path(scratch) / "store"
        # The caller's PYTHONPATH wins (e.g. another checkout's src, to compare versions).
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT / "src")}
        result = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(model), str(out), str(threads)],
                                capture_output=True, text=True, env=env)
        shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"extraction child failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "model_size": size, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,300000", help="row counts of the memory runs (comma-separated)")
    parser.add_argument("--memory-size", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--size", default="base", choices=("tiny", "small", "base"), help="model of the speed run")
    parser.add_argument("--speed-rows", type=int, default=10000, help="rows of the speed run (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keep models and corpora here between runs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:3], int(args.child[3]))
        return
    memory = []
    for rows in sorted(int(r) for r in args.rows.split(",") if r.strip()):
        _log(f"memory: {rows} rows, {args.memory_size} model ...")
        memory.append(bench_extraction(rows, args.memory_size, threads=args.threads, workdir=args.workdir))
        _log(json.dumps(memory[-1]))
    import torch

    result: dict = {"bench": "scale_extract", "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "threads": args.threads, "cpus": os.cpu_count(),
                    "memory": memory}
    if len(memory) >= 2:
        growth = memory[-1]["peak_rss_anon_mb"] - memory[0]["peak_rss_anon_mb"]
        extra_rows = memory[-1]["rows"] - memory[0]["rows"]
        result["growth_mb"] = round(growth, 1)
        result["growth_bytes_per_row"] = round(growth * 2**20 / max(extra_rows, 1), 1)
        result["vm_hwm_growth_mb"] = round(memory[-1]["vm_hwm_mb"] - memory[0]["vm_hwm_mb"], 1)
    if len(memory) >= 3:  # between the two largest: what still grows once fixed costs have settled
        growth = memory[-1]["peak_rss_anon_mb"] - memory[-2]["peak_rss_anon_mb"]
        extra_rows = memory[-1]["rows"] - memory[-2]["rows"]
        result["growth_tail_mb"] = round(growth, 1)
        result["growth_tail_bytes_per_row"] = round(growth * 2**20 / max(extra_rows, 1), 1)
    if args.speed_rows:
        _log(f"speed: {args.speed_rows} rows, {args.size} model ...")
        result["speed"] = bench_extraction(args.speed_rows, args.size, threads=args.threads, workdir=args.workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
