"""Self-supervised wav2vec 2.0 pre-training of a small model, offline, with transformers'
`Wav2Vec2ForPreTraining` (contrastive loss over masked spans + codebook diversity loss).

Masks come from transformers' `_compute_mask_indices` (spans of `mask_length` frames, about
`mask_prob` of the frames), distractors from `_sample_negative_indices` (masked frames of the same
utterance). Progress is measured on held-out audio (the dev split, else the test split): the
contrastive accuracy (how often the model's context vector is closest, by cosine, to the true
quantised target rather than to one of the distractors) with fixed masks and distractors, so
that values at different steps compare. The output folder loads with
`transformers.Wav2Vec2Model.from_pretrained` and `phonorm.models.backbone.load_backbone`.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from phonorm.artifacts import atomic_path, provenance, read_json, write_json
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.frames import FrameGeometry
from phonorm.models.backbone import SIZES, make_config
from phonorm.models.data import Collator, FrameDataset, LengthBucketSampler, length_bucketed_batches

MASK_PROB = 0.65       # wav2vec 2.0 paper: p = 0.065 start probability × M = 10 ≈ 65% of frames
MASK_LENGTH = 10
MAX_CROP_SECONDS = 8.0  # longer utterances are cut to a random 8 s window (memory, as fairseq's max_sample_size)
TEMPERATURE = (2.0, 0.5)  # Gumbel softmax temperature, annealed from the first to the second value
FEATURE_GRAD_MULT = 0.1  # wav2vec 2.0 recipe: the conv feature encoder learns at a tenth of the rate
HELD_OUT_UTTERANCES = 64
HELD_OUT_SEED = 1234


def _mask_and_negatives(batch_size: int, n_frames: int, num_negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask_time_indices (batch, frames) bool, sampled_negative_indices (batch, frames, K) long)
    from numpy's global generator, with at least two masked spans per row."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    mask = _compute_mask_indices((batch_size, n_frames), mask_prob=MASK_PROB, mask_length=min(MASK_LENGTH, n_frames),
                                 min_masks=2)
    negatives = _sample_negative_indices((batch_size, n_frames), num_negatives, mask_time_indices=mask)
    return torch.from_numpy(mask), torch.from_numpy(negatives).long()


def contrastive_accuracy(model, input_values: torch.Tensor, mask: torch.Tensor, negatives: torch.Tensor
                         ) -> tuple[float, float, int]:
    """(correct, summed contrastive loss, masked frames) of one batch in eval mode: at masked frames,
    is the true quantised target the most similar (cosine) of the 1 + K candidates?"""
    out = model(input_values, mask_time_indices=mask)
    quantized, context = out.projected_quantized_states, out.projected_states
    batch, frames, dim = quantized.shape
    k = negatives.shape[-1]
    negative = quantized.reshape(-1, dim)[negatives.reshape(-1)].reshape(batch, frames, k, dim)
    candidates = torch.cat([quantized[:, :, None], negative], dim=2)
    logits = torch.cosine_similarity(context[:, :, None].float(), candidates.float(), dim=-1)
    logits = logits / model.config.contrastive_logits_temperature
    same = (negative == quantized[:, :, None]).all(-1)  # a distractor equal to the target does not count
    logits[:, :, 1:] = logits[:, :, 1:].masked_fill(same, float("-inf"))
    picked = logits[mask]
    correct = float((picked.argmax(-1) == 0).sum())
    loss = float(torch.nn.functional.cross_entropy(picked, torch.zeros(len(picked), dtype=torch.long,
                                                                       device=picked.device), reduction="sum"))
    return correct, loss, int(mask.sum())


def held_out_score(model, dataset: FrameDataset, batches: list[list[int]], collator: Collator, device) -> dict[str, float]:
    """Contrastive accuracy and loss per masked frame on held-out audio, with masks and distractors
    drawn from a fixed seed (the global numpy state is restored afterwards)."""
    state = np.random.get_state()
    np.random.seed(HELD_OUT_SEED)
    was_training = model.training
    model.eval()
    correct = loss = count = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = collator([dataset[i] for i in batch])["input_values"].to(device)
            n_frames = int(model._get_feat_extract_output_lengths(inputs.shape[1]))
            mask, negatives = _mask_and_negatives(len(inputs), n_frames, model.config.num_negatives)
            c, l, n = contrastive_accuracy(model, inputs, mask.to(device), negatives.to(device))
            correct, loss, count = correct + c, loss + l, count + n
    np.random.set_state(state)
    model.train(was_training)
    return {"contrastive_accuracy": correct / max(count, 1), "contrastive_loss": loss / max(count, 1),
            "masked_frames": int(count)}


def pretrain(corpus: str | Path, *, out: str | Path, size: str = "tiny", steps: int = 2000, seed: int = 0,
             batch_seconds: float = 16.0, lr: float = 5e-4, eval_every: int | None = None,
             warmup: float = 0.08) -> str:
    """Pre-train a wav2vec 2.0 model of `size` (tiny, small, base) from scratch on the train split of
    `corpus` for `steps` optimizer steps; write the model folder `out`; return a summary.

    `batch_seconds`: seconds of audio per batch (after cropping). `lr`: peak learning rate after
    a linear warm-up over `warmup` of the steps, then linear decay. Resumable from `out/checkpoint`.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import Wav2Vec2ForPreTraining, get_scheduler

    if size not in SIZES:
        raise PhonormError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    if steps < 1 or batch_seconds <= 0 or lr <= 0:
        raise PhonormError("--steps, --batch-seconds and --lr must be positive")
    out = Path(out)
    prepared = PreparedCorpus(corpus)
    settings = {"size": size, "steps": steps, "seed": seed, "batch_seconds": batch_seconds, "lr": lr,
                "warmup": warmup, "mask_prob": MASK_PROB, "mask_length": MASK_LENGTH, "temperature": list(TEMPERATURE),
                "max_crop_seconds": MAX_CROP_SECONDS,
                "feature_grad_mult": FEATURE_GRAD_MULT}
    if (out / "phonorm.json").is_file():
        meta = read_json(out / "phonorm.json")
        if meta.get("complete") and meta.get("settings") == settings:
            return f"{out}: already pre-trained with these settings (delete the folder to train again)"
        raise PhonormError(f"{out}: holds a finished model with other settings; choose another --out or delete it")

    accelerator = Accelerator(mixed_precision="no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    from phonorm.launch import check_launch

    check_launch(accelerator)
    set_seed(seed, device_specific=False)
    config = make_config(size)
    config.architectures = ["Wav2Vec2ForPreTraining"]
    model = Wav2Vec2ForPreTraining(config)
    geometry = FrameGeometry.from_config(config)
    for param in model.wav2vec2.feature_extractor.parameters():
        # scaling each gradient is linear, so it commutes with DDP's gradient averaging
        param.register_hook(lambda grad: grad * FEATURE_GRAD_MULT)

    train_set = FrameDataset(prepared, "train", [], geometry)
    held_split = "dev" if len(prepared.utterances("dev")) else "test"
    held_table = prepared.utterances(held_split)
    if len(held_table) == 0:
        raise InputError(prepared.folder / "utterances.parquet", "no dev or test utterances to measure pre-training on")
    held_table = held_table.sample(n=min(HELD_OUT_UTTERANCES, len(held_table)), random_state=0)
    held_set = FrameDataset(prepared, None, [], geometry, utterances=held_table)
    max_samples = int(MAX_CROP_SECONDS * geometry.sample_rate)
    held_collator = Collator(geometry, [], crop=True, random_offset=False, max_samples=max_samples)
    held_batches = length_bucketed_batches(held_set.durations, batch_seconds)

    sampler = LengthBucketSampler(np.minimum(train_set.durations, MAX_CROP_SECONDS), batch_seconds, seed=seed,
                                  num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=0,
                                         generator=torch.Generator().manual_seed(seed),  # see finetune.py
                                         collate_fn=Collator(geometry, [], crop=True, max_samples=max_samples))
    steps_per_epoch = len(sampler)
    eval_every = eval_every or max(1, steps // 10)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(warmup * steps), num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)

    checkpoint = out / "checkpoint"
    step, log_rows = 0, []
    if (checkpoint / "trainer_state.json").is_file():
        state = read_json(checkpoint / "trainer_state.json")
        if state["settings"] != settings or state["num_processes"] != accelerator.num_processes:
            raise PhonormError(f"{checkpoint}: an interrupted run with other settings; use the same ones or delete it")
        accelerator.load_state(str(checkpoint))
        step, log_rows = state["step"], state["log"]
    if step == 0:
        first = held_out_score(unwrapped, held_set, held_batches, held_collator, accelerator.device)
        log_rows.append({"step": 0, **{f"held_out_{k}": v for k, v in first.items()}})

    # Gumbel temperature: exponential decay reaching the minimum at 70% of the steps, the shape of
    # the wav2vec 2.0 recipe (factor 0.999995 over 400k updates) compressed to `steps`.
    decay_rate = (TEMPERATURE[1] / TEMPERATURE[0]) ** (1.0 / max(1.0, 0.7 * steps))
    bar = tqdm(total=steps, initial=step, desc=f"pretrain {size}", unit="step", disable=not accelerator.is_local_main_process)
    tic = time.perf_counter()
    while step < steps:
        sampler.set_epoch(step // steps_per_epoch, skip=step % steps_per_epoch)
        for batch in loader:
            model.train()
            temperature = max(TEMPERATURE[1], TEMPERATURE[0] * decay_rate ** step)
            unwrapped.set_gumbel_temperature(temperature)
            inputs = batch["input_values"].to(accelerator.device)
            n_frames = int(unwrapped._get_feat_extract_output_lengths(inputs.shape[1]))
            mask, negatives = _mask_and_negatives(len(inputs), n_frames, config.num_negatives)
            output = model(inputs, mask_time_indices=mask.to(accelerator.device),
                           sampled_negative_indices=negatives.to(accelerator.device))
            n_masked = mask.sum()
            # HF's loss sums over masked frames (contrastive) and scales diversity by their count.
            loss = output.loss / n_masked
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "lr": scheduler.get_last_lr()[0], "loss": float(loss.detach()),
                   "contrastive_loss": float(output.contrastive_loss.detach() / n_masked),
                   "diversity_loss": float(output.diversity_loss.detach() / n_masked),
                   "perplexity": float(output.codevector_perplexity.detach()), "temperature": temperature,
                   "audio_seconds": batch["audio_seconds"] * accelerator.num_processes,
                   "step_seconds": time.perf_counter() - tic}
            tic = time.perf_counter()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if step % eval_every == 0 or step == steps:
                if accelerator.is_main_process:
                    held = held_out_score(unwrapped, held_set, held_batches, held_collator, accelerator.device)
                    row.update({f"held_out_{k}": v for k, v in held.items()})
                    bar.set_postfix(loss=f"{row['loss']:.3f}", held_out_acc=f"{held['contrastive_accuracy']:.3f}")
                log_rows.append(row)
                _checkpoint(accelerator, checkpoint, {"step": step, "log": log_rows, "settings": settings,
                                                      "num_processes": accelerator.num_processes})
                tic = time.perf_counter()
            else:
                log_rows.append(row)
            if step >= steps:
                break
    bar.close()

    if accelerator.is_main_process:
        unwrapped.save_pretrained(out)
        with atomic_path(out / "pretrain_log.csv") as tmp:
            pd.DataFrame(log_rows).to_csv(tmp, index=False)
        curve = [(r["step"], r["held_out_contrastive_accuracy"]) for r in log_rows if "held_out_contrastive_accuracy" in r]
        write_json(out / "phonorm.json", {
            "complete": True, "kind": "pretrained", "size": size, "model_type": config.model_type,
            "held_out_split": held_split, "held_out_contrastive_accuracy": curve,
            "num_processes": accelerator.num_processes, "settings": settings,
            "corpus": str(prepared.folder.resolve()), "provenance": provenance(settings),
        })
        shutil.rmtree(checkpoint, ignore_errors=True)
    accelerator.wait_for_everyone()
    meta = read_json(out / "phonorm.json")
    start, end = meta["held_out_contrastive_accuracy"][0][1], meta["held_out_contrastive_accuracy"][-1][1]
    return (f"{out}: pre-trained a {size} wav2vec 2.0 for {steps} steps; held-out ({held_split}) contrastive "
            f"accuracy {start:.3f} → {end:.3f} (chance about 1/{config.num_negatives + 1})")


def _checkpoint(accelerator, checkpoint: Path, state: dict[str, Any]) -> None:
    from phonorm.models.finetune import _save_checkpoint

    _save_checkpoint(accelerator, checkpoint, state)
