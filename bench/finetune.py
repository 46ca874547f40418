"""Fine-tuning throughput and padding: our length-bucketed batches against random batches.

Usage: python bench/finetune.py [--corpus PREPARED] [--model MODEL] [--steps 60] [--batch-seconds 16]
Without --corpus a fake corpus (tests/fakes.py, 24 speakers × 20 utterances) is made; without
--model a tiny random wav2vec 2.0. Prints a JSON object on its last line with
- throughput_audio_s_per_s: seconds of training audio per second of wall time (train steps only),
- padding/cropping fractions of our length-bucketed batches and of random batches of the same sizes
  (padding: share of padded audio when padding to the longest, what layer-norm models do;
  cropped: share of audio cut away when cropping to the shortest, what group-norm models do),
- `step_throughput`: the same training step (forward, backward, AdamW) timed on the first
  `--compare-batches` bucketed batches and on random batches of the same sizes, for a layer-norm
  model (pads, attention mask) and a group-norm model (crops): seconds of real audio trained on
  per second of wall time.
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

from phonorm.artifacts import read_json
from phonorm.corpus.store import PreparedCorpus
from phonorm.models.data import length_bucketed_batches, random_batches, wasted_fraction
from phonorm.models.finetune import FinetuneSettings, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-seconds", type=float, default=16.0)
    parser.add_argument("--tasks", default="tone,sex")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-batches", type=int, default=40, help="batches timed per scheme in step_throughput")
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
    result["step_throughput"] = {
        kind: compare_batches(args.corpus, buckets, shuffled, args.compare_batches, stable_layer_norm=(kind == "layer_norm_pad"))
        for kind in ("layer_norm_pad", "group_norm_crop")}
    print(json.dumps(result))


def compare_batches(corpus: Path, buckets: list[list[int]], shuffled: list[list[int]], n: int,
                    stable_layer_norm: bool) -> dict[str, float]:
    """Real audio seconds per wall second of one training step, bucketed vs random batches of the same
    sizes, on a fresh tiny model of the given normalisation (fixed seed, same steps for both)."""
    from transformers import Wav2Vec2Model

    from phonorm.frames import FrameGeometry
    from phonorm.models.backbone import make_config
    from phonorm.models.data import Collator, FrameDataset
    from phonorm.models.heads import FrameClassifier, MultitaskHeads, multitask_loss

    prepared = PreparedCorpus(corpus)
    config = make_config("tiny", stable_layer_norm=stable_layer_norm)
    geometry = FrameGeometry.from_config(config)
    dataset = FrameDataset(prepared, "train", ["tone"], geometry)
    collate = Collator(geometry, ["tone"], crop=not stable_layer_norm)
    out = {}
    for name, batches in (("bucketed", buckets[:n]), ("random", shuffled[:n])):
        torch.manual_seed(0)
        model = FrameClassifier(Wav2Vec2Model(config), MultitaskHeads(config.hidden_size, {"tone": 5}))
        model.backbone.freeze_feature_encoder()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        inputs = [collate([dataset[i] for i in b]) for b in batches]  # audio read before timing
        audio, tic = 0.0, time.perf_counter()
        for batch in inputs:
            logits = model(batch["input_values"], attention_mask=batch.get("attention_mask"))
            loss, _ = multitask_loss(logits, batch["labels"], {"tone": 1.0})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            audio += batch["audio_seconds"]
        out[f"{name}_audio_s_per_s"] = audio / (time.perf_counter() - tic)
    out["speedup"] = out["bucketed_audio_s_per_s"] / out["random_audio_s_per_s"]
    return out


if __name__ == "__main__":
    main()
