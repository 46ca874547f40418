"""The steps of one layer's analysis, each a function of typed inputs returning a typed result:

- `similarity_step`: the layer's measures against the reference's layer of the same name (in-sample,
  held out, permutation floors, jackknife intervals) and against every reference layer (the matrix);
- `pca_step`: the layer's PCA (explained variance, `PCA_COMPONENTS_KEPT` components kept);
- `normalization_step`: variance shares of each factor; `silhouette_step`: silhouettes;
- `start_probes` / `start_erasure`: probes and LEACE erasure, started on the worker threads;
- `projection_step`: PCA (and UMAP) coordinates of the sampled rows, written to projections/.

`LayerResult` gathers a layer's results and saves/loads itself (R/.parts/<model>__<layer>.json)
with the inputs it was computed from; `layers.LayerRunner` runs the steps and reuses a saved result
whose inputs are the current ones. Table rows are dicts with the columns of `tables.py`.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from phonorm.analysis.erasure import start_erasure_probes
from phonorm.analysis.grouped import SpeakerSums
from phonorm.analysis.inputs import LayerSettings, Rows, Seconds, run_jobs
from phonorm.analysis.intervals import JACKKNIFE_T, Estimate
from phonorm.analysis.kernels import Kernels
from phonorm.analysis.normalization import GroupSums, silhouettes
from phonorm.analysis.probes import ProbeSolver, start_probe
from phonorm.analysis.projection import PCA, stratified_subsample, umap_map
from phonorm.analysis.similarity import ViewSums
from phonorm.analysis.sums import LayerSums, Streamed
from phonorm.artifacts import read_json, write_json, write_parquet
from phonorm.labels import LABELS, label_rows
from phonorm.layers import umap_layers
from phonorm.settings import PROBE_LABELS

PCA_COMPONENTS_KEPT = 100

Row = dict[str, Any]


# =========================================================================== typed results
@dataclass
class SimilarityResult:
    """`rows`: similarity.csv rows of the layer; `matrix`: reference layer → measure → value (the
    layer × layer matrix row); `cka`: [in-sample CKA, {speaker: CKA without that speaker}] (claim
    C2's jackknife), None without per-speaker sums; `notes`: what could not be computed, and why."""

    rows: list[Row] = field(default_factory=list)
    matrix: dict[str, dict[str, float]] = field(default_factory=dict)
    cka: Optional[list] = None
    notes: list[Row] = field(default_factory=list)


@dataclass
class ProbeResult:
    """probes.csv (or erasure.csv) rows with each row's `by_speaker` results; `skipped`: the probes
    that could not run, with the reason."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[Row] = field(default_factory=list)


@dataclass
class LayerResult:
    """Every result of one layer (or one classic baseline: `dropped_rows`, rows without a value)."""

    similarity: SimilarityResult = field(default_factory=SimilarityResult)
    probes: ProbeResult = field(default_factory=ProbeResult)
    erasure: ProbeResult = field(default_factory=ProbeResult)
    normalization: list[Row] = field(default_factory=list)
    pca: list[Row] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    dropped_rows: Optional[int] = None

    @property
    def skipped(self) -> list[Row]:
        return self.probes.skipped + self.erasure.skipped

    def save(self, path: Path, inputs: dict[str, Any]) -> None:
        write_json(path, {"inputs": inputs, "result": dataclasses.asdict(self)})

    @classmethod
    def load(cls, path: Path, inputs: dict[str, Any]) -> Optional[LayerResult]:
        """The result saved at `path` when it was computed from `inputs` (JSON values); else None."""
        if not path.is_file():
            return None
        try:
            saved = read_json(path)
            if saved.get("inputs") != inputs:
                return None
            result = saved["result"]
            return cls(similarity=SimilarityResult(**result["similarity"]), probes=ProbeResult(**result["probes"]),
                       erasure=ProbeResult(**result["erasure"]), normalization=result["normalization"],
                       pca=result["pca"], seconds=result["seconds"], dropped_rows=result["dropped_rows"])
        except (ValueError, KeyError, TypeError, AttributeError):  # damaged or of an older format: compute again
            return None


# =========================================================================== similarity
def similarity_step(sums: LayerSums, rows: Rows, settings: LayerSettings, timer: Seconds, model: str, layer: str,
                    streamed: Streamed, x: np.ndarray) -> SimilarityResult:
    """The layer's similarity rows and matrix row. Every measure evaluation of the layer (LAPACK on
    d×d matrices) runs as one job list on the worker threads (numpy releases the GIL in LAPACK)."""
    ref, kw, pairs = settings.reference, settings.svcca(), streamed.pairs
    result = SimilarityResult()
    jobs: dict[Any, Any] = {}
    cells: dict[str, tuple] = {}
    whole, fit = pairs.whole, pairs.fit
    if whole is not None:
        jobs["in_sample"] = lambda: whole.measures(**kw)
        if fit is not None and pairs.score is not None:
            score = pairs.score
            jobs["held_out"] = lambda: score.measures(fit=fit, **kw)
        if pairs.floor is not None:
            floor = pairs.floor
            jobs["floor"] = lambda: floor.measures(**kw)
            if fit is not None and pairs.floor_score is not None:
                floor_score, floor_fit = pairs.floor_score, pairs.floor_fit
                jobs["held_floor"] = lambda: floor_score.measures(fit=floor_fit, **kw)
    matrix = model != ref and settings.layer_matrix
    if matrix:
        with timer.timed("layer matrix sums (sample rows)"):
            cells = sums.matrix_pairs(x, model, layer)
        for partner, (fit_cell, score_cell) in cells.items():
            jobs[("matrix", partner)] = lambda f=fit_cell, c=score_cell: c.measures(fit=f, **kw)
    with timer.timed("similarity measures"):
        values = run_jobs(sums.pool, jobs)
    cells.clear()
    for partner in sums.store.layers(ref) if matrix else []:
        result.matrix[partner] = values[("matrix", partner)]
    if whole is not None:
        _same_layer_rows(result, sums, rows, settings, timer, model, layer, streamed, values)
    return result


def _same_layer_rows(result: SimilarityResult, sums: LayerSums, rows: Rows, settings: LayerSettings, timer: Seconds,
                     model: str, layer: str, streamed: Streamed, values: dict) -> None:
    """similarity.csv's rows of the layer against the reference's layer of the same name."""
    pairs = streamed.pairs
    whole, fit = pairs.whole, pairs.fit
    assert whole is not None
    in_sample = values["in_sample"]
    held_out, floor, held_floor = (values.get(k, {}) for k in ("held_out", "floor", "held_floor"))
    intervals: dict[str, tuple[float, float]] = {}
    if pairs.speakers is not None and len(rows.speaker_names) >= 2:
        with timer.timed("similarity jackknife"):
            left_out = _left_out(sums.pool, rows, settings, pairs.speakers, in_sample)
        result.cka = [in_sample["cka"], left_out["cka"]]
        intervals = {m: Estimate(v, left_out[m], JACKKNIFE_T).interval() for m, v in in_sample.items()
                     if m in left_out}
    elif pairs.speakers is None:
        result.notes.append(dict(model=model, layer=layer, note="no similarity intervals: per-speaker "
                                 "sums would exceed speaker_sums_max_bytes"))
    dims = whole.x.dim + whole.y.dim
    if dims > whole.n or (fit is not None and dims > fit.n):
        result.notes.append(dict(model=model, layer=layer, note=f"pwcca ill-posed: dx + dy = {dims} > "
                                 f"rows ({whole.n} in sample, {fit.n if fit is not None else '-'} fitting)"))
    nan = float("nan")
    for measure, value in in_sample.items():
        low, high = intervals.get(measure, (nan, nan))
        result.rows.append(dict(
            model=model, reference=settings.reference, layer=layer, measure=measure, value=value, ci_low=low,
            ci_high=high, ci_method=JACKKNIFE_T if measure in intervals else "", floor=floor.get(measure, nan),
            held_out_value=held_out.get(measure, nan), held_out_floor=held_floor.get(measure, nan), n=whole.n,
            n_fit=fit.n if fit is not None else 0,
            n_score=pairs.score.n if fit is not None and pairs.score is not None else 0,
            speakers=len(rows.speaker_names)))


def _left_out(pool: ThreadPoolExecutor, rows: Rows, settings: LayerSettings, sums: SpeakerSums,
              in_sample: dict[str, float]) -> dict[str, dict[str, float]]:
    """{measure: {speaker: the measure without that speaker}}: the delete-one-speaker jackknife of
    linear CKA (from the per-speaker sums, O(S³) each) and, with `similarity_jackknife`, of every
    other measure (one evaluation per speaker, on the worker threads)."""
    speakers = [str(s) for s in rows.speaker_names]
    keep = ~np.eye(len(speakers), dtype=bool)
    left_out = {"cka": dict(zip(speakers, map(float, sums.cka(keep.astype(np.float64)))))}
    if settings.similarity_jackknife:
        kw = settings.svcca()
        values = run_jobs(pool, {s: lambda row=row: sums.pair(row).measures(**kw) for s, row in zip(speakers, keep)})
        for measure in in_sample:
            if measure != "cka":
                left_out[measure] = {s: float(values[s][measure]) for s in speakers}
    return left_out


# =========================================================================== PCA and normalization
def pca_step(view: ViewSums, settings: LayerSettings, model: str, layer: str) -> tuple[list[Row], PCA]:
    """(pca_variance rows of the first `PCA_COMPONENTS_KEPT` components, the PCA the projections use)."""
    pca = PCA.from_sums(view, k=max(settings.umap_dims, 2))
    full = PCA.from_sums(view)
    cumulative = np.cumsum(full.explained)
    rows = [dict(model=model, layer=layer, component=i + 1, variance=float(full.variance[i]),
                 explained=float(full.explained[i]), cumulative=float(cumulative[i]))
            for i in range(min(PCA_COMPONENTS_KEPT, len(full.explained)))]
    return rows, pca


def normalization_step(groups: dict[str, GroupSums], model: str, layer: str) -> list[Row]:
    """normalization.csv's variance shares (and their standard deviations) of each factor."""
    rows = []
    for factor, sums in groups.items():
        share = sums.variance_share()
        rows += [dict(model=model, layer=layer, measure="variance_share", label=factor, value=share["share"],
                      n=share["n"]),
                 dict(model=model, layer=layer, measure="variance_share_std", label=factor, value=share["share_std"],
                      n=share["n"])]
    return rows


def silhouette_step(rows: Rows, settings: LayerSettings, model: str, layer: str, x: np.ndarray) -> list[Row]:
    """normalization.csv's silhouettes of each label on the sampled rows `x` (sample, dim)."""
    if settings.silhouette_rows <= 0:
        return []
    labelled = {label: label_rows(rows.sample_frames, label) for label in PROBE_LABELS}
    values = silhouettes(x, labelled, settings.seed, settings.silhouette_rows)
    return [dict(model=model, layer=layer, measure="silhouette", label=label, value=values[label],
                 n=int(min(len(index), settings.silhouette_rows))) for label, (index, _) in labelled.items()]


# =========================================================================== probes and erasure
def solver(settings: LayerSettings, kernels: Kernels) -> ProbeSolver:
    """The probes' solver of an analysis: its family and iterations, on the kernels' device."""
    return ProbeSolver(settings.probe, settings.probe_max_iter, kernels)


def start_probes(pool: ThreadPoolExecutor, rows: Rows, settings: LayerSettings, kernels: Kernels, model: str, layer: str,
                 x: np.ndarray, valid: np.ndarray | None = None) -> Callable[[], ProbeResult]:
    """Start every label's probe on the worker threads; returns a function that waits for the result.
    `valid` (sample,): rows with a value (classic baselines), the others dropped and counted."""
    frames = rows.sample_frames
    ready, skipped = [], []
    for label in settings.labels:
        index, values = label_rows(frames, label)
        dropped = 0
        if valid is not None:
            keep = valid[index]
            dropped = int((~keep).sum())
            index, values = index[keep], values[keep]
        speaker_disjoint = LABELS[label].probe_groups == "speaker"
        if speaker_disjoint:
            # A class heard from one speaker only can never be tested speaker-disjointly.
            speakers = frames["speaker"].to_numpy()[index]
            per_class = pd.Series(speakers).groupby(values).nunique()
            keep = np.isin(values, per_class.index[per_class >= 2])
            dropped += int((~keep).sum())
            index, values = index[keep], values[keep]
        classes = len(np.unique(values))
        if classes < 2:
            skipped.append(dict(model=model, layer=layer, label=label,
                                reason="fewer than 2 classes with at least 2 speakers each"))
            continue
        ready.append((label, dropped, index, values, speaker_disjoint, classes))
    started = {}
    # The labels with most classes first: their folds take longest (a 61-class phone fold ~10 times
    # a two-class one), and a long fold started last would leave the other worker idle meanwhile.
    for label, dropped, index, values, speaker_disjoint, _ in sorted(ready, key=lambda r: -r[-1]):
        try:
            started[label] = (dropped, start_probe(
                x, values, frames["speaker"].to_numpy()[index], frames["utterance_id"].to_numpy()[index],
                pool.submit, folds=settings.folds, seed=settings.seed, rows=index,
                speaker_label=not speaker_disjoint, solver=solver(settings, kernels)))
        except ValueError as err:  # fewer than 2 speakers/utterances with this label
            skipped.append(dict(model=model, layer=layer, label=label, reason=str(err)))

    def result() -> ProbeResult:
        done = []
        for label in settings.labels:  # probes.csv lists the labels in the settings' order
            if label not in started:
                continue
            dropped, finish = started[label]
            fitted = finish()
            done.append(dict(model=model, layer=layer, label=label, dropped=dropped, **fitted.row(),
                             by_speaker=fitted.by_speaker))
        return ProbeResult(done, skipped)
    return result


def start_erasure(pool: ThreadPoolExecutor, rows: Rows, settings: LayerSettings, kernels: Kernels, model: str,
                  layer: str, x: np.ndarray) -> Callable[[], ProbeResult]:
    """Start the erasure probes on the worker threads; returns a function that waits for the result."""
    f = rows.sample_frames
    try:
        finish = start_erasure_probes(
            x, f["tone"].to_numpy(), f["sex"].astype(str).to_numpy(), f["speaker"].astype(str).to_numpy(),
            pool.submit, kernels=kernels, folds=settings.folds, seed=settings.seed, solver=solver(settings, kernels))
    except ValueError as err:
        skipped = [dict(model=model, layer=layer, label="erasure", reason=str(err))]
        return lambda: ProbeResult([], skipped)
    return lambda: ProbeResult([dict(model=model, layer=layer, **r) for r in finish()])


# =========================================================================== projections
def umap_fit_index(rows: Rows, settings: LayerSettings) -> np.ndarray:
    """Sample positions UMAP is fitted on: stratified by speaker and tone, the same for every layer."""
    f = rows.sample_frames
    return stratified_subsample(f["speaker"].astype(str).to_numpy(), f["tone"].astype(str).to_numpy(),
                                settings.umap_fit_rows, settings.seed)


def projection_step(out: Path, rows: Rows, settings: LayerSettings, model: str, layer: str, layers: list[str],
                    x: np.ndarray, pca: PCA, umap_fit: Callable[[], np.ndarray]) -> None:
    """projections/<model>__<layer>.parquet: the sampled rows' labels, PCA coordinates and (for the
    first, middle and last of the model's `layers`, or all with umap_all_layers) UMAP coordinates."""
    table = rows.sample_frames[["row", "utterance_id", "speaker", "sex", "tone", "phone"]].copy()
    coords = pca.transform(x, k=max(settings.umap_dims, 2))
    table["pc1"], table["pc2"] = coords[:, 0], coords[:, 1]
    table["umap1"] = table["umap2"] = np.float32("nan")
    table["umap_fit"] = False
    wanted = settings.umap_all_layers or layer in umap_layers(layers)
    if settings.umap and wanted and len(x) >= 10:
        fit = umap_fit()
        mapped = umap_map(coords[:, : settings.umap_dims], fit, settings.seed)
        table["umap1"], table["umap2"] = mapped[:, 0], mapped[:, 1]
        table.loc[fit, "umap_fit"] = True
    write_parquet(out / "projections" / f"{model}__{layer}.parquet", table)
