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

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from phonorm.artifacts import atomic_path, provenance
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.frames import FrameGeometry
from phonorm.lock import folder_lock
from phonorm.models.backbone import LAYER_CONVENTION, make_config
from phonorm.models.card import ModelCard, binding_settings
from phonorm.models.data import Collator, FrameDataset, LengthBucketSampler, length_bucketed_batches
from phonorm.models.training import Trainer, TrainState, swap_folder
from phonorm.settings import PretrainSettings

MASK_PROB = 0.65       # wav2vec 2.0 paper: p = 0.065 start probability × M = 10 ≈ 65% of frames
MASK_LENGTH = 10
MAX_CROP_SECONDS = 8.0  # longer utterances are cut to a random 8 s window (memory, as fairseq's max_sample_size)
TEMPERATURE = (2.0, 0.5)  # Gumbel softmax temperature, annealed from the first to the second value
FEATURE_GRAD_MULT = 0.1  # wav2vec 2.0 recipe: the conv feature encoder learns at a tenth of the rate
HELD_OUT_UTTERANCES = 64
HELD_OUT_SEED = 1234
RECIPE = {"mask_prob": MASK_PROB, "mask_length": MASK_LENGTH, "temperature": list(TEMPERATURE),
          "max_crop_seconds": MAX_CROP_SECONDS, "feature_grad_mult": FEATURE_GRAD_MULT}
"""Fixed parts of the recipe, recorded with the settings in the model card."""


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
            c, batch_loss, n = contrastive_accuracy(model, inputs, mask.to(device), negatives.to(device))
            correct, loss, count = correct + c, loss + batch_loss, count + n
    np.random.set_state(state)
    model.train(was_training)
    return {"contrastive_accuracy": correct / max(count, 1), "contrastive_loss": loss / max(count, 1),
            "masked_frames": int(count)}


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
    from transformers import Wav2Vec2ForPreTraining, get_scheduler

    prepared = PreparedCorpus(corpus)
    recorded = {**settings.as_dict(), **RECIPE}
    if ModelCard.exists(out):
        if ModelCard.load(out).same_run(settings=recorded, corpus_fingerprint=prepared.fingerprint, base_model=None):
            return f"{out}: already pre-trained with these settings (delete the folder to train again)"
        raise PhonormError(f"{out}: holds a finished model of other settings or corpus; choose another --out or delete it")

    trainer = Trainer(out, seed=settings.seed, mixed_precision="no",
                      fingerprint={"settings": binding_settings(recorded),
                                   "corpus": prepared.fingerprint})
    accelerator = trainer.accelerator
    steps = settings.steps
    config = make_config(settings.size)
    config.architectures = ["Wav2Vec2ForPreTraining"]
    model = Wav2Vec2ForPreTraining(config)  # type: ignore[arg-type]
    geometry = FrameGeometry.from_config(config)
    for param in model.wav2vec2.feature_extractor.parameters():
        # scaling each gradient is linear, so it commutes with DDP's gradient averaging
        param.register_hook(lambda grad: grad * FEATURE_GRAD_MULT)

    train_table = _train_utterances(prepared, settings.max_hours)
    train_set = FrameDataset(prepared, None, [], geometry, utterances=train_table)
    train_hours = float(train_table["duration"].sum()) / 3600
    held_split = "dev" if len(prepared.utterances("dev")) else "test"
    held_table = prepared.utterances(held_split)
    if len(held_table) == 0:
        raise InputError(prepared.folder / "utterances.parquet", "no dev or test utterances to measure pre-training on")
    held_table = held_table.sample(n=min(HELD_OUT_UTTERANCES, len(held_table)), random_state=0)
    held_set = FrameDataset(prepared, None, [], geometry, utterances=held_table)
    max_samples = int(MAX_CROP_SECONDS * geometry.sample_rate)
    held_collator = Collator(geometry, [], crop=True, random_offset=False, max_samples=max_samples)
    held_batches = length_bucketed_batches(held_set.durations, settings.batch_seconds)

    sampler = LengthBucketSampler(np.minimum(train_set.durations, MAX_CROP_SECONDS), settings.batch_seconds,
                                  seed=settings.seed, num_replicas=accelerator.num_processes,
                                  rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=0,
                                         generator=torch.Generator().manual_seed(settings.seed),  # see finetune.py
                                         collate_fn=Collator(geometry, [], crop=True, max_samples=max_samples))
    eval_every = settings.eval_every or max(1, steps // 10)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(settings.warmup * steps),
                              num_training_steps=steps)
    wrapped = trainer.prepare(model, optimizer, scheduler)
    unwrapped = trainer.unwrapped
    state = trainer.resume()
    if state.step == 0:
        first = held_out_score(unwrapped, held_set, held_batches, held_collator, trainer.device)
        state.log.append({"step": 0, **{f"held_out_{k}": v for k, v in first.items()}})

    # Gumbel temperature: exponential decay reaching the minimum at 70% of the steps, the shape of
    # the wav2vec 2.0 recipe (factor 0.999995 over 400k updates) compressed to `steps`.
    decay_rate = (TEMPERATURE[1] / TEMPERATURE[0]) ** (1.0 / max(1.0, 0.7 * steps))

    def train_step(batch: dict[str, Any]) -> dict[str, Any]:
        wrapped.train()
        temperature = max(TEMPERATURE[1], TEMPERATURE[0] * decay_rate ** state.step)
        unwrapped.set_gumbel_temperature(temperature)  # type: ignore[operator]
        inputs = batch["input_values"].to(trainer.device)
        n_frames = int(unwrapped._get_feat_extract_output_lengths(inputs.shape[1]))  # type: ignore[operator]
        mask, negatives = _mask_and_negatives(len(inputs), n_frames, config.num_negatives)
        output = wrapped(inputs, mask_time_indices=mask.to(trainer.device),
                         sampled_negative_indices=negatives.to(trainer.device))
        n_masked = mask.sum()
        # HF's loss sums over masked frames (contrastive) and scales diversity by their count.
        loss = output.loss / n_masked
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(wrapped.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"lr": scheduler.get_last_lr()[0], "loss": float(loss.detach()),
                "contrastive_loss": float(output.contrastive_loss.detach() / n_masked),
                "diversity_loss": float(output.diversity_loss.detach() / n_masked),
                "perplexity": float(output.codevector_perplexity.detach()), "temperature": temperature,
                "audio_seconds": batch["audio_seconds"] * accelerator.num_processes}

    def evaluate(state: TrainState, row: dict[str, Any]) -> None:
        if trainer.main:
            held = held_out_score(unwrapped, held_set, held_batches, held_collator, trainer.device)
            row.update({f"held_out_{k}": v for k, v in held.items()})

    if trainer.main:
        out.mkdir(parents=True, exist_ok=True)
    def save_model(folder: Path, state: TrainState) -> None:
        """The model folder of the weights at `state.step`: backbone, log and card (the card last)."""
        unwrapped.save_pretrained(folder)  # type: ignore[operator]
        with atomic_path(folder / "pretrain_log.csv") as tmp:
            pd.DataFrame(state.log).to_csv(tmp, index=False)
        curve = [(r["step"], r["held_out_contrastive_accuracy"]) for r in state.log
                 if "held_out_contrastive_accuracy" in r]
        ModelCard(complete=True, kind="pretrained", size=settings.size, model_type=config.model_type,
                  held_out_split=held_split, held_out_contrastive_accuracy=curve,
                  num_processes=accelerator.num_processes, settings=recorded, trained_steps=state.step,
                  train_hours=round(train_hours, 4),
                  corpus=str(prepared.folder.resolve()), corpus_fingerprint=prepared.fingerprint,
                  layer_convention=LAYER_CONVENTION, provenance=provenance(recorded)).save(folder)

    def keep(state: TrainState) -> None:
        # Written whole into a hidden folder, then renamed: a snapshot folder is always complete.
        if trainer.main:
            target = snapshot_folder(out, state.step)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model(tmp, state)
            swap_folder(tmp, target)
        accelerator.wait_for_everyone()

    trainer.run(loader=loader, sampler=sampler, total_steps=steps, state=state, train_step=train_step,
                evaluate=evaluate, eval_every=eval_every, desc=f"pretrain {settings.size}",
                keep_steps=settings.keep_steps, keep=keep)

    if trainer.main:
        save_model(out, state)
    trainer.discard_checkpoint()
    card = ModelCard.load(out)
    start, end = card.held_out_contrastive_accuracy[0][1], card.held_out_contrastive_accuracy[-1][1]
    kept = f"; snapshots at steps {', '.join(map(str, settings.keep_steps))}" if settings.keep_steps else ""
    return (f"{out}: pre-trained a {settings.size} wav2vec 2.0 for {steps} steps on {train_hours:.2f} h; held-out "
            f"({held_split}) contrastive accuracy {start:.3f} → {end:.3f} (chance about 1/{config.num_negatives + 1})"
            f"{kept}")


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
