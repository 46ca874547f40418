"""`phonorm analyze F --reference NAME --out R`: every analysis of a feature store, and the claim checks.

Work is organised per (model, layer) so that memory stays bounded and interrupted runs resume:
1. one streamed pass over the layer (and, for similarity, the reference's layers on the same rows)
   accumulates d×d sums (similarity, PCA) and per-group sums (variance shares);
2. a row sample (at most `sample_rows`, the same share of every speaker, the same rows for every
   model) is read into memory for probes, silhouettes, 2-D PCA coordinates and UMAP.
Each (model, layer) result is saved under R/.parts/ with a key of the settings and the store; a
rerun with the same key reuses it. Then the tables, claims and figures are written (atomically).

The streamed pass also keeps, for the same-named reference layer, the fit/score halves of the
speakers (held-out values; their sum is the in-sample value), the reference read in within-speaker
permuted order (the permutation floor) and per-speaker sums (delete-one-speaker jackknife CIs of the
similarity measures, `intervals.JACKKNIFE_T`).
For models fine-tuned on tone, the sampled rows also go through LEACE erasure (erasure.py).

Outputs (R): similarity.csv (SIMILARITY_COLUMNS), layer_matrix/<model>__vs__<reference>__<measure>.csv
(rows: model's layers, columns: reference's layers), probes.csv (PROBE_COLUMNS), erasure.csv
(ERASURE_COLUMNS), normalization.csv (model, layer, measure, label, value, n),
projections/<model>__<layer>.parquet (row, labels, pc1, pc2, umap1, umap2, umap_fit) and
projections/pca_variance.parquet, claims.json (claims.py), figures/, settings.json. Classic
baselines appear as model "classic", layer = the feature's name. docs/statistics.md explains
the statistics.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from phonorm.analysis import claims as claims_mod
from phonorm.analysis.caveats import speaker_caveat, speakers_per_sex, with_speaker_caveat
from phonorm.analysis.erasure import start_erasure_probes
from phonorm.analysis.intervals import JACKKNIFE_T, Estimate
from phonorm.analysis.normalization import GroupSums, silhouette
from phonorm.analysis.probes import label_rows, sample_rows, start_probe
from phonorm.analysis.projection import PCA, stratified_subsample, umap_layers, umap_map
from phonorm.analysis.similarity import (
    MEASURES,
    PRODUCT_DTYPES,
    CrossSums,
    GroupedCrossSums,
    GroupedViewSums,
    PairSums,
    SpeakerSums,
    ViewSums,
    as_block,
    group_runs,
    head_shift,
    row_norms,
)
from phonorm.artifacts import atomic_path, code_hash, provenance, read_json, set_seed, write_json, write_parquet
from phonorm.errors import InputError, PhonormError
from phonorm.lock import folder_lock
from phonorm.memory import limit_arenas, map_large_blocks, release_free_memory
from phonorm.progress import progress
from phonorm.settings import AnalyzeSettings
from phonorm.wording import counted

FACTORS = ("speaker", "sex", "tone", "phone")
PCA_COMPONENTS_KEPT = 100


# =========================================================================== entry point
def analyze(features: str | Path, *, out: str | Path, settings: AnalyzeSettings) -> str:
    """Run every analysis of the store `features`, write results under `out`; returns a summary line.
    One writer per results folder (`lock`)."""
    with folder_lock(out, "phonorm analyze"):
        return _analyze(features, out=Path(out), settings=settings)


def _analyze(features: str | Path, *, out: Path, settings: AnalyzeSettings) -> str:
    from phonorm.features.store import FeatureStore

    set_seed(settings.seed)
    store = FeatureStore(features)
    out = Path(out)
    models = settings.models or store.models
    for name in [settings.reference, *models]:
        if name not in store.models:
            raise InputError(store.folder / "manifest.json",
                             f"no model {name!r} in this store; it holds: {', '.join(store.models)}")
    models = [settings.reference] + [m for m in models if m != settings.reference]
    frames = store.frames
    tasks, how = {}, {}
    for m in models:
        tasks[m], how[m] = claims_mod.model_tasks(m, store.model_info(m), settings.reference)
    evaluations = _read_evaluations(settings.evaluations)
    erasure_models = ([] if not settings.erasure else
                      [m for m in (settings.erasure_models or [m for m in models if "tone" in tasks[m]]) if m in models])
    ctx = _Context(store, frames, settings, out, erasure_models)

    # Layer by layer (every model's L0, then every model's L1, ...): the reference layer's per-speaker
    # sums are computed once per layer and shared by the models compared with it.
    work = sorted(((m, layer) for m in models for layer in store.layers(m)),
                  key=lambda ml: (store.layers(ml[0]).index(ml[1]), models.index(ml[0])))
    bar = progress(total=len(work) + len(store.classic_names()), desc="analyze", unit="layer",
                   enabled=settings.progress)
    from threadpoolctl import threadpool_limits

    done = {}
    _mark_unfinished(out)
    limit_arenas()
    map_large_blocks()
    # Parallel work runs on ctx.pool's threads (see _Context.__init__), closed even on an error.
    with threadpool_limits(1), ctx.pool, contextlib.closing(ctx):
        for model, layer in work:
            bar.set_postfix_str(f"{model} {layer}")
            done[(model, layer)] = ctx.layer_result(model, layer)
            release_free_memory()
            bar.update()
        work = [(m, layer) for m in models for layer in store.layers(m)]  # tables list model by model
        parts = [done[w] for w in work]
        for name in store.classic_names():
            bar.set_postfix_str(f"classic {name}")
            with ctx.timed("classic baselines"):
                parts.append(ctx.classic_result(name))
            bar.update()
    bar.close()

    similarity = pd.DataFrame([r for p in parts for r in p["similarity"]], columns=SIMILARITY_COLUMNS)
    probe_rows = [r for p in parts for r in p["probes"]]
    probes = pd.DataFrame([{k: v for k, v in r.items() if k != "by_speaker"} for r in probe_rows],
                          columns=PROBE_COLUMNS)
    erasure_rows = [r for p in parts for r in p.get("erasure", [])]
    erasure = pd.DataFrame([{k: v for k, v in r.items() if k != "by_speaker"} for r in erasure_rows],
                           columns=ERASURE_COLUMNS)
    normalization = pd.DataFrame([r for p in parts for r in p["normalization"]],
                                 columns=["model", "layer", "measure", "label", "value", "n"])
    pca_variance = pd.DataFrame([r for p in parts for r in p["pca"]],
                                columns=["model", "layer", "component", "variance", "explained", "cumulative"])

    _write_csv(out / "similarity.csv", similarity)
    _write_csv(out / "probes.csv", probes)
    _write_csv(out / "erasure.csv", erasure)
    _write_csv(out / "normalization.csv", normalization)
    write_parquet(out / "projections" / "pca_variance.parquet", pca_variance)
    matrices = ctx.write_layer_matrices(dict(zip(work, parts)), models)

    layers = {m: store.layers(m) for m in models}
    evidence = claims_mod.Evidence(
        probes={(r["model"], r["layer"], r["label"]): r for r in probe_rows}, layers=layers,
        reference=settings.reference, tasks=tasks, evaluations={m: e["tasks"] for m, e in evaluations.items()},
        evaluation_sources={m: e["file"] for m, e in evaluations.items()},
        cka={(m, layer): (p["cka"][0], p["cka"][1]) for (m, layer), p in zip(work, parts) if p.get("cka")},
        secondary={(r["model"], r["layer"]): {"svcca_fixed_held_out": r["held_out_value"]}
                   for r in similarity.to_dict("records") if r["measure"] == "svcca_fixed"},
        erasure={(r["model"], r["layer"], r["erased"], r["probed"]): r for r in erasure_rows})
    speakers = speakers_per_sex(frames)
    with ctx.timed("claims"):
        claim_rows = with_speaker_caveat(claims_mod.check_claims(evidence), speakers)
    write_json(out / "claims.json", {
        "claims": claim_rows, "model_tasks": tasks, "tasks_found_from": how, "reference": settings.reference,
        "constants": claims_mod.constants(), "top_layer": {m: layers[m][-1] for m in models},
        "intervals": {**claims_mod.intervals_used(), **evidence.speakers()},
        "evaluations": {m: {"file": e["file"], "split": e.get("split"),
                            "per_speaker": all(isinstance(t, dict) and bool(t.get("by_speaker"))
                                               for t in e["tasks"].values())} for m, e in evaluations.items()},
        "evaluations_missing": [m for m in models if tasks[m] and m not in evaluations],
        "speakers_per_sex": speakers, "caveat": speaker_caveat(speakers),
        "splits": sorted(frames["split"].astype(str).unique()),
    })

    from phonorm.figures import draw_all

    with ctx.timed("figures"):
        figures = [] if not settings.figures else draw_all(out, similarity=similarity, probes=probes, normalization=normalization,
                       pca_variance=pca_variance, matrices=matrices, models=models, layers=layers,
                           reference=settings.reference, projections=out / "projections", erasure=erasure)
    _remove_stale(out / "figures", {(out / f).resolve() for f in figures})
    _remove_stale(out / "layer_matrix", {(out / "layer_matrix" / f"{name}.csv").resolve() for name in matrices})
    write_json(out / COMPLETION_RECORD, {  # last: the folder is a finished analysis from here on
        "settings": settings.model_dump(), "features": str(store.folder.resolve()),
        "store_rows": store.rows, "store_rows_key": store.manifest.get("rows_key"), "models": models,
        "sample_rows_used": int(len(ctx.sample)), "held_out_split": ctx.held_out_summary(),
        "figures": figures, "skipped_probes": [k for p in parts for k in p.get("skipped", [])],
        "notes": [k for p in parts for k in p.get("notes", [])], "erasure_models": erasure_models,
        "probes_not_converged": int((~probes.converged.astype(bool)).sum()) if len(probes) else 0,
        "classic_rows_without_value": {n: p.get("dropped_rows") for n, p in
                                       zip(store.classic_names(), parts[len(work):])},
        "seconds": {part: round(value, 2) for part, value in sorted(ctx.seconds.items())},
        "device": ctx.device, "workers": ctx.workers,
        "provenance": provenance(settings.model_dump()),
    })
    verdicts = ", ".join(f"{c['claim']} {c['status']}" for c in claim_rows)
    skipped = sum(len(p.get("skipped", [])) for p in parts)
    note = f"; {counted(skipped, 'probe')} skipped (see settings.json)" if skipped else ""
    used = int(probes.folds.max()) if len(probes) and "folds" in probes.columns else settings.folds
    if used < settings.folds:  # StratifiedGroupKFold needs a speaker per fold at least
        note += f"; {settings.folds} folds asked, {used} used (at most one per speaker of the sample)"
    return (f"analysed {len(models)} models ({sum(len(layers[m]) for m in models)} layers) on {store.rows} rows "
            f"({len(ctx.sample)} sampled for probes/maps) → {out}; {verdicts}{note}")


SIMILARITY_COLUMNS = ["model", "reference", "layer", "measure", "value", "ci_low", "ci_high", "ci_method", "floor",
                      "held_out_value", "held_out_floor", "n", "n_fit", "n_score", "speakers"]
PROBE_COLUMNS = ["model", "layer", "label", "accuracy", "chance", "chance_method", "ci_low", "ci_high", "ci_method", "n",
                 "folds", "classes", "dropped", "iterations", "converged"]
ERASURE_COLUMNS = ["model", "layer", "erased", "probed", "accuracy", "chance", "chance_method", "ci_low", "ci_high",
                   "ci_method", "change", "change_ci_low", "change_ci_high", "balanced_accuracy", "balanced_chance", "above_chance", "above_chance_ci_low",
                   "above_chance_ci_high", "above_chance_ci_level", "at_chance", "equivalence_margin", "n", "speakers",
                   "folds", "roles", "iterations", "converged"]


def _read_evaluations(files: Optional[dict[str, str]]) -> dict[str, dict]:
    """model → {file, split, tasks} from evaluation.json files (`evaluate`'s dict under `tasks`)."""
    result = {}
    for model, file in (files or {}).items():
        path = Path(file)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise InputError(path, f"cannot read the evaluation of model {model!r}: {err.strerror or err}") from None
        except ValueError as err:
            raise InputError(path, f"is not valid JSON: {err}") from None
        tasks = data.get("tasks") if isinstance(data, dict) else None
        if not isinstance(tasks, dict):
            raise InputError(path, "has no `tasks` object (expected the evaluation.json that `phonorm run` writes)")
        result[model] = {"file": str(path), "split": data.get("split"), "tasks": tasks}
    return result


def _mark_unfinished(out: Path) -> None:
    """Remove the completion record (settings.json, written last) before the first result is written:
    from here until this run writes it again, the folder mixes this run's files with an earlier run's,
    and `validate` and `report` must see it as unfinished rather than as the earlier analysis."""
    (out / COMPLETION_RECORD).unlink(missing_ok=True)


COMPLETION_RECORD = "settings.json"


def _remove_stale(folder: Path, keep: set[Path]) -> None:
    """Delete what an earlier run with other settings left in `folder` (e.g. UMAP maps after a re-run
    with --no-umap), so the folder holds exactly this run's outputs."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.resolve() not in keep:
                path.unlink()


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


# =========================================================================== per-layer work
class _Context:
    def __init__(self, store, frames: pd.DataFrame, settings: AnalyzeSettings, out: Path,
                 erasure_models: list[str] | None = None):
        self.store, self.frames, self.settings, self.out = store, frames, settings, out
        self.erasure_models = list(erasure_models or [])
        self.sample = sample_rows(frames, settings.sample_rows, settings.seed)
        self.sample_frames = frames.iloc[self.sample].reset_index(drop=True)
        self.codes = {f: _codes(frames, f) for f in FACTORS}
        self.part = self._held_out_parts()
        speakers = frames["speaker"].astype(str).to_numpy()
        self.speaker_names, self.speaker_codes = np.unique(speakers, return_inverse=True)
        # The permutation floor pairs each row with another row of the same speaker (seeded, fixed).
        self.permutation = _within_speaker_permutation(self.speaker_codes, settings.seed) \
            if settings.similarity_floor else None
        # Pair sums are kept per speaker (jackknife intervals; any set of speakers, e.g. the held-out
        # halves, is then a sum) when that fits in speaker_sums_max_bytes, else per half.
        dim = max(store.dim(m) for m in store.models)
        n_speakers = len(self.speaker_names)
        self.groups_are_speakers = (SpeakerSums.nbytes(n_speakers, dim, dim) + 8 * n_speakers * dim * dim
                                    <= settings.speaker_sums_max_bytes)
        if self.groups_are_speakers:
            self.group_codes, self.n_groups = self.speaker_codes.astype(np.int64), n_speakers
            half_of = np.zeros(n_speakers, dtype=np.int8)
            if self.part is not None:
                half_of[self.speaker_codes] = self.part
            self.half_masks = None if self.part is None else [half_of == 0, half_of == 1]
        elif self.part is not None:
            self.group_codes, self.n_groups = self.part.astype(np.int64), 2
            self.half_masks = [np.array([True, False]), np.array([False, True])]
        else:
            self.group_codes, self.n_groups = np.zeros(len(frames), dtype=np.int64), 1
            self.half_masks = None
        self.device = _device(settings.device)
        self.dtype = PRODUCT_DTYPES[settings.products]  # each block's products; the sums stay float64
        self.workers = settings.workers or os.cpu_count() or 1
        # Worker threads for independent d×d products and decompositions. BLAS itself runs with one
        # thread (`analyze`): OpenBLAS's own threads were measured 100-1000× slower on small and
        # skinny products when the machine's cores are busy (a 20 × 590,000 product: 18 s vs 0.02 s).
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self._ref_groups: Optional[tuple[str, GroupedViewSums]] = None
        self._ref_views: dict[str, ViewSums] = {}  # the current reference layer's views per part
        self._ref_samples: dict[str, tuple] = {}
        self.key = self._key()
        self._umap_fit: Optional[np.ndarray] = None
        self.skipped: list[dict] = []  # probes that could not be run, with the reason
        self.seconds: dict[str, float] = collections.defaultdict(float)  # wall time per part (settings.json)

    @contextlib.contextmanager
    def timed(self, part: str):
        """Add the wall time of the block to `self.seconds[part]` (where an analysis spends its time)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    # ------------------------------------------------------------------ bookkeeping
    def _held_out_parts(self) -> np.ndarray | None:
        """Per row: 0 = fit half, 1 = score half of the speakers (held-out similarity); None with
        fewer than 2 speakers (held-out values are then NaN; an error when --held-out asked for them)."""
        speakers = np.unique(self.frames["speaker"].astype(str))
        if len(speakers) < 2:
            if self.settings.held_out:
                raise InputError(self.store.folder / "frames.parquet", "--held-out needs at least 2 speakers")
            return None
        rng = np.random.default_rng(self.settings.seed)
        fit = set(rng.permutation(speakers)[: len(speakers) // 2])
        return np.where(self.frames["speaker"].astype(str).isin(fit).to_numpy(), 0, 1).astype(np.int8)

    def held_out_summary(self) -> dict | None:
        if self.part is None:
            return None
        spk = self.frames["speaker"].astype(str).to_numpy()
        return {"fit_speakers": sorted(set(spk[self.part == 0])), "score_speakers": sorted(set(spk[self.part == 1]))}

    def _key(self) -> str:
        s = self.settings.model_dump()
        # They do not change any per-layer number (the device and the thread count change only rounding).
        for name in ("progress", "figures", "block", "evaluations", "device", "workers"):
            s.pop(name, None)
        payload = json.dumps({"settings": s, "analysis_code": code_hash("phonorm.analysis.run"), "rows_key": self.store.manifest.get("rows_key"),
                              "rows": self.store.rows, "store": str(self.store.folder.resolve()),
                              "models": self.store.manifest.get("models")}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _cached(self, name: str, compute) -> dict:
        path = self.out / ".parts" / f"{name}.json"
        if path.is_file():
            try:
                saved = read_json(path)
                if saved.get("key") == self.key:
                    return saved["result"]
            except ValueError:
                pass
        result = compute()
        write_json(path, {"key": self.key, "result": result})
        return result

    # ------------------------------------------------------------------ a model layer
    def layer_result(self, model: str, layer: str) -> dict:
        return self._cached(f"{model}__{layer}", lambda: self._timed_layer(model, layer))

    def _timed_layer(self, model: str, layer: str) -> dict:
        """`_compute_layer` with its seconds per part in the result (`seconds`: an interrupted run's
        saved parts still tell where the time went)."""
        before = dict(self.seconds)
        result = self._compute_layer(model, layer)
        result["seconds"] = {part: round(value - before.get(part, 0.0), 3) for part, value in self.seconds.items()
                             if value - before.get(part, 0.0) > 0}
        return result

    def _compute_layer(self, model: str, layer: str) -> dict:
        s = self.settings
        ref = s.reference
        same = layer if model != ref and layer in self.store.layers(ref) else None
        with self.timed("similarity sums (all rows)"):
            sums = self._stream(model, layer, same)
        result: dict[str, Any] = {"similarity": [], "matrix": {}, "probes": [], "normalization": [], "pca": [],
                                  "notes": []}
        kw = dict(keep=s.svcca_keep, rule=s.svcca_rule, dims=s.svcca_dims)
        with self.timed("read sample rows"):
            x = self._read_sample(model, layer)
        # Every measure evaluation of this layer (LAPACK on d×d matrices) as one job list, run in
        # parallel threads (numpy releases the GIL in LAPACK; one BLAS thread per job).
        jobs: dict[Any, Any] = {}
        cells: dict[str, tuple] = {}
        pairs = sums["pairs"]
        if same is not None:
            jobs["in_sample"] = lambda: pairs["whole"].measures(**kw)
            if pairs["fit"] is not None:
                jobs["held_out"] = lambda: pairs["score"].measures(fit=pairs["fit"], **kw)
            if pairs["floor"] is not None:
                jobs["floor"] = lambda: pairs["floor"].measures(**kw)
                if pairs["fit"] is not None:
                    jobs["held_floor"] = lambda: pairs["floor_score"].measures(fit=pairs["floor_fit"], **kw)
        if model != ref and s.layer_matrix:
            with self.timed("layer matrix sums (sample rows)"):
                cells = self._matrix_pairs(x, model, layer)
            for partner, (fit, score) in cells.items():
                jobs[("matrix", partner)] = lambda f=fit, c=score: c.measures(fit=f, **kw)
        with self.timed("similarity measures"):
            values = self._run_jobs(jobs)
        for partner in self.store.layers(ref) if model != ref and s.layer_matrix else []:
            result["matrix"][partner] = values[("matrix", partner)]
        if same is not None:
            in_sample = values["in_sample"]
            held_out, floor, held_floor = (values.get(k, {}) for k in ("held_out", "floor", "held_floor"))
            whole, fit = pairs["whole"], pairs["fit"]
            intervals: dict[str, tuple[float, float]] = {}
            if pairs["speakers"] is not None and len(self.speaker_names) >= 2:
                with self.timed("similarity jackknife"):
                    left_out = self._left_out(pairs["speakers"], in_sample, kw)
                result["cka"] = [in_sample["cka"], left_out["cka"]]
                intervals = {m: Estimate(v, left_out[m], JACKKNIFE_T).interval() for m, v in in_sample.items()
                             if m in left_out}
            elif pairs["speakers"] is None:
                result["notes"].append(dict(model=model, layer=layer, note="no similarity intervals: per-speaker "
                                            "sums would exceed speaker_sums_max_bytes"))
            dims = whole.x.dim + whole.y.dim
            if dims > whole.n or (fit is not None and dims > fit.n):
                result["notes"].append(dict(model=model, layer=layer, note=f"pwcca ill-posed: dx + dy = {dims} > "
                                            f"rows ({whole.n} in sample, {fit.n if fit is not None else '-'} fitting)"))
            nan = float("nan")
            for measure, value in in_sample.items():
                low, high = intervals.get(measure, (nan, nan))
                result["similarity"].append(dict(
                    model=model, reference=ref, layer=layer, measure=measure, value=value, ci_low=low, ci_high=high,
                    ci_method=JACKKNIFE_T if measure in intervals else "", floor=floor.get(measure, nan),
                    held_out_value=held_out.get(measure, nan),
                    held_out_floor=held_floor.get(measure, nan), n=whole.n, n_fit=fit.n if fit is not None else 0,
                    n_score=pairs["score"].n if fit is not None else 0, speakers=len(self.speaker_names)))
        view = sums["view"]
        for factor, groups in sums["groups"].items():
            share = groups.variance_share()
            result["normalization"].append(dict(model=model, layer=layer, measure="variance_share", label=factor,
                                                value=share["share"], n=share["n"]))
            result["normalization"].append(dict(model=model, layer=layer, measure="variance_share_std",
                                                label=factor, value=share["share_std"], n=share["n"]))
        with self.timed("pca"):
            pca = PCA.from_sums(view, k=max(s.umap_dims, 2))
            full = PCA.from_sums(view)
        cumulative = np.cumsum(full.explained)
        for i in range(min(PCA_COMPONENTS_KEPT, len(full.explained))):
            result["pca"].append(dict(model=model, layer=layer, component=i + 1, variance=float(full.variance[i]),
                                      explained=float(full.explained[i]), cumulative=float(cumulative[i])))
        # Done with the sums: free them before the probes allocate theirs (at 768 dims the per-speaker
        # sums and the layer-matrix cells are about 400 MB).
        for spent in (sums, pairs, jobs, cells):
            spent.clear()
        del view
        # The probe and erasure fits go to the worker threads at once (all of them: no worker idles
        # between labels); silhouettes and projections run here meanwhile.
        first_skip = len(self.skipped)
        with self.timed("probes and erasure"):
            probes = self._start_probes(model, layer, x)
            erasure = self._start_erasure(model, layer, x) if model in self.erasure_models else None
        result["skipped"] = self.skipped[first_skip:]
        with self.timed("silhouettes"):
            result["normalization"] += self._silhouettes(model, layer, x)
        with self.timed("projections (PCA, UMAP)"):
            self._projection(model, layer, x, pca)
        with self.timed("probes and erasure"):
            result["probes"] = probes()
            if erasure is not None:
                result["erasure"] = erasure()
        return result

    def _left_out(self, sums: SpeakerSums, in_sample: dict[str, float], kw: dict) -> dict[str, dict[str, float]]:
        """{measure: {speaker: the measure without that speaker}}: the delete-one-speaker jackknife of
        linear CKA (from the per-speaker sums, O(S³) each) and, with `similarity_jackknife`, of every
        other measure (one evaluation per speaker, on the worker threads)."""
        speakers = [str(s) for s in self.speaker_names]
        keep = ~np.eye(len(speakers), dtype=bool)
        left_out = {"cka": dict(zip(speakers, map(float, sums.cka(keep.astype(np.float64)))))}
        if self.settings.similarity_jackknife:
            values = self._run_jobs({s: lambda row=row: sums.pair(row).measures(**kw) for s, row in zip(speakers, keep)})
            for measure in in_sample:
                if measure != "cka":
                    left_out[measure] = {s: float(values[s][measure]) for s in speakers}
        return left_out

    def _run_jobs(self, jobs: dict) -> dict:
        """Run the callables of `jobs` (name → () → value) on the worker threads; {name: value}."""
        futures = {name: self.pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}

    def _start_erasure(self, model: str, layer: str, x: np.ndarray) -> Callable[[], list[dict]]:
        """Start the erasure probes on the worker threads; returns a function that waits for their rows."""
        s, f = self.settings, self.sample_frames
        try:
            finish = start_erasure_probes(
                x, f["tone"].to_numpy(), f["sex"].astype(str).to_numpy(), f["speaker"].astype(str).to_numpy(),
                self.pool.submit, folds=s.folds, seed=s.seed, max_iter=s.probe_max_iter, device=self.device)
        except ValueError as err:
            self.skipped.append(dict(model=model, layer=layer, label="erasure", reason=str(err)))
            return list
        return lambda: [dict(model=model, layer=layer, **r) for r in finish()]

    def _check_finite(self, block: np.ndarray, begin: int, model: str, layer: str) -> None:
        """InputError naming the layer's file and its first row holding NaN or inf (`block` holds rows
        begin..): one such row makes every sum NaN, and the decompositions would then fail deep in LAPACK."""
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise InputError(self.store.layer_files(model, layer)[0],
                             f"row {begin + int(np.argmin(finite))} of model {model!r} layer {layer} holds NaN or inf "
                             f"({int((~finite).sum())} such rows among rows {begin}..{begin + len(block) - 1}); the "
                             f"store is damaged: extract this model again (phonorm validate {self.store.folder} "
                             "lists every damaged layer)")

    def _shift(self, model: str, layer: str) -> np.ndarray:
        """The fixed shift of a layer's sums: the mean of its first rows (float64 (dim,))."""
        return next(self.store.iter_blocks(model, layer, block=min(self.settings.block, 4096), dtype=np.float64)).mean(axis=0)

    def _put(self, block: np.ndarray):
        """A block (as stored, e.g. float16) where its products are taken: as is (CPU), or a tensor on
        the device (`as_block` converts it there)."""
        if self.device == "cpu":
            return block
        import torch

        return torch.from_numpy(np.array(block)).to(self.device)

    def _reference_groups(self, layer: str) -> GroupedViewSums:
        """The reference layer's per-group sums over all rows (kept for the current layer only: the
        work runs layer by layer, so every model of a layer reuses them)."""
        if self._ref_groups is not None and self._ref_groups[0] == layer:
            return self._ref_groups[1]
        ref = self.settings.reference
        grouped = GroupedViewSums(self.n_groups, self.store.dim(ref), self._shift(ref, layer))
        begin = 0
        for block in self.store.iter_blocks(ref, layer, block=self.settings.block, dtype=None):
            end = begin + len(block)
            y = as_block(self._put(block), grouped.shift, self.dtype)
            grouped.update_shifted(y, row_norms(y), group_runs(self.group_codes[begin:end], like=y))
            begin = end
        self._ref_groups, self._ref_views = (layer, grouped), {}
        return grouped

    def _reference_view(self, part: str, mask: np.ndarray | None) -> ViewSums:
        """The current reference layer's `ViewSums` of a part of the rows (whole, fit or score half),
        the same object for every model of the layer: its PCA (an eigendecomposition) is memoised on it."""
        if part not in self._ref_views:
            assert self._ref_groups is not None
            self._ref_views[part] = self._ref_groups[1].view(mask)
        return self._ref_views[part]

    def _stream(self, model: str, layer: str, same: str | None) -> dict:
        """One pass over all rows of `layer`: its view sums and factor group sums, and, when the
        reference has a layer of the same name (`same`), the pair sums kept per group (speaker, or
        fit/score half), the reference read in within-speaker permuted order (the floor) and the
        pair sums of the whole, the fit and score halves and the floor."""
        store, s = self.store, self.settings
        dim = store.dim(model)
        shift = self._shift(model, layer)
        groups = {f: GroupSums(int(self.codes[f].max()) + 1, dim, shift) for f in FACTORS if self.codes[f].max() >= 0}
        x_groups = GroupedViewSums(self.n_groups, dim, shift)
        sums = permuted = None
        if same is not None:
            y_groups = self._reference_groups(same)
            sums = SpeakerSums(x_groups, y_groups, GroupedCrossSums(self.n_groups, dim, y_groups.dim))
            if self.permutation is not None:
                permuted = GroupedCrossSums(self.n_groups, dim, y_groups.dim)
        # Blocks as stored (float16 views of the memory map): as_block casts and shifts in one pass.
        streams = [store.iter_blocks(model, layer, block=s.block, dtype=None)]
        if same is not None:
            streams.append(store.iter_blocks(s.reference, same, block=s.block, dtype=None))
        begin = 0
        for blocks in zip(*streams):
            end = begin + len(blocks[0])
            self._check_finite(blocks[0], begin, model, layer)
            x = as_block(self._put(blocks[0]), shift, self.dtype)
            a = row_norms(x)
            runs = group_runs(self.group_codes[begin:end], like=x)
            # The block's products and factor sums are independent: one worker thread each.
            jobs: dict[str, Any] = {"view": lambda x=x, a=a, runs=runs: x_groups.update_shifted(x, a, runs)}
            host = x if isinstance(x, np.ndarray) else as_block(blocks[0], shift, self.dtype)
            jobs["factors"] = lambda host=host, begin=begin, end=end: [
                g.update_shifted(host, self.codes[f][begin:end]) for f, g in groups.items()]
            if sums is not None:
                y = as_block(self._put(blocks[1]), sums.y.shift, self.dtype)
                jobs["cross"] = lambda x=x, y=y, a=a, runs=runs: sums.cross.update_shifted(x, y, a, row_norms(y), runs)
            if permuted is not None and sums is not None and self.permutation is not None and same is not None:
                rows = self.permutation[begin:end]
                y_perm = next(store.iter_blocks(s.reference, same, rows=rows, block=max(1, len(rows)), dtype=None))
                yp = as_block(self._put(y_perm), sums.y.shift, self.dtype)
                jobs["floor"] = lambda x=x, yp=yp, a=a, runs=runs: permuted.update_shifted(x, yp, a, row_norms(yp), runs)
            self._run_jobs(jobs)
            begin = end
        x_view = x_groups.view()
        if model == s.reference:  # the models compared with this layer next reuse its per-group sums
            self._ref_groups, self._ref_views = (layer, x_groups), {"whole": x_view}
        pairs: dict[str, Any] = {"whole": None, "fit": None, "score": None, "floor": None, "floor_fit": None,
                                 "floor_score": None, "speakers": None}
        if sums is not None:
            # One ViewSums object per view and part, shared by the pair and its floor (the PCA of each
            # is computed once).
            parts = {"whole": None} if self.half_masks is None else \
                {"whole": None, "fit": self.half_masks[0], "score": self.half_masks[1]}
            for part, mask in parts.items():
                x_part = x_view if mask is None else x_groups.view(mask)
                y_part = self._reference_view(part, mask)
                pairs[part] = PairSums(x_part, y_part, sums.cross.cross(mask))
                if permuted is not None:
                    pairs["floor" if mask is None else f"floor_{part}"] = PairSums(x_part, y_part,
                                                                                    permuted.cross(mask))
            if self.groups_are_speakers:
                pairs["speakers"] = sums
        return {"view": x_view, "groups": groups, "pairs": pairs}

    def _matrix_pairs(self, x: np.ndarray, model: str, layer: str) -> dict[str, tuple]:
        """Pair sums of the sampled rows `x` (sample, dim) of this layer with every reference layer's
        sampled rows: (fit, score) per reference layer (fit None unless --held-out). The layer × layer
        matrix is computed on the sample rows (the same rows for every cell), so that its cost does
        not grow with the store: 13 × 13 cells of 768-dim products over 300,000 rows would take
        longer than all the rest of the analysis. The products are taken `SAMPLE_BLOCK` rows at a
        time: no float64 copy of a whole sample exists (two cells at once held 370 MB of them)."""
        ref = self.settings.reference
        parts = self._sample_parts()
        shift = head_shift(x)
        x_views = [_view_of(x, rows, shift, self.dtype) for rows in parts]

        def cell(partner: str) -> tuple:
            y_shift, y, y_views = self._reference_sample(partner)
            pairs = []
            for x_view, y_view, rows in zip(x_views, y_views, parts):
                cross = CrossSums(x.shape[1], y.shape[1])
                for block in _row_blocks(rows):
                    cross.update_shifted(as_block(x[block], shift, self.dtype), as_block(y[block], y_shift, self.dtype))
                pairs.append(PairSums(x_view, y_view, cross))
            return (pairs[0], pairs[1]) if len(pairs) == 2 else (None, pairs[0])

        for partner in self.store.layers(ref):  # read (and cache) in order, then the products in parallel
            self._reference_sample(partner)
        return self._run_jobs({partner: lambda p=partner: cell(p) for partner in self.store.layers(ref)})

    def _sample_parts(self) -> list[np.ndarray]:
        """Rows of the sample per part (positions in the sample): [fit rows, score rows] with
        --held-out (and two speaker halves), else [every row]."""
        if self.settings.held_out and self.part is not None:
            part = self.part[self.sample]
            return [np.flatnonzero(part == 0), np.flatnonzero(part == 1)]
        return [np.arange(len(self.sample))]

    def _reference_sample(self, layer: str) -> tuple[np.ndarray, np.ndarray, list[ViewSums]]:
        """The reference layer's sampled rows (in the store's dtype), their shift and view sums per
        sample part; cached for every reference layer. The rows are cached in a scratch file
        (`scratch`), memory-mapped: the page cache holds them, not the process (13 layers × 20,000 rows
        × 768 float16 are 400 MB), and reading them back costs no more than keeping them."""
        if layer not in self._ref_samples:
            y = self._read_sample(self.settings.reference, layer, dtype=None)
            shift = head_shift(y)
            views = [_view_of(y, rows, shift, self.dtype) for rows in self._sample_parts()]
            path = self.scratch / f"reference_sample__{layer}.npy"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, y)
            self._ref_samples[layer] = (shift, np.load(path, mmap_mode="r"), views)
        return self._ref_samples[layer]

    @property
    def scratch(self) -> Path:
        """Temporary files of this run (removed at its end by `close`)."""
        return self.out / ".parts" / "scratch"

    def close(self) -> None:
        """Remove this run's temporary files (`scratch`)."""
        import shutil

        self._ref_samples.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _read_sample(self, model: str, layer: str, dtype: Any = np.float32) -> np.ndarray:
        """The sampled rows of a layer (sample, dim), float32 or `dtype` (None: as stored)."""
        return np.concatenate(list(self.store.iter_blocks(model, layer, rows=self.sample, block=self.settings.block,
                                                          dtype=dtype)))

    # ------------------------------------------------------------------ probes and silhouettes
    def _start_probes(self, model: str, layer: str, x: np.ndarray,
                      valid: np.ndarray | None = None) -> Callable[[], list[dict]]:
        """Start every label's probe on the worker threads; returns a function that waits for the rows."""
        s = self.settings
        started = []
        for label in s.labels:
            index, values = label_rows(self.sample_frames, label)
            dropped = 0
            if valid is not None:
                keep = valid[index]
                dropped = int((~keep).sum())
                index, values = index[keep], values[keep]
            if label != "speaker":
                # A class heard from one speaker only can never be tested speaker-disjointly.
                speakers = self.sample_frames["speaker"].to_numpy()[index]
                per_class = pd.Series(speakers).groupby(values).nunique()
                keep = np.isin(values, per_class.index[per_class >= 2])
                dropped += int((~keep).sum())
                index, values = index[keep], values[keep]
            if len(np.unique(values)) < 2:
                self.skipped.append(dict(model=model, layer=layer, label=label,
                                         reason="fewer than 2 classes with at least 2 speakers each"))
                continue
            try:
                finish = start_probe(x, values, self.sample_frames["speaker"].to_numpy()[index],
                                     self.sample_frames["utterance_id"].to_numpy()[index], self.pool.submit,
                                     folds=s.folds, seed=s.seed, rows=index,
                                     speaker_label=label == "speaker", max_iter=s.probe_max_iter, device=self.device)
            except ValueError as err:  # fewer than 2 speakers/utterances with this label
                self.skipped.append(dict(model=model, layer=layer, label=label, reason=str(err)))
                continue
            started.append((label, dropped, finish))

        def rows() -> list[dict]:
            done = []
            for label, dropped, finish in started:
                result = finish()
                done.append(dict(model=model, layer=layer, label=label, dropped=dropped, **result.row(),
                                 by_speaker=result.by_speaker))
            return done
        return rows

    def _silhouettes(self, model: str, layer: str, x: np.ndarray) -> list[dict]:
        rows: list[dict] = []
        if self.settings.silhouette_rows <= 0:
            return rows
        for label in ("tone", "phone", "sex", "speaker"):
            index, values = label_rows(self.sample_frames, label)
            value = silhouette(x[index], values, self.settings.seed, self.settings.silhouette_rows)
            rows.append(dict(model=model, layer=layer, measure="silhouette", label=label, value=value,
                             n=int(min(len(index), self.settings.silhouette_rows))))
        return rows

    # ------------------------------------------------------------------ projections
    def _projection(self, model: str, layer: str, x: np.ndarray, pca: PCA) -> None:
        table = self.sample_frames[["row", "utterance_id", "speaker", "sex", "tone", "phone"]].copy()
        coords = pca.transform(x, k=max(self.settings.umap_dims, 2))
        table["pc1"], table["pc2"] = coords[:, 0], coords[:, 1]
        table["umap1"] = table["umap2"] = np.float32("nan")
        table["umap_fit"] = False
        wanted = self.settings.umap_all_layers or layer in umap_layers(self.store.layers(model))
        if self.settings.umap and wanted and len(x) >= 10:
            fit = self.umap_fit_index()
            mapped = umap_map(coords[:, : self.settings.umap_dims], fit, self.settings.seed)
            table["umap1"], table["umap2"] = mapped[:, 0], mapped[:, 1]
            table.loc[fit, "umap_fit"] = True
        write_parquet(self.out / "projections" / f"{model}__{layer}.parquet", table)

    def umap_fit_index(self) -> np.ndarray:
        """Sample positions UMAP is fitted on: stratified by speaker and tone, the same for every layer."""
        if self._umap_fit is None:
            f = self.sample_frames
            self._umap_fit = stratified_subsample(f["speaker"].astype(str).to_numpy(), f["tone"].astype(str).to_numpy(),
                                                  self.settings.umap_fit_rows, self.settings.seed)
        return self._umap_fit

    # ------------------------------------------------------------------ classic baselines
    def classic_result(self, name: str) -> dict:
        return self._cached(f"classic__{name}", lambda: self._compute_classic(name))

    def _compute_classic(self, name: str) -> dict:
        values = np.asarray(self.store.classic(name), dtype=np.float64)
        x = values[self.sample]
        valid = np.all(np.isfinite(x), axis=1)
        x = np.where(np.isfinite(x), x, 0.0)
        first_skip = len(self.skipped)
        probes = self._start_probes("classic", name, x, valid=valid)()
        normalization = []
        finite = np.all(np.isfinite(values), axis=1)
        for f in FACTORS:
            codes = np.where(finite, self.codes[f], -1)
            if codes.max() < 0:
                continue
            g = GroupSums(int(codes.max()) + 1, values.shape[1]).update(np.nan_to_num(values), codes)
            share = g.variance_share()
            normalization += [dict(model="classic", layer=name, measure="variance_share", label=f, value=share["share"],
                                   n=share["n"]),
                              dict(model="classic", layer=name, measure="variance_share_std", label=f,
                                   value=share["share_std"], n=share["n"])]
        return {"similarity": [], "matrix": {}, "probes": probes, "normalization": normalization, "pca": [],
                "dropped_rows": int((~finite).sum()), "skipped": self.skipped[first_skip:]}

    # ------------------------------------------------------------------ layer × layer matrices
    def write_layer_matrices(self, by_layer: dict[tuple[str, str], dict], models: list[str]) -> dict[str, pd.DataFrame]:
        """layer_matrix/<model>__vs__<reference>__<measure>.csv from the per-layer results `by_layer`."""
        ref = self.settings.reference
        matrices: dict[str, pd.DataFrame] = {}
        for m in models:
            if m == ref or not self.settings.layer_matrix:
                continue
            for measure in MEASURES:
                table = pd.DataFrame(
                    [[by_layer[(m, a)]["matrix"].get(b, {}).get(measure, np.nan) for b in self.store.layers(ref)]
                     for a in self.store.layers(m)],
                    index=pd.Index(self.store.layers(m), name=m), columns=self.store.layers(ref))
                name = f"{m}__vs__{ref}__{measure}"
                with atomic_path(self.out / "layer_matrix" / f"{name}.csv") as tmp:
                    table.to_csv(tmp)
                matrices[name] = table
        return matrices


SAMPLE_BLOCK = 4096  # rows of the in-memory sample cast to float64 at once (layer matrix)


def _row_blocks(rows: np.ndarray) -> Iterator[np.ndarray | slice]:
    """`rows` (positions) in consecutive pieces of at most `SAMPLE_BLOCK`: slices when the rows are
    one contiguous run (every row of the sample: views, no copy), else position arrays."""
    contiguous = len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and bool(np.all(np.diff(rows) == 1))
    for begin in range(0, len(rows), SAMPLE_BLOCK):
        if contiguous:
            start = int(rows[0]) + begin
            yield slice(start, min(start + SAMPLE_BLOCK, int(rows[0]) + len(rows)))
        else:
            yield rows[begin:begin + SAMPLE_BLOCK]


def _view_of(x: np.ndarray, rows: np.ndarray, shift: np.ndarray, dtype=np.float64) -> ViewSums:
    """`ViewSums` of the rows `rows` of `x` about `shift`, `SAMPLE_BLOCK` rows at a time, the products
    taken in `dtype`."""
    view = ViewSums(x.shape[1], shift)
    for block in _row_blocks(rows):
        view.update(x[block], dtype)
    return view


def _device(setting: str) -> str:
    """Where the streamed d×d products run: "cpu", or "cuda" (torch, float64) when asked or, with
    "auto", when torch sees a CUDA device."""
    if setting == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise PhonormError("--device cuda: torch sees no CUDA device (use --device auto or cpu)")
    return "cpu"


def _within_speaker_permutation(codes: np.ndarray, seed: int) -> np.ndarray:
    """Row order (rows,) that maps every row to a random row of the same speaker (codes (rows,))."""
    rng = np.random.default_rng([seed, 13])
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    perm = np.empty_like(order)
    for group in np.split(order, bounds):
        perm[group] = rng.permutation(group)
    return perm


def _codes(frames: pd.DataFrame, factor: str) -> np.ndarray:
    """Integer group codes (rows,) of a factor; −1 for rows without that label."""
    if factor == "tone":
        values = frames["tone"].to_numpy()
        return np.where(values > 0, values, -1).astype(np.int64)
    values = frames[factor].astype(str).to_numpy()
    uniques, codes = np.unique(values, return_inverse=True)
    codes = codes.astype(np.int64)
    if "" in set(uniques):
        codes[values == ""] = -1
    return codes
