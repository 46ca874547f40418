"""The report's sections on the analysis: similarity per layer with floors and held-out values,
layer × layer matrices, probes with the classic baselines, concept erasure, variance shares, UMAP maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from phonorm import figures as figs
from phonorm.labels import CLASSIC_MODEL
from phonorm.records.analysis import AnalysisRecord
from phonorm.records.tables import ERASURE, PROBES, SIMILARITY
from phonorm.report.page import (
    Page,
    Sources,
    esc,
    note,
    read_record,
    table,
)
from phonorm.settings.analyze import ANALYZE_DEFAULTS


def section_similarity(page: Page, results: Path, reference: str, settings: dict[str, Any]) -> None:
    similarity = SIMILARITY.read(results)
    if similarity is None or not len(similarity):
        page.add("similarity", f"Similarity to {reference} per layer", page.gap("similarity: no similarity.csv"))
        return
    png = page.png(results / "figures" / "similarity_per_layer.png") or figs.similarity_png(similarity, reference)
    rows = []
    for (model, layer), group in similarity.groupby(["model", "layer"], sort=False):
        by = group.set_index("measure")
        row: dict[str, Any] = {"model": model, "layer": layer}
        for measure in by.index:
            r = by.loc[measure]
            value = f"{r.value:.3f}"
            if "ci_low" in r and r.ci_low == r.ci_low:
                value += f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            for column, tag in (("floor", "floor"), ("held_out_value", "held out")):
                if column in r and r[column] == r[column]:
                    value += f"; {tag} {r[column]:.3f}"
            row[measure] = value
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], figs.layer_index(r["layer"])))
    measures = list(dict.fromkeys(similarity.measure))
    body = (f"<p>Each fine-tuned model's layer against the same layer of the pre-trained model "
            f"<b>{esc(reference)}</b>, on the same frames. Each cell: the in-sample value (all stored rows; for "
            "with its 95% delete-one-speaker jackknife CI), the <i>permutation floor</i> (the same measure after "
            "shuffling the reference's rows within each speaker: what unrelated frames of the same speakers "
            "score) and the <i>held-out</i> value (directions fitted on half the speakers, scored on the other "
            "half). A value near its floor says nothing. SVCCA keeps the directions explaining "
            f"{esc(settings.get('svcca_keep', ANALYZE_DEFAULTS['svcca_keep']))} of the variance counted by "
            f"{esc(settings.get('svcca_rule', ANALYZE_DEFAULTS['svcca_rule']))} (so a different number per layer); svcca_fixed keeps "
            f"{esc(settings.get('svcca_dims', ANALYZE_DEFAULTS['svcca_dims']))} directions per layer; PWCCA weights the "
            "canonical correlations by the model's neurons (Morcos et al. 2018). Claim C2 is decided on linear "
            "CKA, comparable across layers (docs/statistics.md). None of these measures is invariant to every "
            "invertible linear map of a layer (Kornblith et al. 2019, Table 1): linear CKA only to rotations, "
            "reflections and isotropic scaling; SVCCA only when the same subspace is kept; PWCCA depends on the "
            "neuron basis. A low value can therefore mean a rescaled or sheared layer as well as lost "
            "information.</p>"
            + page.fig(png, "similarity to the pre-trained model per layer")
            + table(rows, ["model", "layer", *measures]))
    page.add("similarity", f"Similarity to {reference} per layer", body)


def section_matrices(page: Page, results: Path) -> None:
    pngs = page.pngs(results / "figures", "layer_matrix_*.png")
    if not pngs:
        available = sorted(p.name for p in (results / "layer_matrix").glob("*.csv")) if (results / "layer_matrix").is_dir() else []
        text = "layer × layer heatmaps: no figures under figures/layer_matrix_*.png"
        page.add("matrices", "Layer × layer similarity",
                 page.gap(text) + (note("tables available: " + ", ".join(available)) if available else ""))
        return
    body = ("<p>Every layer of a fine-tuned model (rows) against every layer of the pre-trained model "
            "(columns). A bright diagonal means layer k still represents what layer k did before fine-tuning; "
            "a dark top-right corner means the upper layers were rewritten.</p><div class=\"grid\">")
    for path in pngs:
        body += page.fig(page.png(path), path.stem, esc(path.stem.replace("layer_matrix_", "").replace("__", " · ")))
    page.add("matrices", "Layer × layer similarity", body + "</div>")


def section_probes(page: Page, results: Path, reference: str) -> None:
    probes = PROBES.read(results)
    if probes is None or not len(probes):
        page.add("probes", "Probe accuracy per layer", page.gap("probes: no probes.csv"))
        return
    png = page.png(results / "figures" / "probes_per_layer.png") or figs.probes_png(probes)
    rows: dict[str, dict[str, Any]] = {}
    for (model, label), group in probes[probes.model != CLASSIC_MODEL].groupby(["model", "label"], sort=False):
        group = group.assign(k=group.layer.map(figs.layer_index)).sort_values("k")
        best, top = group.loc[group.accuracy.idxmax()], group.iloc[-1]
        row = rows.setdefault(model, {"model": model})
        row[label] = f"{top.accuracy:.3f} (best {best.accuracy:.3f} at {best.layer})"
        rows.setdefault("chance", {"model": "chance"})[label] = f"{top.chance:.3f}"
    chance_row = rows.pop("chance", None)
    rows_list = list(rows.values()) + ([chance_row] if chance_row else [])
    label_columns = list(dict.fromkeys(probes.label))
    classic = probes[probes.model == CLASSIC_MODEL][["layer", "label", "accuracy", "chance", "ci_low", "ci_high"]]
    classic = classic.rename(columns={"layer": "baseline"})
    body = ("<p>How well each label can be read off each layer by a linear classifier trained on some speakers "
            "and tested on others (speaker-disjoint cross-validation; shaded: 95% cluster-robust t interval over speakers, the method of each row in probes.csv's ci_method). "
            "The dashed lines are the phonetician's classic measurements on the same frames: F0 in Hz, F0 in "
            "semitones z-scored per speaker (the classic normalization) and MFCCs. A layer that decodes tone as "
            "well as z-scored F0 while sex decodes poorly has normalized away the speaker (claim C1).</p>"
            + page.fig(png, "probe accuracy per layer")
            + "<h3>Top layer (and best layer) per model and label</h3>" + table(rows_list, ["model", *label_columns]))
    if len(classic):
        body += "<h3>Classic baselines</h3>" + table(classic)
    else:
        body += page.gap("classic baselines: none in probes.csv (extraction without classic features)")
    if "converged" in probes.columns:
        stopped = probes[~probes.converged.astype(str).str.lower().isin(["true", "1"])]
        if len(stopped):
            body += ("<h3>Probes that stopped at the iteration limit</h3><p>The solver reached its iteration "
                     "limit before converging on at least one fold; the accuracy is that of the unfinished fit.</p>"
                     + table(stopped, ["model", "layer", "label", "accuracy", "iterations"]))
    page.add("probes", "Probe accuracy per layer", body)


def section_erasure(page: Page, results: Path) -> None:
    erasure = ERASURE.read(results)
    if erasure is None or not len(erasure):
        # An analysis that tried erasure and could not (too few speakers for three disjoint roles, ...)
        # recorded why in settings.json; say that rather than guess.
        record = read_record(AnalysisRecord, results / AnalysisRecord.FILE)
        skipped = record.skipped_probes if record else []
        reasons = sorted({s.get("reason", "") for s in skipped if s.get("label") == "erasure"})
        why = ("skipped: " + "; ".join(reasons)) if reasons else \
            "no erasure.csv (analysis ran without erasure, or no tone model)"
        page.add("erasure", "Concept erasure (causal test of C4)", page.gap(f"concept erasure: {why}"))
        return
    png = page.png(results / "figures" / "erasure_per_layer.png")
    rows = erasure[erasure.erased != "none"].copy()
    rows["change [95% CI]"] = [f"{r.change:+.3f} [{_signed(r.change_ci_low)}, {_signed(r.change_ci_high)}]"
                               for r in rows.itertuples()]
    level = _erasure_level(erasure)
    rows[f"above chance [{level} CI]"] = [f"{r.above_chance:+.3f} [{_signed(r.above_chance_ci_low)}, "
                                          f"{_signed(r.above_chance_ci_high)}]" for r in rows.itertuples()]
    columns = ["model", "layer", "erased", "probed", "accuracy", "chance", "change [95% CI]",
               f"above chance [{level} CI]"] + (["at_chance"] if "at_chance" in rows.columns else [])
    margin = erasure["equivalence_margin"].iloc[0] if "equivalence_margin" in erasure.columns else None
    body = ("<p>Linear concept erasure (LEACE, Belrose et al. 2023) removes the linearly decodable trace of one "
            "factor from a layer; then the tone and sex probes are trained again on the edited features. Three "
            "speaker-disjoint roles per fold: the eraser is fitted on one set of speakers, the probes are trained "
            "on the edited rows of a second set and tested on those of a third (every speaker is tested once). "
            "Fitted on the probe's own training rows, the eraser would bring the probe to its majority class by "
            "construction; fitted on other speakers, it reaches chance only where the factor's direction is "
            "shared. If tone accuracy is unchanged once sex is at chance, the model's tone information does not "
            "depend on the linearly decodable sex information a suppression would remove (claim C4). Erasing tone "
            "and probing sex is the converse check. Change: accuracy after − before erasure, probes trained on "
            f"the same speakers ({esc(_erasure_method(erasure))}: a fold's test speakers share one fitted eraser and "
            "probe); chance: the class prior; above "
            "chance: balanced accuracy (mean recall over the classes) − 1/classes, which is 0 for any guess that "
            "ignores the features"
            + (f"; <i>at_chance</i>: equivalence test (TOST), its 90% CI within ±{esc(margin)}" if margin is not None
               else "") + ".</p>"
            + page.fig(png, "probe accuracy per layer before and after erasure")
            + table(rows, columns))
    page.add("erasure", "Concept erasure (causal test of C4)", body)


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _erasure_method(erasure: Any) -> str:
    """The interval method erasure.csv names (files of earlier versions: speakers were the clusters)."""
    if "ci_method" in erasure.columns and erasure["ci_method"].notna().any():
        return f"95% {erasure['ci_method'].dropna().iloc[0]}"
    return "95% cluster-robust t CI over the test speakers"


def _erasure_level(erasure: Any) -> str:
    """The level of erasure.csv's above-chance CI, as a percentage (95% in files written before it was recorded)."""
    if "above_chance_ci_level" in erasure.columns and erasure["above_chance_ci_level"].notna().any():
        return f"{float(erasure['above_chance_ci_level'].dropna().iloc[0]):.0%}"
    return "95%"


def section_normalization(page: Page, results: Path) -> None:
    folder = results / "figures"
    shares = page.png(folder / "normalization_per_layer.png")
    pca = page.png(folder / "pca_variance.png")
    if not shares and not pca:
        page.add("normalization", "Variance shares and PCA",
                 page.gap("normalization figures: no normalization_per_layer.png or pca_variance.png"))
        return
    body = ("<p>Share of each layer's variance explained by speaker and sex, against that explained by tone "
            "and phone: normalization lowers the first and raises the second. Below, how many principal "
            "components each layer needs.</p>")
    body += page.fig(shares, "variance shares per layer") + page.fig(pca, "PCA explained variance per layer")
    page.add("normalization", "Variance shares and PCA", body)


def section_umap(page: Page, results: Path, settings: AnalysisRecord, sources: Sources) -> None:
    folder = results / "figures"
    order: list[Any] = list(settings.models) or [m.name for m in sources.models]
    pngs = page.pngs(folder, "umap_*.png")
    pngs.sort(key=lambda p: order.index(p.stem[5:]) if p.stem[5:] in order else len(order))
    if not pngs:
        umap_on = settings.settings.get("umap", True)
        page.add("umap", "UMAP maps", page.gap("UMAP maps: none drawn" + ("" if umap_on else " (analysis ran with umap off)")))
        return
    body = ("<p>Two-dimensional UMAP maps of the first, a middle and the top layer of each model, coloured by "
            "tone (finals only) and by speaker sex. Separate sex clusters in the top layer of a tone model would "
            "mean it kept the speaker; tone clusters that do not split by sex mean it normalized.</p>")
    for path in pngs:
        body += page.fig(page.png(path), path.stem, esc(path.stem[5:]))
    page.add("umap", "UMAP maps", body)
