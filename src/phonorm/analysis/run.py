"""`phonorm analyze F --reference NAME --out R`: every analysis of a feature store, and the claim checks.

Work is organised per (model, layer) so that memory stays bounded and interrupted runs resume:
1. one streamed pass over the layer (and, for similarity, the reference's layers on the same rows)
   accumulates d×d sums (similarity, PCA) and per-group sums (variance shares);
2. a row sample (at most `sample_rows`, the same share of every speaker, the same rows for every
   model) is read into memory for probes, silhouettes, 2-D PCA coordinates and UMAP.
Each (model, layer) result is saved under R/.parts/ with a key of the settings and the store; a
rerun with the same inputs reuses it. Then the tables, claims and figures are written (atomically).

The steps (each a function of typed inputs returning a typed result): `inputs.py` (settings, rows),
`sums.py` (the streamed pass), `steps.py` (similarity, PCA, normalization, probes, erasure,
projections of one layer; `LayerResult`), `layers.py` (a layer's steps in order, resumption),
`tables.py` (the tables, the claims step, the figures step); this module runs them in order.

The streamed pass also keeps, for the same-named reference layer, the fit/score halves of the
speakers (held-out values; their sum is the in-sample value), the reference read in within-speaker
permuted order (the permutation floor) and per-speaker sums (delete-one-speaker jackknife CIs of the
similarity measures, `intervals.JACKKNIFE_T`).
For models fine-tuned on tone, the sampled rows also go through LEACE erasure (erasure.py).

Outputs (R): similarity.csv (records/tables.py: one row type per table), layer_matrix/<model>__vs__<reference>__<measure>.csv
(rows: model's layers, columns: reference's layers), probes.csv, erasure.csv, normalization.csv (model, layer, measure, label, value, n),
projections/<model>__<layer>.parquet (row, labels, pc1, pc2, umap1, umap2, umap_fit) and
projections/pca_variance.parquet, claims.json (claims.py), figures/, settings.json. Classic
baselines appear as model "classic", layer = the feature's name. docs/statistics.md explains
the statistics.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from phonorm.analysis.evidence import model_tasks
from phonorm.analysis.inputs import Execution, LayerSettings, Rows, Seconds
from phonorm.analysis.kernels import Kernels
from phonorm.analysis.layers import LayerRunner
from phonorm.analysis.steps import LayerResult
from phonorm.analysis.sums import LayerSums
from phonorm.analysis.tables import (
    ClaimInputs,
    Tables,
    claims_step,
    figures_step,
    read_evaluations,
    write_layer_matrices,
)
from phonorm.artifacts import provenance, separate_folder, set_seed
from phonorm.errors import InputError
from phonorm.features.store import FeatureStore
from phonorm.lock import folder_lock
from phonorm.memory import limit_arenas, map_large_blocks, release_free_memory
from phonorm.progress import progress
from phonorm.records.analysis import AnalysisRecord
from phonorm.settings.analyze import AnalyzeSettings
from phonorm.wording import counted

COMPLETION_RECORD = AnalysisRecord.FILE


# =========================================================================== entry point
def analyze(features: str | Path, *, out: str | Path, settings: AnalyzeSettings, kernels: Kernels) -> str:
    """Run every analysis of the store `features`, write results under `out`; returns a summary line.
    `kernels`: the tensor library's work (analysis/kernels.py; `phonorm.analyze.analyze` hands in
    torch's). One writer per results folder (`lock`)."""
    separate_folder(out, features, "feature store")
    with folder_lock(out, "phonorm analyze"):
        return _analyze(features, out=Path(out), settings=settings, kernels=kernels)


def _analyze(features: str | Path, *, out: Path, settings: AnalyzeSettings, kernels: Kernels) -> str:
    set_seed(settings.seed)
    store = FeatureStore(features)
    models = _models(store, settings)
    frames = store.frames
    tasks, how = {}, {}
    for m in models:
        entry = store.model_record(m)
        tasks[m], how[m] = model_tasks(m, entry.kind, entry.tasks, settings.reference)
    evaluations = read_evaluations(settings.evaluations)
    erasure_models = ([] if not settings.erasure else
                      [m for m in (settings.erasure_models or [m for m in models if "tone" in tasks[m]]) if m in models])
    layer_settings, execution = LayerSettings.of(settings, erasure_models), Execution.of(settings, kernels)
    rows = Rows.of(frames, layer_settings, max(store.dim(m) for m in store.models), store.folder / "frames.parquet")
    timer = Seconds()
    layers = {m: store.layers(m) for m in models}

    _mark_unfinished(out)
    limit_arenas()
    map_large_blocks()
    from threadpoolctl import threadpool_limits

    # Parallel work runs on the pool's threads, closed even on an error; BLAS itself on one thread.
    with threadpool_limits(1), execution.pool() as pool:
        sums = LayerSums(store, rows, layer_settings, execution, pool, out / ".parts" / "scratch")
        with contextlib.closing(sums):
            runner = LayerRunner(store, rows, layer_settings, execution, sums, out, timer)
            by_layer, classic = _run_layers(runner, store, models, layers, settings.progress)

    work = [(m, layer) for m in models for layer in layers[m]]  # tables list model by model
    parts = [by_layer[w] for w in work] + list(classic.values())
    tables = Tables.of(parts)
    tables.write(out)
    matrices = write_layer_matrices(out, by_layer, models, layers, settings.reference) if settings.layer_matrix else {}
    with timer.timed("claims"):
        claim_rows = claims_step(out, tables, by_layer, ClaimInputs(settings.reference, models, layers, tasks, how,
                                                                      evaluations, frames))
    with timer.timed("figures"):
        figures = figures_step(out, tables, matrices, models, layers, settings.reference, settings.figures)
    AnalysisRecord.write(out, {  # last: the folder is a finished analysis from here on
        "settings": settings.model_dump(), "features": str(store.folder.resolve()),
        "store_rows": store.rows, "store_rows_key": store.record.rows_key, "models": models,
        "sample_rows_used": int(len(rows.sample)), "held_out_split": rows.held_out_summary(frames),
        "figures": figures, "table_rows": tables.row_counts(), "skipped_probes": [k for p in parts for k in p.skipped],
        "notes": [k for p in parts for k in p.similarity.notes], "erasure_models": erasure_models,
        "probes_not_converged": int((~tables.probes.converged.astype(bool)).sum()) if len(tables.probes) else 0,
        "classic_rows_without_value": {n: p.dropped_rows for n, p in classic.items()},
        "seconds": {part: round(value, 2) for part, value in sorted(timer.seconds.items())},
        "device": execution.device, "workers": execution.workers,
        "provenance": provenance(settings.model_dump()),
    })
    return _summary_line(store, models, layers, rows, tables, claim_rows, parts, settings, out)


def _models(store: FeatureStore, settings: AnalyzeSettings) -> list[str]:
    """The models analysed, the reference first; InputError naming a model the store lacks."""
    models = settings.models or store.models
    for name in [settings.reference, *models]:
        if name not in store.models:
            raise InputError(store.folder / "manifest.json",
                             f"no model {name!r} in this store; it holds: {', '.join(store.models)}")
    return [settings.reference] + [m for m in models if m != settings.reference]


def _run_layers(runner: LayerRunner, store: FeatureStore, models: list[str], layers: dict[str, list[str]],
                show: bool) -> tuple[dict[tuple[str, str], LayerResult], dict[str, LayerResult]]:
    """Every model layer's result, then every classic baseline's. Layer by layer (every model's L0,
    then every model's L1, ...): the reference layer's per-speaker sums are computed once per layer
    and shared by the models compared with it."""
    work = sorted(((m, layer) for m in models for layer in layers[m]),
                  key=lambda ml: (layers[ml[0]].index(ml[1]), models.index(ml[0])))
    bar = progress(total=len(work) + len(store.classic_names()), desc="analyze", unit="layer", enabled=show)
    by_layer: dict[tuple[str, str], LayerResult] = {}
    # One layer's probes stay on the worker threads while the next layer starts (its sums queue
    # behind them): a layer's last probe folds no longer leave a worker idle. At most one layer waits.
    waiting: list[tuple[tuple[str, str], Callable[[], LayerResult]]] = []

    def finish_waiting() -> None:
        for key, finish in waiting:
            by_layer[key] = finish()
            release_free_memory()
            bar.update()
        waiting.clear()

    for model, layer in work:
        bar.set_postfix_str(f"{model} {layer}")
        started = runner.start_layer_result(model, layer)
        finish_waiting()
        waiting.append(((model, layer), started))
    finish_waiting()
    classic: dict[str, LayerResult] = {}
    for name in store.classic_names():
        bar.set_postfix_str(f"classic {name}")
        with runner.timer.timed("classic baselines"):
            classic[name] = runner.classic_result(name)
        bar.update()
    bar.close()
    return by_layer, classic


def _summary_line(store: FeatureStore, models: list[str], layers: dict[str, list[str]], rows: Rows, tables: Tables,
                  claim_rows: list[dict], parts: list[LayerResult], settings: AnalyzeSettings, out: Path) -> str:
    verdicts = ", ".join(f"{c['claim']} {c['status']}" for c in claim_rows)
    skipped = sum(len(p.skipped) for p in parts)
    note = f"; {counted(skipped, 'probe')} skipped (see settings.json)" if skipped else ""
    probes = tables.probes
    if len(probes) and "folds" in probes.columns:  # StratifiedGroupKFold needs a group per fold at least
        used = probes.groupby("label").folds.min().astype(int)
        if (used < settings.folds).any():
            each = ", ".join(f"{label} {n}" for label, n in used.items())
            note += (f"; {settings.folds} folds asked, used: {each} (at most one per speaker of the sample; "
                     "per utterance for the speaker label)")
    return (f"analysed {len(models)} models ({sum(len(layers[m]) for m in models)} layers) on {store.rows} rows "
            f"({len(rows.sample)} sampled for probes/maps) → {out}; {verdicts}{note}")


def _mark_unfinished(out: Path) -> None:
    """Remove the completion record (settings.json, written last) before the first result is written:
    from here until this run writes it again, the folder mixes this run's files with an earlier run's,
    and `validate` and `report` must see it as unfinished rather than as the earlier analysis."""
    (out / COMPLETION_RECORD).unlink(missing_ok=True)
