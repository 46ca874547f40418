"""The frozen front end computed once (models/frontend.py) against recomputed every step: time and accuracy.

Usage: python bench/frontend.py --corpus PREPARED [--model phonorm:tiny-hubert] [--tasks tone] [--epochs 10]
Fine-tunes the same model twice with the demo's recipe (same seed, same batches): with the cache
(`front_end_cache_gb` 2) and without (0), then scores both on the test split. Prints a table and a JSON
object on its last line: wall seconds of each fine-tune (cache computation included), its train-step
seconds, the best dev accuracy and the test accuracy per task, and the load average beside them (time it
with nothing else running). The demo's corpus: `phonorm-demo/corpus/corpus-*/` after `make demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from phonorm.artifacts import read_json
from phonorm.models.evaluate import evaluate
from phonorm.models.finetune import FinetuneSettings, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model", default="phonorm:tiny-hubert")
    parser.add_argument("--tasks", default="tone")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_frontend_"))
    # the demo's recipe (examples/demo.yaml)
    recipe = dict(tasks=args.tasks, epochs=args.epochs, batch_seconds=32, lr=0.004, freeze_feature_encoder=True,
                  eval_every=50, seed=0)
    results = {}
    for name, gb in (("recomputed", 0.0), ("cached", 2.0)):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        finetune(args.corpus, model=args.model, out=work / name,
                 settings=FinetuneSettings(**recipe, front_end_cache_gb=gb))
        seconds = time.perf_counter() - started
        metrics = read_json(work / name / "metrics.json")
        scores = evaluate(args.corpus, model_dir=work / name)
        results[name] = {"seconds": round(seconds, 1), "train_seconds": round(metrics["train"]["train_seconds"], 1),
                         "front_end": metrics["train"]["front_end_cache"], "best_step": metrics["best_step"],
                         "best_dev": metrics["best_dev"],
                         "test": {t: round(s["accuracy"], 4) for t, s in scores.items()}, "load_before": round(load, 2)}
    for name, r in results.items():
        print(f"{name:>10}: {r['seconds']:7.1f} s (train steps {r['train_seconds']:.1f} s), best step {r['best_step']}, "
              f"dev {r['best_dev']}, test {r['test']}; front end {r['front_end']}; load {r['load_before']}")
    ratio = results["cached"]["seconds"] / results["recomputed"]["seconds"]
    differences = {t: round(results["cached"]["test"][t] - results["recomputed"]["test"][t], 4)
                   for t in results["cached"]["test"]}
    print(f"cached / recomputed wall time: {ratio:.3f}; test accuracy cached − recomputed: {differences}")
    print(json.dumps({"results": results, "ratio": round(ratio, 3), "test_difference": differences}))


if __name__ == "__main__":
    main()
