"""`context.json`: what `phonorm run` tells the report about the results it did not find on its own
(experiment title and file, evaluation files, stage timings). One class writes and reads it.

`phonorm run` writes it into the report stage's own folder (no stage writes into another stage's
finished folder). `phonorm report R` by hand works without it: the results' settings name the
feature store, whose manifest names the corpus and each model's folder, kind and tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from phonorm.artifacts import read_json, write_json
from phonorm.errors import InputError

CONTEXT_FILE = "context.json"


class ContextModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["pretrained", "finetuned"]
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


class RunContext(BaseModel):
    """Where the corpus, models, store and evaluations of one `phonorm run` are."""

    model_config = ConfigDict(extra="forbid")

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

    @classmethod
    def load(cls, path: str | Path) -> "RunContext":
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "missing: no run context")
        try:
            return cls.model_validate(read_json(path))
        except ValueError as err:
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5]) \
                if isinstance(err, ValidationError) else str(err)
            raise InputError(path, f"not a valid run context ({text})") from None

    def save(self, path: str | Path) -> Path:
        write_json(path, self.model_dump(mode="json"))
        return Path(path)
