"""One layer's analysis (or one classic baseline's): the steps of `steps.py` in order, memory kept
bounded, and resumption: a layer's `LayerResult` is saved under R/.parts/ with the inputs it was
computed from (`saved_inputs`: the `LayerSettings`, the store, the analysis code) and reused by a
rerun whose inputs are the same.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from phonorm.analysis.inputs import FACTORS, Execution, LayerSettings, Rows, Seconds
from phonorm.analysis.normalization import GroupSums
from phonorm.analysis.steps import (
    LayerResult,
    normalization_step,
    pca_step,
    projection_step,
    silhouette_step,
    similarity_step,
    start_erasure,
    start_probes,
    umap_fit_index,
)
from phonorm.analysis.sums import LayerSums
from phonorm.artifacts import code_hash
from phonorm.features.store import FeatureStore
from phonorm.labels import CLASSIC_MODEL


def saved_inputs(store: FeatureStore, settings: LayerSettings, kernels_code: str) -> dict[str, Any]:
    """What a saved layer result was computed from, as JSON values: the settings its numbers depend
    on, the store (folder, rows, models) and the version of the analysis code and of the kernels'
    (`Kernels.code`)."""
    inputs = {"settings": dataclasses.asdict(settings), "analysis_code": code_hash("phonorm.analysis.run"),
              "kernels_code": kernels_code,
              "rows_key": store.record.rows_key, "rows": store.rows, "store": str(store.folder.resolve()),
              "models": [m.model_dump(mode="json") for m in store.record.models]}
    return json.loads(json.dumps(inputs, default=str))


class LayerRunner:
    """Runs (or reuses) the analysis of each layer of `store` into the results folder `out`."""

    def __init__(self, store: FeatureStore, rows: Rows, settings: LayerSettings, execution: Execution,
                 sums: LayerSums, out: Path, timer: Seconds):
        self.store, self.rows, self.settings, self.execution = store, rows, settings, execution
        self.sums, self.out, self.timer = sums, out, timer
        self.inputs = saved_inputs(store, settings, execution.kernels.code)
        self._umap_fit: Optional[np.ndarray] = None

    def _saved(self, name: str, start: Callable[[], Callable[[], LayerResult]]) -> Callable[[], LayerResult]:
        """The result saved as `name` when its saved inputs are the current ones; else `start()` runs
        the work up to what it leaves on the worker threads, and the function returned waits for that,
        saves the result and returns it."""
        path = self.out / ".parts" / f"{name}.json"
        saved = LayerResult.load(path, self.inputs)
        if saved is not None:
            return lambda: saved
        finish = start()

        def finished() -> LayerResult:
            result = finish()
            result.save(path, self.inputs)
            return result
        return finished

    # ------------------------------------------------------------------ a model layer
    def start_layer_result(self, model: str, layer: str) -> Callable[[], LayerResult]:
        """The layer's result in two halves: this call reuses a saved result or runs the layer's work
        up to its probes, which it leaves running on the worker threads; the function returned waits
        for them, saves the result and returns it. Starting the next layer before finishing this one keeps
        both workers busy: the last probe folds of a layer no longer leave one idle
        (`run._run_layers`)."""
        return self._saved(f"{model}__{layer}", lambda: self._timed_start(model, layer))

    def _timed_start(self, model: str, layer: str) -> Callable[[], LayerResult]:
        """`start_layer` with the layer's own seconds per part in its result (an interrupted run's saved
        parts still tell where the time went): its synchronous part and its wait, not the next layer's
        work in between."""
        before = dict(self.timer.seconds)
        finish = self.start_layer(model, layer)
        started = self.timer.since(before)

        def finished() -> LayerResult:
            waiting = dict(self.timer.seconds)
            result = finish()
            waited = self.timer.since(waiting)
            result.seconds = {part: round(started.get(part, 0.0) + waited.get(part, 0.0), 3)
                              for part in {**started, **waited}}
            return result
        return finished

    def start_layer(self, model: str, layer: str) -> Callable[[], LayerResult]:
        """Run the layer's steps up to its probes and erasure, which are left on the worker threads;
        returns the function that waits for them and gives the `LayerResult`."""
        s, timer, pool, kernels = self.settings, self.timer, self.sums.pool, self.execution.kernels
        same = layer if model != s.reference and layer in self.store.layers(s.reference) else None
        with timer.timed("similarity sums (all rows)"):
            streamed = self.sums.stream(model, layer, same)
        with timer.timed("read sample rows"):
            x = self.sums.read_sample(model, layer)
        result = LayerResult(similarity=similarity_step(self.sums, self.rows, s, timer, model, layer, streamed, x),
                             normalization=normalization_step(streamed.groups, model, layer))
        with timer.timed("pca"):
            result.pca, pca = pca_step(streamed.view, s, model, layer)
        # Done with the sums: free them before the probes allocate theirs (at 768 dims the per-speaker
        # sums are about 400 MB).
        del streamed
        # The probe and erasure fits go to the worker threads at once (all of them: no worker idles
        # between labels); silhouettes and projections run here meanwhile.
        with timer.timed("probes and erasure"):
            probes = start_probes(pool, self.rows, s, kernels, model, layer, x)
            erasure = start_erasure(pool, self.rows, s, kernels, model, layer, x) \
                if model in s.erasure_models else None
        with timer.timed("silhouettes"):
            result.normalization += silhouette_step(self.rows, s, model, layer, x)
        with timer.timed("projections (PCA, UMAP)"):
            projection_step(self.out, self.rows, s, model, layer, self.store.layers(model), x, pca, self.umap_fit)

        def finish() -> LayerResult:
            with timer.timed("probes and erasure"):
                result.probes = probes()
                if erasure is not None:
                    result.erasure = erasure()
            return result
        return finish

    def umap_fit(self) -> np.ndarray:
        """Sample positions UMAP is fitted on (the same for every layer; computed once)."""
        if self._umap_fit is None:
            self._umap_fit = umap_fit_index(self.rows, self.settings)
        return self._umap_fit

    # ------------------------------------------------------------------ classic baselines
    def classic_result(self, name: str) -> LayerResult:
        return self._saved(f"classic__{name}", lambda: self.start_classic(name))()

    def start_classic(self, name: str) -> Callable[[], LayerResult]:
        """Probes and variance shares of a classic baseline (f0, mfcc); rows without a value (unvoiced
        F0) are dropped from the probes and the shares, and counted. The probes are started on the
        worker threads; the function returned waits for them and gives the result."""
        values = np.asarray(self.store.classic(name), dtype=np.float64)
        x = values[self.rows.sample]
        valid = np.all(np.isfinite(x), axis=1)
        x = np.where(np.isfinite(x), x, 0.0)
        probes = start_probes(self.sums.pool, self.rows, self.settings, self.execution.kernels, CLASSIC_MODEL, name, x,
                              valid=valid)
        finite = np.all(np.isfinite(values), axis=1)
        groups = {}
        for f in FACTORS:
            codes = np.where(finite, self.rows.codes[f], -1)
            if codes.max() >= 0:
                groups[f] = GroupSums(int(codes.max()) + 1, values.shape[1]).update(np.nan_to_num(values), codes)
        normalization = normalization_step(groups, CLASSIC_MODEL, name)
        return lambda: LayerResult(probes=probes(), normalization=normalization, dropped_rows=int((~finite).sum()))
