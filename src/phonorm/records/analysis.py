"""The JSON files of a results folder of `phonorm analyze` (R/claims.json, R/settings.json) and the
evaluation.json of `phonorm run`'s evaluate stage that the claims take as primary evidence.

Written by `analysis/tables.py` (claims), `analysis/run.py` (settings.json, written last: the
completion record) and `experiment/plan.py` (evaluation.json); read by the analysis (evaluations),
`validate`, the sweep summary and the report. Nested comparison rows keep claim-specific fields
(`a_value`, `least_similar_layer`, `sex_after_erasure`, ...) beside the typed ones.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field

from phonorm.artifacts import JsonRecord
from phonorm.settings import Task


class Comparison(BaseModel):
    """One comparison of a claim check: an estimate with its interval and verdict. `key` says what it
    is for programs (`sex_suppressed`, `tone_enhanced`, `cka_drop`, ...; files of phonorm before it
    lack it), `name` for readers."""

    # extra="allow": a comparison carries the numbers of its kind (e.g. a ratio's `a_value`/`b_value`,
    # an erasure's `erased`), and claims.json of earlier versions keeps its retired fields readable.
    model_config = ConfigDict(extra="allow")

    key: Optional[str] = None
    name: str
    evidence: str
    primary: bool = True
    a: Optional[str] = None
    b: Optional[str] = None
    a_value: Optional[float] = None
    b_value: Optional[float] = None
    estimate: Optional[float] = None
    """The value the interval is about (for a jackknife: the bias-corrected one; `uncorrected_estimate` beside)."""
    uncorrected_estimate: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    ci_method: Optional[str] = None
    ci_level: Optional[float] = None
    margin: Optional[float] = None
    direction: Optional[str] = None
    verdict: str
    reason: Optional[str] = None


class ClaimCheck(BaseModel):
    """The check of one model (or model pair) under a claim: the parts it asserts (`comparisons`, those
    with `primary` decide), its premise (the models learned their tasks), warnings, and for C4 its basis
    (observational, or observational and causal) with the causal check's own status."""

    # extra="allow": each claim's check adds its own fields (C1 `irrelevant`, C4 `basis`, ...), and
    # claims.json of earlier versions keeps its retired fields readable.
    model_config = ConfigDict(extra="allow")

    model: str
    compared_with: Optional[str] = None
    comparisons: list[Comparison] = []
    verdict: str
    reason: Optional[str] = None
    premise: Optional[bool] = None
    warnings: list[str] = []
    basis: Optional[str] = None
    causal_status: Optional[str] = None
    causal_reason: Optional[str] = None


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claim: str
    statement: str
    criterion: str
    status: str
    holds: Optional[bool]
    measured: list[ClaimCheck]
    reason: Optional[str] = None
    untested: list[str] = []
    """Every part the claim asserts that could not be tested, with why (a claim never holds with one)."""
    basis: Optional[str] = None
    fallback: Optional[list[str]] = None
    caveat: Optional[str] = None
    verdict_without_caveat: Optional[str] = None


class EvaluationUse(BaseModel):
    """An evaluation file the claims used: its path, split, and whether it has per-speaker counts."""

    model_config = ConfigDict(extra="forbid")

    file: str
    split: Optional[str] = None
    per_speaker: bool


class ClaimsFile(JsonRecord):
    """R/claims.json: the claims C1-C4 with every comparison, and what they were decided from.
    Fields added over phonorm's versions have defaults, and fields of earlier versions (`bootstrap`)
    are kept (extra="allow"), so results folders of earlier versions still read."""

    model_config = ConfigDict(extra="allow")
    FILE: ClassVar[str] = "claims.json"
    WHAT: ClassVar[str] = "claims file of phonorm analyze"

    claims: list[Claim] = Field(min_length=1)  # analyze always decides C1-C4
    reference: Optional[str] = None
    model_tasks: dict[str, list[Task]] = {}
    tasks_found_from: dict[str, str] = {}
    constants: dict[str, float] = {}
    top_layer: dict[str, str] = {}
    intervals: dict[str, Any] = {}
    evaluations: dict[str, EvaluationUse] = {}
    evaluations_missing: list[str] = []
    speakers_per_sex: dict[str, int] = {}
    caveat: Optional[str] = None
    splits: list[str] = []

    def comparison(self, claim: str, model: str, key: str) -> Optional[Comparison]:
        """The comparison `key` of `claim` for `model` that has an estimate, or None."""
        for row in self.claims:
            for check in row.measured if row.claim == claim else []:
                for c in check.comparisons if check.model == model else []:
                    if c.key == key and c.estimate is not None:
                        return c
        return None


class AnalysisRecord(JsonRecord):
    """R/settings.json, written last by `phonorm analyze` (a folder without it is unfinished): the
    settings, the store, what was skipped and where the time went. As `ClaimsFile`, fields added over
    phonorm's versions have defaults and earlier versions' fields are kept."""

    model_config = ConfigDict(extra="allow")
    FILE: ClassVar[str] = "settings.json"
    WHAT: ClassVar[str] = "completion record of phonorm analyze"
    MISSING: ClassVar[str] = ("phonorm analyze writes it last, so this analysis did not finish: run phonorm analyze "
                              "again")

    settings: dict[str, Any]
    features: Optional[str] = None
    store_rows: Optional[int] = None
    store_rows_key: Optional[str] = None
    models: list[str] = []
    sample_rows_used: Optional[int] = None
    held_out_split: Optional[dict[str, list[str]]] = None
    figures: list[str] = []
    table_rows: dict[str, int] = {}
    """Data rows of each CSV table as written (empty in analyses of earlier versions)."""
    skipped_probes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    erasure_models: list[str] = []
    probes_not_converged: int = 0
    classic_rows_without_value: dict[str, Optional[int]] = {}
    seconds: dict[str, float] = {}
    device: Optional[str] = None
    workers: Optional[int] = None
    provenance: dict[str, Any] = {}


class EvaluationFile(JsonRecord):
    """evaluation.json of `phonorm run`'s evaluate stage: `tasks` is `models.evaluate.evaluate`'s dict
    (task → accuracy, chance, by_speaker, ...)."""

    FILE: ClassVar[str] = "evaluation.json"
    WHAT: ClassVar[str] = "evaluation file (phonorm run's evaluate stage)"

    model: Optional[str] = None
    model_dir: Optional[str] = None
    split: Optional[str] = None
    tasks: dict[str, dict[str, Any]]
