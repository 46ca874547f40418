"""The normalization summary of a sweep: per point, the quantities that carry the study's argument,
read from that point's analysis outputs, with 95% speaker-level CIs where they can be had (`ci_from`
names the method the analysis recorded).

Quantities (accuracies and shares in [0, 1]; "top" = the model's last stored layer; the "tone
model" is the first fine-tuned model whose only task is tone; the reference is the point's
pre-trained model):

- `sex_probe_top_tone_minus_reference`: top-layer sex probe accuracy, tone model − reference
  (negative: sex suppressed). CI: the paired interval of claims.json's C1 comparison when
  the analysis wrote one; else no CI (the two accuracies' own CIs are the rows
  `tone_model_top_sex_probe`, `reference_top_sex_probe`): probes.csv holds no per-speaker results
  to pair.
- `tone_probe_top_tone_minus_reference` (tone gain): the same for the tone probe; no paired CI.
  `tone_relative_error_reduction`: claims.json's C1 comparison (its CI), when present.
- `tone_model_top_{sex,tone}_probe`, `reference_top_{sex,tone}_probe`: probes.csv's accuracy and
  its CI (`ci_low`, `ci_high`: over speakers, method in `ci_method`) when the columns are there.
- `cka_drop_lower_to_upper`, `svcca_drop_lower_to_upper`: the tone model's similarity to the
  reference (same layer), mean over the lower half of the layers − mean over the top third (the
  split of claim C2). CI: claims.json's C2 comparison for CKA when present; else none.
- `speaker_variance_share_top`, `reference_speaker_variance_share_top`: η² of speaker identity at the
  top layer (between-speaker / total sum of squares over all stored rows, as normalization.csv's
  `variance_share`), computed here from the feature store with a speaker bootstrap (speakers drawn
  with replacement; a speaker drawn twice counts as two groups; bias-corrected percentile interval);
  without the store, normalization.csv's value and no CI.
- `held_out_masked_accuracy` (hubert objective) or `held_out_contrastive_accuracy` (contrastive): the
  pre-trained model's last held-out pre-training accuracy (its model card); no CI.
- `C1` … `C4`: the claim verdicts of claims.json (`verdict` column; `value` empty).

`ci_from` says where each CI came from, or why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.errors import InputError, PhonormError
from phonorm.experiment.config import SweepConfig
from phonorm.layers import layer_index
from phonorm.records.analysis import ClaimsFile, Comparison
from phonorm.records.card import ModelCard
from phonorm.records.sweep import POINTS, TABLE, SweepPoints
from phonorm.records.tables import NORMALIZATION, PROBES, SIMILARITY, SWEEP

LEVEL = 0.95
QUANTITIES = {
    "sex_probe_top_tone_minus_reference": "top-layer sex probe, tone model − reference",
    "tone_probe_top_tone_minus_reference": "tone gain: top-layer tone probe, tone model − reference",
    "tone_relative_error_reduction": "tone gain as relative error reduction (claims.json C1)",
    "tone_model_top_sex_probe": "tone model: top-layer sex probe accuracy",
    "reference_top_sex_probe": "reference: top-layer sex probe accuracy",
    "tone_model_top_tone_probe": "tone model: top-layer tone probe accuracy",
    "reference_top_tone_probe": "reference: top-layer tone probe accuracy",
    "cka_drop_lower_to_upper": "linear CKA to the reference: lower half − top third of the layers",
    "svcca_drop_lower_to_upper": "SVCCA to the reference: lower half − top third of the layers",
    "speaker_variance_share_top": "tone model: speaker share of variance at the top layer",
    "reference_speaker_variance_share_top": "reference: speaker share of variance at the top layer",
    "held_out_contrastive_accuracy": "pre-trained model: held-out contrastive accuracy",
    "held_out_masked_accuracy": "pre-trained model: held-out masked-prediction accuracy",
}
CLAIMS = ("C1", "C2", "C3", "C4")
NO_PAIRED = "none: probes.csv has no per-speaker results to pair"


def _method(method: Any, earlier: str) -> str:
    """The interval method an analysis recorded beside a CI (`ci_method`), or `earlier` for files
    written before it was recorded."""
    return str(method) if isinstance(method, str) and method else earlier


def _row(quantity: str, value: Any, low: Any = None, high: Any = None, ci_from: str = "none",
         verdict: Optional[str] = None) -> dict[str, Any]:
    def num(v: Any) -> float:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return float("nan")
        return v

    value, low, high = num(value), num(low), num(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = float("nan")
        ci_from = ci_from if ci_from.startswith("none") else "none"
    return {"quantity": quantity, "value": value, "ci_low": low, "ci_high": high, "ci_from": ci_from,
            "verdict": verdict}


def _read_claims(results: Path) -> Optional[ClaimsFile]:
    """The point's claims.json through its type; None when missing or not what analyze writes (the
    summary notes it and goes on without the verdicts)."""
    try:
        claims: ClaimsFile = ClaimsFile.load(results)
    except InputError:
        return None
    return claims


# =========================================================================== from the tables
def _top_layer(model: str, claims: Optional[ClaimsFile], probes: Optional[pd.DataFrame]) -> Optional[str]:
    top = claims.top_layer.get(model) if claims else None
    if top:
        return str(top)
    if probes is None or "layer" not in probes:
        return None
    layers = [str(x) for x in probes.loc[probes["model"] == model, "layer"].unique()]
    return max(layers, key=layer_index) if layers else None


def _probe(probes: Optional[pd.DataFrame], model: str, layer: Optional[str], label: str) -> Optional[dict]:
    if probes is None or layer is None or not {"model", "layer", "label", "accuracy"} <= set(probes.columns):
        return None
    hit = probes[(probes["model"] == model) & (probes["layer"].astype(str) == layer) & (probes["label"] == label)]
    return hit.iloc[0].to_dict() if len(hit) else None


def _drop(similarity: Optional[pd.DataFrame], model: str, reference: str, measure: str) -> Optional[float]:
    """Mean over the lower half of the layers − mean over the top third (claim C2's split)."""
    if similarity is None or not {"model", "reference", "layer", "measure", "value"} <= set(similarity.columns):
        return None
    rows = similarity[(similarity["model"] == model) & (similarity["reference"] == reference)
                      & (similarity["measure"] == measure)]
    if "held_out" in rows:
        rows = rows[~rows["held_out"].astype(bool)] if (~rows["held_out"].astype(bool)).any() else rows
    values = rows.drop_duplicates("layer").assign(i=lambda t: t["layer"].map(layer_index)).sort_values("i")
    v = values["value"].to_numpy(dtype=float)
    n = len(v)
    if n < 3:
        return None
    top_start = int(np.ceil(2 * n / 3))
    top = v[top_start:] if top_start < n else v[-1:]
    return float(v[: (n + 1) // 2].mean() - top.mean())


# =========================================================================== from the feature store
def speaker_share(features: Path, model: str, layer: str, resamples: int, seed: int = 0
                  ) -> tuple[float, float, float, int]:
    """(η² of speaker identity, CI low, CI high, speakers) of one stored layer: between-speaker over
    total sum of squares summed over dimensions, over all rows; CI: bias-corrected percentile
    bootstrap over speakers (`resamples` draws with replacement; NaN with fewer than 2 speakers)."""
    from phonorm.features.store import FeatureStore

    store = FeatureStore(features)
    speakers = store.frames["speaker"].astype(str).to_numpy()
    names, codes = np.unique(speakers, return_inverse=True)
    k = len(names)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums: Optional[np.ndarray] = None  # (speakers, dim) after the first block
    squares, shift = np.zeros(k), np.zeros(0)
    begin = 0
    for block in store.iter_blocks(model, layer):
        x = np.asarray(block, dtype=np.float64)
        if sums is None:  # shifting by a typical row keeps the sums of squares well conditioned
            shift = x.mean(axis=0)
            sums = np.zeros((k, x.shape[1]))
        x = x - shift
        c = codes[begin:begin + len(x)]
        begin += len(x)
        for s in np.unique(c):  # a few speakers per block: one vectorised sum each
            sums[s] += x[c == s].sum(axis=0)
        squares += np.bincount(c, weights=np.einsum("ij,ij->i", x, x), minlength=k)
    if sums is None:
        return float("nan"), float("nan"), float("nan"), k
    within_groups = (sums ** 2).sum(axis=1) / np.maximum(counts, 1)  # Σ_dims S_s² / n_s per speaker

    def share(weights: np.ndarray) -> np.ndarray:
        n = weights @ counts
        grand = ((weights @ sums) ** 2).sum(axis=-1) / n
        return (weights @ within_groups - grand) / (weights @ squares - grand)

    point = float(share(np.ones(k)))
    if k < 2 or resamples <= 0:
        return point, float("nan"), float("nan"), k
    draws = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=resamples).astype(np.float64)
    values = share(draws)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return point, float("nan"), float("nan"), k
    # Bias-corrected percentile interval (Efron's BC): resampling speakers repeats some of them, so
    # the between-speaker share of a resample is biased low (by about 1/speakers); BC shifts the
    # percentiles by the share of resamples below the estimate instead of centring on a biased median.
    from scipy.stats import norm

    below = np.mean(values < point) + 0.5 * np.mean(values == point)
    if not 0 < below < 1:  # the estimate lies outside its bootstrap distribution: too few speakers for a CI
        return point, float("nan"), float("nan"), k
    z0, z = norm.ppf(below), norm.ppf((1 + LEVEL) / 2)
    low, high = np.percentile(values, [100 * norm.cdf(2 * z0 - z), 100 * norm.cdf(2 * z0 + z)])
    return point, float(low), float(high), k


# =========================================================================== one point
def summarize_point(point: dict[str, Any], resamples: Optional[int] = None, seed: int = 0
                    ) -> tuple[list[dict], list[str]]:
    """The summary rows of one point (see the module docstring) and notes on what was missing.
    `point`: {results, features, reference, tone_model, pretrained} (folders and model names);
    `resamples`: of the speaker share's bootstrap, `SweepConfig.resamples` when not given."""
    resamples = SweepConfig().resamples if resamples is None else resamples
    results = Path(point["results"])
    reference, tone = point["reference"], point.get("tone_model")
    tables = _PointTables.read(results)
    notes: list[str] = []
    if tables.claims is None:
        notes.append(f"{results / 'claims.json'} missing or unreadable: no claim verdicts")
    if tables.probes is None:
        notes.append(f"{results / 'probes.csv'} missing or unreadable: no probe quantities")
    top_ref = _top_layer(reference, tables.claims, tables.probes)
    top_tone = _top_layer(tone, tables.claims, tables.probes) if tone else None
    rows = [r for r in (tables.accuracy(reference, top_ref, "sex", "reference_top_sex_probe"),
                        tables.accuracy(reference, top_ref, "tone", "reference_top_tone_probe")) if r is not None]
    if tone:
        rows += _tone_model_rows(tables, tone, top_tone, reference, top_ref)
    else:
        notes.append("no fine-tuned model with the single task tone: the tone-model quantities are left out")
    for model, layer, quantity in ((tone, top_tone, "speaker_variance_share_top"),
                                   (reference, top_ref, "reference_speaker_variance_share_top")):
        if model and layer:
            rows += _speaker_share_rows(tables, Path(point["features"]), model, layer, quantity, resamples, seed, notes)
    card = ModelCard.load_if_any(point.get("pretrained"))  # None: a hub id, or no (valid) card
    metric = (card.held_out_metric if card else None) or "contrastive_accuracy"  # cards before the hubert objective
    curve = (card.held_out_accuracy or card.held_out_contrastive_accuracy) if card else []
    if curve:
        rows.append(_row(f"held_out_{metric}", curve[-1][1], ci_from="none: one fixed held-out set"))
    for row in tables.claims.claims if tables.claims else []:
        if row.claim in CLAIMS:
            rows.append(_row(row.claim, None, ci_from="none", verdict=row.status))
    return [{"point": point["id"], **r} for r in rows], notes


@dataclass(frozen=True)
class _PointTables:
    """What one point's analysis wrote (None: missing or unreadable)."""

    claims: Optional[ClaimsFile]
    probes: Optional[pd.DataFrame]
    similarity: Optional[pd.DataFrame]
    normalization: Optional[pd.DataFrame]

    @classmethod
    def read(cls, results: Path) -> "_PointTables":
        return cls(_read_claims(results), PROBES.read(results), SIMILARITY.read(results), NORMALIZATION.read(results))

    def accuracy(self, model: str, layer: Optional[str], label: str, quantity: str) -> Optional[dict]:
        """The summary row of a top-layer probe accuracy (its CI when probes.csv has one), or None."""
        hit = _probe(self.probes, model, layer, label)
        if hit is None:
            return None
        if self.probes is not None and {"ci_low", "ci_high"} <= set(self.probes.columns):
            return _row(quantity, hit["accuracy"], hit.get("ci_low"), hit.get("ci_high"),
                        f"{_method(hit.get('ci_method'), 'speaker bootstrap')} (probes.csv)")
        return _row(quantity, hit["accuracy"], ci_from="none: probes.csv has no CI columns")

    def speaker_share(self, model: str, layer: str) -> Optional[float]:
        """normalization.csv's speaker variance share of a layer, or None."""
        table = self.normalization
        if table is None:
            return None
        hit = table[(table["model"] == model) & (table["layer"].astype(str) == layer)
                    & (table["measure"] == "variance_share") & (table["label"] == "speaker")]
        return float(hit["value"].iloc[0]) if len(hit) else None


def _claimed_row(claims: Optional[ClaimsFile], claim: str, model: str, key: str, quantity: str,
                 earlier: str) -> Optional[dict]:
    """The summary row of claims.json's comparison `key` (e.g. `sex_suppressed`) of `claim` for `model`
    (estimate and CI), or None."""
    claimed: Optional[Comparison] = claims.comparison(claim, model, key) if claims else None
    if claimed is None:
        return None
    return _row(quantity, claimed.estimate, claimed.ci_low, claimed.ci_high,
                f"{_method(claimed.ci_method, earlier)} (claims.json {claim})")


def _tone_model_rows(tables: _PointTables, tone: str, top_tone: Optional[str], reference: str,
                     top_ref: Optional[str]) -> list[dict]:
    """The quantities of the tone model: its probes, its differences to the reference, its similarity drop."""
    rows: list[dict] = []
    accuracies = {}
    for model, layer, label, quantity in ((tone, top_tone, "sex", "tone_model_top_sex_probe"),
                                          (tone, top_tone, "tone", "tone_model_top_tone_probe"),
                                          (reference, top_ref, "sex", None), (reference, top_ref, "tone", None)):
        row = tables.accuracy(model, layer, label, quantity or "")
        accuracies[(model, label)] = None if row is None else row["value"]
        if row is not None and quantity:
            rows.append(row)
    for label, key in (("sex", "sex_suppressed"), ("tone", None)):
        quantity = f"{label}_probe_top_tone_minus_reference"
        claimed = _claimed_row(tables.claims, "C1", tone, key, quantity, "paired speaker bootstrap") if key else None
        a, b = accuracies[(tone, label)], accuracies[(reference, label)]
        if claimed is not None:
            rows.append(claimed)
        elif a is not None and b is not None:
            rows.append(_row(quantity, a - b, ci_from=NO_PAIRED))
    claimed = _claimed_row(tables.claims, "C1", tone, "tone_enhanced", "tone_relative_error_reduction",
                           "paired speaker bootstrap")
    rows += [claimed] if claimed is not None else []
    claimed = _claimed_row(tables.claims, "C2", tone, "cka_drop", "cka_drop_lower_to_upper", "speaker bootstrap")
    cka = _drop(tables.similarity, tone, reference, "cka")
    if claimed is not None:
        rows.append(claimed)
    elif cka is not None:
        rows.append(_row("cka_drop_lower_to_upper", cka, ci_from="none: similarity.csv has no per-speaker sums"))
    svcca = _drop(tables.similarity, tone, reference, "svcca")
    if svcca is not None:
        rows.append(_row("svcca_drop_lower_to_upper", svcca, ci_from="none: similarity.csv has no per-speaker sums"))
    return rows


def _speaker_share_rows(tables: _PointTables, features: Path, model: str, layer: str, quantity: str,
                        resamples: int, seed: int, notes: list[str]) -> list[dict]:
    """The speaker variance share of a layer with its bootstrap CI from the feature store; without a
    readable store, normalization.csv's value and no CI (and a note saying why)."""
    try:
        value, low, high, speakers = speaker_share(features, model, layer, resamples, seed)
    except (PhonormError, OSError, ValueError) as err:  # a store moved, deleted or damaged since the analysis
        notes.append(f"speaker share of {model} {layer}: feature store not read ({err})")
        share = tables.speaker_share(model, layer)
        return [] if share is None else [_row(quantity, share, ci_from="none: feature store unreadable")]
    source = (f"speaker bootstrap ({speakers} speakers, feature store)" if np.isfinite(low) else
              f"none: {speakers} speakers are too few for a bootstrap CI of this share")
    return [_row(quantity, value, low, high, source)]


def summarize(points: list[dict[str, Any]], out: str | Path, resamples: Optional[int] = None, seed: int = 0) -> str:
    """Write OUT/sweep.csv (one column per swept setting, then `records/tables.SweepRow`'s: a row per point and
    quantity) and OUT/points.json (the points: settings, folders, notes); return a summary line.
    `points`: [{id, values: {setting: value}, results, features, report, reference, tone_model,
    pretrained}] in sweep order."""
    out = Path(out)
    resamples = SweepConfig().resamples if resamples is None else resamples
    out.mkdir(parents=True, exist_ok=True)
    settings = list(dict.fromkeys(k for p in points for k in p["values"]))
    rows, notes = [], {}
    for point in points:
        point_rows, point_notes = summarize_point(point, resamples=resamples, seed=seed)
        rows += [{**{k: point["values"].get(k) for k in settings}, **r} for r in point_rows]
        notes[point["id"]] = point_notes
    table = SWEEP.frame(rows, leading=settings)
    with atomic_path(out / TABLE) as tmp:
        table.to_csv(tmp, index=False)
    SweepPoints.write(out, {"settings": settings, "quantities": QUANTITIES, "level": LEVEL,
                              "resamples": resamples, "points": [{**p, "notes": notes[p["id"]]} for p in points]})
    missing = sum(len(n) for n in notes.values())
    return (f"{len(points)} points × {table['quantity'].nunique() if len(table) else 0} quantities → {out / TABLE}"
            + (f" ({missing} notes on missing inputs in {POINTS})" if missing else ""))
