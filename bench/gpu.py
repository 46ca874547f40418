"""The GPU paths, timed: pre-training (hubert objective), bf16 fine-tuning and extraction on CUDA.

On a synthetic corpus (tests/fakes.py, nothing downloaded): a tiny and a base-size HuBERT pre-trained
for a few steps (optimizer steps per second, audio seconds per second), a tone+sex fine-tuning of the
tiny one with `mixed_precision: auto` (bf16 where the GPU has it), and the extraction of both
models (audio seconds per second), with the peak GPU memory of each part. Run without a GPU, the
same parts are timed on the CPU (the side-by-side ratio needs both runs on one machine).

Usage: PYTHONPATH=src python bench/gpu.py [--out DIR] [--utterances 40] [--steps 200]
Prints one JSON object on its last line. Needs a CUDA GPU; nothing in the test suite uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # fakes.py: the synthetic corpus


def _timed(part: str, results: dict, fn) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    summary = fn()
    entry = {"wall_s": round(time.perf_counter() - tic, 2), "summary": str(summary)[:300]}
    if torch.cuda.is_available():
        entry["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    results[part] = entry
    print(part, json.dumps(entry), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--utterances", type=int, default=40, help="per speaker (8 speakers)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    import pandas as pd
    import torch

    from fakes import make_prepared_corpus
    from phonorm.features.extract import ExtractSettings, extract
    from phonorm.models.finetune import finetune
    from phonorm.models.pretrain import pretrain
    from phonorm.settings import FinetuneSettings

    work = args.out or Path(tempfile.mkdtemp(prefix="phonorm-gpu-"))
    corpus = make_prepared_corpus(work / "corpus", n_speakers=8, n_utterances=args.utterances, seed=0)
    audio = float(pd.read_parquet(corpus / "utterances.parquet")["duration"].sum())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict = {"bench": "gpu", "device": device, "torch": torch.__version__, "audio_s": round(audio, 1),
                     "cpus": os.cpu_count()}
    common = dict(objective="hubert", steps=args.steps, batch_seconds=16.0, lr=3e-3, clusters=50,
                  unmasked_weight=0.5, eval_every=args.steps)
    for size in ("tiny", "base"):
        folder = work / f"pre-{size}"
        _timed(f"pretrain_{size}", results, lambda folder=folder, size=size: pretrain(corpus, out=folder, size=size, **common))
        log = pd.read_csv(folder / "pretrain_log.csv")
        steps = log[log.step > 0]
        results[f"pretrain_{size}"].update(
            steps_per_s=round(len(steps) / steps.step_seconds.sum(), 2),
            audio_s_per_s=round(steps.audio_seconds.sum() / steps.step_seconds.sum(), 1),
            held_out_masked_accuracy=[round(v, 3) for v in log.held_out_masked_accuracy.dropna()])
    settings = FinetuneSettings(tasks=["tone", "sex"], epochs=3, batch_seconds=32, lr=5e-4, eval_every=50)
    _timed("finetune_tiny_auto_precision", results,
           lambda: finetune(corpus, model=str(work / "pre-tiny"), out=work / "tone_sex", settings=settings))
    for size in ("tiny", "base"):
        _timed(f"extract_{size}", results, lambda size=size: extract(
            corpus, models={"m": str(work / f"pre-{size}")}, out=work / f"features-{size}",
            settings=ExtractSettings(split="test", frames="all", classic=False)))
        test_audio = float(pd.read_parquet(corpus / "utterances.parquet").query("split == 'test'")["duration"].sum())
        results[f"extract_{size}"]["audio_s_per_s"] = round(test_audio / results[f"extract_{size}"]["wall_s"], 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
