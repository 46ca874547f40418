"""HuBERT's masked prediction (Hsu et al. 2021, "HuBERT"), the `hubert` objective of `phonorm pretrain`.

A `HubertModel` of transformers reads the waveform; spans of its frames are masked (the learnt mask
vector replaces them before the Transformer, wav2vec 2.0's masking: `mask_prob` 0.65, spans of 10
frames, overlapping, so about half the frames end up masked), and a linear head on the last layer
predicts each frame's cluster id (`models/targets.py`), one head per target stream (MFCC units, and
pitch when asked: HuBERT's cluster ensembles, Hsu et al. 2021, section III.C). The loss of a stream
is the cross-entropy on masked frames, plus `unmasked_weight` times the one on unmasked frames; the
streams' losses are summed. HuBERT's own head scores cosine similarity to learnt code embeddings; a
linear head is the same function class and was what the screen behind this recipe measured
(docs/pretraining-study.md).
"""

from __future__ import annotations

from typing import Any

import torch

from phonorm.models.targets import ClusterTargets
from phonorm.models.training import held_out_mode

MASK_PROB = 0.65
MASK_LENGTH = 10
TARGET = "cluster"
"""The label name under which the batches carry the cluster ids of the units stream (MFCC or a layer)."""
PITCH_TARGET = "pitch_cluster"
"""The label name of the pitch stream's cluster ids."""
STREAM_OF_TARGET = {TARGET: "units", PITCH_TARGET: "pitch"}
LOG_PREFIX = {TARGET: "", PITCH_TARGET: "pitch_"}
"""Log columns: `masked_accuracy` for the units stream (the held-out metric), `pitch_masked_accuracy`..."""


def span_mask(batch_size: int, n_frames: int) -> torch.Tensor:
    """(batch, frames) bool mask of spans from numpy's global generator (seeded and checkpointed by
    the trainer), at least two spans per row: transformers' own `_compute_mask_indices`."""
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    mask = _compute_mask_indices((batch_size, n_frames), mask_prob=MASK_PROB, mask_length=min(MASK_LENGTH, n_frames),
                                 min_masks=2)
    return torch.from_numpy(mask)


class MaskedPrediction(torch.nn.Module):
    """A HuBERT encoder with one linear head per target stream from its last layer to its cluster ids.

    `clusters`: {label name (`TARGET`, `PITCH_TARGET`): number of clusters}."""

    def __init__(self, hubert: Any, clusters: dict[str, int]):
        super().__init__()
        self.hubert = hubert  # a transformers HubertModel
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(int(hubert.config.hidden_size), k)
                                          for name, k in clusters.items()})

    def forward(self, input_values: torch.Tensor, mask_time_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """{label name: logits (batch, frames, clusters)} for waveforms (batch, samples) with the frames
        of `mask_time_indices` (batch, frames) masked."""
        hidden = self.hubert(input_values, mask_time_indices=mask_time_indices).last_hidden_state
        return {name: head(hidden) for name, head in self.heads.items()}


def masked_prediction_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], mask: torch.Tensor,
                           unmasked_weight: float, weights: dict[str, float] | None = None
                           ) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, log values): per stream, mean cross-entropy over masked frames + `unmasked_weight` times
    the mean over unmasked frames, summed over the streams (each times its `weights` entry, 1 if none); the log has each stream's losses and its
    masked frames' accuracy (`masked_loss`, `pitch_masked_loss`, ...)."""
    total = torch.zeros((), device=mask.device)
    row: dict[str, float] = {}
    for name, stream_logits in logits.items():
        prefix, flat_logits, ids = LOG_PREFIX[name], stream_logits.float(), targets[name]
        weight = (weights or {}).get(name, 1.0)
        masked = torch.nn.functional.cross_entropy(flat_logits[mask], ids[mask])
        total = total + weight * masked
        row[f"{prefix}masked_loss"] = float(masked.detach())
        if unmasked_weight > 0 and (~mask).any():
            unmasked = torch.nn.functional.cross_entropy(flat_logits[~mask], ids[~mask])
            total = total + weight * unmasked_weight * unmasked
            row[f"{prefix}unmasked_loss"] = float(unmasked.detach())
        row[f"{prefix}masked_accuracy"] = float((flat_logits[mask].argmax(-1) == ids[mask]).float().mean())
    return total, row


def held_out_accuracy(model: MaskedPrediction, batches, device: torch.device) -> dict[str, float]:
    """Masked-prediction accuracy and loss per masked frame of each stream on held-out batches (each a
    dict with `input_values` and `labels[name]`), with masks drawn from a fixed seed, so that values at
    different steps compare; the global numpy state is restored afterwards."""
    correct: dict[str, float] = {}
    loss: dict[str, float] = {}
    count = 0
    with held_out_mode(model):
        for batch in batches:
            inputs = batch["input_values"].to(device)
            any_targets = batch["labels"][TARGET].to(device)
            mask = span_mask(len(inputs), any_targets.shape[1]).to(device)
            for name, logits in model(inputs, mask).items():
                picked, ids = logits.float()[mask], batch["labels"][name].to(device)[mask]
                correct[name] = correct.get(name, 0.0) + float((picked.argmax(-1) == ids).sum())
                loss[name] = loss.get(name, 0.0) + float(torch.nn.functional.cross_entropy(picked, ids, reduction="sum"))
            count += int(mask.sum())
    out: dict[str, float] = {}
    for name in correct:
        out[f"{LOG_PREFIX[name]}masked_accuracy"] = correct[name] / max(count, 1)
        out[f"{LOG_PREFIX[name]}masked_loss"] = loss[name] / max(count, 1)
    out["masked_frames"] = int(count)
    return out


def with_targets(example, targets: dict[str, ClusterTargets]):
    """The `Example` with its frames' cluster ids of each stream as labels ({label name: targets};
    checked to match its frames)."""
    for name, stream in targets.items():
        ids = stream.of(example.utterance_id)
        if len(ids) != len(example.segment):
            raise ValueError(f"{example.utterance_id}: {len(ids)} cluster ids for {len(example.segment)} frames")
        example.labels[name] = ids
    return example
