"""Frame-wise (multi)task fine-tuning of any wav2vec 2.0 / HuBERT / WavLM model with Accelerate.

One linear head per task on the last Transformer layer (`heads.py`), summed weighted per-frame
cross-entropy, AdamW with linear warm-up and linear decay, feature encoder frozen by default.
The same code runs on one CPU, one GPU (bf16/fp16 autocast) or `accelerate launch` over several
processes (gradients synchronised by Accelerate's DDP wrapper; each process takes its share of the
length-bucketed batches, see `data.LengthBucketSampler`). The loop, checkpoints and resume are
`training.Trainer`'s.

Output folder (docs/architecture.md, "Model folder"): the best backbone at the top level (HF
format), `heads.safetensors`, `phonorm.json` (`card.ModelCard`), `metrics.json`, `train_log.csv`.
While training: `checkpoint/` and `best/` (the best model so far by mean dev frame accuracy over
tasks). `phonorm.json` is written last and marks a finished folder.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from phonorm.artifacts import atomic_path, provenance, separate_folder, writing
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.frames import FrameGeometry
from phonorm.labels import LABELS
from phonorm.lock import folder_lock
from phonorm.models.backbone import (
    LAYER_CONVENTION,
    freeze_feature_encoder,
    load_backbone,
    uses_group_norm,
)
from phonorm.models.data import Collator, FrameDataset, LengthBucketSampler
from phonorm.models.evaluate import predict_split, score_predictions
from phonorm.models.frontend import train_on_cached_front_end
from phonorm.models.heads import FrameClassifier, MultitaskHeads, load_finetuned, multitask_loss, save_heads
from phonorm.models.training import Trainer, TrainState, swap_folder
from phonorm.records.card import FinetuneMetrics, ModelCard, binding_settings
from phonorm.settings import FinetuneSettings

__all__ = ["FinetuneSettings", "finetune", "resolve_mixed_precision"]


def resolve_mixed_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that supports it, fp16 on other GPUs, none on CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def finetune(corpus: str | Path, *, model: str, out: str | Path, settings: FinetuneSettings) -> str:
    """Fine-tune `model` (hub id or folder) on the train split of `corpus` for `settings.tasks`;
    write the model folder `out` and return a one-paragraph summary. One writer per folder (`lock`)."""
    separate_folder(out, corpus, "prepared corpus")
    if Path(str(model)).is_dir():
        separate_folder(out, model, "base model")
    with folder_lock(out, "phonorm finetune"):
        return _finetune(corpus, model=model, out=Path(out), settings=settings)


def _finetune(corpus: str | Path, *, model: str, out: Path, settings: FinetuneSettings) -> str:
    from transformers import get_scheduler

    prepared = PreparedCorpus(corpus)
    label_maps = task_label_maps(prepared, settings.tasks)
    settings_dict = settings.as_dict()
    if ModelCard.exists(out):
        return _finished_already(out, prepared, settings_dict, model)

    trainer = Trainer(out, seed=settings.seed, mixed_precision=resolve_mixed_precision(settings.mixed_precision),
                      fingerprint={"settings": binding_settings(settings_dict),
                                   "base_model": str(model), "corpus": prepared.fingerprint})
    accelerator = trainer.accelerator
    backbone = load_backbone(model)  # loads and checks the config once (load_config)
    config = backbone.config
    geometry = FrameGeometry.from_config(config)
    group_norm = uses_group_norm(config)
    if settings.freeze_feature_encoder:
        freeze_feature_encoder(backbone)
    heads = MultitaskHeads(config.hidden_size, {t: len(label_maps[t]) for t in settings.tasks}, settings.head_dropout)
    classifier = FrameClassifier(backbone, heads)

    train_set = FrameDataset(prepared, "train", settings.tasks, geometry, label_maps)
    front_end = train_on_cached_front_end(backbone, train_set, trainer.device, settings.freeze_feature_encoder,
                                          settings.front_end_cache_gb)
    dev_table = prepared.utterances("dev")
    dev_set = FrameDataset(prepared, None, settings.tasks, geometry, label_maps, utterances=dev_table) \
        if len(dev_table) else None
    sampler = LengthBucketSampler(train_set.durations, settings.batch_seconds, seed=settings.seed,
                                  num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=Collator(geometry, settings.tasks, crop=group_norm),
                                         num_workers=0,
                                         # own generator: creating an iterator must not draw from the global
                                         # torch RNG, or a resumed run's dropout would differ from an unbroken one
                                         generator=torch.Generator().manual_seed(settings.seed))
    steps_per_epoch = len(sampler)
    total_steps = math.ceil(settings.epochs * steps_per_epoch)
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    total_steps = max(total_steps, 1)
    optimizer = torch.optim.AdamW(_parameter_groups(classifier, settings), betas=(0.9, 0.98), eps=1e-8)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(settings.warmup * total_steps),
                              num_training_steps=total_steps)
    wrapped = trainer.prepare(classifier, optimizer, scheduler)
    state = trainer.resume()
    if not state.extra:
        state.extra = {"best": {"mean": -1.0, "step": 0, "dev": {}}, "dev_history": [],
                       "totals": {"utterances": 0, "audio_seconds": 0.0, "frames": 0, "padded_frames": 0}}
    weights: dict[str, float] = {t: settings.weight(t) for t in settings.tasks}

    def train_step(batch: dict[str, Any]) -> dict[str, Any]:
        wrapped.train()
        inputs = batch["input_values"].to(trainer.device)
        mask = batch["attention_mask"].to(trainer.device) if "attention_mask" in batch else None
        labels = {t: v.to(trainer.device) for t, v in batch["labels"].items()}
        with accelerator.autocast():
            logits = wrapped(inputs, attention_mask=mask)
        loss, parts = multitask_loss(logits, labels, weights)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(wrapped.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats = torch.tensor([float(loss.detach()), *[parts[t] for t in settings.tasks], len(batch["input_values"]),
                              batch["audio_seconds"], batch["frames"], batch["padded_frames"]],
                             dtype=torch.float64, device=trainer.device)
        stats = accelerator.reduce(stats, reduction="sum")
        stats[: 1 + len(settings.tasks)] /= accelerator.num_processes
        totals = state.extra["totals"]
        totals["utterances"] += int(stats[-4])
        totals["audio_seconds"] += float(stats[-3])
        totals["frames"] += int(stats[-2])
        totals["padded_frames"] += int(stats[-1])
        return {"epoch": (state.step + 1) / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                "loss": float(stats[0]), **{f"loss_{t}": float(stats[1 + i]) for i, t in enumerate(settings.tasks)},
                "utterances": int(stats[-4]), "audio_seconds": float(stats[-3])}

    def evaluate(state: TrainState, row: dict[str, Any]) -> None:
        dev_acc = _dev_accuracy(accelerator, classifier_of(trainer), dev_set) if dev_set is not None else {}
        row.update({f"dev_acc_{t}": a for t, a in dev_acc.items()})
        mean = float(np.mean(list(dev_acc.values()))) if dev_acc else float(state.step)  # no dev: keep the last
        state.extra["dev_history"].append({"step": state.step, **dev_acc})
        if mean > state.extra["best"]["mean"]:
            state.extra["best"] = {"mean": mean, "step": state.step, "dev": dev_acc}
            if trainer.main:
                _save_model(classifier_of(trainer), out / "best")

    if trainer.main:
        out.mkdir(parents=True, exist_ok=True)
    trainer.run(loader=loader, sampler=sampler, total_steps=total_steps, state=state, train_step=train_step,
                evaluate=evaluate, eval_every=settings.eval_every, desc=f"finetune {','.join(settings.tasks)}")

    if trainer.main:
        _finish(out, prepared, trainer, state, label_maps, settings, str(model), config, total_steps, steps_per_epoch,
                dev_set, front_end)
    trainer.discard_checkpoint()
    if trainer.main:
        shutil.rmtree(out / "best", ignore_errors=True)
    accelerator.wait_for_everyone()
    metrics = FinetuneMetrics.load(out)
    dev_text = ", ".join(f"{t} {a:.3f}" for t, a in metrics.best_dev.items()) or "no dev split"
    return (f"{out}: fine-tuned {model} for {','.join(settings.tasks)} in {total_steps} steps "
            f"({metrics.train['audio_seconds']:.0f} s of audio, {metrics.train['throughput']:.1f} s audio/s); "
            f"best step {metrics.best_step}, dev frame accuracy {dev_text}")


def _finished_already(out: Path, prepared: PreparedCorpus, settings: dict[str, Any], model: str) -> str:
    """The summary of a folder that holds this very fine-tuning already; PhonormError for another one."""
    card = ModelCard.load(out)
    if card.same_run(settings=settings, corpus_fingerprint=prepared.fingerprint, base_model=str(model)):
        return f"{out}: already fine-tuned with these settings (delete the folder to train again)"
    raise PhonormError(f"{out}: holds a finished model of other settings, base model or corpus; choose another "
                       "--out or delete it")


def _parameter_groups(classifier: FrameClassifier, settings: FinetuneSettings) -> list[dict[str, Any]]:
    """AdamW's groups: backbone matrices with weight decay, backbone vectors (biases, norms) without,
    the heads at `head_lr_scale` × the learning rate; frozen parameters and empty groups left out."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in classifier.backbone.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "lr": settings.lr, "weight_decay": settings.weight_decay},
        {"params": no_decay, "lr": settings.lr, "weight_decay": 0.0},
        {"params": list(classifier.heads.parameters()), "lr": settings.lr * settings.head_lr_scale,
         "weight_decay": settings.weight_decay},
    ]
    return [g for g in groups if g["params"]]


def _dev_accuracy(accelerator, model: FrameClassifier, dev_set: FrameDataset) -> dict[str, float]:
    """Frame accuracy per task on dev; each process scores its share of utterances, counts are summed."""
    indices = list(range(accelerator.process_index, len(dev_set), accelerator.num_processes))
    predictions = predict_split(model.backbone, model.heads, dev_set, indices=indices, device=accelerator.device,
                                progress=False)
    counts = []
    for task in dev_set.tasks:
        truth, guess, _, _ = predictions.arrays(task)
        counts += [float((truth == guess).sum()), float(truth.size)]
    total = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device), reduction="sum")
    model.train()
    return {task: float(total[2 * i] / max(total[2 * i + 1], 1.0)) for i, task in enumerate(dev_set.tasks)}


def task_label_maps(prepared: PreparedCorpus, tasks: Sequence[str]) -> dict[str, list[str]]:
    """task → its labels in the corpus; InputError naming labels.json (before any model is loaded) when
    a task has fewer than 2 labels or none on the train split's segments: a head with no class to
    tell apart fails deep inside torch otherwise."""
    maps = prepared.label_maps
    missing = [t for t in tasks if t not in maps]
    if missing:
        raise InputError(prepared.folder / "labels.json", f"has no labels for task(s) {', '.join(missing)}")
    train = prepared.segments[prepared.segments["utterance_id"].isin(prepared.utterances("train")["utterance_id"])]
    # a segment-level label must be on some train segment; a speaker-level one (sex) is on every one
    labelled = {t: len(train) > 0 if LABELS[t].speaker_level else bool(LABELS[t].present(train[t]).any())
                for t in tasks}
    for task in tasks:
        labels = [label for label in maps[task] if label != ""]
        found = f"{len(labels)} {task} label{'' if len(labels) == 1 else 's'}"
        if len(labels) >= 2 and labelled.get(task, True):
            continue
        if len(labels) >= 2:
            found += ", none on a segment of the train split"
        raise InputError(prepared.folder / "labels.json",
                         f"task {task!r}: this corpus has {found}, so there is nothing to learn; fine-tune "
                         f"without --tasks {task}, or prepare the corpus from alignments with {task} labels")
    return {t: list(maps[t]) for t in tasks}


def classifier_of(trainer: Trainer) -> FrameClassifier:
    """The trainer's model without its launch wrapper (DDP), as the classifier it is."""
    model = trainer.unwrapped
    assert isinstance(model, FrameClassifier)
    return model


def _save_model(model: FrameClassifier, folder: Path) -> None:
    """Backbone (HF format) + heads into `folder`, swapped in whole (temp folder, then rename)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(folder / "model.safetensors"):  # a full disk: one line naming the model, not a SafetensorError
        model.backbone.save_pretrained(tmp)
        save_heads(model.heads, tmp)
    swap_folder(tmp, folder)


def _finish(out: Path, prepared: PreparedCorpus, trainer: Trainer, state: TrainState, label_maps: dict[str, list[str]],
            settings: FinetuneSettings, base_model: str, config: Any, total_steps: int, steps_per_epoch: int,
            dev_set: Optional[FrameDataset], front_end: str) -> None:
    """Best model to the top level, full dev scores of it, log, metrics, and the model card last."""
    best_dir = out / "best"
    if not best_dir.is_dir():  # cannot happen after one evaluation; keep the last model then
        _save_model(classifier_of(trainer), best_dir)
    for name in sorted(os.listdir(best_dir)):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(best_dir / name, tmp)
    best = state.extra["best"]
    dev_scores = {}
    if dev_set is not None:
        backbone, heads, _ = load_finetuned(out, device=trainer.device, label_maps=label_maps)
        dev_scores = score_predictions(predict_split(backbone, heads, dev_set, device=trainer.device,
                                                     desc="dev (best)"), label_maps)
    with atomic_path(out / "train_log.csv") as tmp:
        pd.DataFrame(state.log).to_csv(tmp, index=False)
    totals = state.extra["totals"]
    train_seconds = float(sum(row["step_seconds"] for row in state.log))
    train = dict(totals, train_seconds=train_seconds, optimizer_steps=total_steps, steps_per_epoch=steps_per_epoch,
                 num_processes=trainer.accelerator.num_processes, mixed_precision=trainer.accelerator.mixed_precision,
                 throughput=totals["audio_seconds"] / max(train_seconds, 1e-9),
                 padded_fraction=totals["padded_frames"] / max(totals["frames"], 1),
                 resumed_from_step=state.resumed_from, front_end_cache=front_end)
    FinetuneMetrics.write(out, {
        "best_step": best["step"], "best_dev": best["dev"], "best_mean_dev_accuracy": best["mean"] if best["dev"] else None,
        "dev_history": state.extra["dev_history"], "train": train, "dev": dev_scores,
    })
    geometry = FrameGeometry.from_config(config)
    group_norm = uses_group_norm(config)
    settings_dict = settings.as_dict()
    ModelCard(
        complete=True, kind="finetuned", model_type=config.model_type,
        corpus=str(prepared.folder.resolve()), corpus_fingerprint=prepared.fingerprint,
        settings=settings_dict, num_processes=trainer.accelerator.num_processes,
        tasks=list(settings.tasks), label_maps=label_maps,
        loss_weights={t: settings.weight(t) for t in settings.tasks},
        heads={"layer": "last Transformer layer: last_hidden_state (after the final encoder LayerNorm in "
                        "stable-layer-norm models)", "type": "linear",
               "n_classes": {t: len(label_maps[t]) for t in settings.tasks}},
        base_model=base_model, group_norm=group_norm,
        batching="crop to the shortest utterance of a length-bucketed batch, no attention mask" if group_norm
        else "pad to the longest utterance of a length-bucketed batch, attention mask",
        frame_geometry={"hop": geometry.hop, "receptive_field": geometry.receptive_field,
                        "sample_rate": geometry.sample_rate},
        layer_convention=LAYER_CONVENTION, best_step=best["step"],
        provenance=provenance({**settings_dict, "model": base_model, "corpus": str(prepared.folder)}),
    ).save(out)
