"""`EvaluateSettings`: the settings of `phonorm evaluate` and of `phonorm run`'s evaluate stage (the CLI
options and the YAML `evaluate:` section are built from it, as for every other stage).

Its own module, beside `settings` rather than in it, so that settings.py stays within the module
size limit; the layering contract in pyproject.toml places it just above `settings`.
"""

from __future__ import annotations

from pydantic import Field

from phonorm.settings import Split, StageSettings


class EvaluateSettings(StageSettings):
    """Which split of the prepared corpus a fine-tuned model is scored on."""

    split: Split = Field("test", description="Split to score: train, dev or test.")
