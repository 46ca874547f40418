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

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from phonorm.frames import FrameGeometry
from phonorm.models.data import FrameDataset
from phonorm.models.targets import ClusterTargets
from phonorm.models.training import Trainer, held_out_mode
from phonorm.settings import PretrainSettings

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


# ---------------------------------------------------------------- the objective (models/objectives/__init__.py)
class HubertObjective:
    """HuBERT's masked prediction of frame cluster ids (MFCC units, or a layer of an earlier model;
    pitch units too with `pitch_clusters`), on a transformers `HubertModel`."""

    name = "hubert"
    model_type = "hubert"
    held_out_metric = "masked_accuracy"
    title = "HuBERT (masked prediction)"

    def recipe(self) -> dict[str, Any]:
        return {"mask_prob": MASK_PROB, "mask_length": MASK_LENGTH, "head": "linear",
                "targets": "MiniBatchKMeans of MFCC c0-c12 + deltas + delta-deltas (Praat), z-scored over train"}

    def attach_targets(self, out: Path, settings: PretrainSettings, trainer: Trainer, tables: dict[str, pd.DataFrame],
                       geometry: FrameGeometry, datasets: list[FrameDataset]) -> dict[str, int]:
        """Make (main process) or read the cluster targets of every frame of each stream and give them to
        the datasets' examples; {label name: number of clusters}."""
        if trainer.main:
            out.mkdir(parents=True, exist_ok=True)
            _ensure_cluster_targets(out, settings, tables, geometry)
        trainer.accelerator.wait_for_everyone()
        names = [TARGET] + ([PITCH_TARGET] if settings.pitch_clusters else [])
        targets: dict[str, ClusterTargets] = {}
        for name in names:
            loaded = ClusterTargets.load(out, STREAM_OF_TARGET[name])
            assert loaded is not None  # written above by the main process
            targets[name] = loaded
        for dataset in datasets:
            dataset.transform = lambda example: with_targets(example, targets)
        return {name: stream.clusters for name, stream in targets.items()}

    def new_model(self, config: Any, targets: dict[str, int]) -> tuple[torch.nn.Module, Any]:
        from transformers import HubertModel

        config.architectures = ["HubertModel"]
        encoder: Any = HubertModel(config)
        return MaskedPrediction(encoder, targets), encoder

    def loss(self, wrapped: Any, unwrapped: Any, batch: dict[str, Any], step: int, settings: PretrainSettings,
             device: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Masked-prediction loss of one batch (span masks drawn here) and its log row."""
        inputs = batch["input_values"].to(device)
        cluster_ids = {name: ids.to(device) for name, ids in batch["labels"].items()}
        mask = span_mask(len(inputs), cluster_ids[TARGET].shape[1]).to(device)
        return masked_prediction_loss(wrapped(inputs, mask), cluster_ids, mask, settings.unmasked_weight,
                                      {PITCH_TARGET: settings.pitch_weight})

    def held_out(self, model: Any, batches: list[dict[str, Any]], device: Any) -> dict[str, float]:
        return held_out_accuracy(model, batches, device)

    def encoder(self, model: Any) -> Any:
        return model.hubert

    def chance(self, settings: PretrainSettings, config: Any) -> str:
        return f"{settings.clusters} clusters"


def _ensure_cluster_targets(out: Path, settings: PretrainSettings, tables: dict[str, pd.DataFrame],
                            geometry: FrameGeometry) -> None:
    """Fit and save each stream's cluster targets unless an earlier start of this run saved them (a
    resumed run trains on the very same ids; the trainer's fingerprint guarantees same settings)."""
    import numpy as np

    from phonorm.corpus.audio import load_audio
    from phonorm.models.data import normalize
    from phonorm.models.targets import fit_targets, layer_features, pitch_frames

    def waves(row: Any) -> np.ndarray:
        return normalize(load_audio(row.audio_path, recorded_seconds=float(row.duration)))

    if ClusterTargets.load(out, "units") is None:
        features, source = None, "mfcc"
        if settings.targets_from is not None:
            features = layer_features(settings.targets_from, int(settings.targets_layer or 0))
            source = f"{settings.targets_from}:L{settings.targets_layer}"
        fit_targets(waves, tables, geometry, clusters=settings.clusters, seed=settings.seed, source=source,
                    features=features).save(out, "units")
    if settings.pitch_clusters and ClusterTargets.load(out, "pitch") is None:
        fit_targets(waves, tables, geometry, clusters=settings.pitch_clusters, seed=settings.seed, source="pitch",
                    features=lambda wave, n: pitch_frames(wave, geometry, n)).save(out, "pitch")
