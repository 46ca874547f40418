"""Checked by mypy (`make lint`), never run: every typed artifact's `load` and `load_file` return the
record's own type, not `Any`, so a misspelt field of a loaded record is a type error at the caller.
`assert_type` fails on `Any` (mypy: "Expression is of type Any, not ..."): a `load` that lost its
return type breaks the lint."""

from __future__ import annotations

from pathlib import Path
from typing import assert_type

from phonorm.features.manifest import StoreManifest
from phonorm.records.analysis import AnalysisRecord, Claim, ClaimsFile, EvaluationFile
from phonorm.records.card import FinetuneMetrics, ModelCard
from phonorm.records.context import RunContext
from phonorm.records.corpus import LabelsFile, SynthFile
from phonorm.records.sweep import SweepPoints


def loads(folder: Path) -> None:
    assert_type(ModelCard.load(folder), ModelCard)
    assert_type(FinetuneMetrics.load(folder), FinetuneMetrics)
    assert_type(ClaimsFile.load(folder), ClaimsFile)
    assert_type(AnalysisRecord.load(folder), AnalysisRecord)
    assert_type(EvaluationFile.load_file(folder / "evaluation.json"), EvaluationFile)
    assert_type(LabelsFile.load(folder), LabelsFile)
    assert_type(SynthFile.load(folder), SynthFile)
    assert_type(RunContext.load(folder), RunContext)
    assert_type(SweepPoints.load(folder), SweepPoints)
    assert_type(StoreManifest.load(folder), StoreManifest)
    # and a field read off a loaded record keeps its declared type
    assert_type(ClaimsFile.load(folder).claims, list[Claim])
