"""`EvaluateSettings`: the settings of `phonorm evaluate` and of `phonorm run`'s evaluate stage (the CLI
options and the YAML `evaluate:` section are built from it, as for every other stage)."""

from __future__ import annotations

from pydantic import Field

from phonorm.settings.base import StageSettings
from phonorm.settings.vocabulary import Split


class EvaluateSettings(StageSettings):
    """Which split of the prepared corpus a fine-tuned model is scored on."""

    split: Split = Field("test", description="Split to score: train, dev or test.")
