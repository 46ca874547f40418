"""wav2vec 2.0's contrastive objective (Baevski et al. 2020), the `contrastive` objective of `phonorm
pretrain`, with transformers' `Wav2Vec2ForPreTraining` (contrastive loss over masked spans + codebook
diversity loss).

Masks come from transformers' `_compute_mask_indices` (spans of `mask_length` frames, about
`mask_prob` of the frames), distractors from `_sample_negative_indices` (masked frames of the same
utterance). Progress is measured on held-out audio: the contrastive accuracy (how often the model's
context vector is closest, by cosine, to the true quantised target rather than to one of the
distractors) with fixed masks and distractors, so that values at different steps compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from phonorm.frames import FrameGeometry
from phonorm.models.data import FrameDataset
from phonorm.models.training import Trainer, held_out_mode
from phonorm.settings import PretrainSettings

MASK_PROB = 0.65       # wav2vec 2.0 paper: p = 0.065 start probability × M = 10 ≈ 65% of frames
MASK_LENGTH = 10
TEMPERATURE = (2.0, 0.5)  # Gumbel softmax temperature, annealed from the first to the second value


def mask_and_negatives(batch_size: int, n_frames: int, num_negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def held_out_accuracy(model, batches, device: torch.device) -> dict[str, float]:
    """Contrastive accuracy and loss per masked frame on held-out batches (dicts with
    `input_values`), with masks and distractors drawn from a fixed seed (the global numpy state is
    restored afterwards)."""
    correct = loss = count = 0.0
    with held_out_mode(model):
        for batch in batches:
            inputs = batch["input_values"].to(device)
            n_frames = int(model._get_feat_extract_output_lengths(inputs.shape[1]))
            mask, negatives = mask_and_negatives(len(inputs), n_frames, model.config.num_negatives)
            c, batch_loss, n = contrastive_accuracy(model, inputs, mask.to(device), negatives.to(device))
            correct, loss, count = correct + c, loss + batch_loss, count + n
    return {"contrastive_accuracy": correct / max(count, 1), "contrastive_loss": loss / max(count, 1),
            "masked_frames": int(count)}


def gumbel_decay(steps: int) -> float:
    """Per-step factor of the Gumbel temperature: exponential decay reaching the minimum at 70% of
    the steps, the shape of the wav2vec 2.0 recipe (factor 0.999995 over 400k updates) compressed."""
    return (TEMPERATURE[1] / TEMPERATURE[0]) ** (1.0 / max(1.0, 0.7 * steps))


def contrastive_step(wrapped, unwrapped, batch: dict[str, Any], step: int, decay: float, device) -> tuple[Any, dict]:
    """(loss to back-propagate, log row) of one training batch."""
    temperature = max(TEMPERATURE[1], TEMPERATURE[0] * decay ** step)
    unwrapped.set_gumbel_temperature(temperature)
    inputs = batch["input_values"].to(device)
    n_frames = int(unwrapped._get_feat_extract_output_lengths(inputs.shape[1]))
    mask, negatives = mask_and_negatives(len(inputs), n_frames, unwrapped.config.num_negatives)
    output = wrapped(inputs, mask_time_indices=mask.to(device), sampled_negative_indices=negatives.to(device))
    n_masked = mask.sum()
    # HF's loss sums over masked frames (contrastive) and scales diversity by their count.
    loss = output.loss / n_masked
    return loss, {"contrastive_loss": float(output.contrastive_loss.detach() / n_masked),
                  "diversity_loss": float(output.diversity_loss.detach() / n_masked),
                  "perplexity": float(output.codevector_perplexity.detach()), "temperature": temperature}


# ---------------------------------------------------------------- the objective (models/objectives/__init__.py)
class ContrastiveObjective:
    """wav2vec 2.0's contrastive objective on a transformers `Wav2Vec2ForPreTraining`."""

    name = "contrastive"
    model_type = "wav2vec2"
    held_out_metric = "contrastive_accuracy"
    title = "wav2vec 2.0 (contrastive)"

    def recipe(self) -> dict[str, Any]:
        return {"mask_prob": MASK_PROB, "mask_length": MASK_LENGTH, "temperature": list(TEMPERATURE)}

    def attach_targets(self, out: Path, settings: PretrainSettings, trainer: Trainer, tables: dict[str, pd.DataFrame],
                       geometry: FrameGeometry, datasets: list[FrameDataset]) -> dict[str, int]:
        return {}  # the targets are the model's own quantised frames

    def new_model(self, config: Any, targets: dict[str, int]) -> tuple[torch.nn.Module, Any]:
        from transformers import Wav2Vec2ForPreTraining

        config.architectures = ["Wav2Vec2ForPreTraining"]
        pretraining = Wav2Vec2ForPreTraining(config)
        return pretraining, pretraining.wav2vec2

    def loss(self, wrapped: Any, unwrapped: Any, batch: dict[str, Any], step: int, settings: PretrainSettings,
             device: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return contrastive_step(wrapped, unwrapped, batch, step, gumbel_decay(settings.steps), device)

    def held_out(self, model: Any, batches: list[dict[str, Any]], device: Any) -> dict[str, float]:
        return held_out_accuracy(model, batches, device)

    def encoder(self, model: Any) -> Any:
        return model

    def chance(self, settings: PretrainSettings, config: Any) -> str:
        return f"chance about 1/{int(getattr(config, 'num_negatives', 0)) + 1}"
