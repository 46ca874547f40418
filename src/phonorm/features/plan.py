"""Planning an extraction: which models, which layers, which rows, and what is left to do.

Everything that can be checked before heavy work is checked here (model names and folders, layer
lists, frame geometries), the rows are decided once (`selection.select_rows`) from the corpus and
the first model's frame geometry, and the store folder is compared with what it already holds:
`.extract.json` (written by `start_store`, read by `_find_work`, nobody else) records which rows
the store is of, so a store only resumes or grows with the same rows. Every process computes the
same plan; only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phonorm.artifacts import read_json, set_seed, write_json
from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.features import layout
from phonorm.features.frames_file import write_frames
from phonorm.features.selection import Selection, select_rows
from phonorm.frames import FrameGeometry
from phonorm.layers import layer_name
from phonorm.lock import LOCK_FILE
from phonorm.settings import ExtractSettings

STATE_FILE = ".extract.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class ModelSpec:
    """One model of a store, as planned before anything heavy is loaded."""

    name: str
    source: str
    config: Any
    geometry: FrameGeometry
    group_norm: bool
    n_layers: int
    dim: int
    layers: list[int]
    normalize: bool
    key: str = ""

    @property
    def layer_names(self) -> list[str]:
        return [layer_name(k) for k in self.layers]

    def describe(self) -> dict[str, Any]:
        from phonorm.models.backbone import LAYER_CONVENTION

        return dict(name=self.name, source=self.source, model_type=self.config.model_type,
                    n_layers=self.n_layers, dim=self.dim, layers=self.layer_names,
                    layer_convention=LAYER_CONVENTION, group_norm=self.group_norm,
                    normalize_waveform=self.normalize, geometry=geometry_dict(self.geometry))


@dataclass
class Plan:
    corpus: PreparedCorpus
    out: Path
    settings: ExtractSettings
    models: list[ModelSpec]
    geometry: FrameGeometry
    selection: Selection
    todo_models: list[ModelSpec] = field(default_factory=list)
    todo_classic: bool = False
    kept_models: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.selection.key


# =========================================================================== planning
def plan_extraction(corpus: str | Path, *, models: dict[str, str], out: str | Path,
                    settings: ExtractSettings) -> Plan:
    """Check everything that can be checked before heavy work, decide the rows, and find what is
    left to do in `out` (reads only; every process computes the same plan)."""
    from phonorm.models.backbone import geometry as geometry_of
    from phonorm.models.backbone import load_config, num_layers, uses_group_norm
    from phonorm.models.upstream import wants_normalized_input

    if not models:
        raise PhonormError("--model: give at least one NAME=MODEL")
    for name in models:
        if not _NAME_PATTERN.match(name) or name == layout.CLASSIC_DIR:
            raise PhonormError(f"--model {name}=...: a name must be letters, digits, '_', '-', '.', '+' "
                               f"(it becomes a folder), and not {layout.CLASSIC_DIR!r}")
    prepared = PreparedCorpus(corpus)
    specs: list[ModelSpec] = []
    for name, source in models.items():
        text = str(source)
        if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
            raise InputError(text, f"--model {name}: no such model folder")
        config = load_config(source)
        try:
            grid = geometry_of(config)
        except ValueError as err:
            raise PhonormError(f"--model {name}={source}: {err}") from None
        n = num_layers(config)
        specs.append(ModelSpec(
            name=name, source=str(source), config=config, geometry=grid, group_norm=uses_group_norm(config),
            n_layers=n, dim=int(config.hidden_size), layers=parse_layers(settings.layers, n, name),
            normalize=wants_normalized_input(source),
        ))
    reference = specs[0].geometry
    for spec in specs[1:]:
        if spec.geometry.sample_rate != reference.sample_rate:
            raise PhonormError(f"--model {spec.name}: sample rate {spec.geometry.sample_rate} Hz differs from "
                               f"{specs[0].name}'s {reference.sample_rate} Hz")
    set_seed(settings.seed)
    selection = select_rows(prepared, settings.split, reference, settings.frames, settings.pool,
                            settings.max_per_speaker_label, settings.seed)
    if selection.rows == 0:
        raise InputError(prepared.folder, f"no rows to extract: split {settings.split!r} has "
                         f"{selection.counts['utterances_in_split']} utterances and none has a selected frame")
    plan = Plan(corpus=prepared, out=Path(out), settings=settings, models=specs, geometry=reference, selection=selection)
    for spec in specs:
        spec.key = _model_key(plan, spec)
    _find_work(plan)
    return plan


def parse_layers(text: str, n_layers: int, model: str) -> list[int]:
    """`all`, or `0,6,12` / `L0,L6,L12` → sorted layer numbers, each checked to lie in 0..n_layers."""
    if text.strip().lower() == "all":
        return list(range(n_layers + 1))
    chosen: set[int] = set()
    for token in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"[Ll]?(\d+)", token)
        if not match or int(match.group(1)) > n_layers:
            raise PhonormError(f"--layers {text!r}: {token!r} is not a layer of model {model!r} "
                               f"(it has L0..L{n_layers})")
        chosen.add(int(match.group(1)))
    if not chosen:
        raise PhonormError(f"--layers {text!r}: no layer given (use all, or e.g. 0,6,12)")
    return sorted(chosen)


def _model_key(plan: Plan, spec: ModelSpec) -> str:
    """What must match for a model's files to be reused: rows, source (and, for a folder, its
    files' sizes and times), layers, dtype, input normalisation."""
    from phonorm.models.shipped import resolve_model

    source = Path(resolve_model(spec.source))  # a shipped model's files change with phonorm's version
    stamp = []
    if source.is_dir():
        stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in source.iterdir() if p.is_file())
    blob = json.dumps(dict(rows=plan.key, source=spec.source, stamp=stamp, layers=spec.layers,
                           dtype=plan.settings.dtype, normalize=spec.normalize), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _find_work(plan: Plan) -> None:
    """Compare with what `out` already holds: fill `todo_models`, `todo_classic`, `kept_models`;
    refuse to mix rows of another selection or another model under the same name."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = read_json(state_path)
        if state.get("rows_key") != plan.key:
            raise InputError(out, "holds a feature store of other rows (another corpus, split or frame settings: "
                             f"{state.get('selection')}); use another --out or delete it")
    elif out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise InputError(out, "is not empty and not a phonorm feature store; use a new or empty folder")
    previous = read_json(out / layout.MANIFEST_FILE) if (out / layout.MANIFEST_FILE).is_file() else None
    requested = {spec.name for spec in plan.models}
    for spec in plan.models:
        marker = out / spec.name / ".complete.json"
        if marker.is_file():
            done = read_json(marker)
            if done.get("key") == spec.key:
                continue
            raise InputError(out / spec.name, f"model {spec.name!r} is already stored from {done.get('source')} "
                             "with other settings (source, layers or dtype); use another name or --out")
        plan.todo_models.append(spec)
    if previous:
        plan.kept_models = [m for m in previous["models"] if m["name"] not in requested]
    classic_marker = out / layout.CLASSIC_DIR / ".complete.json"
    plan.todo_classic = plan.settings.classic and not (
        classic_marker.is_file() and read_json(classic_marker).get("rows_key") == plan.key)


def start_store(plan: Plan) -> None:
    """Main process: mark the store incomplete (remove manifest.json) and write the rows
    (frames.parquet, a chunk at a time)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / layout.MANIFEST_FILE).unlink(missing_ok=True)
    write_json(plan.out / STATE_FILE, {"rows_key": plan.key, "selection": plan.settings.selection_settings(),
                                       "corpus": str(plan.corpus.folder.resolve())})
    frames_path = plan.out / layout.FRAMES_FILE
    if not frames_path.is_file():
        write_frames(frames_path, plan.selection.iter_frames())


def summary_line(plan: Plan) -> str:
    counts = plan.selection.counts
    unit = "segments" if plan.settings.pool == "segment" else "frames"
    models = "; ".join(f"{s.name} ({s.layer_names[0]}..{s.layer_names[-1]}, {len(s.layers)} layers, dim {s.dim})"
                       for s in plan.models)
    text = (f"{counts['rows']} {unit} of {counts['utterances_with_rows']} utterances (split {plan.settings.split}, "
            f"frames {plan.settings.frames}); models: {models}")
    if counts["rows_dropped_by_cap"]:
        text += f"; {counts['rows_dropped_by_cap']} rows dropped by --max-per-speaker-label"
    if counts["utterances_without_rows"]:
        text += f"; {counts['utterances_without_rows']} utterances had no selected frame (skipped)"
    if plan.settings.classic:
        text += "; classic F0/MFCC stored"
    return text


def geometry_dict(geometry: FrameGeometry) -> dict[str, Any]:
    return dict(conv_kernel=list(geometry.conv_kernel), conv_stride=list(geometry.conv_stride),
                sample_rate=geometry.sample_rate, hop=geometry.hop, receptive_field=geometry.receptive_field)
