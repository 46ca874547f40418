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


class SynthFile(JsonRecord):
    """synth.json of `phonorm synth` (written first with `complete: false`, then again when every speaker
    is done; read by the resume check, `validate` and the report). `speakers`: a row per voice
    (`corpus.synth._voice_record`); `counts`: utterances, syllables, seconds, tones, initials, finals."""

    FILE: ClassVar[str] = "synth.json"
    WHAT: ClassVar[str] = "synthetic corpus record (phonorm synth)"

    complete: bool
    settings: dict[str, Any]
    speakers: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
