"""Linear probes: how well a label can be read off a layer by a linear classifier.

The classifier (`ProbeSolver.family`, docs/statistics.md "The probe"): by default an L2-regularised
multinomial logistic regression solved to its optimum by lbfgs ("logistic", C = 1, `PROBE_TOL`); or
linear discriminant analysis with Ledoit–Wolf shrinkage ("lda", scikit-learn's
`LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`), a closed-form fit, faster on many
classes (a 61-class phone fold at 768 dimensions 2.5-9 times) and slower on few (sex, tone), which
assumes one covariance shared by the classes and so reads a class made of several speakers' voices
(sex) less well.

Cross-validation never puts a speaker on both sides (pitfall 9, docs/pitfalls.md): folds are grouped by speaker
(sklearn `StratifiedGroupKFold`, which also keeps every class in every test fold when it can).
The speaker label itself cannot be speaker-disjoint; it is probed with folds grouped by utterance
and stratified by speaker, so every speaker is on both sides but no utterance is.

Reported: pooled out-of-fold accuracy ("linearly decodable" means this accuracy is above chance);
chance = the class prior of the scored rows, i.e. the share of the most frequent class (every row is
scored once, so this is the test folds' pooled prior: the best accuracy one guess that ignores the
features can reach on those rows); a 95% cluster-robust t interval over speakers
(`intervals.pooled_accuracy`, G − 1 degrees of freedom); the per-speaker hits, totals and chance
hits (`by_speaker`) for paired comparisons between models; and convergence: the most iterations
any fold's solver used and whether every fold converged (a fold that stops at `max_iter` is
recorded, not silenced; its accuracy is still reported).

Chance is not the out-of-fold accuracy of the training fold's majority class
(`DummyClassifier(strategy="most_frequent")`): with speaker-disjoint folds of a speaker-level label
and few speakers, the training fold's majority is the test fold's minority, and that baseline fell
to 0.333 for sex with 12 speakers, far below the 0.5 prior. Nor is it each test fold's own majority,
which a guess could only know from the test labels (1.0 with one speaker per fold).

With few speakers, speaker-disjoint probes of a speaker-level label (sex) can fall *below* chance:
the held-out speaker's sex is the minority in its training fold, and a probe that has learnt the
training speakers' voices generalises badly. That is a property of the data (too few speakers), not
a bug; the report's corpus section gives the number of speakers in each split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from phonorm.analysis.intervals import CLUSTER_T, SpeakerTally, pooled_accuracy
from phonorm.analysis.kernels import Kernels
from phonorm.settings import PROBE_FAMILIES
from phonorm.settings.analyze import ANALYZE_DEFAULTS

#: How `ProbeResult.chance` is defined (recorded in probes.csv and erasure.csv).
CHANCE_METHOD = "class prior (majority-class share of the scored rows)"
#: The probe's solver stops when the largest entry of its objective's gradient is below this (scikit-learn's
#: lbfgs `tol`; its default 1e-4 stopped 61-class probes 0.008-0.015 away from their optimum, see
#: docs/statistics.md "Probe convergence"); at 1e-6 they are within 1e-3 of a fit to 1e-8.
PROBE_TOL = 1e-6


@dataclass(frozen=True)
class ProbeSolver:
    """How every fold's probe is fitted: `family` ("logistic" or "lda", `PROBE_FAMILIES`); for
    "logistic" only, the solver's `max_iter` and the `kernels` whose device it runs on (None or a
    "cpu" device: scikit-learn; a GPU: `Kernels.logistic_on_device`, the same objective). The same
    solver fits every layer and model of an analysis, and the erasure probes."""

    family: str = "logistic"
    max_iter: int = ANALYZE_DEFAULTS["probe_max_iter"]
    kernels: Optional[Kernels] = None

    def __post_init__(self):
        if self.family not in PROBE_FAMILIES:
            raise ValueError(f"probe family must be one of {', '.join(PROBE_FAMILIES)}, not {self.family!r}")


@dataclass(frozen=True)
class FoldFit:
    """One fold's fit: its test predictions, the solver's iterations, whether it converged before
    `max_iter`, and the largest entry of the objective's gradient at the solution (`gradient`; 0 for
    a single-class fold, which has nothing to fit)."""

    predicted: np.ndarray
    iterations: int
    converged: bool
    gradient: float


def fold_summary(fits: list[FoldFit]) -> dict:
    """What a probe records of its folds' fits: `iterations` (the most any fold used), `converged`
    (every fold did) and `gradient` (the largest at any fold's solution)."""
    return dict(iterations=max((f.iterations for f in fits), default=0), converged=all(f.converged for f in fits),
                gradient=max((f.gradient for f in fits), default=0.0))


@dataclass
class ProbeResult:
    accuracy: float
    chance: float
    ci_low: float
    ci_high: float
    n: int
    folds: int
    classes: int
    ci_method: str = CLUSTER_T
    chance_method: str = CHANCE_METHOD
    #: the classifier (`PROBE_FAMILIES`)
    probe: str = "logistic"
    #: most solver iterations used by a fold, and whether every fold converged before `max_iter`
    iterations: int = 0
    converged: bool = True
    #: the largest gradient entry at any fold's solution (lbfgs stops at `PROBE_TOL` or where the
    #: objective stops changing, whichever comes first)
    gradient: float = 0.0
    #: speaker → its out-of-fold hits, rows and hits of the majority-class baseline
    by_speaker: dict[str, SpeakerTally] = field(default_factory=dict)

    def row(self) -> dict:
        return dict(accuracy=self.accuracy, chance=self.chance, chance_method=self.chance_method,
                    ci_low=self.ci_low, ci_high=self.ci_high, ci_method=self.ci_method, n=self.n, folds=self.folds,
                    classes=self.classes, probe=self.probe, iterations=self.iterations, converged=self.converged,
                    gradient=self.gradient)


def probe_splits(y: np.ndarray, speakers: np.ndarray, utterances: np.ndarray, folds: int, seed: int,
                 speaker_label: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs. Grouped by speaker, or by utterance for the speaker label.

    Uses fewer folds than asked when there are fewer groups; raises ValueError below 2.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = utterances if speaker_label else speakers
    key = _digest(y, groups, folds, seed)
    if key in _SPLITS:
        return _SPLITS[key]
    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    if k < 2:
        raise ValueError(f"only {n_groups} {'utterance' if speaker_label else 'speaker'}(s): cannot cross-validate")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        # "The least populated class has only n members": expected for rare phones; folds stay valid.
        warnings.simplefilter("ignore", UserWarning)
        splits = [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups)]
    _SPLITS[key] = splits
    while len(_SPLITS) > 32:
        del _SPLITS[next(iter(_SPLITS))]
    return splits


#: probe_splits' recent results by content: every layer of every model probes the same sampled rows,
#: and StratifiedGroupKFold took 2 s per label there (speaker label, 20,000 rows), as long as the fits.
_SPLITS: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}


def _digest(*parts) -> str:
    import hashlib

    h = hashlib.sha1()
    for part in parts:
        h.update(np.asarray(part).astype(str).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def make_classifier(seed: int, max_iter: int = ANALYZE_DEFAULTS["probe_max_iter"], tol: float = PROBE_TOL, family: str = "logistic"):
    """The probe of `family`, after standardising the rows (`Float32Standardiser`):
    - "logistic": multinomial logistic regression (L2, C=1) solved by lbfgs from zero to `tol`. Its
      objective: mean log-loss + ‖W‖²/(2·C·rows), the intercept not penalised.
    - "lda": linear discriminant analysis, class covariances shrunk by Ledoit–Wolf's rule (scikit-learn's
      `shrinkage="auto"`), priors the training fold's class shares; solved in closed form (lsqr)."""
    from sklearn.pipeline import make_pipeline

    if family == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        return make_pipeline(Float32Standardiser(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    from sklearn.linear_model import LogisticRegression

    return make_pipeline(Float32Standardiser(), LogisticRegression(max_iter=max_iter, tol=tol, random_state=seed))


def objective_gradient(model, x: np.ndarray, y: np.ndarray) -> float:
    """The largest entry of the probe's objective gradient (`make_classifier`) at the fitted `model`'s
    solution on its training rows `x` (rows, dim), `y` (rows,): what lbfgs compares with `tol`.
    Written out because scikit-learn does not report it."""
    from scipy.special import expit, softmax

    z = np.asarray(model[0].transform(x), dtype=np.float64)
    fit = model[-1]
    codes = np.searchsorted(fit.classes_, y)
    weights, bias = np.asarray(fit.coef_, dtype=np.float64), np.asarray(fit.intercept_, dtype=np.float64)
    if weights.shape[0] == 1:  # two classes: one binomial weight vector
        residual = (expit(z @ weights[0] + bias[0]) - (codes == 1))[:, None]
    else:
        residual = softmax(z @ weights.T + bias, axis=1)
        residual[np.arange(len(codes)), codes] -= 1
    rows = len(z)
    grad_w = residual.T @ z / rows + weights / (fit.C * rows)
    return float(max(np.abs(grad_w).max(), np.abs(residual.mean(axis=0)).max()))


class Float32Standardiser(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """scikit-learn's StandardScaler for float32 rows (rows, dim): the mean and the population standard
    deviation accumulated in float64 (as StandardScaler does; they agree to float32 rounding, 1e-7), the rows returned
    in float32. StandardScaler reaches the same numbers through a float64 copy of the rows, at 2.4×
    the CPU time (16,000 × 768 rows), and every probe fold standardises (about 2,000 fits in an
    analysis at the study's size)."""

    def fit(self, x, y=None):
        x = np.asarray(x, dtype=np.float32)
        self.mean_ = x.mean(0, dtype=np.float64)
        centred = x - self.mean_.astype(np.float32)
        self.var_ = np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / len(x)
        scale = np.sqrt(self.var_)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x):
        return (np.asarray(x, dtype=np.float32) - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)


def probe(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, utterances: np.ndarray, *, folds: int = 5,
          seed: int = 0, speaker_label: bool = False, solver: ProbeSolver = ProbeSolver(),
          workers: int = 1) -> ProbeResult:
    """Cross-validated accuracy of a linear probe (`solver`) of labels `y` (rows,) from features `x`
    (rows, dim).

    `workers`: folds fitted at once (threads with one BLAS thread each: scikit-learn's solvers run
    in numpy/Cython/LAPACK code that releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread per fit: more BLAS threads per fit gained little and, on a busy 2-core
    # machine, were measured up to 50× slower (thread contention).
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=max(1, min(workers, folds))) as pool:
        return start_probe(x, y, speakers, utterances, pool.submit, folds=folds, seed=seed,
                           speaker_label=speaker_label, solver=solver)()


def start_probe(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, utterances: np.ndarray, submit, *,
                folds: int = 5, seed: int = 0, speaker_label: bool = False,
                solver: ProbeSolver = ProbeSolver(), rows: np.ndarray | None = None) -> Callable[[], ProbeResult]:
    """`probe`, with its fold fits handed to `submit` (an executor's `submit`) at once; returns a
    function that waits for them and gives the `ProbeResult`. Starting every label's probe before
    waiting for any keeps all workers busy (one label's five folds leave a worker idle).
    `rows` (optional, int (n,)): the rows of `x` that `y`, `speakers` and `utterances` describe, so
    that several labels probe one feature matrix without a copy of it each.
    Raises ValueError (at the start) when the labels cannot be cross-validated."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    speakers = np.asarray(speakers)
    splits = probe_splits(y, speakers, np.asarray(utterances), folds, seed, speaker_label)
    at = np.arange(len(y)) if rows is None else np.asarray(rows)
    if len(at) != len(y):
        raise ValueError(f"rows: {len(at)} positions for {len(y)} labels")
    # The fold's rows are taken in the job: copies made at submission would all be alive at once.
    fitted = [submit(lambda train=train, test=test: fit_predict(x[at[train]], y[train], x[at[test]], seed, solver))
              for train, test in splits]

    def finish() -> ProbeResult:
        predicted = np.empty(len(y), dtype=y.dtype)
        majority = prior_hits(y)
        fits: list[FoldFit] = [future.result() for future in fitted]
        for (_, test), fold in zip(splits, fits):
            predicted[test] = fold.predicted
        hits = predicted == y
        tallies = per_speaker(hits, speakers, majority)
        low, high = pooled_accuracy({s: (t.hits, t.rows) for s, t in tallies.items()}).interval()
        return ProbeResult(float(hits.mean()), float(majority.mean()), low, high, int(len(y)), len(splits),
                           int(len(np.unique(y))), probe=solver.family, **fold_summary(fits), by_speaker=tallies)
    return finish


def prior_hits(y: np.ndarray) -> np.ndarray:
    """Hits (rows,) of always guessing the most frequent class of `y` (the scored rows): their mean is
    the chance level of a probe (`CHANCE_METHOD`), the best one guess that ignores the features can
    do on those rows."""
    classes, counts = np.unique(y, return_counts=True)
    return np.asarray(y == classes[np.argmax(counts)])


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int,
                solver: ProbeSolver = ProbeSolver()) -> FoldFit:
    """Fit the probe on one fold and predict the test rows. A single-class training fold predicts that
    class. An iterative fit starts from zero (never from another fold's solution, which saw this fold's
    test speakers); a closed-form fit ("lda") records 0 iterations and gradient 0 (it is the exact
    solution)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    classes = np.unique(y_train)
    if len(classes) == 1:
        return FoldFit(np.full(len(x_test), classes[0], dtype=y_train.dtype), 0, True, 0.0)
    if solver.family == "lda":
        model = make_classifier(seed, family="lda")
        model.fit(x_train, y_train)
        return FoldFit(model.predict(x_test), 0, True, 0.0)
    if solver.kernels is not None and solver.kernels.device != "cpu":
        fit = solver.kernels.logistic_on_device(x_train, y_train, x_test, solver.max_iter)
        return FoldFit(fit.predicted, fit.iterations, fit.converged, fit.gradient)
    max_iter = solver.max_iter
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
    return FoldFit(model.predict(x_test), iterations, converged, objective_gradient(model, x_train, y_train))


def per_speaker(hits: np.ndarray, speakers: np.ndarray, baseline: np.ndarray) -> dict[str, SpeakerTally]:
    """{speaker: (hits, rows, baseline hits)} of boolean hits and baseline (majority-class) hits (rows,)."""
    names, codes = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    correct = np.bincount(codes, weights=hits.astype(np.float64), minlength=len(names))
    base = np.bincount(codes, weights=baseline.astype(np.float64), minlength=len(names))
    total = np.bincount(codes, minlength=len(names))
    return {str(n): SpeakerTally(int(c), int(t), int(b)) for n, c, t, b in zip(names, correct, total, base)}


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
