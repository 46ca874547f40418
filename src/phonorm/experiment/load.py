"""Reading an experiment YAML into a checked `config.Experiment`: duplicate keys refused, every
pydantic error explained as `field.path: got VALUE; expected WHAT` naming the file, relative paths
made absolute (relative to the YAML's folder) and inputs checked to exist, model sources resolved
(folders, hub ids, names of models of the file), layer numbers checked against the models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError

from phonorm.errors import InputError, PhonormError
from phonorm.experiment.config import (
    HUB_ID,
    CorpusConfig,
    Experiment,
)
from phonorm.settings import (
    MODEL_SIZES,
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_experiment(path: str | Path) -> tuple[Experiment, Path]:
    """Read and validate an experiment file; relative paths are resolved against its folder.
    Returns (experiment, its folder). Raises PhonormError naming the file, field, value and what
    was expected."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such experiment file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
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


def _explain(error: Mapping[str, Any], data: Any) -> str:
    """One line per pydantic error: `field.path: got VALUE; expected WHAT`."""
    loc = tuple(error.get("loc", ()))
    if loc[:1] == ("finetune",) and loc[2:4] == ("settings", "tasks"):
        loc = loc[:2] + loc[3:]  # tasks are written beside settings, not inside
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
    _resolve_corpus(experiment.corpus, _Resolver(base, path))
    experiment.workdir = _Resolver(base, path).path(experiment.workdir, "workdir", must_exist=False)
    if experiment.workdir.exists() and not experiment.workdir.is_dir():
        raise InputError(path, f"workdir: got {str(experiment.workdir)!r}; expected a folder (it is a file)")
    _resolve_models(experiment, base, path)
    _check_layers(experiment, path)


@dataclass(frozen=True)
class _Resolver:
    """Paths of the YAML `file` made absolute relative to its folder `base`; a missing input is an
    InputError naming the YAML and the field."""

    base: Path
    file: Path

    def path(self, p: Path, field_name: str, must_exist: bool = True) -> Path:
        full = (self.base / p.expanduser()).resolve() if not p.expanduser().is_absolute() else p.expanduser()
        if must_exist and not full.exists():
            raise InputError(self.file, f"{field_name}: got {str(p)!r}; expected an existing path (looked for {full})")
        return full

    def given(self, p: Optional[Path], field_name: str) -> Optional[Path]:
        return None if p is None else self.path(p, field_name)


def _resolve_corpus(corpus: CorpusConfig, resolve: _Resolver) -> None:
    if corpus.prepared is not None:
        prepared = corpus.prepared = resolve.path(corpus.prepared, "corpus.prepared")
        missing = [n for n in ("utterances.parquet", "segments.parquet", "labels.json")
                   if not (prepared / n).is_file()]
        if missing:
            raise InputError(resolve.file, f"corpus.prepared: got {str(prepared)!r}; expected a prepared corpus "
                                           f"folder (it lacks {', '.join(missing)}; make one with phonorm prepare)")
    if corpus.prepare is not None:
        c = corpus.prepare
        c.audio, c.alignments = resolve.path(c.audio, "corpus.prepare.audio"), \
            resolve.path(c.alignments, "corpus.prepare.alignments")
        c.speakers = resolve.path(c.speakers, "corpus.prepare.speakers")
        c.split_file = resolve.given(c.split_file, "corpus.prepare.split_file")
        c.phone_map = resolve.given(c.phone_map, "corpus.prepare.phone_map")
    if corpus.aishell is not None:
        a = corpus.aishell
        a.root, a.alignments = resolve.path(a.root, "corpus.aishell.root"), \
            resolve.path(a.alignments, "corpus.aishell.alignments")
        a.phone_map = resolve.given(a.phone_map, "corpus.aishell.phone_map")


def _resolve_models(experiment: Experiment, base: Path, path: Path) -> None:
    """Model sources (folders, hub ids, names of models of this file) of models:, pretrain: and finetune:."""
    for name, source in list(experiment.models.items()):
        experiment.models[name] = _model_source(source, base, path, f"models.{name}")
    earlier: list[str] = []
    for i, entry in enumerate(experiment.pretrain):  # iteration 2: a model named earlier in pretrain:, or a source
        if entry.targets_from is not None and entry.targets_from not in earlier:
            entry.targets_from = _model_source(entry.targets_from, base, path, f"pretrain[{i}].targets_from", earlier)
        earlier.append(entry.name)
    internal = set(experiment.pretrained_names) | {f.name for f in experiment.finetune}
    order = [f.name for f in experiment.finetune]
    for i, tuned in enumerate(experiment.finetune):
        if tuned.base == tuned.name:
            raise InputError(path, f"finetune[{i}].base: got {tuned.base!r}; expected another model than itself")
        if tuned.base in order and order.index(tuned.base) > i:
            raise InputError(path, f"finetune[{i}].base: got {tuned.base!r}; expected a model defined before it")
        if tuned.base not in internal:
            tuned.base = _model_source(tuned.base, base, path, f"finetune[{i}].base", sorted(internal))


def _layer_counts(experiment: Experiment) -> dict[str, int]:
    """Transformer layers of each model whose size is known before anything runs: pre-trained here
    (its size), a local folder (its config.json), fine-tuned from one of those."""
    counts: dict[str, int] = {p.name: int(MODEL_SIZES[p.size]["num_hidden_layers"]) for p in experiment.pretrain}
    for name, source in experiment.models.items():
        if (known := _folder_layers(source)) is not None:
            counts[name] = known
    for entry in experiment.finetune:
        known = counts[entry.base] if entry.base in counts else _folder_layers(entry.base)
        if known is not None:
            counts[entry.name] = known
    return counts


def _folder_layers(source: str) -> Optional[int]:
    """`num_hidden_layers` of a model folder's config.json; None for a hub id or an unreadable config."""
    import json

    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["num_hidden_layers"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_layers(experiment: Experiment, path: Path) -> None:
    layers = experiment.extract.layers
    if layers == "all":
        return
    highest = max(int(token.strip().lstrip("Ll")) for token in layers.split(","))
    for name, count in _layer_counts(experiment).items():
        if name in experiment.store_models and highest > count:
            raise InputError(path, f"extract.layers: got {layers!r}; model {name!r} has layers L0..L{count}")


def _model_source(source: str, base: Path, path: Path, field_name: str, names: Sequence[str] = ()) -> str:
    """A hub id stays as is; a folder (absolute, ./ ../ ~, or existing relative to the YAML) becomes absolute;
    a shipped model (`phonorm:NAME`) becomes its folder inside the package."""
    from phonorm.models.shipped import PREFIX, resolve_model

    text = str(source).strip()
    if text.startswith(PREFIX):
        try:
            return resolve_model(text)
        except PhonormError as err:
            raise InputError(path, f"{field_name}: {err}") from None
    candidate = (base / Path(text).expanduser()).resolve()
    if text.startswith(("/", "./", "../", "~")) or candidate.is_dir():
        if not candidate.is_dir():
            raise InputError(path, f"{field_name}: got {text!r}; expected a model folder (no folder {candidate})")
        return str(candidate)
    if HUB_ID.match(text) and (base / text.split("/")[0]).is_dir():  # a relative path whose end is missing
        raise InputError(path, f"{field_name}: got {text!r}; expected a model folder (no folder {candidate})")
    if not HUB_ID.match(text):
        defined = f" ({', '.join(names)})" if names else ""
        raise InputError(path, f"{field_name}: got {text!r}; expected a model name defined in this file{defined}, "
                               "a Hugging Face hub id (org/name), a shipped model (phonorm:NAME) or a model folder")
    return text
