"""`PretrainSettings`: `phonorm pretrain` (and the YAML's `pretrain:` entries)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from phonorm.settings.base import StageSettings, comma_list
from phonorm.settings.vocabulary import ModelSize

PretrainObjective = Literal["hubert", "contrastive"]


class PretrainSettings(StageSettings):
    """`phonorm pretrain`: self-supervised pre-training of a small model from scratch, by HuBERT's masked
    prediction of frame cluster ids (a HuBERT model) or wav2vec 2.0's contrastive objective."""

    objective: PretrainObjective = Field(
        "hubert", description="hubert: masked prediction of cluster ids (k-means of MFCCs, or of a model's layer "
                              "with --targets-from; a HuBERT model) or contrastive (wav2vec 2.0's loss; a wav2vec 2.0 "
                              "model).")
    size: ModelSize = Field("tiny", description="Model size: tiny, small or base.")
    steps: int = Field(2000, ge=1, description="Optimizer steps.")
    seed: int = Field(0, description="Random seed.")
    batch_seconds: float = Field(16.0, gt=0, description="Seconds of audio per batch.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    warmup: float = Field(0.08, ge=0, lt=1, description="Linear warm-up, as a fraction of the steps.")
    eval_every: Optional[int] = Field(None, ge=1, description="Held-out accuracy (masked prediction or contrastive) every N steps "
                                                              "(default: 10 times in the run).")
    keep_steps: list[int] = Field(default_factory=list, description="Also save the model at these steps "
                                  "(comma-separated), each as a loadable folder OUT/snapshots/step-<N>.")
    max_hours: Optional[float] = Field(None, gt=0, description="Pre-train on at most this many hours of the train "
                                       "split (whole utterances in a fixed random order; default: all).")
    clusters: int = Field(100, ge=2, description="hubert: number of k-means clusters (the targets' classes).")
    targets_from: Optional[str] = Field(None, description="hubert, iteration 2: cluster this model's layer "
                                        "(--targets-layer) instead of MFCCs (a folder or hub id).")
    targets_layer: Optional[int] = Field(None, ge=0, description="hubert, iteration 2: the layer Lk of "
                                         "--targets-from to cluster.")
    unmasked_weight: float = Field(0.0, ge=0, description="hubert: the loss is the cross-entropy on masked frames "
                                   "plus this times the one on unmasked frames (0: masked frames only).")
    pitch_clusters: int = Field(0, ge=0, description="hubert: also predict k-means clusters of the pitch track (F0 "
                                "in semitones, relative to the utterance, its slope, voicing; Praat) with a head of "
                                "their own, HuBERT's cluster ensemble (0: MFCC or layer clusters only).")
    pitch_weight: float = Field(1.0, gt=0, description="hubert: the pitch stream's loss is multiplied by this "
                                "before the streams' losses are summed (1: equal weight).")
    feature_grad_mult: float = Field(0.1, gt=0, le=1, description="Gradient scale of the convolutional front end "
                                     "(wav2vec 2.0 and HuBERT: 0.1, a tenth of the learning rate).")

    @field_validator("keep_steps", mode="before")
    @classmethod
    def _steps_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [int(v) for v in comma_list(value)] if isinstance(value, str) else value

    @field_validator("keep_steps")
    @classmethod
    def _sorted_steps(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _steps_within_run(self) -> "PretrainSettings":
        outside = [s for s in self.keep_steps if not 1 <= s <= self.steps]
        if outside:
            raise ValueError(f"keep_steps: {', '.join(map(str, outside))} outside the run's steps 1..{self.steps}")
        return self

    @model_validator(mode="after")
    def _targets_of_hubert(self) -> "PretrainSettings":
        if (self.targets_from is None) != (self.targets_layer is None):
            raise ValueError("targets_from: give --targets-from and --targets-layer together")
        if self.objective != "hubert" and (self.targets_from is not None or self.pitch_clusters):
            raise ValueError("targets_from: cluster targets (--targets-from, --pitch-clusters) belong to "
                             "--objective hubert")
        return self
