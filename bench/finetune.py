"""Fine-tuning throughput and padding: our length-bucketed batches against random batches.

Usage: python bench/finetune.py [--corpus PREPARED] [--model MODEL] [--steps 60] [--batch-seconds 16]
Without --corpus a fake corpus (tests/fakes.py, 24 speakers × 20 utterances) is made; without
--model a tiny random wav2vec 2.0. Prints a JSON object on its last line with
- throughput_audio_s_per_s: seconds of training audio per second of wall time (train steps only),
- padding/cropping fractions of our length-bucketed batches and of random batches of the same sizes
  (padding: share of padded audio when padding to the longest, what layer-norm models do;
  cropped: share of audio cut away when cropping to the shortest, what group-norm models do).
Target: bucketed padding under 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from phonorm.artifacts import read_json  # noqa: E402
from phonorm.corpus.store import PreparedCorpus  # noqa: E402
from phonorm.models.data import length_bucketed_batches, random_batches, wasted_fraction  # noqa: E402
from phonorm.models.finetune import FinetuneSettings, finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-seconds", type=float, default=16.0)
    parser.add_argument("--tasks", default="tone,sex")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    if args.corpus is None:
        from fakes import make_prepared_corpus

        args.corpus = make_prepared_corpus(work / "corpus", n_speakers=24, n_utterances=20, seed=1)
    if args.model is None:
        from transformers import Wav2Vec2Model

        from phonorm.models.backbone import make_config

        torch.manual_seed(0)
        Wav2Vec2Model(make_config("tiny")).save_pretrained(work / "tiny")
        args.model = str(work / "tiny")

    durations = PreparedCorpus(args.corpus).utterances("train")["duration"].to_numpy()
    buckets = length_bucketed_batches(durations, args.batch_seconds)
    shuffled = random_batches(durations, [len(b) for b in buckets], seed=0)
    ours, baseline = wasted_fraction(durations, buckets), wasted_fraction(durations, shuffled)

    settings = FinetuneSettings(tasks=args.tasks.split(","), max_steps=args.steps, eval_every=args.steps, lr=1e-3,
                                batch_seconds=args.batch_seconds, epochs=1000)
    tic = time.perf_counter()
    finetune(args.corpus, model=args.model, out=work / "model", settings=settings)
    wall = time.perf_counter() - tic
    train = read_json(work / "model" / "metrics.json")["train"]
    result = {
        "throughput_audio_s_per_s": train["throughput"],
        "train_audio_seconds": train["audio_seconds"],
        "train_seconds": train["train_seconds"],
        "wall_seconds_with_eval_and_saving": wall,
        "steps": train["optimizer_steps"],
        "mixed_precision": train["mixed_precision"],
        "batch_seconds": args.batch_seconds,
        "n_batches": len(buckets),
        "bucketed_padding_fraction": ours["padding"],
        "random_padding_fraction": baseline["padding"],
        "bucketed_cropped_fraction": ours["cropped"],
        "random_cropped_fraction": baseline["cropped"],
        "padding_target_met": bool(ours["padding"] < 0.10),
        "model": args.model, "corpus": str(args.corpus), "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
