"""Self-supervised pre-training of a small model from scratch, offline, by one of the objectives of
`models/objectives/` (`OBJECTIVES`):

- `hubert` (default): HuBERT's masked prediction of frame cluster ids (`objectives/hubert.py`,
  targets from `models/targets.py`); the model is a transformers `HubertModel`.
- `contrastive`: wav2vec 2.0's contrastive objective (`objectives/contrastive.py`); the model is a
  `Wav2Vec2ForPreTraining`.

Every objective shares everything else here: the train utterances (`max_hours`), cropping to 8 s, length-bucketed
batches, AdamW with linear warm-up and decay, gradient clipping, the conv front end learning at a
tenth of the rate, resume, snapshots (`keep_steps`) and the model card. Progress is measured on
held-out audio (the dev split, else the test split) with fixed masks: masked-prediction accuracy or
contrastive accuracy. The output folder loads with `transformers.AutoModel.from_pretrained` and
`phonorm.models.backbone.load_backbone`, so every stage takes it as a base.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from phonorm.artifacts import atomic_path, follow_umask, provenance
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.frames import FrameGeometry
from phonorm.lock import folder_lock
from phonorm.models.backbone import LAYER_CONVENTION, make_config
from phonorm.models.data import Collator, FrameDataset, LengthBucketSampler, length_bucketed_batches
from phonorm.models.objectives import OBJECTIVES
from phonorm.models.training import Trainer, TrainState, swap_folder
from phonorm.records.card import ModelCard, binding_settings
from phonorm.settings import PretrainSettings
from phonorm.wording import speech

MAX_CROP_SECONDS = 8.0  # longer utterances are cut to a random 8 s window (memory, as fairseq's max_sample_size)
GRADIENT_CLIP = 10.0
HELD_OUT_UTTERANCES = 64


def recipe(objective: str) -> dict[str, Any]:
    """Fixed parts of an objective's recipe, recorded with the settings in the model card."""
    common = {"max_crop_seconds": MAX_CROP_SECONDS, "gradient_clip": GRADIENT_CLIP, "adam_betas": [0.9, 0.98], "adam_eps": 1e-6, "weight_decay": 0.01}
    return {**common, **OBJECTIVES[objective].recipe()}


def recorded_settings(settings: PretrainSettings) -> dict[str, Any]:
    """What the model card records of a run: its settings, the objective's fixed recipe and the targets in words."""
    recorded = {**settings.as_dict(), **recipe(settings.objective)}
    if settings.targets_from is not None:
        recorded["targets"] = f"MiniBatchKMeans of layer L{settings.targets_layer} of {settings.targets_from}, z-scored"
    if settings.pitch_clusters:
        recorded["pitch_targets"] = ("MiniBatchKMeans of Praat's F0 (semitones re 100 Hz, 60-500 Hz; the same minus "
                                     "the utterance's voiced mean; slope over +-25 ms; voicing), interpolated through "
                                     "unvoiced frames, z-scored over train; a head of its own")
    return recorded


HELD_OUT_METRIC = {name: objective.held_out_metric for name, objective in OBJECTIVES.items()}
"""The held-out score each objective reports (log column `held_out_<metric>`)."""


def pretrain(corpus: str | Path, *, out: str | Path, settings: PretrainSettings | None = None, **options: Any) -> str:
    """Pre-train a wav2vec 2.0 model of `settings.size` from scratch on the train split of `corpus`
    for `settings.steps` optimizer steps; write the model folder `out`; return a summary.
    Settings may also be given as keywords (`pretrain(c, out=o, size="tiny", steps=100)`).

    `batch_seconds`: seconds of audio per batch (after cropping). `lr`: peak learning rate after
    a linear warm-up over `warmup` of the steps, then linear decay. Resumable from `out/checkpoint`.
    """
    if settings is None:
        settings = PretrainSettings.parse(options)
    elif options:
        raise TypeError("give either settings= or keyword settings, not both")
    with folder_lock(out, "phonorm pretrain"):
        return _pretrain(corpus, out=Path(out), settings=settings)


def _pretrain(corpus: str | Path, *, out: Path, settings: PretrainSettings) -> str:
    prepared = PreparedCorpus(corpus)
    recorded = recorded_settings(settings)
    if ModelCard.exists(out):
        if ModelCard.load(out).same_run(settings=recorded, corpus_fingerprint=prepared.fingerprint, base_model=None):
            return f"{out}: already pre-trained with these settings (delete the folder to train again)"
        raise PhonormError(f"{out}: holds a finished model of other settings or corpus; choose another --out or delete it")
    return _train(prepared, out, settings, recorded)


def _train(prepared: PreparedCorpus, out: Path, settings: PretrainSettings, recorded: dict[str, Any]) -> str:
    from transformers import get_scheduler

    objective = OBJECTIVES[settings.objective]

    trainer = Trainer(out, seed=settings.seed, mixed_precision="no",
                      fingerprint={"settings": binding_settings(recorded),
                                   "corpus": prepared.fingerprint})
    accelerator = trainer.accelerator
    steps = settings.steps
    config = make_config(settings.size, model_type=objective.model_type)
    geometry = FrameGeometry.from_config(config)
    train_table = _train_utterances(prepared, settings.max_hours)
    train_set = FrameDataset(prepared, None, [], geometry, utterances=train_table)
    train_hours = float(train_table["duration"].sum()) / 3600
    held_split, held_table = _held_out_utterances(prepared)
    held_set = FrameDataset(prepared, None, [], geometry, utterances=held_table)
    max_samples = int(MAX_CROP_SECONDS * geometry.sample_rate)

    targets = objective.attach_targets(out, settings, trainer, {"train": train_table, "held_out": held_table},
                                       geometry, [train_set, held_set])
    model, encoder = objective.new_model(config, targets)
    labels = list(targets)
    grad_mult = settings.feature_grad_mult
    for param in encoder.feature_extractor.parameters():
        # scaling each gradient is linear, so it commutes with DDP's gradient averaging
        param.register_hook(lambda grad: grad * grad_mult)

    held_collator = Collator(geometry, labels, crop=True, random_offset=False, max_samples=max_samples)
    held_batches = [held_collator([held_set[i] for i in batch])
                    for batch in length_bucketed_batches(held_set.durations, settings.batch_seconds)]
    sampler = LengthBucketSampler(np.minimum(train_set.durations, MAX_CROP_SECONDS), settings.batch_seconds,
                                  seed=settings.seed, num_replicas=accelerator.num_processes,
                                  rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=0,
                                         generator=torch.Generator().manual_seed(settings.seed),  # see finetune.py
                                         collate_fn=Collator(geometry, labels, crop=True, max_samples=max_samples))
    eval_every = settings.eval_every or max(1, steps // 10)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(settings.warmup * steps),
                              num_training_steps=steps)
    wrapped = trainer.prepare(model, optimizer, scheduler)
    unwrapped: Any = trainer.unwrapped
    metric = objective.held_out_metric

    def held_out() -> dict[str, float]:
        return objective.held_out(unwrapped, held_batches, trainer.device)

    state = trainer.resume()
    if state.step == 0:
        state.log.append({"step": 0, **{f"held_out_{k}": v for k, v in held_out().items()}})

    def train_step(batch: dict[str, Any]) -> dict[str, Any]:
        wrapped.train()
        loss, row = objective.loss(wrapped, unwrapped, batch, state.step, settings, trainer.device)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(wrapped.parameters(), GRADIENT_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"lr": scheduler.get_last_lr()[0], "loss": float(loss.detach()), **row,
                "audio_seconds": batch["audio_seconds"] * accelerator.num_processes}

    def evaluate(state: TrainState, row: dict[str, Any]) -> None:
        if trainer.main:
            row.update({f"held_out_{k}": v for k, v in held_out().items()})

    if trainer.main:
        out.mkdir(parents=True, exist_ok=True)

    def save_model(folder: Path, state: TrainState) -> None:
        """The model folder of the weights at `state.step`: encoder, log and card (the card last)."""
        objective.encoder(unwrapped).save_pretrained(folder)
        follow_umask(*folder.glob("*.safetensors"))  # safetensors creates its files 0600
        with atomic_path(folder / "pretrain_log.csv") as tmp:
            pd.DataFrame(state.log).to_csv(tmp, index=False)
        curve = [(r["step"], r[f"held_out_{metric}"]) for r in state.log if f"held_out_{metric}" in r]
        ModelCard(complete=True, kind="pretrained", size=settings.size, model_type=config.model_type,
                  objective=objective.name, held_out_split=held_split, held_out_metric=metric, held_out_accuracy=curve,
                  held_out_contrastive_accuracy=curve if metric == "contrastive_accuracy" else [],
                  num_processes=accelerator.num_processes, settings=recorded, trained_steps=state.step,
                  train_hours=round(train_hours, 4),
                  corpus=str(prepared.folder.resolve()), corpus_fingerprint=prepared.fingerprint,
                  layer_convention=LAYER_CONVENTION, provenance=provenance(recorded)).save(folder)

    trainer.run(loader=loader, sampler=sampler, total_steps=steps, state=state, train_step=train_step,
                evaluate=evaluate, eval_every=eval_every, desc=f"pretrain {settings.size} ({objective.name})",
                keep_steps=settings.keep_steps, keep=lambda state: _keep_snapshot(trainer, out, state, save_model))

    if trainer.main:
        save_model(out, state)
    trainer.discard_checkpoint()
    return _summary(out, settings, objective.chance(settings, config), train_hours)


def _keep_snapshot(trainer: Trainer, out: Path, state: TrainState, save_model: Callable[[Path, TrainState], None]) -> None:
    """The snapshot folder of step `state.step`: written whole into a hidden folder, then renamed,
    so a snapshot folder is always complete."""
    if trainer.main:
        target = snapshot_folder(out, state.step)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(tmp, state)
        swap_folder(tmp, target)
    trainer.accelerator.wait_for_everyone()


def _summary(out: Path, settings: PretrainSettings, chance: str, train_hours: float) -> str:
    card = ModelCard.load(out)
    metric = HELD_OUT_METRIC[settings.objective]
    start, end = card.held_out_accuracy[0][1], card.held_out_accuracy[-1][1]
    kept = f"; snapshots at steps {', '.join(map(str, settings.keep_steps))}" if settings.keep_steps else ""
    what = OBJECTIVES[settings.objective].title
    return (f"{out}: pre-trained a {settings.size} {what} for {settings.steps} steps on {speech(train_hours)}; "
            f"held-out ({card.held_out_split}) {metric.replace('_', ' ')} {start:.3f} → {end:.3f} ({chance}){kept}")


def _held_out_utterances(prepared: PreparedCorpus) -> tuple[str, pd.DataFrame]:
    """(split, up to HELD_OUT_UTTERANCES utterances of it, a fixed sample): dev, else test."""
    split = "dev" if len(prepared.utterances("dev")) else "test"
    table = prepared.utterances(split)
    if len(table) == 0:
        raise InputError(prepared.folder / "utterances.parquet", "no dev or test utterances to measure pre-training on")
    return split, table.sample(n=min(HELD_OUT_UTTERANCES, len(table)), random_state=0)


SNAPSHOTS = "snapshots"


def snapshot_folder(out: str | Path, step: int) -> Path:
    """The model folder `keep_steps` leaves for `step` inside the pre-training folder `out`."""
    return Path(out) / SNAPSHOTS / f"step-{step}"


def _train_utterances(prepared: PreparedCorpus, max_hours: float | None) -> pd.DataFrame:
    """The train utterances pre-training draws from: all, or under `max_hours` the longest prefix of
    one fixed random order (seed 0, independent of the run's seed) that fits, so that runs with
    more hours see a superset of the audio of runs with fewer, and seeds repeat on the same audio."""
    table = prepared.utterances("train")
    if len(table) == 0:
        raise InputError(prepared.folder / "utterances.parquet", "no train utterances to pre-train on")
    if max_hours is None:
        return table
    table = table.sample(frac=1.0, random_state=0)
    fits = table["duration"].cumsum() <= max_hours * 3600
    if not fits.any():
        raise InputError(prepared.folder / "utterances.parquet",
                         f"max_hours {max_hours} is shorter than any train utterance "
                         f"({table['duration'].min():.1f} s)")
    return table[fits.to_numpy()]
