"""Our own frame-classification heads on a bare speech encoder (pitfall 5, docs/pitfalls.md).

transformers' `Wav2Vec2ForAudioFrameClassification` wants one-hot labels and cannot ignore padded
or unlabelled frames, so phonorm puts one linear layer per task on the last Transformer layer of
the bare encoder (`AutoModel`) and scores frames with `CrossEntropyLoss(ignore_index=-100)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from phonorm.errors import InputError
from phonorm.frames import IGNORE_INDEX

HEADS_FILE = "heads.safetensors"


class MultitaskHeads(nn.Module):
    """One linear layer per task: hidden (batch, frames, hidden) → logits {task: (batch, frames, classes)}."""

    def __init__(self, hidden_size: int, n_classes: Mapping[str, int], dropout: float = 0.1):
        super().__init__()
        self.tasks = list(n_classes)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden_size, int(n)) for task, n in n_classes.items()})

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.dropout(hidden)
        return {task: head(hidden) for task, head in self.heads.items()}


class FrameClassifier(nn.Module):
    """Backbone (a bare HF speech encoder) + `MultitaskHeads` on its last Transformer layer."""

    def __init__(self, backbone: Any, heads: MultitaskHeads):
        """`backbone`: a transformers PreTrainedModel (wav2vec 2.0, HuBERT, WavLM) without heads."""
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`input_values` (batch, samples) → {task: logits (batch, frames, classes)}."""
        hidden = self.backbone(input_values, attention_mask=attention_mask).last_hidden_state
        return self.heads(hidden)


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ_task weight × mean cross-entropy over the task's scored frames (IGNORE_INDEX frames never
    count). A task with no scored frame in the batch adds 0 (not NaN). Returns (loss, per-task
    float losses)."""
    total = None
    parts: dict[str, float] = {}
    for task, task_logits in logits.items():
        target = labels[task]
        n = min(task_logits.shape[1], target.shape[1])  # frame counts agree by construction; guard anyway
        flat_logits = task_logits[:, :n].reshape(-1, task_logits.shape[-1]).float()
        flat_target = target[:, :n].reshape(-1)
        summed = nn.functional.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (flat_target != IGNORE_INDEX).sum().clamp(min=1)
        loss = summed / count
        parts[task] = float(loss.detach())
        weighted = float(weights.get(task, 1.0)) * loss
        total = weighted if total is None else total + weighted
    assert total is not None, "no task to train"
    return total, parts


def save_heads(heads: MultitaskHeads, folder: str | Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(Path(folder) / HEADS_FILE))


def load_finetuned(folder: str | Path, *, device: str | torch.device = "cpu",
                   label_maps: Mapping[str, Sequence[str]] | None = None
                   ) -> tuple[nn.Module, MultitaskHeads, dict[str, Any]]:
    """(backbone in eval mode, heads in eval mode, model card as a dict) of a `phonorm finetune`
    folder. `label_maps` (task → labels) stands in for the card while the folder is being finished."""
    from phonorm.models.backbone import load_backbone
    from phonorm.records.card import ModelCard

    folder = Path(folder)
    if label_maps is None:
        card = ModelCard.load(folder)
        if card.kind != "finetuned" or not card.tasks:
            raise InputError(ModelCard.path(folder), "has no tasks/label_maps: not written by phonorm finetune")
        meta = card.model_dump(mode="json")
    else:
        meta = {"tasks": list(label_maps), "label_maps": {t: list(v) for t, v in label_maps.items()}}
    for name in (HEADS_FILE, "config.json"):
        if not (folder / name).is_file():
            raise InputError(folder / name, "missing: not a model folder written by phonorm finetune")
    backbone: Any = load_backbone(folder).to(device)  # type: ignore[arg-type]  # transformers' .to() overloads reject a str device
    n_classes = {task: len(meta["label_maps"][task]) for task in meta["tasks"]}
    heads = MultitaskHeads(backbone.config.hidden_size, n_classes)
    try:
        heads.load_state_dict(load_file(str(folder / HEADS_FILE)))
    except (RuntimeError, OSError) as err:
        raise InputError(folder / HEADS_FILE, f"heads do not match phonorm.json ({err})") from None
    except Exception as err:  # safetensors' SafetensorError: a truncated or damaged file
        raise InputError(folder / HEADS_FILE, f"damaged safetensors file ({err})") from None
    heads.to(device).eval()
    return backbone, heads, meta


def predict_tasks(backbone: nn.Module, heads: MultitaskHeads, inputs: Mapping[str, torch.Tensor],
                  tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Predicted class per frame {task: (batch, frames) int64} for one batch, in eval mode, no grad."""
    with torch.no_grad():
        hidden = backbone(inputs["input_values"], attention_mask=inputs.get("attention_mask")).last_hidden_state
        logits = heads(hidden)
    return {t: v.argmax(-1) for t, v in logits.items() if tasks is None or t in tasks}
