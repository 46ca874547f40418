"""`context.json`: what `phonorm run` tells the report about the results it did not find on its own
(experiment title and file, evaluation files, stage timings). One class writes and reads it.

`phonorm run` writes it into the report stage's own folder (no stage writes into another stage's
finished folder). `phonorm report R` by hand works without it: the results' settings name the
feature store, whose manifest names the corpus and each model's folder, kind and tasks.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from phonorm.artifacts import JsonRecord
from phonorm.records.kinds import ModelKind

CONTEXT_FILE = "context.json"


class ContextModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: ModelKind
    trained_here: bool
    folder: Optional[str] = None
    source: Optional[str] = None
    tasks: Optional[list[str]] = None
    base: Optional[str] = None


class ContextExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: Optional[str] = None
    file: str
    title: Optional[str] = None
    config: dict[str, Any]


class RunContext(JsonRecord):
    """Where the corpus, models, store and evaluations of one `phonorm run` are."""

    FILE: ClassVar[str] = CONTEXT_FILE
    WHAT: ClassVar[str] = "run context"

    experiment: ContextExperiment
    corpus: str
    synth: Optional[str] = None
    features: str
    results: str
    reference: str
    models: list[ContextModel]
    evaluations: dict[str, str]
    """model → its evaluation.json."""
    stages: list[dict[str, Any]]
    """stage, name, status, seconds, cpu_seconds, key, folder (every stage before the report)."""
