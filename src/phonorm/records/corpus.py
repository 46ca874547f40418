"""labels.json of a prepared corpus (written last by `phonorm prepare` / `prepare-aishell`; read by
`corpus.store.PreparedCorpus`, `phonorm info`, `validate` and the report)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from phonorm.artifacts import JsonRecord


class SplitRecord(BaseModel):
    """How the splits were made: `by` speaker, utterance or a split file; whether dev/test are
    speaker-disjoint; `problems`: sentences `prepare`, `info` and the report print."""

    model_config = ConfigDict(extra="forbid")

    by: str
    speaker_disjoint: bool
    problems: list[str] = []


class SpeakerRule(BaseModel):
    """How utterances were matched to the speakers table: the rule and how many matched each way."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    matched: dict[str, int] = {}


class LabelsFile(JsonRecord):
    """labels.json: the label scheme, the class names of every task (a label's class id is its index)."""

    FILE: ClassVar[str] = "labels.json"
    WHAT: ClassVar[str] = "labels file of a prepared corpus"

    scheme: str
    tone_mode: str
    tasks: dict[str, list[str]]
    split: Optional[SplitRecord] = None  # corpora prepared before splits were recorded lack it
    speakers: Optional[SpeakerRule] = None
    provenance: dict[str, Any] = {}
