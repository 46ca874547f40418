"""Pre-training objectives behind one protocol: `pretrain` (models/pretrain.py) runs whichever
`OBJECTIVES[settings.objective]` names and knows nothing else of it.

An objective says which model it trains (`model_type`, `new_model`), what its batches must carry
(`attach_targets`: HuBERT's cluster ids; nothing for wav2vec 2.0's contrastive objective), the loss
of one batch (`loss`), how progress is measured on held-out audio (`held_out`, `held_out_metric`),
what is saved as the encoder (`encoder`) and the fixed parts of its recipe (`recipe`, recorded in
the model card). A new objective: a module here with a class like `hubert.HubertObjective`, its entry
in `OBJECTIVES`, and its name in `settings.pretrain.PretrainObjective` (docs/architecture.md, "Where
to change what").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from phonorm.frames import FrameGeometry
from phonorm.models.data import FrameDataset
from phonorm.models.objectives.contrastive import ContrastiveObjective
from phonorm.models.objectives.hubert import HubertObjective
from phonorm.models.training import Trainer
from phonorm.settings import PretrainSettings


class Objective(Protocol):
    name: str
    """`PretrainSettings.objective` and the model card's `objective`."""
    model_type: str
    """The transformers `model_type` of the model it trains (`backbone.make_config`)."""
    held_out_metric: str
    """The held-out score it reports (log column `held_out_<metric>`, the card's `held_out_metric`)."""
    title: str
    """In words, for summaries: "HuBERT (masked prediction)"."""

    def recipe(self) -> dict[str, Any]:
        """The fixed parts of its recipe (recorded with the settings in the model card)."""
        ...

    def attach_targets(self, out: Path, settings: PretrainSettings, trainer: Trainer, tables: dict[str, pd.DataFrame],
                       geometry: FrameGeometry, datasets: list[FrameDataset]) -> dict[str, int]:
        """Give the datasets' examples the labels its batches carry; {label name: classes} ({} for none)."""
        ...

    def new_model(self, config: Any, targets: dict[str, int]) -> tuple[torch.nn.Module, Any]:
        """(the module trained, its transformers encoder) of a fresh model of `config`."""
        ...

    def loss(self, wrapped: Any, unwrapped: Any, batch: dict[str, Any], step: int, settings: PretrainSettings,
             device: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss to back-propagate, log row) of one training batch at optimizer step `step`."""
        ...

    def held_out(self, model: Any, batches: list[dict[str, Any]], device: Any) -> dict[str, float]:
        """Its held-out scores on fixed batches (fixed masks: values of different steps compare)."""
        ...

    def encoder(self, model: Any) -> Any:
        """The part of the trained module saved as the model folder (loads with `AutoModel`)."""
        ...

    def chance(self, settings: PretrainSettings, config: Any) -> str:
        """What chance is for its held-out score, in words."""
        ...


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (HubertObjective(), ContrastiveObjective())}
