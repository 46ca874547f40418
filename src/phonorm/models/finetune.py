"""Frame-wise (multi)task fine-tuning of any wav2vec 2.0 / HuBERT / WavLM model with Accelerate.

One linear head per task on the last Transformer layer (`heads.py`), summed weighted per-frame
cross-entropy, AdamW with linear warm-up and linear decay, feature encoder frozen by default.
The same code runs on one CPU, one GPU (bf16/fp16 autocast) or `accelerate launch` over several
processes (gradients synchronised by Accelerate's DDP wrapper; each process takes its share of the
length-bucketed batches, see `data.LengthBucketSampler`).

Output folder (docs/architecture.md, "Model folder"): the best backbone at the top level (HF
format), `heads.safetensors`, `phonorm.json`, `metrics.json`, `train_log.csv`. While training:
`checkpoint/` (Accelerate state + `trainer_state.json`, swapped in atomically at every
evaluation) and `best/` (the best model so far by mean dev frame accuracy over tasks). An
interrupted run started again with the same settings continues from `checkpoint/` at the same
step; `phonorm.json` is written last and marks a finished folder.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from phonorm.artifacts import atomic_path, provenance, read_json, write_json
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.frames import TASKS, FrameGeometry
from phonorm.launch import check_launch
from phonorm.models.backbone import LAYER_CONVENTION, load_backbone, load_config, uses_group_norm
from phonorm.models.data import Collator, FrameDataset, LengthBucketSampler
from phonorm.models.evaluate import predict_split, score_predictions
from phonorm.models.heads import HEADS_FILE, META_FILE, FrameClassifier, MultitaskHeads, multitask_loss, save_heads

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


class FinetuneSettings(BaseModel):
    """Settings of `finetune`; recorded in phonorm.json and checked on resume."""

    tasks: list[str]
    loss_weights: dict[str, float] = Field(default_factory=dict)
    epochs: float = 10.0
    max_steps: Optional[int] = None
    lr: float = 1e-4
    head_lr_scale: float = 10.0
    warmup: float = 0.1
    batch_seconds: float = 32.0
    freeze_feature_encoder: bool = True
    eval_every: int = 100
    mixed_precision: str = "auto"
    seed: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    head_dropout: float = 0.1

    def check(self, label_maps: dict[str, list[str]], corpus_folder: Path) -> None:
        """Raise PhonormError for settings that cannot work, naming the option."""
        if not self.tasks:
            raise PhonormError("--tasks: give at least one of " + ", ".join(TASKS))
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise PhonormError(f"--tasks: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise PhonormError("--tasks: a task is given twice")
        missing = [t for t in self.tasks if t not in label_maps]
        if missing:
            raise InputError(corpus_folder / "labels.json", f"has no labels for task(s) {', '.join(missing)}")
        extra = [t for t in self.loss_weights if t not in self.tasks]
        if extra:
            raise PhonormError(f"--loss-weights: {', '.join(extra)} not among --tasks {','.join(self.tasks)}")
        if any(w < 0 for w in self.loss_weights.values()):
            raise PhonormError("--loss-weights: weights must not be negative")
        if self.mixed_precision not in MIXED_PRECISION:
            raise PhonormError(f"--mixed-precision: {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}")
        for name in ("lr", "batch_seconds", "epochs"):
            if getattr(self, name) <= 0:
                raise PhonormError(f"--{name.replace('_', '-')} must be positive")
        if self.eval_every < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise PhonormError("--eval-every and --max-steps must be at least 1")
        if not 0 <= self.warmup < 1:
            raise PhonormError("--warmup is a fraction of the steps, in [0, 1)")

    def weight(self, task: str) -> float:
        return float(self.loss_weights.get(task, 1.0))


def resolve_mixed_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that supports it, fp16 on other GPUs, none on CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match to resume (eval cadence may change)."""
    return {k: v for k, v in settings.items() if k not in ("eval_every",)}


def finetune(corpus: str | Path, *, model: str, out: str | Path, settings: FinetuneSettings) -> str:
    """Fine-tune `model` (hub id or folder) on the train split of `corpus` for `settings.tasks`;
    write the model folder `out` and return a one-paragraph summary."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_scheduler

    out = Path(out)
    prepared = PreparedCorpus(corpus)
    settings.check(prepared.label_maps, prepared.folder)
    label_maps = {t: list(prepared.label_maps[t]) for t in settings.tasks}
    settings_dict = settings.model_dump()
    if (out / META_FILE).is_file():
        meta = read_json(out / META_FILE)
        if meta.get("complete") and _comparable(meta.get("settings", {})) == _comparable(settings_dict) \
                and meta.get("base_model") == str(model):
            return f"{out}: already fine-tuned with these settings (delete the folder to train again)"
        raise PhonormError(f"{out}: holds a finished model with other settings; choose another --out or delete it")

    mixed = resolve_mixed_precision(settings.mixed_precision)
    # find_unused_parameters: LayerDrop and SpecAugment's mask embedding can leave parameters
    # without gradient in a step, which plain DDP treats as an error.
    accelerator = Accelerator(mixed_precision=mixed,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    check_launch(accelerator)
    set_seed(settings.seed, device_specific=False)
    main = accelerator.is_main_process

    config = load_config(model)
    backbone = load_backbone(model)
    geometry = FrameGeometry.from_config(config)
    group_norm = uses_group_norm(config)
    if settings.freeze_feature_encoder:
        backbone.freeze_feature_encoder()
    heads = MultitaskHeads(config.hidden_size, {t: len(label_maps[t]) for t in settings.tasks}, settings.head_dropout)
    classifier = FrameClassifier(backbone, heads)

    train_set = FrameDataset(prepared, "train", settings.tasks, geometry, label_maps)
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

    decay, no_decay = [], []
    for name, param in classifier.backbone.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "lr": settings.lr, "weight_decay": settings.weight_decay},
        {"params": no_decay, "lr": settings.lr, "weight_decay": 0.0},
        {"params": list(classifier.heads.parameters()), "lr": settings.lr * settings.head_lr_scale,
         "weight_decay": settings.weight_decay},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-8)
    # The scheduler is stepped by hand once per optimizer step and not passed to prepare():
    # Accelerate's wrapper would step it num_processes times per call.
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(settings.warmup * total_steps),
                              num_training_steps=total_steps)
    classifier, optimizer = accelerator.prepare(classifier, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(classifier)

    checkpoint = out / "checkpoint"
    step, best, log_rows, dev_history = 0, {"mean": -1.0, "step": 0, "dev": {}}, [], []
    totals = {"utterances": 0, "audio_seconds": 0.0, "frames": 0, "padded_frames": 0, "train_seconds": 0.0}
    resumed_from = None
    if (checkpoint / "trainer_state.json").is_file():
        state = read_json(checkpoint / "trainer_state.json")
        if _comparable(state["settings"]) != _comparable(settings_dict) or state["base_model"] != str(model) \
                or state["num_processes"] != accelerator.num_processes:
            raise PhonormError(f"{checkpoint}: an interrupted run with other settings, model or process count; "
                               "run it again with the same ones, or delete the folder")
        accelerator.load_state(str(checkpoint))
        step, best, log_rows, dev_history, totals = (state["step"], state["best"], state["log"], state["dev_history"],
                                                     state["totals"])
        resumed_from = step

    weights = {t: settings.weight(t) for t in settings.tasks}
    bar = tqdm(total=total_steps, initial=step, desc=f"finetune {','.join(settings.tasks)}", unit="step",
               disable=not accelerator.is_local_main_process)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch, skip=step % steps_per_epoch)
        for batch in loader:
            classifier.train()
            inputs = batch["input_values"].to(accelerator.device)
            mask = batch["attention_mask"].to(accelerator.device) if "attention_mask" in batch else None
            labels = {t: v.to(accelerator.device) for t, v in batch["labels"].items()}
            with accelerator.autocast():
                logits = classifier(inputs, attention_mask=mask)
            loss, parts = multitask_loss(logits, labels, weights)
            accelerator.backward(loss)
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(classifier.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            stats = torch.tensor([float(loss.detach()), *[parts[t] for t in settings.tasks], len(batch["input_values"]),
                                  batch["audio_seconds"], batch["frames"], batch["padded_frames"]],
                                 dtype=torch.float64, device=accelerator.device)
            stats = accelerator.reduce(stats, reduction="sum")
            stats[: 1 + len(settings.tasks)] /= accelerator.num_processes
            elapsed = time.perf_counter() - tic
            tic = time.perf_counter()
            totals["utterances"] += int(stats[-4])
            totals["audio_seconds"] += float(stats[-3])
            totals["frames"] += int(stats[-2])
            totals["padded_frames"] += int(stats[-1])
            totals["train_seconds"] += elapsed
            row = {"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "loss": float(stats[0]), **{f"loss_{t}": float(stats[1 + i]) for i, t in enumerate(settings.tasks)},
                   "utterances": int(stats[-4]), "audio_seconds": float(stats[-3]), "step_seconds": elapsed}
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")

            if step % settings.eval_every == 0 or step == total_steps:
                dev_acc = _dev_accuracy(accelerator, unwrapped, dev_set) if dev_set is not None else {}
                row.update({f"dev_acc_{t}": a for t, a in dev_acc.items()})
                mean = float(np.mean(list(dev_acc.values()))) if dev_acc else float(step)  # no dev: keep the last
                dev_history.append({"step": step, **dev_acc})
                if dev_acc:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", dev=f"{mean:.3f}")
                if mean > best["mean"]:
                    best = {"mean": mean, "step": step, "dev": dev_acc}
                    if main:
                        _save_model(unwrapped, out / "best")
                log_rows.append(row)
                _save_checkpoint(accelerator, checkpoint, {
                    "step": step, "best": best, "log": log_rows, "dev_history": dev_history, "totals": totals,
                    "settings": settings_dict, "base_model": str(model), "num_processes": accelerator.num_processes,
                })
                tic = time.perf_counter()
            else:
                log_rows.append(row)
            if step >= total_steps:
                break
    bar.close()

    if main:
        _finish(out, prepared, unwrapped, label_maps, settings, settings_dict, model, config, geometry, group_norm,
                best, log_rows, dev_history, totals, total_steps, steps_per_epoch, accelerator, resumed_from, dev_set)
    accelerator.wait_for_everyone()
    if main:
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(out / "best", ignore_errors=True)
    accelerator.wait_for_everyone()
    metrics = read_json(out / "metrics.json")
    dev = metrics.get("best_dev", {})
    dev_text = ", ".join(f"{t} {a:.3f}" for t, a in dev.items()) or "no dev split"
    return (f"{out}: fine-tuned {model} for {','.join(settings.tasks)} in {total_steps} steps "
            f"({metrics['train']['audio_seconds']:.0f} s of audio, {metrics['train']['throughput']:.1f} s audio/s); "
            f"best step {metrics['best_step']}, dev frame accuracy {dev_text}")


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


def _save_model(model: FrameClassifier, folder: Path) -> None:
    """Backbone (HF format) + heads into `folder`, swapped in whole (temp folder, then rename)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.backbone.save_pretrained(tmp)
    save_heads(model.heads, tmp)
    _swap_folder(tmp, folder)


def _swap_folder(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(accelerator, checkpoint: Path, state: dict[str, Any]) -> None:
    """Accelerate state (model, optimizer, scheduler, RNGs of every process) + our trainer state,
    written to a temp folder and swapped in, so a crash leaves the previous checkpoint whole."""
    tmp = checkpoint.with_name(f".{checkpoint.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", state)
        _swap_folder(tmp, checkpoint)
    accelerator.wait_for_everyone()


def _finish(out, prepared, model, label_maps, settings, settings_dict, base_model, config, geometry, group_norm,
            best, log_rows, dev_history, totals, total_steps, steps_per_epoch, accelerator, resumed_from, dev_set):
    """Best model to the top level, full dev scores of it, log, metrics, and phonorm.json last."""
    from safetensors.torch import load_file

    best_dir = out / "best"
    if not (best_dir / HEADS_FILE).is_file():  # cannot happen after one evaluation; keep the last model then
        _save_model(model, best_dir)
    for name in sorted(os.listdir(best_dir)):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(best_dir / name, tmp)
    dev_scores = {}
    if dev_set is not None:
        best_model = load_backbone(out).to(accelerator.device)
        heads = MultitaskHeads(config.hidden_size, {t: len(label_maps[t]) for t in settings.tasks})
        heads.load_state_dict(load_file(str(out / HEADS_FILE)))
        heads.to(accelerator.device)
        dev_scores = score_predictions(predict_split(best_model, heads, dev_set, device=accelerator.device,
                                                     desc="dev (best)"), label_maps)
    with atomic_path(out / "train_log.csv") as tmp:
        pd.DataFrame(log_rows).to_csv(tmp, index=False)
    train = dict(totals)
    train.update(optimizer_steps=total_steps, steps_per_epoch=steps_per_epoch, num_processes=accelerator.num_processes,
                 mixed_precision=accelerator.mixed_precision,
                 throughput=totals["audio_seconds"] / max(totals["train_seconds"], 1e-9),
                 padded_fraction=totals["padded_frames"] / max(totals["frames"], 1),
                 resumed_from_step=resumed_from)
    write_json(out / "metrics.json", {
        "best_step": best["step"], "best_dev": best["dev"], "best_mean_dev_accuracy": best["mean"] if best["dev"] else None,
        "dev_history": dev_history, "train": train, "dev": dev_scores,
    })
    write_json(out / META_FILE, {
        "complete": True,
        "tasks": list(settings.tasks),
        "label_maps": label_maps,
        "loss_weights": {t: settings.weight(t) for t in settings.tasks},
        "heads": {"layer": "last Transformer layer: last_hidden_state (after the final encoder LayerNorm in "
                           "stable-layer-norm models)", "type": "linear",
                  "n_classes": {t: len(label_maps[t]) for t in settings.tasks}},
        "base_model": str(base_model),
        "model_type": config.model_type,
        "group_norm": group_norm,
        "batching": "crop to the shortest utterance of a length-bucketed batch, no attention mask" if group_norm
        else "pad to the longest utterance of a length-bucketed batch, attention mask",
        "frame_geometry": {"hop": geometry.hop, "receptive_field": geometry.receptive_field,
                           "sample_rate": geometry.sample_rate},
        "layer_convention": LAYER_CONVENTION,
        "corpus": str(prepared.folder.resolve()),
        "settings": settings_dict,
        "best_step": best["step"],
        "provenance": provenance({**settings_dict, "model": str(base_model), "corpus": str(prepared.folder)}),
    })
