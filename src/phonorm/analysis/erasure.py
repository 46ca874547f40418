"""A causal test of C4: erase one factor linearly from a layer and probe the other.

LEACE (LEAst-squares Concept Erasure; Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
closed form", NeurIPS) is the smallest (in the whitened least-squares sense) affine edit of the
features after which no linear classifier can predict the concept better than a constant *on the
rows it was fitted on*. We use the authors' package `concept-erasure` (`LeaceEraser`).

That guarantee is why the eraser, the probe's training rows and its test rows must be three
speaker-disjoint sets. Fitted on the probe's own training rows, the eraser makes the class means
equal there, the logistic loss has no gradient towards the concept, the probe predicts the majority
class and "erasure brings sex to chance" is true by construction. Fitted on other speakers, it
brings sex to chance only where the sex direction is shared by the speakers.

Protocol, for one layer, on the sampled rows that carry a tone (> 0) and a sex (`erasure_roles`):
- speakers are dealt into K groups, stratified by sex (each group has both sexes); fold k tests on
  group k, and the other speakers are split, again by sex, into the eraser's speakers and the
  probe's training speakers; every speaker is tested once (cross-fitting);
- conditions `erased` ∈ {none, sex, tone}: the eraser of the concept is fitted on the eraser's rows
  only and applied to the probe's training and test rows; the tone probe and the sex probe (the
  standard probe of `probes.py`) are trained on the probe's training rows (edited or not: "none"
  trains on the same rows unedited, so before and after compare like with like) and scored on
  the test rows.
If sex is at chance after erasing sex while tone accuracy is unchanged, the layer's tone
information does not depend on the linearly decodable sex information a suppression would remove.
The converse (erase tone, probe sex) checks that the erasure is specific.

Per condition: accuracy with its 95% cluster-robust t interval over the folds (`CI_METHOD`: the
test speakers of a fold share one fitted eraser and probe); chance = the class prior of the scored rows (`probes.CHANCE_METHOD`); the
change from `erased = none` (paired per speaker, 95% interval); and "at chance", decided on the
balanced accuracy (mean recall over the classes; `intervals.balanced_accuracy`): `above_chance` =
balanced accuracy − 1/classes with its 90% interval, and `at_chance`, the equivalence test (TOST)
of |above_chance| < `EQUIVALENCE_MARGIN`. Balanced accuracy because any prediction that ignores
the features scores exactly 1/classes on it, whatever the classes' shares in the test folds: with
a speaker-level label such as sex, plain accuracy of a constant guess is 1 on one sex's speakers
and 0 on the other's, so its speaker-level interval is wide even when nothing is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from phonorm.analysis.intervals import (
    EQUIVALENCE_LEVEL,
    LEVEL,
    balanced_accuracy,
    equivalent,
    num,
    pooled_accuracy,
)
from phonorm.analysis.kernels import Kernels
from phonorm.analysis.probes import (
    CHANCE_METHOD,
    FoldFit,
    ProbeSolver,
    fit_predict,
    fold_summary,
    per_speaker,
    prior_hits,
)
from phonorm.labels import ERASURE_CONDITIONS, ERASURE_PROBED

CONDITIONS, PROBED = ERASURE_CONDITIONS, ERASURE_PROBED
#: "At chance" after erasure: accuracy within ± this of chance, by TOST (fixed before any data).
EQUIVALENCE_MARGIN = 0.05
#: What the rows of erasure.csv were computed with (recorded beside them).
ROLES = "eraser / probe-train / probe-test speakers disjoint, cross-fitted over folds"
#: The intervals of erasure.csv: influences summed per fold (module docstring).
CI_METHOD = "cluster-robust t over folds (CR1, K-1 df)"
#: How sex is erased: "sex", LEACE of the sex labels of the eraser's speakers; "speaker", LEACE of
#: their speaker identities (k speakers: a rank k − 1 edit removing every direction along which the
#: eraser's speakers' means differ). Measured on planted speakers (bench/erasure.py, table in
#: docs/statistics.md): with speaker offsets neither reaches chance on held-out speakers, and the
#: speaker eraser costs tone accuracy, so sex LEACE is the default.
SEX_ERASERS = ("sex", "speaker")
SEX_ERASER = "sex"


@dataclass(frozen=True)
class Roles:
    """Rows (indices) of one fold's three speaker-disjoint roles."""

    eraser: np.ndarray
    train: np.ndarray
    test: np.ndarray


def erasure_roles(sex: np.ndarray, speakers: np.ndarray, folds: int, seed: int) -> list[Roles]:
    """The cross-fitted roles (see the module docstring) for rows with `sex` and `speakers` (rows,).

    K (`fold_count`) keeps at least 2 speakers of each sex outside every test group (one for the
    eraser, one for the probe) and, when both sexes have as many speakers, test groups with equal
    numbers of each sex.
    Raises ValueError with fewer than 3 speakers of either sex."""
    by_sex: dict[str, list[str]] = {}
    for speaker in np.unique(speakers):
        values, counts = np.unique(sex[speakers == speaker], return_counts=True)
        by_sex.setdefault(str(values[np.argmax(counts)]), []).append(str(speaker))
    if len(by_sex) < 2:
        raise ValueError("erasure needs at least 2 sexes among the rows")
    fewest = min(len(v) for v in by_sex.values())
    if fewest < 3:
        raise ValueError(f"erasure needs at least 3 speakers of each sex (eraser, probe training, probe test), "
                         f"found {fewest} of one")
    k = fold_count(sorted(len(v) for v in by_sex.values()), folds)
    rng = np.random.default_rng(seed)
    dealt = {s: list(rng.permutation(v)) for s, v in sorted(by_sex.items())}
    group = {spk: (i + offset) % k for offset, members in enumerate(dealt.values()) for i, spk in enumerate(members)}
    roles = []
    for fold in range(k):
        eraser: list[str] = []
        train: list[str] = []
        for offset, members in enumerate(dealt.values()):
            rest = [spk for spk in members if group[spk] != fold]
            # Alternate the first role between sexes so that the two sets are about the same size.
            first, second = (eraser, train) if offset % 2 == 0 else (train, eraser)
            first += rest[0::2]
            second += rest[1::2]
        test = [spk for spk in group if group[spk] == fold]
        roles.append(Roles(*(np.flatnonzero(np.isin(speakers, part)) for part in (eraser, train, test))))
    return roles


def fold_count(per_sex: list[int], folds: int) -> int:
    """Folds for speaker counts `per_sex` (each ≥ 3): the count nearest `folds` (the larger on a tie)
    among those that leave ≥ 2 speakers of each sex outside every test group, preferring counts that
    split every sex evenly (balanced test groups)."""
    fewest = min(per_sex)
    valid = [k for k in range(2, fewest + 1) if all(-(-n // k) <= n - 2 for n in per_sex)]
    even = [k for k in valid if all(n % k == 0 for n in per_sex)]
    return min(even or valid, key=lambda k: (abs(k - folds), -k))


def erasure_probes(x: np.ndarray, tone: np.ndarray, sex: np.ndarray, speakers: np.ndarray, *, kernels: Kernels,
                   folds: int = 5, seed: int = 0, solver: ProbeSolver = ProbeSolver(), workers: int = 1,
                   sex_eraser: str = SEX_ERASER) -> list[dict]:
    """Rows (one per erased × probed) for features `x` (rows, dim) and per-row `tone` (> 0; 0 = none),
    `sex`, `speakers` (rows,). Only rows with a tone and a sex are used.
    Raises ValueError with fewer than 2 tones, or fewer than 3 speakers of either sex.
    `kernels`: fit the erasers (`Kernels.leace`); `solver`, `workers`: as `probes.probe` (each fold ×
    erased concept is one parallel job)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return start_erasure_probes(x, tone, sex, speakers, pool.submit, kernels=kernels, folds=folds, seed=seed,
                                    solver=solver, sex_eraser=sex_eraser)()


def start_erasure_probes(x: np.ndarray, tone: np.ndarray, sex: np.ndarray, speakers: np.ndarray, submit, *,
                         kernels: Kernels, folds: int = 5, seed: int = 0, solver: ProbeSolver = ProbeSolver(),
                         sex_eraser: str = SEX_ERASER) -> Callable[[], list[dict]]:
    """`erasure_probes` with its jobs handed to `submit` (an executor's `submit`) at once; returns a
    function that waits for them and gives the rows (as `probes.start_probe`)."""
    tone, sex = np.asarray(tone), np.asarray(sex).astype(str)
    keep = (tone > 0) & (sex != "")
    # float32 (the probes' dtype; the eraser is fitted and applied in float64 per fold): half the memory.
    x, tone, sex = np.asarray(x, dtype=np.float32)[keep], tone[keep], sex[keep]
    speakers = np.asarray(speakers).astype(str)[keep]
    if len(np.unique(tone)) < 2:
        raise ValueError("erasure needs at least 2 tones among the rows")
    roles = erasure_roles(sex, speakers, folds, seed)
    if sex_eraser not in SEX_ERASERS:
        raise ValueError(f"sex_eraser must be one of {', '.join(SEX_ERASERS)}, not {sex_eraser!r}")
    labels = {"tone": tone, "sex": sex}
    # What the eraser of each condition is fitted to remove (see SEX_ERASERS).
    concepts = {"tone": tone, "sex": speakers if sex_eraser == "speaker" else sex}

    def fold(role: Roles, erased: str) -> dict:
        if erased == "none":
            x_train, x_test = x[role.train], x[role.test]
        else:
            # Fitted on the eraser's speakers only; edited in float64, kept in float32 as the standard
            # probe (`probes.probe`) fits, so the erased and unerased fits compare alike.
            erase = kernels.leace(x, concepts[erased][role.eraser], rows=role.eraser)
            x_train, x_test = erase(x, role.train, np.float32), erase(x, role.test, np.float32)
        return {p: fit_predict(x_train, labels[p][role.train], x_test, seed, solver) for p in PROBED}

    jobs = [(role.test, erased, submit(fold, role, erased)) for role in roles for erased in CONDITIONS]
    return lambda: [dict(row, sex_eraser=sex_eraser, probe=solver.family)
                    for row in _erasure_rows(jobs, labels, speakers, roles)]


def _erasure_rows(jobs: list, labels: dict, speakers: np.ndarray, roles: list[Roles]) -> list[dict]:
    """The rows of `erasure_probes` from its finished fold `jobs` ((test rows, erased, future)).

    Every interval is clustered by fold (`Estimate.clustered`): the test speakers of a fold share one
    fitted eraser and probe, so the fold, not the speaker, is the independent unit (K − 1 df)."""
    n = len(speakers)
    fold_of = {str(s): f"fold {k}" for k, role in enumerate(roles) for s in np.unique(speakers[role.test])}
    predicted = {(e, p): np.empty(n, dtype=labels[p].dtype) for e in CONDITIONS for p in PROBED}
    fits: dict[tuple[str, str], list[FoldFit]] = {k: [] for k in predicted}
    for test, erased, job in jobs:
        for p, fold in job.result().items():
            predicted[(erased, p)][test] = fold.predicted
            fits[(erased, p)].append(fold)
    majority = {p: prior_hits(labels[p]) for p in PROBED}
    rows: list[dict] = []
    before: dict = {}
    for erased in CONDITIONS:
        for p in PROBED:
            hits = predicted[(erased, p)] == labels[p]
            tallies = per_speaker(hits, speakers, majority[p])
            accuracy = pooled_accuracy({s: (t.hits, t.rows) for s, t in tallies.items()}).clustered(fold_of)
            balanced = balanced_accuracy(hits, labels[p], speakers).clustered(fold_of)
            before.setdefault(p, (accuracy, balanced))
            chance = float(majority[p].mean())
            low, high = accuracy.interval()
            change = accuracy.minus(before[p][0])
            c_low, c_high = change.interval()
            b_low, b_high = balanced.interval()
            balanced_change = balanced.minus(before[p][1])
            bc_low, bc_high = balanced_change.interval()
            uniform = 1 / len(np.unique(labels[p]))
            at_chance, a_low, a_high = equivalent(balanced.shifted(uniform), EQUIVALENCE_MARGIN)
            rows.append(dict(erased=erased, probed=p, accuracy=accuracy.point, chance=chance,
                             chance_method=CHANCE_METHOD, ci_low=num(low), ci_high=num(high), ci_method=CI_METHOD,
                             ci_level=LEVEL, change=change.point, change_ci_low=num(c_low), change_ci_high=num(c_high),
                             balanced_accuracy=balanced.point, balanced_chance=uniform,
                             balanced_ci_low=num(b_low), balanced_ci_high=num(b_high),
                             balanced_change=balanced_change.point, balanced_change_ci_low=num(bc_low),
                             balanced_change_ci_high=num(bc_high),
                             above_chance=balanced.point - uniform, above_chance_ci_low=num(a_low),
                             above_chance_ci_high=num(a_high), above_chance_ci_level=EQUIVALENCE_LEVEL,
                             at_chance=at_chance, equivalence_margin=EQUIVALENCE_MARGIN, n=int(n),
                             speakers=len(tallies), folds=len(roles), roles=ROLES,
                             **fold_summary(fits[(erased, p)]), by_speaker=tallies))
    return rows
