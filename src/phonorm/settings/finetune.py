"""`FinetuneSettings`: `phonorm finetune` (and the YAML's `finetune:` entries)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from phonorm.settings.base import StageSettings, comma_list
from phonorm.settings.vocabulary import MixedPrecision, Task


class FinetuneSettings(StageSettings):
    """`phonorm finetune`: frame-wise (multi)task fine-tuning, one linear head per task on the last layer."""

    tasks: list[Task] = Field(min_length=1, description="Comma-separated tasks: tone, phone, sex (e.g. tone,sex).")
    loss_weights: dict[Task, float] = Field(default_factory=dict,
                                            description="Per-task loss weights, e.g. tone=1,sex=0.5 (default 1).")
    epochs: float = Field(10.0, gt=0, le=100_000, description="Passes over the training split.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (backbone); heads use head_lr_scale times it.")
    head_lr_scale: float = Field(10.0, gt=0, description="Learning rate of the heads relative to --lr.")
    warmup: float = Field(0.1, ge=0, lt=1, description="Warm-up, as a fraction of the steps.")
    batch_seconds: float = Field(32.0, gt=0, description="Seconds of audio per batch.")
    freeze_feature_encoder: bool = Field(True, description="Keep the convolutional feature encoder frozen.")
    front_end_cache_gb: float = Field(2.0, ge=0, description="With the feature encoder frozen, compute its output "
                                                             "of each train utterance once and keep it in memory "
                                                             "when it fits in this many GB (0: recompute every "
                                                             "epoch); docs/architecture.md, models/frontend.py.")
    eval_every: int = Field(100, ge=1, description="Evaluate on dev every N steps.")
    mixed_precision: MixedPrecision = Field("auto", description="auto, no, bf16 or fp16 "
                                                                "(auto: bf16 on a GPU that has it).")
    seed: int = Field(0, description="Random seed.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each head.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_text(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each task at most once")
        return value

    @field_validator("loss_weights", mode="before")
    @classmethod
    def _weights_text(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, str):
            return value
        weights: dict[str, Any] = {}
        for part in comma_list(value):
            name, sep, number = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not TASK=NUMBER")
            weights[name.strip()] = number.strip()
        return weights

    @field_validator("loss_weights")
    @classmethod
    def _weights_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()):
            raise ValueError("weights must not be negative")
        return value

    @model_validator(mode="after")
    def _weights_of_tasks(self) -> "FinetuneSettings":
        extra = [t for t in self.loss_weights if t not in self.tasks]
        if extra:
            raise ValueError(f"loss_weights: {', '.join(extra)} not among the tasks ({', '.join(self.tasks)})")
        return self

    def weight(self, task: str) -> float:
        return float(self.loss_weights.get(task, 1.0))  # type: ignore[call-overload]  # loss_weights is dict | str before validation
