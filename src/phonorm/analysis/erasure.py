"""A causal test of C4: erase one factor linearly from a layer and probe the other.

LEACE (LEAst-squares Concept Erasure; Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
closed form", NeurIPS) is the smallest (in the whitened least-squares sense) affine edit of the
features after which no linear classifier can predict the concept better than a constant. We use
the authors' package `concept-erasure` (`LeaceEraser`).

Protocol, for one layer, on the sampled rows that carry a tone (> 0) and a sex:
- folds grouped by speaker (`probe_splits`, stratified on tone × sex) are shared by every condition;
- in each fold the eraser is fitted on the training rows only (one-hot concept) and applied to the
  training and test rows, so no test speaker informs the edit;
- conditions `erased` ∈ {none, sex, tone}; in each, the tone probe and the sex probe (the standard
  probe of `probes.py`) are trained on the (edited) training rows and scored out of fold.
If sex becomes undecodable (near chance) while tone accuracy is unchanged, the layer's tone
information does not depend on the sex information a suppression would remove: suppression was not
needed for tone. The converse (erase tone, probe sex) checks the erasure is specific.

Per condition: accuracy, chance (training-fold majority class, out of fold), 95% CI over speakers,
the change from `erased = none` on the very same rows and folds, and the accuracy above chance
(probe − majority baseline on the same resampled speakers), both with a paired speaker bootstrap.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from phonorm.analysis.bootstrap import SpeakerDraws, interval
from phonorm.analysis.probes import fit_predict, majority_hits, per_speaker, probe_splits

CONDITIONS = ("none", "sex", "tone")
PROBED = ("tone", "sex")


def leace_eraser(x: np.ndarray, concept: np.ndarray, rows: np.ndarray | None = None, chunk: int = 4096):
    """A fitted LEACE eraser for features `x[rows]` (rows, dim; all of `x` when `rows` is None) and
    class labels `concept` (rows,). Returns a function `erase(x, rows=None, dtype=float64)` that
    edits `x[rows]` and returns it as `dtype` (rows, dim).

    The statistics are accumulated `chunk` rows at a time in float64 (`LeaceFitter.update`, Welford's
    running sums) and the edit is applied a chunk at a time: no float64 copy of the rows exists at
    once (a fold of 16,000 × 768 rows took three 98 MB copies to fit and two to apply)."""
    import torch
    from concept_erasure import LeaceFitter

    at = np.arange(len(x)) if rows is None else np.asarray(rows)
    classes, codes = np.unique(concept, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    if len(classes) == 2:  # one column carries a binary concept; the package expects k-1 or k columns alike
        onehot = onehot[:, :1]
    fitter = LeaceFitter(x.shape[1], onehot.shape[1], dtype=torch.float64)
    for begin in range(0, len(at), chunk):
        fitter.update(torch.from_numpy(np.asarray(x[at[begin:begin + chunk]], dtype=np.float64)),
                      torch.from_numpy(onehot[begin:begin + chunk]))
    eraser = fitter.eraser

    def erase(features: np.ndarray, rows: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
        picked = np.arange(len(features)) if rows is None else np.asarray(rows)
        edited: np.ndarray = np.empty((len(picked), features.shape[1]), dtype=dtype)
        with torch.no_grad():
            for begin in range(0, len(picked), chunk):
                block = np.asarray(features[picked[begin:begin + chunk]], dtype=np.float64)
                edited[begin:begin + len(block)] = eraser(torch.from_numpy(block)).numpy()
        return edited
    return erase


def erasure_probes(x: np.ndarray, tone: np.ndarray, sex: np.ndarray, speakers: np.ndarray,
                   utterances: np.ndarray, *, folds: int = 5, seed: int = 0, max_iter: int = 300,
                   bootstrap: int = 2000, workers: int = 1, device: str = "cpu") -> list[dict]:
    """Rows (one per erased × probed) for features `x` (rows, dim) and per-row `tone` (> 0; 0 = none),
    `sex`, `speakers`, `utterances` (rows,). Only rows with a tone and a sex are used.
    Raises ValueError when fewer than 2 speakers or 2 classes of either factor remain.
    `workers`, `device`: as `probes.probe` (each fold × erased concept is one parallel job)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return start_erasure_probes(x, tone, sex, speakers, utterances, pool.submit, folds=folds, seed=seed,
                                    max_iter=max_iter, bootstrap=bootstrap, device=device)()


def start_erasure_probes(x: np.ndarray, tone: np.ndarray, sex: np.ndarray, speakers: np.ndarray,
                         utterances: np.ndarray, submit, *, folds: int = 5, seed: int = 0, max_iter: int = 300,
                         bootstrap: int = 2000, device: str = "cpu") -> Callable[[], list[dict]]:
    """`erasure_probes` with its jobs handed to `submit` (an executor's `submit`) at once; returns a
    function that waits for them and gives the rows (as `probes.start_probe`)."""
    tone, sex = np.asarray(tone), np.asarray(sex).astype(str)
    keep = (tone > 0) & (sex != "")
    # float32 (the probes' dtype; the eraser is fitted and applied in float64 per fold): half the memory.
    x, tone, sex = np.asarray(x, dtype=np.float32)[keep], tone[keep], sex[keep]
    speakers, utterances = np.asarray(speakers).astype(str)[keep], np.asarray(utterances)[keep]
    if len(np.unique(tone)) < 2 or len(np.unique(sex)) < 2:
        raise ValueError("erasure needs at least 2 tones and 2 sexes among the rows")
    strata = np.char.add(np.char.add(tone.astype(str), "_"), sex)
    splits = probe_splits(strata, speakers, utterances, folds, seed)
    labels = {"tone": tone, "sex": sex}
    majority = {p: majority_hits(labels[p], splits) for p in PROBED}

    def fold(train: np.ndarray, test: np.ndarray, erased: str) -> dict:
        if erased == "none":
            x_train, x_test = x[train], x[test]
        else:
            # Edited in float64, kept in float32 as the standard probe (`probes.probe`) fits: the
            # erased and unerased fits compare alike.
            erase = leace_eraser(x, labels[erased][train], rows=train)
            x_train, x_test = erase(x, train, np.float32), erase(x, test, np.float32)
        return {p: fit_predict(x_train, labels[p][train], x_test, seed, max_iter, device) for p in PROBED}

    jobs = [(test, erased, submit(fold, train, test, erased)) for train, test in splits for erased in CONDITIONS]
    return lambda: _erasure_rows(jobs, x, labels, majority, speakers, len(splits), seed, bootstrap)


def _erasure_rows(jobs: list, x: np.ndarray, labels: dict, majority: dict, speakers: np.ndarray, folds: int,
                  seed: int, bootstrap: int) -> list[dict]:
    """The rows of `erasure_probes` from its finished fold `jobs` ((test rows, erased, future))."""
    predicted = {(e, p): np.empty(len(x), dtype=labels[p].dtype) for e in CONDITIONS for p in PROBED}
    iterations = {k: 0 for k in predicted}
    converged = {k: True for k in predicted}
    for test, erased, job in jobs:
        for p, (pred, used, ok) in job.result().items():
            predicted[(erased, p)][test] = pred
            iterations[(erased, p)] = max(iterations[(erased, p)], used)
            converged[(erased, p)] = converged[(erased, p)] and ok
    draws = SpeakerDraws(speakers, bootstrap, seed)
    rows = []
    baseline = {}
    for erased in CONDITIONS:
        for p in PROBED:
            hits = predicted[(erased, p)] == labels[p]
            tallies = per_speaker(hits, speakers, majority[p])
            point, samples = draws.accuracy({s: (c, t) for s, (c, t, _) in tallies.items()})
            _, chance = draws.accuracy({s: (b, t) for s, (_, t, b) in tallies.items()})
            if erased == "none":
                baseline[p] = (point, samples)
            low, high = interval(samples)
            c_low, c_high = interval(samples - baseline[p][1])
            a_low, a_high = interval(samples - chance)
            rows.append(dict(erased=erased, probed=p, accuracy=point, chance=float(majority[p].mean()),
                             ci_low=low, ci_high=high, change=point - baseline[p][0],
                             change_ci_low=c_low, change_ci_high=c_high, above_chance=point - float(majority[p].mean()),
                             above_chance_ci_low=a_low, above_chance_ci_high=a_high, n=int(len(x)),
                             folds=folds, iterations=iterations[(erased, p)],
                             converged=bool(converged[(erased, p)]), by_speaker=tallies))
    return rows
