"""The experiment file: its schema (nesting each stage's settings class) and loading it.

Validated at once (`extra="forbid"` everywhere: a misspelt field is an error, not a silently
ignored line). A wrong config stops before any work with the YAML file, the field, the value given
and what was expected. Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phonorm.labels import CLASSIC_MODEL
from phonorm.settings import (
    AishellSettings,
    ExtractSettings,
    FinetuneSettings,
    PrepareSettings,
    PretrainSettings,
    SynthSettings,
)
from phonorm.settings.analyze import AnalyzeSettings
from phonorm.settings.evaluate import EvaluateSettings
from phonorm.settings.report import ReportSettings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# A Hugging Face hub id of a speech model: `org/name` (letters, digits, - _ .). A bare `name` is far
# more often a misspelt model name of the file than one of the few legacy hub ids without an org.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# =========================================================================== the YAML schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value) or value == CLASSIC_MODEL:
        raise ValueError(f"a {what} name of letters, digits, '_', '-', '.', '+' (it becomes a folder), not "
                         f"'{CLASSIC_MODEL}'")
    return value


class SynthCorpus(SynthSettings):
    """`phonorm synth` (`SynthSettings`) then `phonorm prepare` of its output with its own split
    settings and the language's scheme (Mandarin: mandarin; Cantonese: tonal, tones 1-6)."""

    split_seed: int = 0
    dev: float = Field(0.1, ge=0, lt=1, description="share of each sex's speakers in dev")
    test: float = Field(0.1, ge=0, lt=1, description="share of each sex's speakers in test")

    @model_validator(mode="after")
    def _shares(self) -> "SynthCorpus":
        if self.dev + self.test >= 1:
            raise ValueError(f"dev + test must be below 1 (got {self.dev} + {self.test}): no speaker would train")
        return self

    def prepare_settings(self) -> PrepareSettings:
        """How the corpus stage prepares the synthesised corpus (scheme and tones from the language)."""
        from phonorm.corpus.languages import get_language

        language = get_language(self.language)
        tones = list(language.prepare_tones) if language.prepare_tones else None
        return PrepareSettings(seed=self.split_seed, dev=self.dev, test=self.test, scheme=language.scheme, tones=tones)


class PrepareCorpus(PrepareSettings):
    """`phonorm prepare` of a corpus the user brings: its inputs plus `PrepareSettings` (paths
    relative to the YAML file)."""

    audio: Path
    alignments: Path
    speakers: Path

    def settings(self) -> PrepareSettings:
        return PrepareSettings(**self.model_dump(exclude={"audio", "alignments", "speakers"}, exclude_unset=True))


class AishellCorpus(AishellSettings):
    """`phonorm prepare-aishell`: its inputs plus `AishellSettings` (paths relative to the YAML file)."""

    root: Path
    alignments: Path

    def settings(self) -> AishellSettings:
        return AishellSettings(**self.model_dump(exclude={"root", "alignments"}, exclude_unset=True))


class CorpusConfig(_Strict):
    """Exactly one of: a prepared folder, a synthetic corpus, a corpus to prepare, AISHELL-1."""

    prepared: Optional[Path] = None
    synth: Optional[SynthCorpus] = None
    prepare: Optional[PrepareCorpus] = None
    aishell: Optional[AishellCorpus] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "CorpusConfig":
        given = [k for k in ("prepared", "synth", "prepare", "aishell") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of prepared, synth, prepare, aishell (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("prepared", "synth", "prepare", "aishell") if getattr(self, k) is not None)


class PretrainConfig(PretrainSettings):
    """One small model pre-trained by `phonorm pretrain`: `name` plus `PretrainSettings`."""

    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "model")


class FinetuneConfig(_Strict):
    """One fine-tuned model: `base` is a name from `models:` or `pretrain:`, a hub id, or a folder;
    `tasks` and `settings` are the fields of `FinetuneSettings` (tasks written beside settings)."""

    name: str
    base: str
    settings: FinetuneSettings

    @model_validator(mode="before")
    @classmethod
    def _tasks_into_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            settings = dict(data.get("settings") or {})
            if "tasks" in settings:
                raise ValueError("give tasks beside settings, not inside it")
            if "tasks" not in data:
                raise ValueError("tasks: missing; expected a list such as [tone, sex]")
            settings["tasks"] = data.pop("tasks")
            data["settings"] = settings
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "model")

    @property
    def tasks(self) -> list[str]:
        return list(self.settings.tasks)


class EvaluateConfig(EvaluateSettings):
    """`EvaluateSettings`: the split each fine-tuned model is scored on."""


class ExtractConfig(ExtractSettings):
    """`ExtractSettings`, plus `models` (which models to store; default all)."""

    models: Optional[list[str]] = None


class AnalyzeConfig(AnalyzeSettings):
    """`AnalyzeSettings`; `reference` defaults to the first pre-trained model."""

    reference: Optional[str] = None  # type: ignore[assignment]  # narrows the parent's required field


class ReportConfig(ReportSettings):
    """The YAML `report:` section: the page's title and `ReportSettings` (explorer, audio, size budget)."""

    title: Optional[str] = None

    def settings(self) -> ReportSettings:
        return ReportSettings(**self.model_dump(exclude={"title"}))


class SweepPoint(BaseModel):
    """One point of a sweep: `settings` (the grid's values for the swept pre-training entry) and
    `step` (the checkpoint taken, or None for the run's final model). `run` names the pre-training
    run (shared by the checkpoints of one grid point), `id` the point: both become folder names."""

    id: str
    run: str
    settings: dict[str, Any] = Field(default_factory=dict)
    step: Optional[int] = None

    @property
    def values(self) -> dict[str, Any]:
        """The swept settings of this point as table columns (`checkpoint` for the step)."""
        return {**self.settings, **({"checkpoint": self.step} if self.step is not None else {})}


def pretrain_fields(entry: PretrainSettings) -> dict[str, Any]:
    """The pre-training settings written for a pretrain entry (its name left out)."""
    return {k: v for k, v in entry.model_dump(exclude_unset=True).items() if k in PretrainSettings.model_fields}


def _value_text(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


class SweepConfig(_Strict):
    """`sweep:` runs the experiment once per point. `grid`: pre-training settings (fields of
    `pretrain`, e.g. size, steps, seed, max_hours) and their values; every combination is one
    pre-training run. `checkpoints`: steps of each of those runs whose snapshot is taken as the
    pre-trained model (the amount of pre-training without retraining). Points = runs × checkpoints."""

    pretrain: Optional[str] = Field(None, description="the pretrain entry swept (default: the only one)")
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    checkpoints: list[int] = Field(default_factory=list)
    resamples: int = Field(2000, ge=0, description=(
        "speaker-bootstrap resamples of the summary's speaker variance share (the analysis has no resample count "
        "since its intervals became analytic; at least 1,000 for 95% tails)"))

    @field_validator("grid")
    @classmethod
    def _grid_fields(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if key not in PretrainSettings.model_fields or key == "keep_steps":
                known = ", ".join(k for k in PretrainSettings.model_fields if k != "keep_steps")
                raise ValueError(f"grid: {key!r} is no pre-training setting; expected one of {known} "
                                 "(for steps of one run use checkpoints)")
            if not values:
                raise ValueError(f"grid.{key}: no values")
            if len({_value_text(v) for v in values}) != len(values):
                raise ValueError(f"grid.{key}: a value given twice ({values})")
        return value

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value) or len(set(value)) != len(value):
            raise ValueError(f"checkpoints: distinct steps ≥ 1 (got {value})")
        return sorted(value)

    def points(self, base: PretrainSettings) -> list[SweepPoint]:
        """Every point in order (grid in the order written, checkpoints innermost); ValueError
        naming the combination whose pre-training settings are invalid."""
        import itertools

        keys = list(self.grid)
        points = []
        for combination in itertools.product(*(self.grid[k] for k in keys)):
            values = dict(zip(keys, combination))
            run = "_".join(f"{k}-{_value_text(v)}" for k, v in values.items())
            try:
                PretrainSettings(**{**pretrain_fields(base), **values, "keep_steps": self.checkpoints})
            except ValidationError as err:
                problems = "; ".join(e.get("msg", "").removeprefix("Value error, ") for e in err.errors())
                raise ValueError(f"sweep point {run or 'checkpoints'}: {problems}") from None
            steps: list[Optional[int]] = [*self.checkpoints] or [None]
            for step in steps:
                point_id = "_".join(p for p in (run, f"step-{step}" if step is not None else "") if p)
                if not _NAME.match(point_id):
                    raise ValueError(f"sweep point {point_id!r}: values must make a folder name "
                                     "(letters, digits, '_', '-', '.', '+')")
                points.append(SweepPoint(id=point_id, run=run, settings=values, step=step))
        return points


class Experiment(_Strict):
    """The whole experiment file."""

    name: str
    description: Optional[str] = None
    # The work folder; runs/<name> when not given (filled in before validation, so it is never None;
    # `load_experiment` makes it absolute, relative to the YAML's folder).
    workdir: Path = Path("runs")
    corpus: CorpusConfig
    models: dict[str, str] = Field(default_factory=dict)
    pretrain: list[PretrainConfig] = Field(default_factory=list)
    finetune: list[FinetuneConfig] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    sweep: Optional[SweepConfig] = None

    @model_validator(mode="before")
    @classmethod
    def _default_workdir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("workdir") is None and isinstance(data.get("name"), str):
            return {**data, "workdir": Path("runs") / data["name"]}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "experiment")

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            _check_name(name, "model")
        return value

    @model_validator(mode="after")
    def _names_and_references(self) -> "Experiment":
        names = [*self.models, *(p.name for p in self.pretrain), *(f.name for f in self.finetune)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"model names must be unique over models, pretrain and finetune; "
                             f"given more than once: {', '.join(twice)}")
        if not names:
            raise ValueError("no model: give at least one of models, pretrain, finetune")
        for listing, where in ((self.extract.models, "extract.models"), (self.analyze.models, "analyze.models")):
            unknown = [n for n in listing or [] if n not in names]
            if unknown:
                raise ValueError(f"{where}: {', '.join(unknown)} not among the models ({', '.join(names)})")
        reference = self.analyze.reference
        if reference is not None and reference not in self.store_models:
            raise ValueError(f"analyze.reference {reference!r} is not among the extracted models "
                             f"({', '.join(self.store_models)})")
        if reference is None and not self.pretrained_names:
            raise ValueError("analyze.reference: no pre-trained model under models or pretrain to default to; "
                             "name the reference model")
        if self.reference not in self.store_models:
            raise ValueError(f"extract.models: the reference model {self.reference!r} (analyze.reference) must be "
                             "among the extracted models")
        return self

    @model_validator(mode="after")
    def _sweep_points(self) -> "Experiment":
        if self.sweep is None:
            return self
        names = [p.name for p in self.pretrain]
        if self.sweep.pretrain is None and len(names) != 1:
            raise ValueError(f"sweep.pretrain: name the pretrain entry to sweep (entries: {', '.join(names) or 'none'})")
        if self.sweep.pretrain is not None and self.sweep.pretrain not in names:
            raise ValueError(f"sweep.pretrain: {self.sweep.pretrain!r} is not among the pretrain entries "
                             f"({', '.join(names) or 'none'})")
        if not self.sweep.grid and not self.sweep.checkpoints:
            raise ValueError("sweep: give a grid of pre-training settings, checkpoints, or both")
        self.sweep_points()  # every combination must be valid pre-training settings
        return self

    @property
    def swept(self) -> Optional["PretrainConfig"]:
        """The pretrain entry the sweep varies (None without a sweep)."""
        if self.sweep is None:
            return None
        name = self.sweep.pretrain or self.pretrain[0].name
        return next(p for p in self.pretrain if p.name == name)

    def sweep_points(self) -> list[SweepPoint]:
        swept = self.swept
        return [] if swept is None or self.sweep is None else self.sweep.points(swept)

    @property
    def pretrained_names(self) -> list[str]:
        return [*self.models, *(p.name for p in self.pretrain)]

    @property
    def store_models(self) -> list[str]:
        """Names of the models in the feature store, the reference first."""
        names = self.extract.models or [*self.models, *(p.name for p in self.pretrain), *(f.name for f in self.finetune)]
        reference = self.analyze.reference or (self.pretrained_names[0] if self.pretrained_names else None)
        return ([reference] if reference in names else []) + [n for n in names if n != reference]

    @property
    def reference(self) -> str:
        return self.analyze.reference or self.pretrained_names[0]

    def analyze_settings(self) -> AnalyzeSettings:
        """The analysis settings with the reference filled in."""
        return AnalyzeSettings(**{**self.analyze.model_dump(exclude_unset=True), "reference": self.reference})


# =========================================================================== loading
