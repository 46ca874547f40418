"""`phonorm extract`: every layer of several models, on the very same frames, into a feature store.

How it works (docs/architecture.md, "Feature store"):
1. `plan.plan_extraction` decides the rows once from the corpus and the first model's frame
   geometry and writes `F/frames.parquet`; every model is indexed on these rows by time
   (`selection.pooling_index`), so all models share the rows exactly.
2. `shards.run_share`: each process runs its share of the utterances through each model's
   `models.upstream.Upstream` (eval mode, all layers from one forward pass, layer count checked)
   and writes rows as they come, resumable per chunk.
3. `finish_store`: the main process assembles the classic baselines and writes
   `F/manifest.json` (`manifest.StoreManifest`), last.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonorm.artifacts import provenance, read_json, write_json
from phonorm.errors import PhonormError
from phonorm.features import layout
from phonorm.features.classic import CLASSIC_DIMS, semitone_z
from phonorm.features.manifest import StoreManifest, StoreModel
from phonorm.features.plan import Plan, geometry_dict, plan_extraction, start_store, summary_line
from phonorm.features.shards import classic_part, run_share
from phonorm.features.writer import RowWriter
from phonorm.lock import folder_lock
from phonorm.memory import release_free_memory
from phonorm.records.kinds import GIVEN
from phonorm.settings import ExtractSettings

__all__ = ["ExtractSettings", "extract", "finish_store", "plan_extraction", "run_share", "start_store"]


def extract(corpus: str | Path, *, models: dict[str, str], out: str | Path, settings: ExtractSettings) -> str:
    """Extract every chosen layer of `models` (name → hub id or folder) on one split of `corpus`
    into the feature store `out`; resumes an interrupted run. Returns a one-paragraph summary.
    One writer per store (`lock`): a second extraction into the same folder is refused at once."""
    with folder_lock(out, "phonorm extract"):
        return _extract(corpus, models=models, out=out, settings=settings)


def _extract(corpus: str | Path, *, models: dict[str, str], out: str | Path, settings: ExtractSettings) -> str:
    from phonorm.launch import process_state

    state = process_state()
    plan = plan_extraction(corpus, models=models, out=out, settings=settings)
    if not plan.todo_models and not plan.todo_classic and (Path(out) / layout.MANIFEST_FILE).is_file():
        return f"{out}: already complete ({summary_line(plan)}); nothing to do"
    state.wait_for_everyone()
    if state.is_main_process:
        start_store(plan)
    state.wait_for_everyone()  # every share reads its rows' times back from frames.parquet
    plan.selection.close()  # the segments, needed only to generate the rows, leave memory
    if "segments" in vars(plan.corpus):
        del plan.corpus.segments  # (a cached_property)
    release_free_memory()
    run_share(plan, state.process_index, state.num_processes, device=state.device,
              progress=state.is_local_main_process)
    state.wait_for_everyone()
    message = f"{out}: process {state.process_index} done"
    if state.is_main_process:
        message = finish_store(plan, state.num_processes)
    state.wait_for_everyone()
    return message


# =========================================================================== finishing (main process)
def finish_store(plan: Plan, num_processes: int) -> str:
    """Main process, after every share is done: mark models complete, assemble the classic
    baselines, clean up, and write manifest.json last. Returns the summary."""
    tag = f"-of-{num_processes}.json"
    run_counts: dict[str, dict] = {}
    for spec in plan.todo_models:
        folder = plan.out / spec.name
        records = [folder / f".done-{p}{tag}" for p in range(num_processes)]
        missing = [r.name for r in records if not r.is_file()]
        if missing:
            raise PhonormError(f"{folder}: process shares not finished ({', '.join(missing)}); run again to resume")
        done = [read_json(r) for r in records]
        rows = sum(d["rows"] for d in done)
        if rows != plan.selection.rows:
            raise PhonormError(f"{folder}: shares hold {rows} rows, frames.parquet {plan.selection.rows}")
        run_counts[spec.name] = {"forward_passes": sum(d["counters"].get("forward_passes", 0) for d in done)}
        write_json(folder / ".complete.json", dict(key=spec.key, source=spec.source, parts=num_processes,
                                                   **run_counts[spec.name]))
        for leftover in folder.glob(".progress-*"):
            leftover.unlink()
        for leftover in folder.glob(".done-*"):
            leftover.unlink()
    if plan.todo_classic:
        _assemble_classic(plan, num_processes)
    build_manifest(plan, run_counts).save(plan.out)
    return f"{plan.out}: {summary_line(plan)}"


def _assemble_classic(plan: Plan, num_processes: int) -> None:
    folder = plan.out / layout.CLASSIC_DIR
    parts = folder / ".parts"
    arrays = {}
    for name in CLASSIC_DIMS:
        pieces = [np.load(classic_part(parts, name, p, num_processes)) for p in range(num_processes)]
        arrays[name] = np.concatenate(pieces, axis=0)
    speakers = pd.read_parquet(plan.out / layout.FRAMES_FILE, columns=["speaker"])["speaker"].to_numpy()
    z, counts = semitone_z(arrays["f0_hz"], speakers)
    arrays["f0_semitone_z"] = z
    for name, array in arrays.items():
        if array.shape[0] != plan.selection.rows:
            raise PhonormError(f"{folder}: {name} has {array.shape[0]} rows, frames.parquet {plan.selection.rows}")
        writer = RowWriter(folder / f"{name}.npy", array.shape[0], array.shape[1], "float32")
        writer.write(0, array)
        writer.finish()
    # rows without a value (unvoiced F0, an utterance too short for Praat): recorded so that `validate`
    # tells them from NaN that a damaged file gained later
    missing = {name: int((~np.isfinite(array).all(axis=1)).sum()) for name, array in arrays.items()}
    write_json(folder / ".complete.json", dict(rows_key=plan.key, **counts, rows_without_value=missing))
    shutil.rmtree(parts, ignore_errors=True)


def build_manifest(plan: Plan, run_counts: dict[str, dict]) -> StoreManifest:
    from phonorm.models.backbone import LAYER_CONVENTION
    from phonorm.records.card import ModelCard

    models: list[Any] = list(plan.kept_models)
    for spec in plan.models:
        complete = read_json(plan.out / spec.name / ".complete.json")
        card = ModelCard.load_if_any(spec.source)
        models.append(StoreModel(
            **spec.describe(), dtype=plan.settings.dtype, parts=int(complete.get("parts", 1)),
            forward_passes=complete.get("forward_passes"),
            folder=str(Path(spec.source).resolve()) if Path(spec.source).is_dir() else None,
            kind=card.kind if card else GIVEN, tasks=list(card.tasks) if card else [],
            base_model=card.base_model if card else None, key=complete.get("key"),
        ))
    classic_names: list[str] = []
    classic_counts: dict[str, Any] = {}
    if (plan.out / layout.CLASSIC_DIR / ".complete.json").is_file():
        classic_names = ["f0_hz", "f0_semitone_z", "mfcc"]
        classic_counts = read_json(plan.out / layout.CLASSIC_DIR / ".complete.json")
        classic_counts.pop("rows_key", None)
    settings = plan.settings.as_dict()
    return StoreManifest(
        format=layout.STORE_FORMAT, rows=plan.selection.rows,
        row_unit="segment" if plan.settings.pool == "segment" else "frame", models=models,
        layer_convention=LAYER_CONVENTION, classic=classic_names, classic_counts=classic_counts,
        geometry=geometry_dict(plan.geometry), corpus=str(plan.corpus.folder.resolve()),
        corpus_fingerprint=plan.corpus.fingerprint, rows_key=plan.key, counts=plan.selection.counts,
        settings=settings, provenance=provenance(settings),
    )
