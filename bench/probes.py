"""Probes at their optimum (issue 31): one speaker-disjoint fold of the 61-class phone probe and the
20-speaker probe at 768 dimensions on the bench store (`bench/scale.py`'s planted store), fitted
from different starts and tolerances.

    .venv/bin/python bench/probes.py [--rows 30000] [--store DIR]

Printed per probe (model, layer, label): test accuracy and lbfgs iterations of
- `tol 1e-4, cold`: scikit-learn's default tolerance from zero (phonorm before issue 31);
- `phonorm, cold`: `probes.make_classifier` as the analysis fits it (tol `PROBE_TOL`, from zero);
- `phonorm, warm`: the same, started from a fit on half of the training speakers only (a start that
  saw none of the fold's test speakers, the only warm start that would be allowed);
- `reference`: the same objective solved to tol 1e-8 (lbfgs then stops on its function-change test);
and the largest entry of the objective's gradient at each solution (`probes.objective_gradient`).
The fold: the speakers are split by `probes.probe_splits` (5 folds, seed 0); the first fold is used.
The speaker probe's fold is grouped by utterance (every speaker on both sides), as the analysis does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from phonorm.analysis.probes import PROBE_TOL, make_classifier, objective_gradient, probe_splits
from phonorm.features.store import FeatureStore

PROBES = (("tone", "L10", "phone"), ("pre", "L6", "phone"), ("pre", "L6", "speaker"))


def fit(x_train, y_train, tol: float, start=None) -> tuple:
    """(fitted pipeline, iterations, seconds); `start`: a fitted pipeline whose solution starts lbfgs."""
    model = make_classifier(0, max_iter=10_000, tol=tol)
    if start is not None:
        model[-1].set_params(warm_start=True)
        model[-1].coef_, model[-1].intercept_ = start[-1].coef_.copy(), start[-1].intercept_.copy()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_train, y_train)
    return model, int(np.max(model[-1].n_iter_)), time.perf_counter() - began


def one_probe(store: FeatureStore, model: str, layer: str, label: str) -> list[dict]:
    frames = store.frames
    y = frames[label].astype(str).to_numpy()
    rows = np.flatnonzero(y != "")
    speakers = frames["speaker"].astype(str).to_numpy()[rows]
    utterances = frames["utterance_id"].astype(str).to_numpy()[rows]
    train, test = probe_splits(y[rows], speakers, utterances, 5, 0, label == "speaker")[0]
    x = np.asarray(store.layer(model, layer), dtype=np.float32)[rows]
    x_train, y_train, x_test, y_test = x[train], y[rows][train], x[test], y[rows][test]
    half = np.isin(speakers[train], np.unique(speakers[train])[::2])
    if label == "speaker":  # every speaker is a class: half of the utterances instead
        half = np.isin(utterances[train], np.unique(utterances[train])[::2])
    start, _, _ = fit(x_train[half], y_train[half], PROBE_TOL)
    if set(start[-1].classes_) != set(np.unique(y_train)):
        start = None  # a class missing from the half: no warm start possible
    out = []
    for name, tol, begin in (("tol 1e-4, cold", 1e-4, None), ("phonorm, cold", PROBE_TOL, None),
                             ("phonorm, warm", PROBE_TOL, start), ("reference", 1e-8, None)):
        if name == "phonorm, warm" and begin is None:
            continue
        fitted, iterations, seconds = fit(x_train, y_train, tol, begin)
        out.append(dict(probe=f"{label}, {model} {layer}", start=name, tol=tol, iterations=iterations,
                        seconds=round(seconds, 1), accuracy=float((fitted.predict(x_test) == y_test).mean()),
                        gradient=objective_gradient(fitted, x_train, y_train), train_rows=len(y_train)))
    reference = out[-1]["accuracy"]
    for row in out:
        row["off_reference"] = row["accuracy"] - reference
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--store", type=Path, help="a bench store folder: used if it holds one, else built there "
                        "and kept")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import build_store

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.store or Path(tmp) / "store"
        if not (folder / "manifest.json").is_file():
            build_store(folder, args.rows)
        store = FeatureStore(folder)
        print("| probe | start | tol | iterations | seconds | accuracy | − reference | max gradient entry | training rows |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for model, layer, label in PROBES:
            for r in one_probe(store, model, layer, label):
                print(f"| {r['probe']} | {r['start']} | {r['tol']:.0e} | {r['iterations']} | {r['seconds']} | "
                      f"{r['accuracy']:.4f} | {r['off_reference']:+.4f} | {r['gradient']:.1e} | {r['train_rows']} |",
                      flush=True)


if __name__ == "__main__":
    main()
