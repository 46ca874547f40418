"""`ExtractSettings`: `phonorm extract` (and the YAML's `extract:` section)."""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import Field, field_validator

from phonorm.settings.base import StageSettings
from phonorm.settings.vocabulary import FrameMode, PoolMode, Split, StoreDtype

_LAYERS = re.compile(r"^\s*(all|L?\d+(\s*,\s*L?\d+)*)\s*$")

class ExtractSettings(StageSettings):
    """`phonorm extract`: every layer of several models on the very same frames. Times in seconds of audio."""

    split: Split = Field("test", description="Split to extract: train, dev or test.")
    layers: str = Field("all", description="all, or a list like 0,6,12 or L0,L6.")
    frames: FrameMode = Field("labelled", description="labelled, middle (middle third of each segment) or all.")
    pool: PoolMode = Field("frame", description="frame, or segment (mean over the segment's frames).")
    max_per_speaker_label: Optional[int] = Field(None, ge=1, description="Cap rows per speaker and phone label.")
    dtype: StoreDtype = Field("float16", description="float16 or float32 on disk.")
    batch_seconds: float = Field(60.0, gt=0, description="Seconds of audio per forward batch.")
    classic: bool = Field(True, description="Also store classic baselines (F0 Hz, z-scored F0 in semitones, MFCC).")
    seed: int = Field(0, description="Seed for the per-speaker caps.")
    chunk_seconds: float = Field(600.0, gt=0, description="Audio per resumable unit: progress is recorded "
                                                          "after each chunk.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ",".join(str(int(v)) for v in value)
        return value

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, value: str) -> str:
        if not _LAYERS.match(value):
            raise ValueError("'all' or a comma-separated list of layer indices such as 0,6,12 or L0,L6")
        return value.strip()

    def selection_settings(self) -> dict[str, Any]:
        """The settings that decide the rows (a store resumes or grows only when they match)."""
        return dict(split=self.split, frames=self.frames, pool=self.pool,
                    max_per_speaker_label=self.max_per_speaker_label, seed=self.seed)
