"""The checks of `phonorm validate` that read model folders and feature stores file by file (`validate.py`
recognises each folder and dispatches), and `Validation`, the verdict every check fills in.

A model folder: `records.card.ModelCard`, config.json, the safetensors files (header, tensor sizes, the
encoder's layer count, finite values, one head output per label). A feature store:
`features.manifest.StoreManifest`, frames.parquet decoded, every layer file's header, size and values,
the classic baselines against the counts extraction recorded. Torch is not imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from phonorm.errors import InputError
from phonorm.filecheck import (
    SafetensorsHeader,
    nonfinite_rows,
    nonfinite_tensors,
    parquet_problem,
    read_json_object,
    read_npy_header,
    read_safetensors_header,
)


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

    def problem(self, path: Path | str, defect: str) -> None:
        """Record `defect` of the file `path` (named relative to the folder when inside it)."""
        self.problems.append(f"{relative_to(self.folder, Path(path))}: {defect}")

    def text(self) -> str:
        head = f"{self.folder}: {self.kind}, " + ("complete and consistent" if self.ok else
                                                 f"{len(self.problems)} problem(s)")
        lines = [head] + [f"  {fact}" for fact in self.facts] + [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def relative_to(folder: Path, path: Path) -> str:
    """`path` relative to `folder` when inside it, else as given (how problems name their files)."""
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


# =========================================================================== model folder
# Transformer layers in a checkpoint's tensor names (`encoder.layers.3.attention...`, any prefix).
_ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def check_model(folder: Path) -> Validation:
    from phonorm.records.card import ModelCard

    result = Validation(folder, "model folder")
    try:
        card = ModelCard.load(folder)
    except InputError as err:
        result.problems.append(str(err))
        return result
    result.kind = f"{card.kind} model folder"
    result.facts.append(f"{card.model_type}; corpus {card.corpus}" + (f"; tasks {', '.join(card.tasks)}" if card.tasks else ""))
    if not card.complete:
        result.problem(folder / "phonorm.json", "not marked complete")
    layers = _check_config(result, folder, card.model_type)
    weights = _check_weights(result, folder / "model.safetensors")
    if weights is not None and layers is not None:
        found = {int(m.group(1)) for name in weights.tensors for m in [_ENCODER_LAYER.search(name)] if m}
        if found and len(found) != layers:
            result.problem(folder / "model.safetensors", f"holds {len(found)} Transformer layers, config.json says "
                                                         f"num_hidden_layers = {layers}")
    if card.kind == "finetuned":
        heads = _check_weights(result, folder / "heads.safetensors")
        if heads is not None:
            _check_heads(result, folder / "heads.safetensors", heads, card.tasks, card.label_maps)
    return result


def _check_config(result: Validation, folder: Path, model_type: str) -> Optional[int]:
    """Check config.json (a JSON object naming a supported model type, the card's, with positive layer and
    width counts); returns its `num_hidden_layers`, or None when the file is not usable."""
    from phonorm.settings import SUPPORTED_MODEL_TYPES

    path = folder / "config.json"
    config, defect = read_json_object(path)
    if defect or config is None:
        result.problem(path, defect or "missing")
        return None
    found = config.get("model_type")
    if found not in SUPPORTED_MODEL_TYPES:
        result.problem(path, f"model_type {found!r} is not a supported speech model ({', '.join(SUPPORTED_MODEL_TYPES)})")
        return None
    if found != model_type:
        result.problem(path, f"model_type {found!r}, phonorm.json says {model_type!r}")
    counts = {name: config.get(name) for name in ("num_hidden_layers", "hidden_size")}
    bad = [name for name, value in counts.items() if not isinstance(value, int) or isinstance(value, bool) or value < 1]
    if bad:
        result.problem(path, f"{', '.join(bad)} must be a positive whole number (found "
                             f"{', '.join(repr(counts[name]) for name in bad)})")
        return None
    return int(counts["num_hidden_layers"] or 0)


def _check_weights(result: Validation, path: Path) -> Optional[SafetensorsHeader]:
    """Check a safetensors file (header, tensor sizes, finite values); its header, or None when damaged."""
    if not path.is_file():
        result.problem(path, "missing")
        return None
    header = read_safetensors_header(path)
    if isinstance(header, str):
        result.problem(path, header)
        return None
    bad = nonfinite_tensors(path, header)
    if bad:
        result.problem(path, f"{len(bad)} tensor(s) hold NaN or inf (first: {bad[0]}); the weights are damaged")
    return header


def _check_heads(result: Validation, path: Path, heads: SafetensorsHeader, tasks: Sequence[str],
                 label_maps: dict[str, list[str]]) -> None:
    """Each task's head has one output per label of phonorm.json."""
    for task in tasks:
        weight = next((heads.shape(key) for key in heads.tensors if key.endswith(f"{task}.weight")), None)
        wanted = len(label_maps.get(task, []))
        if weight is None or weight[0] != wanted:
            result.problem(path, f"head of task {task!r} has shape {weight}, phonorm.json lists {wanted} labels")


# =========================================================================== feature store
def check_store(folder: Path) -> Validation:
    from phonorm.features.layout import CLASSIC_DIR
    from phonorm.features.manifest import StoreManifest

    result = Validation(folder, "feature store")
    try:
        manifest = StoreManifest.load(folder)
    except InputError as err:
        result.problems.append(str(err))
        return result
    result.facts.append(f"{manifest.rows} {manifest.row_unit} rows; models "
                        + ", ".join(f"{m.name} ({m.kind}{', ' + ','.join(m.tasks) if m.tasks else ''}; "
                                    f"{len(m.layers)} layers × {m.dim})" for m in manifest.models))
    rows, defect = parquet_problem(folder / "frames.parquet")
    if defect:
        result.problem(folder / "frames.parquet", defect)
    elif rows != manifest.rows:
        result.problem(folder / "frames.parquet", f"{rows} rows, manifest.json says {manifest.rows}")
    for model in manifest.models:
        for layer in model.layers:
            _check_layer(result, folder, model.name, layer, (model.dim, np.dtype(model.dtype)), manifest.rows)
    for name in manifest.classic:
        path = folder / CLASSIC_DIR / f"{name}.npy"
        header = read_npy_header(path) if path.is_file() else "missing"
        if isinstance(header, str):
            result.problem(path, header)
        elif len(header.shape) != 2 or header.shape[0] != manifest.rows:
            result.problem(path, f"shape {header.shape}, manifest.json says ({manifest.rows}, k)")
        else:
            recorded = manifest.classic_counts.get("rows_without_value", {}).get(name)
            bad = nonfinite_rows(path)[0] if recorded is not None else None  # stores of earlier versions: no count
            if bad != recorded:
                result.problem(path, f"{bad} row(s) without a value (NaN or inf), extraction recorded {recorded}: "
                                     "the file changed since; extract the classic baselines again")
    return result


def _check_layer(result: Validation, folder: Path, model: str, layer: str, kind: tuple[int, np.dtype],
                 rows: int) -> None:
    """Every file of one layer: a whole .npy of (rows, dim) in the manifest's dtype, with finite rows
    (scanned a block at a time); their rows add up to the manifest's."""
    from phonorm.features.layout import stored_layer_files

    files = stored_layer_files(folder, model, layer)
    if not files:
        result.problem(folder / model / f"{layer}.npy", "missing: manifest.json lists this layer")
        return
    total, whole = 0, True
    for file in files:
        header = read_npy_header(file)
        if isinstance(header, str):
            result.problem(file, header)
            whole = False
            continue
        dim, dtype = kind
        if len(header.shape) != 2 or header.shape[1] != dim or header.dtype != dtype:
            result.problem(file, f"shape {header.shape} {header.dtype}, manifest.json says (rows, {dim}) {dtype}")
            whole = False
            continue
        bad, first = nonfinite_rows(file)
        if bad:
            result.problem(file, f"{bad} row(s) hold NaN or inf (first: row {total + (first or 0)} of the layer); "
                                 f"extract model {model!r} again")
        total += header.shape[0]
    if whole and total != rows:
        result.problem(folder / model / layer, f"{total} rows, manifest.json says {rows}")
