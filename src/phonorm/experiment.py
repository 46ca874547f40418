"""`phonorm run EXPERIMENT.yaml` and `phonorm demo`: every stage of a study, with a stage cache.

The experiment file (see examples/) is validated at once against the pydantic models below
(`extra="forbid"`: a misspelt field is an error, not a silently ignored line). A wrong config stops
before any work with the YAML file, the field, the value given and what was expected.

Stages and what each one's cache key is made of (`plan_stages`):

    synth ─► corpus ─► pretrain[name] ─► finetune[name] ─► evaluate[name]
                                   └────────────┴──► extract ─► analyze ─► report

- A stage writes into its own folder `WORKDIR/<stage>/<name>-<key>`; the key is a SHA-256 over the
  keys of its inputs (upstream stages, or a fingerprint of input files: relative path, size and
  modification time of each file), its settings as written in the YAML, the library versions, and
  a hash of the *source of the phonorm modules that stage runs* (the stage's entry module and every
  phonorm module it imports, transitively, found by reading the imports with `ast`).
  Why not `artifacts.code_version()` (the whole commit): editing the report or the analysis would
  then retrain every model. Hashing only the code a stage executes redoes exactly the stages whose
  code changed, and still catches a change in a shared module (frames.py, artifacts.py, ...).
  Settings enter the key as written: a default spelled out changes the key once (harmless), and
  a changed default inside a stage changes that stage's source hash.
- A stage is complete when `.phonorm-stage.json` (its key, inputs, settings, seconds, summary) is
  written in its folder; it is written last. A folder without it is an interrupted stage: running
  again calls the stage in the same folder, and the stages resume (finetune and pretrain from their
  checkpoint, extract from its chunk progress, analyze from its per-layer parts, synth per speaker).
- `--force` deletes and redoes every stage's folder of this experiment.
- Folders of earlier settings stay in WORKDIR (a cache: switching a setting back costs nothing);
  delete WORKDIR/<stage>/ folders to reclaim space.

After the stages, `R/context.json` (R = the analysis folder) lists the corpus, model folders,
evaluation files and stage timings, so that `phonorm report R` finds everything on its own.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phonorm.artifacts import atomic_path, library_versions, read_json, write_json
from phonorm.errors import InputError, PhonormError

MARKER = ".phonorm-stage.json"
CONTEXT_FILE = "context.json"
TASKS = ("tone", "phone", "sex")
SPLITS = ("train", "dev", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# A Hugging Face hub id: `name` or `org/name` (letters, digits, - _ .).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


# =========================================================================== the YAML schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value) or value == "classic":
        raise ValueError(f"a {what} name of letters, digits, '_', '-', '.', '+' (it becomes a folder), not 'classic'")
    return value


class SynthCorpus(_Strict):
    """`phonorm synth` then `phonorm prepare` of its output (mandarin scheme)."""

    speakers: int = Field(24, ge=2, description="speakers, half F and half M")
    utterances: int = Field(40, ge=1, description="utterances per speaker")
    seed: int = 0
    split_seed: int = 0
    dev: float = Field(0.1, ge=0, lt=1, description="share of each sex's speakers in dev")
    test: float = Field(0.1, ge=0, lt=1, description="share of each sex's speakers in test")


class PrepareCorpus(_Strict):
    """`phonorm prepare` of a corpus the user brings (paths relative to the YAML file)."""

    audio: Path
    alignments: Path
    speakers: Path
    format: Literal["textgrid", "ctm"] = "textgrid"
    scheme: Literal["mandarin", "plain"] = "mandarin"
    tone: Literal["surface", "citation"] = "surface"
    split_file: Optional[Path] = None
    skip_bad: bool = False
    seed: int = 0


class AishellCorpus(_Strict):
    """`phonorm prepare-aishell` (paths relative to the YAML file)."""

    root: Path
    alignments: Path
    format: Literal["textgrid", "ctm"] = "textgrid"
    tone: Literal["surface", "citation"] = "surface"
    skip_bad: bool = False


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


class PretrainConfig(_Strict):
    """One small model pre-trained by `phonorm pretrain`."""

    name: str
    size: Literal["tiny", "small", "base"] = "tiny"
    steps: int = Field(2000, ge=1)
    seed: int = 0
    batch_seconds: float = Field(16.0, gt=0)
    lr: float = Field(5e-4, gt=0)
    eval_every: Optional[int] = Field(None, ge=1)
    warmup: Optional[float] = Field(None, ge=0, lt=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "model")


class FinetuneOptions(_Strict):
    """Mirror of `models.finetune.FinetuneSettings` (less `tasks`): only the fields written in the
    YAML are passed on, the stage's own defaults apply to the rest. Mirrored rather than imported
    so that checking a config does not import torch (20 s on a busy 2-core machine);
    tests/test_experiment.py checks that the mirror matches the real class."""

    loss_weights: Optional[dict[str, float]] = None
    epochs: Optional[float] = Field(None, gt=0)
    max_steps: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    head_lr_scale: Optional[float] = Field(None, gt=0)
    warmup: Optional[float] = Field(None, ge=0, lt=1)
    batch_seconds: Optional[float] = Field(None, gt=0)
    freeze_feature_encoder: Optional[bool] = None
    eval_every: Optional[int] = Field(None, ge=1)
    mixed_precision: Optional[Literal["auto", "no", "bf16", "fp16"]] = None
    seed: Optional[int] = None
    weight_decay: Optional[float] = Field(None, ge=0)
    max_grad_norm: Optional[float] = Field(None, gt=0)
    head_dropout: Optional[float] = Field(None, ge=0, lt=1)


class FinetuneConfig(_Strict):
    """One fine-tuned model: `base` is a name from `models:` or `pretrain:`, a hub id, or a folder."""

    name: str
    base: str
    tasks: list[Literal["tone", "phone", "sex"]] = Field(min_length=1)
    settings: FinetuneOptions = Field(default_factory=FinetuneOptions)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "model")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):  # "tone,sex" as on the command line
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each task at most once")
        return value


class EvaluateConfig(_Strict):
    split: Literal["train", "dev", "test"] = "test"


class ExtractOptions(_Strict):
    """Mirror of `features.extract.ExtractSettings`, plus `models` (which models to store; default all)."""

    models: Optional[list[str]] = None
    split: Optional[Literal["train", "dev", "test"]] = None
    layers: Optional[Union[str, list[int]]] = None
    frames: Optional[Literal["labelled", "middle", "all"]] = None
    pool: Optional[Literal["frame", "segment"]] = None
    max_per_speaker_label: Optional[int] = Field(None, ge=1)
    dtype: Optional[Literal["float16", "float32"]] = None
    batch_seconds: Optional[float] = Field(None, gt=0)
    classic: Optional[bool] = None
    seed: Optional[int] = None
    chunk_seconds: Optional[float] = Field(None, gt=0)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        if isinstance(value, list):
            return ",".join(str(int(v)) for v in value)
        return value


class AnalyzeOptions(_Strict):
    """Mirror of `analysis.run.AnalyzeSettings`; `reference` defaults to the first pre-trained model."""

    reference: Optional[str] = None
    umap: Optional[bool] = None
    held_out: Optional[bool] = None
    folds: Optional[int] = Field(None, ge=2)
    bootstrap: Optional[int] = Field(None, ge=0)
    seed: Optional[int] = None
    models: Optional[list[str]] = None
    labels: Optional[list[Literal["tone", "phone", "sex", "speaker"]]] = None
    layer_matrix: Optional[bool] = None
    sample_rows: Optional[int] = Field(None, ge=10)
    umap_fit_rows: Optional[int] = Field(None, ge=10)
    umap_dims: Optional[int] = Field(None, ge=2)
    umap_all_layers: Optional[bool] = None
    silhouette_rows: Optional[int] = Field(None, ge=10)
    probe_max_iter: Optional[int] = Field(None, ge=1)
    block: Optional[int] = Field(None, ge=1)
    figures: Optional[bool] = None
    progress: Optional[bool] = None
    # ---- issue 13 (claims with uncertainty, similarity floors, erasure); `evaluations` is not here:
    # `phonorm run` passes its evaluate stages' files itself
    claim_bootstrap: Optional[int] = Field(None, ge=0)
    svcca_keep: Optional[float] = Field(None, gt=0, le=1)
    svcca_rule: Optional[Literal["eigenvalue", "singular_value"]] = None
    svcca_dims: Optional[int] = Field(None, ge=1)
    similarity_floor: Optional[bool] = None
    erasure: Optional[bool] = None
    erasure_models: Optional[list[str]] = None
    speaker_sums_max_bytes: Optional[int] = Field(None, ge=0)


class ReportConfig(_Strict):
    title: Optional[str] = None


class Experiment(_Strict):
    """The whole experiment file."""

    name: str
    description: Optional[str] = None
    workdir: Optional[Path] = None
    corpus: CorpusConfig
    models: dict[str, str] = Field(default_factory=dict)
    pretrain: list[PretrainConfig] = Field(default_factory=list)
    finetune: list[FinetuneConfig] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    analyze: AnalyzeOptions = Field(default_factory=AnalyzeOptions)
    report: ReportConfig = Field(default_factory=ReportConfig)

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


# =========================================================================== loading
def load_experiment(path: str | Path) -> tuple[Experiment, Path]:
    """Read and validate an experiment file; relative paths are resolved against its folder.
    Returns (experiment, its folder). Raises PhonormError naming the file, field, value and what
    was expected."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such experiment file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(path, f"not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of fields (name, corpus, ...) at the top, got {type(data).__name__}")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as err:
        raise InputError(path, "invalid experiment:\n  " + "\n  ".join(_explain(e, data) for e in err.errors())) from None
    base = path.resolve().parent
    _resolve_paths(experiment, base, path)
    return experiment, base


def _explain(error: dict, data: Any) -> str:
    """One line per pydantic error: `field.path: got VALUE; expected WHAT`."""
    loc = error.get("loc", ())
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where or "(top level)"
    kind = error.get("type", "")
    message = error.get("msg", "")
    if kind == "extra_forbidden":
        parent = _model_at(Experiment, loc[:-1], data)
        known = ", ".join(parent.model_fields) if parent is not None else ""
        return f"{where}: unknown field; expected one of: {known}"
    if kind == "missing":
        return f"{where}: missing; expected a value (this field is required)"
    value = error.get("input")
    message = re.sub(r"^(Input should be|Value error,)\s*", "", message)
    if kind == "value_error" and isinstance(value, dict):  # a check across fields: the message says it all
        return f"{where}: expected {message}"
    return f"{where}: got {_short(value)}; expected {message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_at(model: type[BaseModel], loc: tuple, data: Any) -> Optional[type[BaseModel]]:
    """The pydantic model class at `loc` (to list the fields it knows)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        while typing.get_origin(annotation) in (Union, list, getattr(__import__("types"), "UnionType", Union)):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if args else annotation
            if typing.get_origin(annotation) is None:
                break
        current = annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _resolve_paths(experiment: Experiment, base: Path, path: Path) -> None:
    """Make the YAML's relative paths absolute (relative to the YAML's folder) and check inputs exist."""
    def resolve(p: Optional[Path], field_name: str, must_exist: bool = True) -> Optional[Path]:
        if p is None:
            return None
        full = (base / p.expanduser()).resolve() if not p.expanduser().is_absolute() else p.expanduser()
        if must_exist and not full.exists():
            raise InputError(path, f"{field_name}: got {str(p)!r}; expected an existing path (looked for {full})")
        return full

    corpus = experiment.corpus
    if corpus.prepared is not None:
        corpus.prepared = resolve(corpus.prepared, "corpus.prepared")
    if corpus.prepare is not None:
        c = corpus.prepare
        c.audio, c.alignments = resolve(c.audio, "corpus.prepare.audio"), resolve(c.alignments, "corpus.prepare.alignments")
        c.speakers = resolve(c.speakers, "corpus.prepare.speakers")
        c.split_file = resolve(c.split_file, "corpus.prepare.split_file")
    if corpus.aishell is not None:
        c = corpus.aishell
        c.root, c.alignments = resolve(c.root, "corpus.aishell.root"), resolve(c.alignments, "corpus.aishell.alignments")
    experiment.workdir = resolve(experiment.workdir or Path("runs") / experiment.name, "workdir", must_exist=False)
    for name, source in list(experiment.models.items()):
        experiment.models[name] = _model_source(source, base, path, f"models.{name}")
    internal = set(experiment.pretrained_names) | {f.name for f in experiment.finetune}
    for i, entry in enumerate(experiment.finetune):
        if entry.base == entry.name:
            raise InputError(path, f"finetune[{i}].base: got {entry.base!r}; expected another model than itself")
        if entry.base in {f.name for f in experiment.finetune}:
            order = [f.name for f in experiment.finetune]
            if order.index(entry.base) > i:
                raise InputError(path, f"finetune[{i}].base: got {entry.base!r}; expected a model defined before it")
        if entry.base not in internal:
            entry.base = _model_source(entry.base, base, path, f"finetune[{i}].base")


def _model_source(source: str, base: Path, path: Path, field_name: str) -> str:
    """A hub id stays as is; a folder (absolute, ./ ../ ~, or existing relative to the YAML) becomes absolute."""
    text = str(source).strip()
    candidate = (base / Path(text).expanduser()).resolve()
    if text.startswith(("/", "./", "../", "~")) or candidate.is_dir():
        if not candidate.is_dir():
            raise InputError(path, f"{field_name}: got {text!r}; expected a model folder (no folder {candidate})")
        return str(candidate)
    if not _HUB_ID.match(text):
        raise InputError(path, f"{field_name}: got {text!r}; expected a model name defined in this file, "
                               "a Hugging Face hub id (org/name) or a model folder")
    return text


# =========================================================================== keys
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str | Path) -> str:
    """A cheap fingerprint of input files: relative path, size and modification time of every
    non-hidden file (a file, or a folder recursively). Reading the bytes of a 15 GB corpus on every
    run would be too slow; size+mtime catches every ordinary edit or copy."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return _sha([path.name, st.st_size, st.st_mtime_ns])
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = Path(root) / name
            st = full.stat()
            entries.append((str(full.relative_to(path)), st.st_size, st.st_mtime_ns))
    return _sha(entries)


STAGE_MODULES = {
    "synth": ["phonorm.corpus.synth"],
    "corpus": ["phonorm.corpus.prepare", "phonorm.corpus.aishell"],
    "pretrain": ["phonorm.models.pretrain"],
    "finetune": ["phonorm.models.finetune"],
    "evaluate": ["phonorm.models.evaluate"],
    "extract": ["phonorm.features.extract"],
    "analyze": ["phonorm.analysis.run"],
    "report": ["phonorm.report.html"],
}
# Package data the stage's code reads (not found by the import scan).
STAGE_DATA = {"synth": ["data/*.tsv"], "corpus": ["data/*.tsv"]}


@lru_cache(maxsize=None)
def stage_code_hash(stage: str) -> str:
    """SHA-256 over the source of the phonorm modules `stage` runs (see the module docstring)."""
    root = Path(__file__).resolve().parent
    files = set()
    for module in STAGE_MODULES[stage]:
        files |= _import_closure(module, root)
    for pattern in STAGE_DATA.get(stage, []):
        files |= set(root.glob(pattern))
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _module_file(module: str, root: Path) -> Optional[Path]:
    parts = module.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _import_closure(module: str, root: Path) -> set[Path]:
    """Files of `module` and of every phonorm module it imports (also inside functions), transitively,
    with the packages' __init__.py files."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        file = _module_file(name, root)
        if file is None or file in seen:
            continue
        seen.add(file)
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        package = name if file.name == "__init__.py" else ".".join(parts[:-1])
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "phonorm"]
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    target = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([target] if target else []))
                if target.split(".")[0] != "phonorm":
                    continue
                todo.append(target)
                todo += [f"{target}.{a.name}" for a in node.names]  # `from phonorm.x import module`
    return seen


# =========================================================================== stages
@dataclass
class Stage:
    """One unit of cached work. `run(folder)` does the work into `folder` and returns a summary."""

    kind: str
    name: str
    inputs: dict[str, str]
    settings: dict[str, Any]
    run: Optional[Callable[[Path], str]]
    workdir: Path
    external: Optional[Path] = None  # an existing folder used as is (no work, no marker)
    key: str = ""
    status: str = "planned"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    summary: str = ""

    def __post_init__(self) -> None:
        self.key = _sha({"stage": self.kind, "inputs": self.inputs, "settings": self.settings,
                         "code": stage_code_hash(self.kind) if self.kind in STAGE_MODULES else None,
                         "versions": _versions()})

    @property
    def folder(self) -> Path:
        if self.external is not None:
            return self.external
        label = self.kind if self.name == self.kind else self.name
        return self.workdir / self.kind / f"{label}-{self.key[:12]}"

    @property
    def title(self) -> str:
        return self.kind if self.name == self.kind else f"{self.kind} {self.name}"

    def done(self) -> bool:
        if self.external is not None:
            return True
        marker = self.folder / MARKER
        if not marker.is_file():
            return False
        try:
            return read_json(marker).get("key") == self.key
        except (OSError, ValueError):
            return False


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    return library_versions()


@dataclass
class Plan:
    experiment: Experiment
    file: Path
    stages: list[Stage] = field(default_factory=list)
    corpus: Optional[Stage] = None
    synth: Optional[Stage] = None
    models: dict[str, Stage] = field(default_factory=dict)  # name → pretrain/finetune/external stage
    evaluations: dict[str, Stage] = field(default_factory=dict)
    extract: Optional[Stage] = None
    analyze: Optional[Stage] = None
    report: Optional[Stage] = None

    def add(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        return stage


def plan_stages(experiment: Experiment, file: Path) -> Plan:
    """Every stage of the experiment with its key, in the order they run (nothing is run here)."""
    plan = Plan(experiment, file)
    workdir = experiment.workdir
    corpus_cfg = experiment.corpus

    # ---- corpus
    if corpus_cfg.prepared is not None:
        folder = corpus_cfg.prepared
        key = _sha([fingerprint(folder / n) for n in ("utterances.parquet", "segments.parquet", "labels.json")
                    if (folder / n).exists()])
        plan.corpus = Stage("corpus", "corpus", {"prepared": key}, {"prepared": str(folder)}, None, workdir,
                            external=folder)
    elif corpus_cfg.synth is not None:
        s = corpus_cfg.synth
        plan.synth = plan.add(Stage("synth", "synth", {}, {"speakers": s.speakers, "utterances": s.utterances,
                                                           "seed": s.seed}, _run_synth(s), workdir))
        synth = plan.synth
        plan.corpus = plan.add(Stage("corpus", "corpus", {"synth": synth.key},
                                     {"from": "synth", "split_seed": s.split_seed, "dev": s.dev, "test": s.test},
                                     _run_prepare_synth(synth, s), workdir))
    elif corpus_cfg.prepare is not None:
        c = corpus_cfg.prepare
        inputs = {"audio": fingerprint(c.audio), "alignments": fingerprint(c.alignments),
                  "speakers": fingerprint(c.speakers)}
        if c.split_file is not None:
            inputs["split_file"] = fingerprint(c.split_file)
        plan.corpus = plan.add(Stage("corpus", "corpus", inputs, {"prepare": c.model_dump(mode="json")},
                                     _run_prepare(c), workdir))
    else:
        c = corpus_cfg.aishell
        inputs = {"root": fingerprint(c.root), "alignments": fingerprint(c.alignments)}
        plan.corpus = plan.add(Stage("corpus", "corpus", inputs, {"aishell": c.model_dump(mode="json")},
                                     _run_aishell(c), workdir))
    corpus = plan.corpus

    # ---- models
    for name, source in experiment.models.items():
        key = fingerprint(source) if Path(source).is_dir() else f"hub:{source}"
        plan.models[name] = Stage("model", name, {"source": key}, {"source": source}, None, workdir,
                                  external=Path(source))
    for p in experiment.pretrain:
        settings = p.model_dump(exclude={"name"}, exclude_none=True)
        plan.models[p.name] = plan.add(Stage("pretrain", p.name, {"corpus": corpus.key}, settings,
                                             _run_pretrain(corpus, settings), workdir))
    for f in experiment.finetune:
        base = plan.models.get(f.base)
        base_key = base.key if base is not None else (fingerprint(f.base) if Path(f.base).is_dir() else f"hub:{f.base}")
        settings = {"tasks": list(f.tasks), **f.settings.model_dump(exclude_unset=True)}
        plan.models[f.name] = plan.add(Stage("finetune", f.name, {"corpus": corpus.key, "base": base_key}, settings,
                                             _run_finetune(corpus, base, f.base, settings), workdir))
        plan.evaluations[f.name] = plan.add(Stage(
            "evaluate", f.name, {"corpus": corpus.key, "model": plan.models[f.name].key},
            {"split": experiment.evaluate.split},
            _run_evaluate(corpus, plan.models[f.name], experiment.evaluate.split), workdir))

    # ---- extract, analyze, report
    names = experiment.store_models
    extract_settings = experiment.extract.model_dump(exclude_unset=True, exclude={"models"})
    plan.extract = plan.add(Stage("extract", "extract",
                                  {"corpus": corpus.key, **{f"model:{n}": plan.models[n].key for n in names}},
                                  {"models": names, **extract_settings},
                                  _run_extract(corpus, {n: plan.models[n] for n in names}, extract_settings), workdir))
    analyze_settings = {"reference": experiment.reference,
                        **experiment.analyze.model_dump(exclude_unset=True, exclude={"reference"})}
    # The evaluations are the claims' primary evidence (issue 13): inputs by key, paths given at run time.
    plan.analyze = plan.add(Stage("analyze", "analyze",
                                  {"features": plan.extract.key,
                                   **{f"evaluate:{n}": s.key for n, s in plan.evaluations.items()}},
                                  analyze_settings, _run_analyze(plan.extract, analyze_settings, plan.evaluations),
                                  workdir))
    plan.report = plan.add(Stage(
        "report", "report",
        {"analyze": plan.analyze.key, "corpus": corpus.key,
         **{f"model:{n}": s.key for n, s in plan.models.items()},
         **{f"evaluate:{n}": s.key for n, s in plan.evaluations.items()}},
        {"experiment": experiment.model_dump(mode="json"), "file": str(file)},
        _run_report(plan), workdir))
    return plan


# ---- the stage bodies: each calls one stage function of the package (imported only when it runs)
def _run_synth(s: SynthCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.synth import synthesize_corpus

        return synthesize_corpus(folder, n_speakers=s.speakers, n_utterances=s.utterances, seed=s.seed)
    return run


def _run_prepare_synth(synth: Stage, s: SynthCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.prepare import prepare_corpus

        source = synth.folder
        return prepare_corpus(folder, audio_dir=source / "wav", alignments=source / "textgrid",
                              speakers_file=source / "speakers.tsv", fmt="textgrid", scheme="mandarin",
                              tone_mode="surface", split_file=None, skip_bad=False, seed=s.split_seed,
                              dev=s.dev, test=s.test)
    return run


def _run_prepare(c: PrepareCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.prepare import prepare_corpus

        return prepare_corpus(folder, audio_dir=c.audio, alignments=c.alignments, speakers_file=c.speakers,
                              fmt=c.format, scheme=c.scheme, tone_mode=c.tone, split_file=c.split_file,
                              skip_bad=c.skip_bad, seed=c.seed)
    return run


def _run_aishell(c: AishellCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.aishell import prepare_aishell

        return prepare_aishell(folder, root=c.root, alignments=c.alignments, fmt=c.format, tone_mode=c.tone,
                               skip_bad=c.skip_bad)
    return run


def _run_pretrain(corpus: Stage, settings: dict[str, Any]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.pretrain import pretrain

        accepted = inspect.signature(pretrain).parameters
        options = {k: v for k, v in settings.items() if k in accepted}
        return pretrain(corpus.folder, out=folder, **options)
    return run


def _run_finetune(corpus: Stage, base: Optional[Stage], source: str, settings: dict[str, Any]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.finetune import FinetuneSettings, finetune

        model = source if base is None else _source_of(base)
        return finetune(corpus.folder, model=model, out=folder, settings=FinetuneSettings(**settings))
    return run


def _run_evaluate(corpus: Stage, model: Stage, split: str) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.evaluate import evaluate

        result = evaluate(corpus.folder, model_dir=model.folder, split=split)
        write_json(folder / "evaluation.json", {"model": model.name, "model_dir": str(model.folder), "split": split,
                                                "tasks": result})
        return "; ".join(f"{task} accuracy {r['accuracy']:.3f} (chance {r['chance']:.3f})" for task, r in result.items())
    return run


def _run_extract(corpus: Stage, models: dict[str, Stage], settings: dict[str, Any]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.features.extract import ExtractSettings, extract

        sources = {name: _source_of(stage) for name, stage in models.items()}
        return extract(corpus.folder, models=sources, out=folder, settings=ExtractSettings(**settings))
    return run


def _source_of(model: Stage) -> str:
    """What to pass as `--model`: a stage's folder, or a `models:` entry as given (hub id or folder)."""
    return model.settings["source"] if model.kind == "model" else str(model.folder)


def _run_analyze(features: Stage, settings: dict[str, Any],
                 evaluations: Optional[dict[str, Stage]] = None) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.analysis.run import AnalyzeSettings, analyze

        files = {name: str(stage.folder / "evaluation.json") for name, stage in (evaluations or {}).items()}
        return analyze(features.folder, out=folder, settings=AnalyzeSettings(**settings, evaluations=files or None))
    return run


def _run_report(plan: Plan) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.report.html import build_report

        return build_report(plan.analyze.folder, out=folder / "report.html")
    return run


# =========================================================================== running
def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def execute(stage: Stage, *, force: bool = False) -> None:
    """Run one stage unless its folder already holds a complete result with the same key."""
    if stage.external is not None:
        stage.status = "given"
        return
    folder = stage.folder
    if stage.done() and not force:
        stage.status = "cached"
        marker = read_json(folder / MARKER)
        stage.seconds, stage.summary = float(marker.get("seconds", 0.0)), marker.get("summary", "")
        stage.cpu_seconds = float(marker.get("cpu_seconds", 0.0))
        _say(f"phonorm run: {stage.title}: unchanged, reusing {folder}")
        return
    if force and folder.exists():
        shutil.rmtree(folder)
    resuming = folder.exists()
    _say(f"phonorm run: {stage.title}: {'resuming' if resuming else 'running'} → {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tic, cpu = time.perf_counter(), _cpu_seconds()
    summary = stage.run(folder)
    stage.seconds, stage.cpu_seconds = time.perf_counter() - tic, _cpu_seconds() - cpu
    stage.summary = str(summary)
    stage.status = "resumed" if resuming else "ran"
    write_json(folder / MARKER, {  # written last: the folder is complete from here on
        "key": stage.key, "stage": stage.kind, "name": stage.name, "inputs": stage.inputs,
        "settings": stage.settings, "code": stage_code_hash(stage.kind), "seconds": round(stage.seconds, 2),
        "cpu_seconds": round(stage.cpu_seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": stage.summary,
    })
    _say(f"phonorm run: {stage.title}: done in {stage.seconds:.1f} s (CPU {stage.cpu_seconds:.1f} s)")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine it tells what a
    stage costs better than wall time. Not counted: synth's speaker workers, which are children of
    multiprocessing's forkserver rather than of this process."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_experiment(path: str | Path, force: bool = False) -> str:
    """Run every stage of the experiment file `path` (cached, resumable); returns a summary that
    ends with the report's path."""
    experiment, _ = load_experiment(path)
    plan = plan_stages(experiment, Path(path).resolve())
    workdir = experiment.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    _say(f"phonorm run: experiment {experiment.name!r} → {workdir}")
    for stage in plan.stages:
        if stage is plan.report:
            write_context(plan)  # the report reads it; cheap, so written on every run
        execute(stage, force=force)
    report = workdir / "report.html"
    source = plan.report.folder / "report.html"
    if not report.is_file() or report.read_bytes() != source.read_bytes():
        with atomic_path(report) as tmp:
            shutil.copyfile(source, tmp)
    write_json(workdir / "run.json", {
        "experiment": str(Path(path).resolve()), "report": str(report),
        "stages": [_stage_record(s) for s in plan.stages],
    })
    return _summary(plan, report)


def _stage_record(stage: Stage) -> dict[str, Any]:
    return {"stage": stage.kind, "name": stage.name, "status": stage.status, "seconds": round(stage.seconds, 2),
            "cpu_seconds": round(stage.cpu_seconds, 2), "key": stage.key[:12], "folder": str(stage.folder)}


def write_context(plan: Plan) -> None:
    """R/context.json: where the corpus, models and evaluations of these results are (for the report)."""
    experiment = plan.experiment
    models = []
    for name, stage in plan.models.items():
        entry: dict[str, Any] = {"name": name, "kind": {"model": "pretrained", "pretrain": "pretrained",
                                                       "finetune": "finetuned"}[stage.kind],
                                 "trained_here": stage.kind != "model"}
        if stage.kind == "model":
            entry["source"] = stage.settings["source"]
            entry["folder"] = stage.settings["source"] if Path(stage.settings["source"]).is_dir() else None
        else:
            entry["folder"] = str(stage.folder)
        if stage.kind == "finetune":
            spec = next(f for f in experiment.finetune if f.name == name)
            entry["tasks"], entry["base"] = list(spec.tasks), spec.base
        models.append(entry)
    write_json(plan.analyze.folder / CONTEXT_FILE, {
        "experiment": {"name": experiment.name, "description": experiment.description, "file": str(plan.file),
                       "title": experiment.report.title, "config": experiment.model_dump(mode="json")},
        "corpus": str(plan.corpus.folder),
        "synth": str(plan.synth.folder) if plan.synth else None,
        "features": str(plan.extract.folder),
        "reference": experiment.reference,
        "models": models,
        "evaluations": {name: str(stage.folder / "evaluation.json") for name, stage in plan.evaluations.items()},
        "stages": [_stage_record(s) for s in plan.stages if s is not plan.report],
    })


def _summary(plan: Plan, report: Path) -> str:
    lines = [f"experiment {plan.experiment.name}: {len(plan.stages)} stages "
             f"({sum(s.status in ('ran', 'resumed') for s in plan.stages)} run, "
             f"{sum(s.status == 'cached' for s in plan.stages)} unchanged)"]
    for s in plan.stages:
        took = f"{s.seconds:7.1f} s" + (" (earlier)" if s.status == "cached" else "")
        lines.append(f"  {s.title:<18} {s.status:<7} {took:<19} CPU {s.cpu_seconds:7.1f} s   {s.folder}")
    claims = plan.analyze.folder / "claims.json"
    if claims.is_file():
        for row in read_json(claims).get("claims", []):
            lines.append(f"  {row.get('claim')}: {row.get('status')}")
    lines.append(f"report: {report}")
    return "\n".join(lines)


# =========================================================================== demo
DEMO_FILES = {False: "demo.yaml", True: "demo-quick.yaml"}


def demo_config_text(quick: bool = False) -> str:
    """The demo experiment shipped inside the package (src/phonorm/data/)."""
    return resources.files("phonorm").joinpath("data", DEMO_FILES[quick]).read_text(encoding="utf-8")


def run_demo(out: str | Path, quick: bool = False) -> str:
    """The whole study offline on the built-in demo experiment, in the folder `out`. The experiment
    file is written to `out` (edit it and `phonorm run` it to vary the study)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(demo_config_text(quick))
    data["workdir"] = "."
    path = out / DEMO_FILES[quick]
    text = (f"# The built-in phonorm demo{' (quick)' if quick else ''}; re-run with: phonorm run {path}\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return run_experiment(path)
