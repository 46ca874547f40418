"""Fidelity of a pre-trained reference: per-layer speaker-disjoint probes of sex, speaker, phone and
tone (phonorm's own `extract` + `analyze`), next to the classic baselines (F0 in Hz, z-scored F0,
MFCC), and the gates of a faithful miniature (docs/pretraining-study.md):

- sex probe >= 0.90 at every Transformer layer, L1 to the top (where claim C1 measures
  suppression); L0 (the conv front end's output) is a target, reported against the MFCC baseline;
- speaker probe at its peak layer > the MFCC baseline;
- phone probe at its best layer >= the MFCC baseline;
- tone probe at its best layer >= the speaker-normalised F0 baseline (one frame of F0 in semitones,
  z-scored per speaker: what a phonetician reads tone from; raw F0 in Hz is reported too);
- the layers differ: linear CKA of the top layer to L0 <= 0.95 and a phone-probe range >= 0.03.

and of the demo's fine-tuned models, when given (`--tone-model`, `--tone-sex-model`; scored by
phonorm's `evaluate` on the same test speakers, their own heads):
- the tone model's frame accuracy of tone >= 0.70 (target 0.80);
- the tone+sex model's within 0.02 of it (or better).

Targets beyond the gates, reported: L0 sex >= MFCC; phone best in a middle layer (as in real
models, Pasad et al. 2021); tone best in a middle layer (de la Fuente & Jurafsky 2024, arXiv
2408.13678: Mandarin tone is read best in the middle third of wav2vec 2.0's layers); the tone model
>= 0.80.

Each probe is phonorm's own (`analysis.probes`: speaker-disjoint folds, utterance-grouped for the
speaker label) on the test split, with the demo's extraction settings.

Usage: python bench/fidelity.py PREPARED --model NAME=FOLDER [--model random=random:tiny] --out DIR
                                [--tone-model FOLDER --tone-sex-model FOLDER]
`random:SIZE` is the untrained architecture (phonorm's `make_config(SIZE)`, seed 0), saved to DIR.
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch


def save_random(size: str, out: Path, seed: int = 0) -> Path:
    """The untrained `Wav2Vec2ForPreTraining` of `size` (the initialisation pre-training starts from)."""
    from accelerate.utils import set_seed
    from transformers import Wav2Vec2ForPreTraining

    from phonorm.models.backbone import make_config

    if not (out / "config.json").is_file():
        set_seed(seed, device_specific=False)
        config = make_config(size)
        config.architectures = ["Wav2Vec2ForPreTraining"]
        Wav2Vec2ForPreTraining(config).save_pretrained(out)
    return out


SEX_GATE = 0.90
CKA_GATE = 0.95
PHONE_RANGE_GATE = 0.03
TONE_MODEL_GATE = 0.70
TONE_MODEL_TARGET = 0.80
TONE_SEX_WITHIN = 0.02


def gates(probes: pd.DataFrame, model: str, cka_to_l0: dict[str, float]) -> dict:
    """The gate table of one model from analyze's probes.csv and its layers' CKA to L0."""
    mine = probes[probes.model == model]
    classic = probes[probes.model == "classic"].set_index(["layer", "label"]).accuracy
    by = {label: mine[mine.label == label].set_index("layer").accuracy for label in ("sex", "speaker", "phone", "tone")}
    layers = sorted(by["sex"].index, key=lambda name: int(name.lstrip("L")))
    top, transformer = layers[-1], layers[1:]
    out = {label: {k: round(float(v), 3) for k, v in s.items()} for label, s in by.items()}
    out["baselines"] = {f"{n}/{lab}": round(float(v), 3) for (n, lab), v in classic.items()}
    out["gates"] = {
        f"sex_L1..top>={SEX_GATE}": bool(by["sex"][transformer].min() >= SEX_GATE),
        "speaker_peak>mfcc": bool(by["speaker"].max() > classic[("mfcc", "speaker")]),
        "phone_best>=mfcc": bool(by["phone"].max() >= classic[("mfcc", "phone")]),
        "tone_best>=f0_semitone_z": bool(by["tone"].max() >= classic[("f0_semitone_z", "tone")]),
        f"cka_top_to_L0<={CKA_GATE}": bool(cka_to_l0[top] <= CKA_GATE),
        f"phone_range>={PHONE_RANGE_GATE}": bool(by["phone"].max() - by["phone"].min() >= PHONE_RANGE_GATE),
    }
    out["passes"] = all(out["gates"].values())
    out["targets"] = {
        "sex_L0>=mfcc": bool(by["sex"][layers[0]] >= classic[("mfcc", "sex")]),
        "phone_best_in_middle_layer": bool(by["phone"].idxmax() not in (layers[0], top)),
        "tone_best_in_middle_layer": bool(by["tone"].idxmax() not in (layers[0], top)),
        "tone_best>=f0_hz": bool(by["tone"].max() >= classic[("f0_hz", "tone")]),
    }
    return out


def finetuned_gates(corpus: Path, tone_model: Path, tone_sex_model: Path | None) -> dict:
    """The gates of the demo's fine-tuned models: tone accuracy of their own heads on the test split."""
    from phonorm.models.evaluate import evaluate
    from phonorm.settings.evaluate import EvaluateSettings

    settings = EvaluateSettings(split="test")
    tone = evaluate(corpus, model_dir=tone_model, settings=settings)["tone"]
    out: dict = {"tone_model": {"tone": round(tone["accuracy"], 3), "chance": round(tone["chance"], 3)}}
    out["gates"] = {f"tone_model>={TONE_MODEL_GATE}": bool(tone["accuracy"] >= TONE_MODEL_GATE)}
    out["targets"] = {f"tone_model>={TONE_MODEL_TARGET}": bool(tone["accuracy"] >= TONE_MODEL_TARGET)}
    if tone_sex_model is not None:
        both = evaluate(corpus, model_dir=tone_sex_model, settings=settings)
        out["tone_sex_model"] = {task: round(v["accuracy"], 3) for task, v in both.items()}
        out["gates"][f"tone_sex_within_{TONE_SEX_WITHIN}"] = bool(
            both["tone"]["accuracy"] >= tone["accuracy"] - TONE_SEX_WITHIN)
    out["passes"] = all(out["gates"].values())
    return out


def cka_to_first_layer(features: Path, model: str, rows: int = 4000, seed: int = 0) -> dict[str, float]:
    """Linear CKA (Kornblith et al. 2019) of each layer of `model` to its own L0, on `rows` random
    store rows: 1.0 everywhere means the layers are the same representation up to rotation and scale."""
    import numpy as np

    from phonorm.features.store import FeatureStore

    store = FeatureStore(features)
    layers = store.layers(model)
    n = len(store.frames)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False))

    def centred(layer: str) -> np.ndarray:
        x = np.asarray(store.layer(model, layer, mmap=True)[pick], dtype=np.float64)
        return x - x.mean(axis=0)

    first = centred(layers[0])
    out = {}
    for layer in layers:
        x = centred(layer)
        cross = np.linalg.norm(first.T @ x) ** 2
        out[layer] = round(float(cross / (np.linalg.norm(first.T @ first) * np.linalg.norm(x.T @ x))), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER or NAME=random:SIZE")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-rows", type=int, default=8000)
    parser.add_argument("--tone-model", type=Path, help="the demo's fine-tuned tone model (its folder)")
    parser.add_argument("--tone-sex-model", type=Path, help="the demo's fine-tuned tone+sex model (its folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from phonorm.analyze import analyze
    from phonorm.features.extract import ExtractSettings, extract
    from phonorm.settings import AnalyzeSettings

    models = {}
    for spec in args.model:
        name, source = spec.split("=", 1)
        if source.startswith("random:"):
            source = str(save_random(source.split(":", 1)[1], args.out / f"random-{name}"))
        models[name] = source
    tic = time.perf_counter()
    features, results = args.out / "features", args.out / "results"
    # the demo's extraction settings (examples/demo.yaml): middle third of each phone, 40 per speaker and phone
    extract(args.corpus, models=models, out=features,
            settings=ExtractSettings(split="test", layers="all", frames="middle", max_per_speaker_label=40, dtype="float16"))
    analyze(features, out=results, settings=AnalyzeSettings(reference=next(iter(models)), umap=False, folds=4,
                                                           sample_rows=args.sample_rows, layer_matrix=False))
    probes = pd.read_csv(results / "probes.csv")
    similarity = pd.read_csv(results / "similarity.csv")
    table = probes.pivot_table(index=["model", "layer"], columns="label", values="accuracy")
    print(table.round(3).to_string())
    summary = {}
    for name in models:
        # how different are the layers: linear CKA of each layer to the model's own L0 (similarity.csv
        # compares same-named layers of two models), and the spread of each probe over layers
        cka = cka_to_first_layer(features, name)
        summary[name] = gates(probes, name, cka)
        summary[name]["spread"] = {label: round(float(max(v.values()) - min(v.values())), 3)
                                   for label, v in summary[name].items() if label in ("sex", "speaker", "phone", "tone")}
        summary[name]["cka_to_L0"] = cka
    if args.tone_model is not None:
        summary["finetuned"] = finetuned_gates(args.corpus, args.tone_model, args.tone_sex_model)
    summary["seconds"] = round(time.perf_counter() - tic, 1)
    summary["similarity_to_reference"] = similarity[similarity.measure == "cka"][["model", "layer", "value"]].round(3).values.tolist()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
