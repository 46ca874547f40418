"""Copy a pre-trained model folder into the package as a shipped model, with its model card (README.md).

    python scripts/ship_model.py FOLDER NAME --fidelity FIDELITY.json --recipe examples/pretrain-reference.yaml \
        --corpus-command "phonorm synth ... && phonorm prepare ..." [--screen SCREEN.md]

FOLDER: a finished `phonorm pretrain` folder. FIDELITY.json: the last line `bench/fidelity.py` printed
for it (its model entry is the first one). The weights, config, phonorm.json card and pre-training log
go to src/phonorm/data/models/NAME/; README.md is written from them: what the model is, the recipe,
the cost, the held-out curve and the fidelity table with its gates. SCREEN.md, when given, is the
table of every recipe tried, appended as is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FILES = ("config.json", "model.safetensors", "phonorm.json", "pretrain_log.csv")


def _row(name: str, values: dict) -> str:
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |"


def card_text(name: str, folder: Path, fidelity: dict, recipe: str, corpus_command: str, screen: str) -> str:
    card = json.loads((folder / "phonorm.json").read_text(encoding="utf-8"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    log = pd.read_csv(folder / "pretrain_log.csv")
    settings = card["settings"]
    model = next(v for k, v in fidelity.items() if isinstance(v, dict) and "gates" in v)
    layers = list(model["sex"])
    base = model["baselines"]
    cpu_minutes = log["step_seconds"].sum() / 60
    curve = ", ".join(f"{step}: {value:.3f}" for step, value in card["held_out_accuracy"])
    gates = "\n".join(f"| {gate} | {'pass' if ok else '**fail**'} |" for gate, ok in model["gates"].items())
    targets = "\n".join(f"| {target} | {'met' if ok else 'not met'} |" for target, ok in model["targets"].items())
    provenance = card.get("provenance", {})
    pitch = ""
    if settings.get("pitch_clusters"):
        pitch = (f"\n- A second target stream, pitch (HuBERT's cluster ensembles, Hsu et al. 2021, section III.C): "
                 f"k = {settings['pitch_clusters']},\n  {settings['pitch_targets']}; the two streams' losses are "
                 "summed.")
        curve += "; pitch stream: " + ", ".join(
            f"{int(r.step)}: {r.held_out_pitch_masked_accuracy:.3f}"
            for r in log.dropna(subset=["held_out_pitch_masked_accuracy"]).itertuples())
    finetuned = fidelity.get("finetuned")
    tuned = ""
    if finetuned:
        rows = "\n".join(f"| {gate} | {'pass' if ok else '**fail**'} |" for gate, ok in finetuned["gates"].items())
        both = finetuned.get("tone_sex_model", {})
        tuned = (f"\nThe demo's tone model fine-tuned from it (`examples/demo.yaml`'s settings), its own head on the same "
                 f"test speakers: tone {finetuned['tone_model']['tone']:.3f} (chance {finetuned['tone_model']['chance']:.3f}); "
                 f"the tone+sex model: tone {both.get('tone', float('nan')):.3f}, sex {both.get('sex', float('nan')):.3f}.\n\n"
                 f"| gate of the fine-tuned models | result |\n| --- | --- |\n{rows}\n")
    return f"""# phonorm:{name}

A tiny HuBERT (transformers `HubertModel`: {config['num_hidden_layers']} Transformer layers of
{config['hidden_size']} dims, {config['num_attention_heads']} heads, feed-forward {config['intermediate_size']};
7 conv layers of {config['conv_dim'][0]} channels, 20 ms frames) pre-trained from scratch by phonorm on
synthetic Mandarin, for the offline demo and tests: a reference whose layers carry speaker sex, pitch, phones
and speakers the way a pre-trained model's do, so that the demo can measure what fine-tuning suppresses.
Not a model of real speech: it has heard eSpeak NG voices only.

Load it as `phonorm:{name}` anywhere phonorm takes a model (`--model`, `models:` in an experiment file),
or with `transformers.AutoModel.from_pretrained` on this folder.

## Recipe (`{recipe}`)

- Objective: HuBERT's masked prediction (Hsu et al. 2021, first iteration): k = {settings['clusters']}
  k-means clusters (scikit-learn `MiniBatchKMeans`) of MFCC c0-c12 + deltas + delta-deltas (Praat), z-scored
  over the train split, at the model's frame centres; spans of {settings['mask_length']} frames masked with
  mask_prob {settings['mask_prob']} (about half the frames); a linear head on the last layer; cross-entropy
  on masked frames + {settings['unmasked_weight']} × on unmasked frames.{pitch}
- Optimizer: AdamW (betas {settings['adam_betas']}, eps {settings['adam_eps']}, weight decay
  {settings['weight_decay']}), peak lr {settings['lr']}, {settings['warmup']:.0%} linear warm-up then linear
  decay, gradient clipping {settings['gradient_clip']}, conv front end at ×{settings['feature_grad_mult']} the
  gradient; {settings['batch_seconds']:g} s of audio per batch in crops of at most {settings['max_crop_seconds']:g} s;
  {settings['steps']} steps, seed {settings['seed']}.
- Corpus: its own, none of it in the demo's (the demo's speakers are new to it, as AISHELL's are to a hub model):
  `{corpus_command}`; the train split ({card['train_hours']:.2f} h) for training, {card['held_out_split']} for
  the held-out curve.
- Cost: {cpu_minutes:.1f} minutes of wall time for the {settings['steps']} steps on one CPU thread of a shared
  2-core machine (sum of the log's `step_seconds`; the targets took about a minute more).
- Held-out masked-prediction accuracy by step (units stream): {curve}.
- Code version {provenance.get('code_version', '?')}, transformers {provenance.get('versions', {}).get('transformers', '?')},
  torch {provenance.get('versions', {}).get('torch', '?')}.

## Fidelity (`bench/fidelity.py` on the demo corpus's 8 test speakers)

Speaker-disjoint logistic-regression probes of phonorm's `analyze` on the demo's extraction settings
(`phonorm synth --speakers 24 --utterances 30 --seed 0`, prepared with `--dev 0.0834 --test 0.3334`).

| probe | {' | '.join(layers)} |
| --- | {' | '.join('---' for _ in layers)} |
{_row('sex', model['sex'])}
{_row('speaker', model['speaker'])}
{_row('phone', model['phone'])}
{_row('tone', model['tone'])}
{_row('linear CKA to L0', model['cka_to_L0'])}

Baselines on the same rows: MFCC sex {base['mfcc/sex']:.3f}, speaker {base['mfcc/speaker']:.3f}, phone
{base['mfcc/phone']:.3f}; F0 (Hz) sex {base['f0_hz/sex']:.3f}, tone {base['f0_hz/tone']:.3f}; z-scored F0 tone
{base['f0_semitone_z/tone']:.3f}.

| gate | result |
| --- | --- |
{gates}

| target beyond the gates | result |
| --- | --- |
{targets}
{tuned}{screen}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    parser.add_argument("--fidelity", type=Path, required=True)
    parser.add_argument("--recipe", default="examples/pretrain-reference.yaml")
    parser.add_argument("--corpus-command", required=True)
    parser.add_argument("--screen", type=Path, default=None)
    args = parser.parse_args()
    target = ROOT / "src" / "phonorm" / "data" / "models" / args.name
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(args.folder / name, target / name)
    fidelity = json.loads(args.fidelity.read_text(encoding="utf-8").strip().splitlines()[-1])
    screen = "\n" + args.screen.read_text(encoding="utf-8") if args.screen else ""
    (target / "README.md").write_text(card_text(args.name, args.folder, fidelity, args.recipe, args.corpus_command,
                                                screen), encoding="utf-8")
    print(target)


if __name__ == "__main__":
    main()
