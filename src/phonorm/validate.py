"""`phonorm validate FOLDER`: what an artifact folder is, and whether it is complete and consistent.

Each kind of folder is recognised by the file its stage writes last and checked with the same
class that writes it (as lhotse validates each manifest type): a prepared corpus
(`corpus.store.PreparedCorpus`), a model folder (`models.card.ModelCard`), a feature store
(`features.manifest.StoreManifest`, every layer file's shape and dtype against it), a results
folder (`settings.json`, written last, and the tables and figures it lists), a run folder of
`phonorm run` (`run.json` and every stage folder's marker). Nothing is loaded into memory beyond
file headers; torch is not imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from phonorm.artifacts import read_json
from phonorm.errors import InputError, PhonormError


@dataclass
class Validation:
    """The verdict on one folder: `kind`, `facts` (what it holds), `problems` (empty when valid)."""

    folder: Path
    kind: str
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = f"{self.folder}: {self.kind}, " + ("complete and consistent" if self.ok else
                                                 f"{len(self.problems)} problem(s)")
        lines = [head] + [f"  {fact}" for fact in self.facts] + [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def validate(folder: str | Path) -> Validation:
    """Recognise and check `folder`. InputError when it is no phonorm artifact folder at all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    for marker, check in _KINDS:
        if (folder / marker).is_file():
            return check(folder)
    raise InputError(folder, "not a phonorm artifact folder (no run.json, manifest.json, phonorm.json, "
                             "labels.json, settings.json, synth.json or .phonorm-stage.json)")


def _corpus(folder: Path) -> Validation:
    from phonorm.corpus.store import PreparedCorpus

    result = Validation(folder, "prepared corpus")
    try:
        corpus = PreparedCorpus(folder)
        utterances, segments = corpus.all_utterances, corpus.segments
    except InputError as err:
        result.problems.append(str(err))
        return result
    tasks = corpus.label_maps
    result.facts.append(f"{len(utterances)} utterances, {utterances['speaker'].nunique()} speakers, "
                        f"{len(segments)} segments; tasks {', '.join(tasks)}")
    unknown = set(segments["utterance_id"]) - set(utterances["utterance_id"])
    if unknown:
        result.problems.append(f"segments.parquet: {len(unknown)} utterance ids not in utterances.parquet")
    if utterances["utterance_id"].duplicated().any():
        result.problems.append("utterances.parquet: duplicate utterance ids")
    for split, n in utterances["split"].value_counts().items():
        result.facts.append(f"split {split}: {n} utterances")
    if "phone" in tasks:
        missing = set(segments["phone"].astype(str)) - set(tasks["phone"])
        if missing:
            result.problems.append(f"labels.json: phones {sorted(missing)[:5]} of segments.parquet not in its phone list")
    return result


def _model(folder: Path) -> Validation:
    from phonorm.models.card import ModelCard

    result = Validation(folder, "model folder")
    try:
        card = ModelCard.load(folder)
    except InputError as err:
        result.problems.append(str(err))
        return result
    result.kind = f"{card.kind} model folder"
    result.facts.append(f"{card.model_type}; corpus {card.corpus}" + (f"; tasks {', '.join(card.tasks)}" if card.tasks else ""))
    if not card.complete:
        result.problems.append("phonorm.json: not marked complete")
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            result.problems.append(f"{name}: missing")
    if card.kind == "finetuned":
        heads = folder / "heads.safetensors"
        if not heads.is_file():
            result.problems.append("heads.safetensors: missing")
        else:
            from safetensors import safe_open

            with safe_open(str(heads), framework="numpy") as handle:
                shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
            for task in card.tasks:
                weight = next((shape for key, shape in shapes.items() if key.endswith(f"{task}.weight")), None)
                wanted = len(card.label_maps.get(task, []))
                if weight is None or weight[0] != wanted:
                    result.problems.append(f"heads.safetensors: head of task {task!r} has shape {weight}, "
                                           f"phonorm.json lists {wanted} labels")
    return result


def _store(folder: Path) -> Validation:
    import pandas as pd

    from phonorm.features.manifest import StoreManifest
    from phonorm.features.store import FeatureStore

    result = Validation(folder, "feature store")
    try:
        manifest = StoreManifest.load(folder)
        frames = pd.read_parquet(folder / "frames.parquet", columns=["row"])
    except (InputError, OSError, ValueError) as err:
        result.problems.append(str(err))
        return result
    result.facts.append(f"{manifest.rows} {manifest.row_unit} rows; models "
                        + ", ".join(f"{m.name} ({m.kind}{', ' + ','.join(m.tasks) if m.tasks else ''}; "
                                    f"{len(m.layers)} layers × {m.dim})" for m in manifest.models))
    if len(frames) != manifest.rows:
        result.problems.append(f"frames.parquet: {len(frames)} rows, manifest.json says {manifest.rows}")
    store = FeatureStore(folder)
    for model in manifest.models:
        for layer in model.layers:
            try:
                files = store.layer_files(model.name, layer)
            except InputError as err:
                result.problems.append(str(err))
                continue
            rows = 0
            for file in files:
                shape, dtype = _npy_header(file)
                rows += shape[0]
                if len(shape) != 2 or shape[1] != model.dim or dtype != np.dtype(model.dtype):
                    result.problems.append(f"{file}: shape {shape} {dtype}, manifest.json says (rows, {model.dim}) "
                                           f"{model.dtype}")
            if rows != manifest.rows:
                result.problems.append(f"{model.name}/{layer}: {rows} rows, manifest.json says {manifest.rows}")
    for name in manifest.classic:
        path = folder / "classic" / f"{name}.npy"
        if not path.is_file() or _npy_header(path)[0][0] != manifest.rows:
            result.problems.append(f"{path}: missing or not {manifest.rows} rows")
    return result


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    array = np.load(path, mmap_mode="r")
    return tuple(array.shape), array.dtype


def _results(folder: Path) -> Validation:
    result = Validation(folder, "analysis results")
    record = read_json(folder / "settings.json")
    if not isinstance(record, dict) or "settings" not in record:
        result.problems.append("settings.json: not written by phonorm analyze")
        return result
    result.facts.append(f"models {', '.join(record.get('models') or [])}; store {record.get('features')}")
    for name in ("similarity.csv", "probes.csv", "normalization.csv", "claims.json"):
        if not (folder / name).is_file():
            result.problems.append(f"{name}: missing")
    for figure in record.get("figures") or []:  # paths relative to the results folder
        if not (folder / figure).is_file():
            result.problems.append(f"{figure}: listed in settings.json but missing")
    return result


def _run(folder: Path) -> Validation:
    result = Validation(folder, "phonorm run folder")
    record = read_json(folder / "run.json")
    stages = record.get("stages") or []
    result.facts.append(f"{len(stages)} stages; report {record.get('report')}")
    for stage in stages:
        stage_folder = Path(stage["folder"])
        if stage["stage"] == "model" or not str(stage_folder).startswith(str(folder.resolve())):
            continue
        marker = stage_folder / ".phonorm-stage.json"
        if not marker.is_file():
            result.problems.append(f"{stage_folder}: stage {stage['stage']} {stage['name']} not complete")
        elif not read_json(marker).get("key", "").startswith(stage["key"]):
            result.problems.append(f"{marker}: key differs from run.json")
    return result


def _stage(folder: Path) -> Validation:
    marker = read_json(folder / ".phonorm-stage.json")
    result = Validation(folder, f"stage folder of phonorm run ({marker.get('stage')} {marker.get('name')})")
    result.facts.append(f"key {str(marker.get('key'))[:12]}, {marker.get('seconds')} s: {marker.get('summary')}")
    return result


def _synth(folder: Path) -> Validation:
    record = read_json(folder / "synth.json")
    result = Validation(folder, "synthetic corpus (phonorm synth)")
    if not record.get("complete"):
        result.problems.append("synth.json: not marked complete (run phonorm synth again to resume)")
    for name in ("wav", "textgrid", "speakers.tsv"):
        if not (folder / name).exists():
            result.problems.append(f"{name}: missing")
    return result


_KINDS: list[tuple[str, Callable[[Path], Validation]]] = [
    ("run.json", _run), ("manifest.json", _store), ("phonorm.json", _model), ("labels.json", _corpus),
    ("settings.json", _results), ("synth.json", _synth), (".phonorm-stage.json", _stage),
]


def validate_or_raise(folder: str | Path) -> str:
    """The validation text; PhonormError carrying it when the folder has problems (exit status 2)."""
    result = validate(folder)
    if not result.ok:
        raise PhonormError(result.text())
    return result.text()
