"""`phonorm.json`, the model card of every model folder phonorm writes: one class writes and reads it.

A folder is a finished phonorm model when its card exists with `complete: true`; the card is
written last. It says what the model is (pre-trained or fine-tuned, its tasks and label maps),
what it was made from (base model, corpus folder and the corpus's content fingerprint), with which
settings, and the provenance (versions, code version, command). Torch-free: the analysis and the
report read cards too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional

from pydantic import ConfigDict

from phonorm.artifacts import JsonRecord
from phonorm.errors import InputError
from phonorm.records.kinds import ModelKind
from phonorm.settings import PretrainObjective, Task

CARD_FILE = "phonorm.json"


class ModelCard(JsonRecord):
    """The fields of `phonorm.json` (docs/architecture.md, "Model folder")."""

    FILE: ClassVar[str] = CARD_FILE
    WHAT: ClassVar[str] = "phonorm model card"
    MISSING: ClassVar[str] = "not a model folder written by phonorm pretrain or finetune"

    complete: bool
    kind: ModelKind
    model_type: str
    corpus: str
    """Absolute path of the prepared corpus the model was trained on."""
    corpus_fingerprint: str
    """`PreparedCorpus.fingerprint` of that corpus: a re-run on another corpus is refused."""
    settings: dict[str, Any]
    provenance: dict[str, Any]
    num_processes: int = 1
    # fine-tuned models
    tasks: list[Task] = []
    label_maps: dict[str, list[str]] = {}
    loss_weights: dict[str, float] = {}
    heads: dict[str, Any] = {}
    base_model: Optional[str] = None
    group_norm: Optional[bool] = None
    batching: Optional[str] = None
    frame_geometry: dict[str, Any] = {}
    layer_convention: Optional[str] = None
    best_step: Optional[int] = None
    # pre-trained models
    size: Optional[str] = None
    objective: Optional[PretrainObjective] = None
    held_out_split: Optional[str] = None
    held_out_metric: Optional[str] = None
    """What `held_out_accuracy` measures: masked_accuracy (hubert) or contrastive_accuracy."""
    held_out_accuracy: list[tuple[int, float]] = []
    """(step, held-out accuracy) at each evaluation."""
    held_out_contrastive_accuracy: list[tuple[int, float]] = []
    """The same curve for contrastive models (the field's name before the hubert objective)."""
    trained_steps: Optional[int] = None
    """Optimizer steps behind the weights (a snapshot's step; the run's steps for its final model)."""
    train_hours: Optional[float] = None
    """Hours of train-split audio the run drew its batches from (after `max_hours`)."""

    @classmethod
    def load_if_any(cls, folder: str | Path | None) -> Optional["ModelCard"]:
        """The card of `folder`, or None when the folder is a hub id, has no card or an unreadable one."""
        if folder is None or not Path(str(folder)).is_dir() or not cls.exists(folder):
            return None
        try:
            return cls.load(folder)
        except InputError:
            return None

    def same_run(self, *, settings: dict[str, Any], corpus_fingerprint: str, base_model: Optional[str]) -> bool:
        """Did this finished model come from the same settings, corpus and base model?"""
        return (self.complete and binding_settings(self.settings) == binding_settings(settings)
                and self.corpus_fingerprint == corpus_fingerprint and self.base_model == base_model)


def binding_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a model folder is bound to: a finished or interrupted run is reused only with
    these (as a JSON round trip gives them); the evaluation cadence may change."""
    from phonorm.artifacts import json_ready

    return {k: v for k, v in json_ready(settings).items() if k != "eval_every"}


class FinetuneMetrics(JsonRecord):
    """`metrics.json` of a fine-tuned model folder (written by `phonorm finetune` before its card; read
    by its summary line and the report, whose accuracy table falls back on `dev` without an
    evaluation). `train`: totals, seconds, throughput, processes; `dev`: `models.evaluate`'s scores
    of the best checkpoint per task ({} without a dev split). Fields of later versions are kept."""

    model_config = ConfigDict(extra="allow")
    FILE: ClassVar[str] = "metrics.json"
    WHAT: ClassVar[str] = "fine-tuning metrics"

    best_step: Optional[int] = None
    best_dev: dict[str, float] = {}
    best_mean_dev_accuracy: Optional[float] = None
    dev_history: list[dict[str, Any]] = []
    train: dict[str, Any] = {}
    dev: dict[str, dict[str, Any]] = {}
