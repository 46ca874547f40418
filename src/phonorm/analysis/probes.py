"""Linear probes: how well a label can be read off a layer by a linear classifier.

Cross-validation never puts a speaker on both sides (pitfall 9, docs/pitfalls.md): folds are grouped by speaker
(sklearn `StratifiedGroupKFold`, which also keeps every class in every test fold when it can).
The speaker label itself cannot be speaker-disjoint; it is probed with folds grouped by utterance
and stratified by speaker, so every speaker is on both sides but no utterance is.

Reported: pooled out-of-fold accuracy; chance = the pooled out-of-fold accuracy of always guessing
the training fold's most frequent class (scikit-learn's `DummyClassifier(strategy="most_frequent")`
on the very same folds), so accuracy and chance answer the same question; a 95% CI by bootstrap
over speakers (speakers drawn with replacement, their out-of-fold hits and totals summed); the
per-speaker hits and totals (`by_speaker`) for paired comparisons between models; and convergence:
the most iterations any fold's solver used and whether every fold converged (a fold that stops at
`max_iter` is recorded, not silenced; its accuracy is still reported).

With few speakers, speaker-disjoint probes of a speaker-level label (sex) can fall *below* chance:
the held-out speaker's sex is the minority in its training fold, and a probe that has learnt the
training speakers' voices generalises badly. That is a property of the data (too few speakers), not
a bug; the report's corpus section gives the number of speakers in each split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Labels probed, and whether their folds are speaker-disjoint.


@dataclass
class ProbeResult:
    accuracy: float
    chance: float
    ci_low: float
    ci_high: float
    n: int
    folds: int
    classes: int
    #: most solver iterations used by a fold, and whether every fold converged before `max_iter`
    iterations: int = 0
    converged: bool = True
    #: speaker → [out-of-fold hits, rows, hits of the majority-class baseline]
    by_speaker: dict = field(default_factory=dict)

    def row(self) -> dict:
        return dict(accuracy=self.accuracy, chance=self.chance, ci_low=self.ci_low, ci_high=self.ci_high,
                    n=self.n, folds=self.folds, classes=self.classes, iterations=self.iterations,
                    converged=self.converged)


def probe_splits(y: np.ndarray, speakers: np.ndarray, utterances: np.ndarray, folds: int, seed: int,
                 speaker_label: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs. Grouped by speaker, or by utterance for the speaker label.

    Uses fewer folds than asked when there are fewer groups; raises ValueError below 2.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = utterances if speaker_label else speakers
    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    if k < 2:
        raise ValueError(f"only {n_groups} {'utterance' if speaker_label else 'speaker'}(s): cannot cross-validate")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        # "The least populated class has only n members": expected for rare phones; folds stay valid.
        warnings.simplefilter("ignore", UserWarning)
        return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups)]


def make_classifier(seed: int, max_iter: int = 300):
    """Standardise, then multinomial logistic regression (L2, C=1): the probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))


def probe(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, utterances: np.ndarray, *, folds: int = 5,
          bootstrap: int = 2000, seed: int = 0, speaker_label: bool = False, max_iter: int = 300) -> ProbeResult:
    """Cross-validated accuracy of a linear probe of labels `y` (rows,) from features `x` (rows, dim)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    speakers = np.asarray(speakers)
    # Small probes are dominated by BLAS thread start-up and contention (measured: 50× slower with
    # 2 threads on a busy 2-core machine); large ones gain from threads.
    with threadpool_limits(1 if x.size < SMALL_PROBE else None):
        return _probe(x, y, speakers, utterances, folds, bootstrap, seed, speaker_label, max_iter)


#: Probes with fewer feature values (rows × dim) than this run single-threaded.
SMALL_PROBE = 2_000_000


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int,
                max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Fit the probe on one fold and predict the test rows: (predictions, iterations, converged).
    A single-class training fold predicts that class (0 iterations)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    classes = np.unique(y_train)
    if len(classes) == 1:
        return np.full(len(x_test), classes[0], dtype=y_train.dtype), 0, True
    model = make_classifier(seed, max_iter)
    with warnings.catch_warnings(record=True) as caught:
        # Recorded per probe (probes.csv: iterations, converged) instead of printed once per fold.
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    iterations = int(np.max(model[-1].n_iter_))
    converged = iterations < max_iter and not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model.predict(x_test), iterations, converged


def per_speaker(hits: np.ndarray, speakers: np.ndarray, baseline: np.ndarray) -> dict[str, list[int]]:
    """{speaker: [hits, rows, baseline hits]} of boolean hits and baseline (majority-class) hits (rows,)."""
    names, codes = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    correct = np.bincount(codes, weights=hits.astype(np.float64), minlength=len(names))
    base = np.bincount(codes, weights=baseline.astype(np.float64), minlength=len(names))
    total = np.bincount(codes, minlength=len(names))
    return {str(n): [int(c), int(t), int(b)] for n, c, t, b in zip(names, correct, total, base)}


def _probe(x, y, speakers, utterances, folds, bootstrap, seed, speaker_label, max_iter) -> ProbeResult:
    splits = probe_splits(y, speakers, np.asarray(utterances), folds, seed, speaker_label)
    predicted = np.empty(len(y), dtype=y.dtype)
    majority = np.zeros(len(y), dtype=bool)
    iterations, converged = 0, True
    for train, test in splits:
        classes, counts = np.unique(y[train], return_counts=True)
        majority[test] = y[test] == classes[np.argmax(counts)]  # DummyClassifier(most_frequent)
        predicted[test], used, ok = fit_predict(x[train], y[train], x[test], seed, max_iter)
        iterations, converged = max(iterations, used), converged and ok
    hits = predicted == y
    low, high = speaker_bootstrap(hits, speakers, bootstrap, seed)
    return ProbeResult(float(hits.mean()), float(majority.mean()), low, high, int(len(y)), len(splits),
                       int(len(np.unique(y))), iterations, bool(converged), per_speaker(hits, speakers, majority))


def speaker_bootstrap(hits: np.ndarray, speakers: np.ndarray, resamples: int, seed: int,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of accuracy when speakers (not frames) are resampled with replacement."""
    if resamples <= 0:
        return float("nan"), float("nan")
    _, codes = np.unique(speakers, return_inverse=True)
    correct = np.bincount(codes, weights=hits.astype(np.float64))
    total = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(total), np.full(len(total), 1.0 / len(total)), size=resamples)
    accuracies = (draws @ correct) / (draws @ total)
    tail = (1 - level) / 2
    return float(np.quantile(accuracies, tail)), float(np.quantile(accuracies, 1 - tail))


def label_rows(frames, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows (indices into `frames`) that carry `label`, and the label values there.

    tone: rows with tone 1-5; phone: rows with a phone; sex and speaker: rows with a non-empty value.
    """
    if label == "tone":
        values = frames["tone"].to_numpy()
        keep = values > 0
    else:
        values = frames[label].astype(str).to_numpy()
        keep = values != ""
    return np.flatnonzero(keep), values[keep]


def sample_rows(frames, max_rows: int | None, seed: int) -> np.ndarray:
    """At most `max_rows` rows (sorted), the same share drawn from every speaker (so no speaker
    dominates a probe); all rows when `max_rows` is None or not smaller than the store."""
    n = len(frames)
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    speakers = frames["speaker"].to_numpy()
    fraction = max_rows / n
    chosen = []
    for speaker in np.unique(speakers):
        rows = np.flatnonzero(speakers == speaker)
        take = max(1, int(round(len(rows) * fraction)))
        chosen.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))
