"""HuBERT's masked prediction (Hsu et al. 2021, "HuBERT"), the `hubert` objective of `phonorm pretrain`.

A `HubertModel` of transformers reads the waveform; spans of its frames are masked (the learnt mask
vector replaces them before the Transformer, wav2vec 2.0's masking: `mask_prob` 0.65, spans of 10
frames, overlapping, so about half the frames end up masked), and a linear head on the last layer
predicts each frame's cluster id (`models/targets.py`). The loss is the cross-entropy on masked
frames, plus `unmasked_weight` times the one on unmasked frames. HuBERT's own head scores cosine
similarity to learnt code embeddings; a linear head is the same function class and was what the
screen behind this recipe measured (docs/pretraining-study.md).
"""

from __future__ import annotations

from typing import Any

import torch

from phonorm.models.targets import ClusterTargets
from phonorm.models.training import held_out_mode

MASK_PROB = 0.65
MASK_LENGTH = 10
TARGET = "cluster"
"""The label name under which the batches carry the cluster ids."""


def span_mask(batch_size: int, n_frames: int) -> torch.Tensor:
    """(batch, frames) bool mask of spans from numpy's global generator (seeded and checkpointed by
    the trainer), at least two spans per row: transformers' own `_compute_mask_indices`."""
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    mask = _compute_mask_indices((batch_size, n_frames), mask_prob=MASK_PROB, mask_length=min(MASK_LENGTH, n_frames),
                                 min_masks=2)
    return torch.from_numpy(mask)


class MaskedPrediction(torch.nn.Module):
    """A HuBERT encoder with a linear head from its last layer to the cluster ids."""

    def __init__(self, hubert: Any, clusters: int):
        super().__init__()
        self.hubert = hubert  # a transformers HubertModel
        self.head = torch.nn.Linear(int(hubert.config.hidden_size), clusters)

    def forward(self, input_values: torch.Tensor, mask_time_indices: torch.Tensor) -> torch.Tensor:
        """Logits (batch, frames, clusters) for waveforms (batch, samples) with the frames of
        `mask_time_indices` (batch, frames) masked."""
        hidden = self.hubert(input_values, mask_time_indices=mask_time_indices).last_hidden_state
        return self.head(hidden)


def masked_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, unmasked_weight: float
                           ) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, log values): mean cross-entropy over masked frames + `unmasked_weight` times the mean over
    unmasked frames; the log has both losses and the masked frames' accuracy."""
    flat_logits = logits.float()
    masked = torch.nn.functional.cross_entropy(flat_logits[mask], targets[mask])
    loss = masked
    row = {"masked_loss": float(masked.detach())}
    if unmasked_weight > 0 and (~mask).any():
        unmasked = torch.nn.functional.cross_entropy(flat_logits[~mask], targets[~mask])
        loss = loss + unmasked_weight * unmasked
        row["unmasked_loss"] = float(unmasked.detach())
    row["masked_accuracy"] = float((flat_logits[mask].argmax(-1) == targets[mask]).float().mean())
    return loss, row


def held_out_accuracy(model: MaskedPrediction, batches, device: torch.device) -> dict[str, float]:
    """Masked-prediction accuracy and loss per masked frame on held-out batches (each a dict with
    `input_values` and `labels[TARGET]`), with masks drawn from a fixed seed, so that values at
    different steps compare; the global numpy state is restored afterwards."""
    correct = loss = count = 0.0
    with held_out_mode(model):
        for batch in batches:
            inputs = batch["input_values"].to(device)
            targets = batch["labels"][TARGET].to(device)
            mask = span_mask(len(inputs), targets.shape[1]).to(device)
            logits = model(inputs, mask).float()
            picked = logits[mask]
            correct += float((picked.argmax(-1) == targets[mask]).sum())
            loss += float(torch.nn.functional.cross_entropy(picked, targets[mask], reduction="sum"))
            count += int(mask.sum())
    return {"masked_accuracy": correct / max(count, 1), "masked_loss": loss / max(count, 1), "masked_frames": int(count)}


def with_targets(example, targets: ClusterTargets):
    """The `Example` with its frames' cluster ids as the label `TARGET` (checked to match its frames)."""
    ids = targets.of(example.utterance_id)
    if len(ids) != len(example.segment):
        raise ValueError(f"{example.utterance_id}: {len(ids)} cluster ids for {len(example.segment)} frames")
    example.labels[TARGET] = ids
    return example
