"""Does our wav2vec 2.0 pre-training learn? Two measurements on held-out speakers.

1. Held-out contrastive accuracy over training (from the model's phonorm.json / pretrain_log.csv).
2. A linear phone probe (scikit-learn LogisticRegression on single frames) fitted on train-split
   speakers and scored on test-split speakers (speaker-disjoint, pitfall 9, docs/pitfalls.md), for every layer of
   the pre-trained model and of the very same architecture at its random initialisation (the
   weights pre-training started from: same config, same seed).

Usage: python bench/pretrain_probe.py [--corpus PREPARED] [--model PRETRAINED] [--steps 600]
Without --corpus a fake corpus of 24 speakers is made (tests/fakes.py). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from phonorm.artifacts import read_json
from phonorm.corpus.store import PreparedCorpus
from phonorm.frames import IGNORE_INDEX, FrameGeometry
from phonorm.models.backbone import all_layers, load_backbone, make_config, uses_group_norm
from phonorm.models.data import FrameDataset, inference_batches
from phonorm.models.pretrain import pretrain


def layer_frames(model, corpus: PreparedCorpus, split: str, max_frames: int, seed: int = 0):
    """(list over layers of (frames, dim) float32, phone labels (frames,)) of labelled frames."""
    dataset = FrameDataset(corpus, split, ["phone"], FrameGeometry.from_config(model.config))
    feats, labels = None, []
    with torch.no_grad():
        for examples, inputs in inference_batches(dataset, uses_group_norm(model.config)):
            hidden = all_layers(model, inputs["input_values"], inputs.get("attention_mask"))
            for row, e in enumerate(examples):
                keep = e.labels["phone"] != IGNORE_INDEX
                layers = [h[row, : len(keep)][torch.from_numpy(keep)].numpy() for h in hidden]
                feats = [[x] for x in layers] if feats is None else [f + [x] for f, x in zip(feats, layers)]
                labels.append(e.labels["phone"][keep])
    y = np.concatenate(labels)
    X = [np.concatenate(f) for f in feats]
    pick = np.random.default_rng(seed).permutation(len(y))[:max_frames]
    return [x[pick] for x in X], y[pick]


def probe(model, corpus, max_frames: int) -> tuple[list[float], float]:
    """(test accuracy per layer, majority-class rate of the test frames)."""
    X_train, y_train = layer_frames(model, corpus, "train", max_frames)
    X_test, y_test = layer_frames(model, corpus, "test", max_frames)
    chance = float(np.bincount(y_test).max() / len(y_test))
    scores = []
    for a, b in zip(X_train, X_test):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        clf.fit(a, y_train)
        scores.append(float(clf.score(b, y_test)))
    return scores, chance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--model", type=Path, help="an existing phonorm pretrain folder (else one is trained)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-seconds", type=float, default=16.0)
    parser.add_argument("--max-frames", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="pretrain_probe_"))
    timings = {}
    if args.corpus is None:
        from fakes import make_prepared_corpus

        splits = {f"S{s:02d}": ("test" if s >= 20 else "dev" if s >= 16 else "train") for s in range(24)}
        args.corpus = make_prepared_corpus(work / "corpus", n_speakers=24, n_utterances=20, seed=1, splits=splits)
    corpus = PreparedCorpus(args.corpus)
    if args.model is None:
        tic = time.perf_counter()
        args.model = work / "pre"
        print(pretrain(args.corpus, out=args.model, size="tiny", steps=args.steps, seed=0,
                       batch_seconds=args.batch_seconds, lr=args.lr))
        timings["pretrain_seconds"] = time.perf_counter() - tic
    meta = read_json(args.model / "phonorm.json")
    settings = meta["settings"]

    # the same architecture at the random initialisation pre-training started from
    from accelerate.utils import set_seed
    from transformers import Wav2Vec2ForPreTraining

    set_seed(settings["seed"], device_specific=False)
    config = make_config(settings["size"])
    random_model = Wav2Vec2ForPreTraining(config).wav2vec2.eval()
    trained = load_backbone(args.model)

    tic = time.perf_counter()
    (pre_scores, chance), (rand_scores, _) = probe(trained, corpus, args.max_frames), probe(random_model, corpus, args.max_frames)
    scores = {"pretrained": pre_scores, "random_init": rand_scores}
    timings["probe_seconds"] = time.perf_counter() - tic
    for name, per_layer in scores.items():
        print(f"{name:>12}: " + "  ".join(f"L{k} {a:.3f}" for k, a in enumerate(per_layer)))
    curve = meta["held_out_contrastive_accuracy"]
    best = {name: int(np.argmax(s)) for name, s in scores.items()}
    result = {
        "held_out_contrastive_accuracy": curve,
        "contrastive_accuracy_rose": curve[-1][1] > curve[0][1],
        "phone_probe": scores,
        "best_layer": best,
        "best_layer_accuracy": {name: scores[name][best[name]] for name in scores},
        "pretrained_beats_random": scores["pretrained"][best["pretrained"]] > scores["random_init"][best["random_init"]],
        "chance": chance,
        "steps": settings["steps"], "model": str(args.model), "corpus": str(args.corpus), **timings,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
