"""`phonorm report R --out report.html`: one self-contained page for a phonetician, top to bottom.

Sections: the claims at a glance; corpus; training curves; accuracy per model and task (the
study's table); similarity to the pre-trained model per layer (every measure with its permutation
floor and held-out value); layer × layer heatmaps; probe accuracy per layer with the classic
baselines (the central picture of normalization) and any probe that did not converge; variance
shares and PCA; UMAP maps coloured by tone and by sex; concept erasure (LEACE) per layer; the claim
checks (estimate, CI, margin and verdict of every comparison); methods (every setting and version;
stage timings).

Where things are: R/context.json (written by `phonorm run`) names the corpus, the model folders
and the evaluation files. Without it the report finds them from R/settings.json → the feature
store's manifest.json → each model folder's phonorm.json (its corpus), and uses the models' dev
scores (metrics.json) for the accuracy table. Whatever cannot be found is skipped with a visible
note, never silently.

Self-contained: figures are PNGs embedded as base64 data URIs, the style sheet is inline, no
script, font or link refers outside the file, so the page opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from phonorm import figures as figs
from phonorm.artifacts import atomic_path, code_version, library_versions, read_json
from phonorm.errors import InputError
from phonorm.features.manifest import StoreManifest
from phonorm.models.card import ModelCard
from phonorm.records.context import RunContext
from phonorm.settings import ANALYZE_DEFAULTS, TASKS

RESULT_FILES = ("similarity.csv", "probes.csv", "normalization.csv", "claims.json", "settings.json")


# =========================================================================== finding the inputs
@dataclass
class Sources:
    """What the report reads, found from R/context.json or from the artifacts' own records."""

    results: Path
    context: dict[str, Any]
    corpus: Optional[Path] = None
    features: Optional[Path] = None
    models: list[dict[str, Any]] = field(default_factory=list)  # name, kind, folder, tasks, base, source
    evaluations: dict[str, Path] = field(default_factory=dict)
    found_from: str = "context.json"

    @classmethod
    def discover(cls, results: Path, context_path: Optional[Path] = None) -> "Sources":
        """From `phonorm run`'s context when given, else from the results' settings → the store's
        manifest (corpus, each model's folder, kind and tasks) → the model cards."""
        if context_path is not None:
            context = RunContext.load_file(context_path).model_dump(mode="json")
            sources = cls(results, context)
            sources.corpus = _path(context.get("corpus"))
            sources.features = _path(context.get("features"))
            sources.models = list(context.get("models") or [])
            sources.evaluations = {k: Path(v) for k, v in (context.get("evaluations") or {}).items() if v}
            return sources
        sources = cls(results, {}, found_from="the results' own records (no run context)")
        settings = _read_json(results / "settings.json") or {}
        sources.features = _path(settings.get("features"))
        manifest = _store_manifest(sources.features)
        if manifest is not None:
            sources.corpus = _path(manifest.corpus)
            for entry in manifest.models:
                sources.models.append({"name": entry.name, "kind": "finetuned" if entry.kind == "finetuned" else "pretrained",
                                       "source": entry.source, "folder": entry.folder, "tasks": entry.tasks or None,
                                       "base": entry.base_model})
        return sources


def _store_manifest(features: Optional[Path]) -> Optional[StoreManifest]:
    """The store's manifest, or None when there is no (readable) store: the report says what is missing."""
    if features is None:
        return None
    try:
        return StoreManifest.load(features)
    except InputError:
        return None


def _path(value: Any) -> Optional[Path]:
    return Path(value) if value else None


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> Optional[pd.DataFrame]:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


# =========================================================================== html helpers
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]] | pd.DataFrame, columns: Optional[list[str]] = None, digits: int = 3,
          cls: str = "") -> str:
    if isinstance(rows, pd.DataFrame):
        columns = columns or list(rows.columns)
        rows = rows.to_dict("records")
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c), digits))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(png: Optional[bytes], alt: str, caption: str = "") -> str:
    if not png:
        return note(f"figure missing: {alt}")
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


@dataclass
class Page:
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, body)
    missing: list[str] = field(default_factory=list)
    figures: int = 0
    listed: set[Path] = field(default_factory=set)  # the figures this analysis drew (settings.json)

    def png(self, path: Path) -> Optional[bytes]:
        """A figure of the results, only if the analysis that wrote settings.json drew it (a file
        left over from an earlier run with other settings is not shown)."""
        return figs.read_png(path) if path.resolve() in self.listed else None

    def pngs(self, folder: Path, pattern: str) -> list[Path]:
        return sorted(p for p in folder.glob(pattern) if p.resolve() in self.listed) if folder.is_dir() else []

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def fig(self, png: Optional[bytes], alt: str, caption: str = "") -> str:
        if png:
            self.figures += 1
        else:
            self.missing.append(f"figure {alt}")
        return image(png, alt, caption)

    def gap(self, what: str) -> str:
        self.missing.append(what)
        return note(what)


# =========================================================================== entry point
def build_report(results: str | Path, *, out: str | Path, context: Optional[str | Path] = None) -> str:
    """Write the report of the results folder `results` to the HTML file `out` (atomically);
    returns a line naming the file, its figures and the sections it had to skip. `context`: the
    `context.json` of a `phonorm run` (records.context.RunContext), else found from the records."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise InputError(results, "no such results folder (run phonorm analyze first)")
    if not any((results / name).exists() for name in RESULT_FILES):
        raise InputError(results, "holds no analysis results (similarity.csv, probes.csv, claims.json, ...); "
                                  "run phonorm analyze first")
    if not (results / "settings.json").is_file():
        raise InputError(results / "settings.json", "missing: phonorm analyze writes it last, so this analysis did "
                                                    "not finish; run it again with the same options to complete it")
    _refuse_unfinished(results)
    if out.is_dir():
        raise InputError(out, "is a folder; --out names the HTML file to write (e.g. report.html)")
    sources = Sources.discover(results, Path(context) if context is not None else None)
    claims = _read_json(results / "claims.json")
    settings = _read_json(results / "settings.json") or {}
    page = Page(listed={(results / name).resolve() for name in settings.get("figures") or []})
    reference = (claims or {}).get("reference") or sources.context.get("reference") \
        or (settings.get("settings") or {}).get("reference") or "the reference"

    _section_glance(page, claims)
    _section_corpus(page, sources)
    _section_training(page, sources)
    _section_accuracy(page, sources)
    _section_similarity(page, results, reference, settings.get("settings") or {})
    _section_matrices(page, results)
    _section_probes(page, results, reference)
    _section_normalization(page, results)
    _section_umap(page, results, settings, sources)
    _section_erasure(page, results)
    _section_claims(page, claims)
    _section_methods(page, results, sources, settings, claims)

    experiment = sources.context.get("experiment") or {}
    title = experiment.get("title") or (f"phonorm report: {experiment['name']}" if experiment.get("name")
                                        else f"phonorm report: {results.resolve().name}")
    document = _document(title, experiment.get("description"), page, results)
    with atomic_path(out) as tmp:
        tmp.write_text(document, encoding="utf-8")
        tmp.chmod(0o644)  # a page to share: readable like any file a user saves (mkstemp makes 0600)
    skipped = f"; skipped (see notes in the page): {', '.join(page.missing)}" if page.missing else ""
    return f"{out}: report with {page.figures} figures, {len(page.sections)} sections{skipped}"


def _refuse_unfinished(results: Path) -> None:
    """InputError naming every missing or damaged file of the results folder (validate's check of
    it): a report is built only from a whole analysis, never from an interrupted one's leftovers."""
    from phonorm.validate import check_results

    verdict = check_results(results)
    if not verdict.ok:
        raise InputError(results, f"not a complete analysis ({'; '.join(verdict.problems)}); run phonorm analyze "
                                  "again with the same options to complete it")


# =========================================================================== sections
def _section_glance(page: Page, claims: Optional[dict]) -> None:
    if not claims or not claims.get("claims"):
        return
    items = "".join(f'<li><span class="status {_status_class(c.get("status"))}">{esc(c.get("claim"))}: '
                    f'{esc(c.get("status"))}</span> {esc(c.get("statement", ""))}</li>' for c in claims["claims"])
    page.add("glance", "The claims at a glance",
             f"<p>Each claim of the study (Wang, Yang &amp; Yuan 2025) measured on this data; details in "
             f'<a href="#claims">the claim checks</a>.</p>{_caveat(claims)}<ul class="glance">{items}</ul>')


def _caveat(claims: dict) -> str:
    """The caveat analyze attached to verdicts drawn from few speakers of a sex (analysis/caveats.py), as a
    paragraph; "" when there is none."""
    caveat = claims.get("caveat")
    return f'<p class="caveat"><b>Caveat:</b> {esc(caveat)}.</p>' if caveat else ""


def _section_corpus(page: Page, sources: Sources) -> None:
    if sources.corpus is None or not (sources.corpus / "utterances.parquet").is_file():
        page.add("corpus", "Corpus", page.gap(f"corpus summary: no prepared corpus found "
                                              f"({sources.corpus or 'not recorded'})"))
        return
    from phonorm.corpus.info import corpus_info

    try:
        info = corpus_info(sources.corpus)
    except Exception as err:  # a broken corpus must not stop the rest of the report
        page.add("corpus", "Corpus", page.gap(f"corpus summary: {err}"))
        return
    overview = table([{
        "utterances": info["utterances"], "speakers": info["speakers"], "female": info["sex"].get("F"),
        "male": info["sex"].get("M"), "hours": round(info["hours"], 3), "phone segments": info.get("segments"),
        "frames (20 ms)": info.get("frames"), "scheme": info.get("scheme"), "tone labels": info.get("tone_mode"),
        "skipped": info.get("skipped", 0)}])
    splits = table([{"split": s, "utterances": info["splits"].get(s), "speakers": info.get("split_speakers", {}).get(s)}
                    for s in info["splits"]])
    tone = info["labels"].get("tone") or {}
    tone_table = table([{"tone": k, "frames": v} for k, v in tone.items()]) if tone else ""
    # A corpus whose splits share speakers (--split-by utterance, a split file) or lack dev/test for a
    # sex: say so plainly, since the evaluation then does not measure generalization to new speakers.
    warning = "".join(f"<p><b>Note:</b> {esc(p)}.</p>" for p in info.get("split_problems") or [])
    disjoint = info.get("speaker_disjoint", True)
    split_words = ("The splits are speaker-disjoint: every evaluation below uses speakers unseen in training."
                   if disjoint else f"The corpus was split by {esc(info.get('split_by', 'utterance'))}: speakers "
                   "are shared between splits, so the evaluations below measure new utterances of known speakers, "
                   "not generalization to new speakers.")
    body = (f"<p>Prepared corpus <code>{esc(sources.corpus)}</code>. {split_words} Probes are always scored on "
            f"speakers held out from their training folds.</p>{warning}"
            f"{overview}<div class=\"row\">{splits}{tone_table}</div>"
            + page.fig(figs.label_counts_figure(info["labels"]), "frames per label",
                       "Frames per label on the 20 ms grid: tone on finals only, phone on every phone, sex on "
                       "every speech frame."))
    page.add("corpus", "Corpus", body)


def _model_log(model: dict[str, Any]) -> tuple[str, Optional[pd.DataFrame]]:
    folder = _path(model.get("folder"))
    if folder is None:
        return "", None
    for name, kind in (("train_log.csv", "finetune"), ("pretrain_log.csv", "pretrain")):
        log = _read_csv(folder / name)
        if log is not None and len(log):
            return kind, log
    return "", None


def _section_training(page: Page, sources: Sources) -> None:
    logs, absent = [], []
    for model in sources.models:
        kind, log = _model_log(model)
        if log is None:
            absent.append(model.get("name"))
        else:
            logs.append((str(model.get("name")), kind, log))
    body = ("<p>Loss per optimizer step and the held-out score: dev frame accuracy per task for the fine-tuned "
            "models (the best dev checkpoint is the one kept) and, for models phonorm pre-trained (here or "
            "shipped), the held-out pre-training accuracy: masked-prediction accuracy of the cluster ids "
            "(hubert objective) or contrastive accuracy (masked frame against distractors).</p>")
    body += page.fig(figs.training_curves_figure(logs), "training curves") if logs else \
        page.gap("training curves: no model folder with train_log.csv or pretrain_log.csv was found")
    if absent:
        body += note(f"no training log for: {', '.join(map(str, absent))} (models not trained here, or folders missing)")
    page.add("training", "Training curves", body)


def _section_accuracy(page: Page, sources: Sources) -> None:
    rows, details, used_dev = [], [], []
    for model in sources.models:
        if model.get("kind") != "finetuned":
            continue
        name = model.get("name")
        evaluation = _read_json(sources.evaluations[name]) if name in sources.evaluations else None
        scores, split = ((evaluation or {}).get("tasks"), (evaluation or {}).get("split"))
        if not scores and model.get("folder"):
            metrics = _read_json(Path(model["folder"]) / "metrics.json") or {}
            scores, split = metrics.get("dev") or None, "dev"
            if scores:
                used_dev.append(name)
        if not scores:
            continue
        row = {"model": name, "tasks": "+".join(model.get("tasks") or scores), "split": split}
        for task in TASKS:
            entry = scores.get(task)
            row[task] = f"{entry['accuracy']:.3f} (chance {entry['chance']:.3f})" if entry else "–"
            if entry:
                sex = entry.get("by_sex") or {}
                details.append({"model": name, "task": task, "accuracy": entry.get("accuracy"),
                                "macro-F1": entry.get("macro_f1"), "chance": entry.get("chance"),
                                "F": (sex.get("F") or {}).get("accuracy"), "M": (sex.get("M") or {}).get("accuracy"),
                                "syllable accuracy": (entry.get("syllable") or {}).get("accuracy"),
                                "frames": entry.get("n_frames")})
        rows.append(row)
    if not rows:
        page.add("accuracy", "Accuracy per model and task",
                 page.gap("accuracy table: no evaluation of a fine-tuned model was found"))
        return
    body = (f"<p>Frame accuracy of each fine-tuned model's own heads on {_held_out(sources)}, with the chance "
            "level (share of the majority class). The study's table: the multitask tone+sex model should "
            "match the single-task models on each task. These task accuracies are the primary evidence of "
            "claims C3 and C4 (differences with speaker-bootstrap CIs in the claim checks below); probe "
            "accuracies are shown there beside them.</p>"
            + table(rows, ["model", "tasks", "split", "tone", "phone", "sex"], cls="study")
            + "<h3>Details</h3><p>Macro-F1, accuracy by speaker sex, and for tone the syllable accuracy "
              "(majority vote over the final's frames).</p>" + table(details))
    if used_dev:
        body += note(f"no test evaluation found for {', '.join(map(str, used_dev))}: dev-set scores from metrics.json "
                     "shown")
    page.add("accuracy", "Accuracy per model and task", body)


def _held_out(sources: Sources) -> str:
    """What the evaluation split holds out, in words matching how the corpus was actually split (its
    utterances table; `split.by` of labels.json names how): new speakers only when no speaker is in two splits."""
    try:
        table = pd.read_parquet(sources.corpus / "utterances.parquet", columns=["speaker", "split"])  # type: ignore[operator]
    except (TypeError, OSError, ValueError, KeyError):
        return "the evaluation split (no prepared corpus found to tell how it was split)"
    if (table.groupby("speaker")["split"].nunique() <= 1).all():
        return "held-out speakers"
    split = ((_read_json(sources.corpus / "labels.json") or {}).get("split") or {})  # type: ignore[operator]
    return (f"held-out utterances of speakers also heard in training (the corpus was split by "
            f"{split.get('by', 'utterance')}, not by speaker)")


def _section_similarity(page: Page, results: Path, reference: str, settings: dict[str, Any]) -> None:
    similarity = _read_csv(results / "similarity.csv")
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


def _section_matrices(page: Page, results: Path) -> None:
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


def _section_probes(page: Page, results: Path, reference: str) -> None:
    probes = _read_csv(results / "probes.csv")
    if probes is None or not len(probes):
        page.add("probes", "Probe accuracy per layer", page.gap("probes: no probes.csv"))
        return
    png = page.png(results / "figures" / "probes_per_layer.png") or figs.probes_png(probes)
    rows: dict[str, dict[str, Any]] = {}
    for (model, label), group in probes[probes.model != "classic"].groupby(["model", "label"], sort=False):
        group = group.assign(k=group.layer.map(figs.layer_index)).sort_values("k")
        best, top = group.loc[group.accuracy.idxmax()], group.iloc[-1]
        row = rows.setdefault(model, {"model": model})
        row[label] = f"{top.accuracy:.3f} (best {best.accuracy:.3f} at {best.layer})"
        rows.setdefault("chance", {"model": "chance"})[label] = f"{top.chance:.3f}"
    chance_row = rows.pop("chance", None)
    rows_list = list(rows.values()) + ([chance_row] if chance_row else [])
    label_columns = list(dict.fromkeys(probes.label))
    classic = probes[probes.model == "classic"][["layer", "label", "accuracy", "chance", "ci_low", "ci_high"]]
    classic = classic.rename(columns={"layer": "baseline"})
    body = ("<p>How well each label can be read off each layer by a linear classifier trained on some speakers "
            "and tested on others (speaker-disjoint cross-validation; shaded: bootstrap interval over speakers). "
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


def _section_erasure(page: Page, results: Path) -> None:
    erasure = _read_csv(results / "erasure.csv")
    if erasure is None or not len(erasure):
        # An analysis that tried erasure and could not (too few speakers for three disjoint roles, ...)
        # recorded why in settings.json; say that rather than guess.
        skipped = (_read_json(results / "settings.json") or {}).get("skipped_probes", [])
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
            "the same speakers (95% cluster-robust t CI over the test speakers); chance: the class prior; above "
            "chance: balanced accuracy (mean recall over the classes) − 1/classes, which is 0 for any guess that "
            "ignores the features"
            + (f"; <i>at_chance</i>: equivalence test (TOST), its 90% CI within ±{esc(margin)}" if margin is not None
               else "") + ".</p>"
            + page.fig(png, "probe accuracy per layer before and after erasure")
            + table(rows, columns))
    page.add("erasure", "Concept erasure (causal test of C4)", body)


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _erasure_level(erasure: Any) -> str:
    """The level of erasure.csv's above-chance CI, as a percentage (95% in files written before it was recorded)."""
    if "above_chance_ci_level" in erasure.columns and erasure["above_chance_ci_level"].notna().any():
        return f"{float(erasure['above_chance_ci_level'].dropna().iloc[0]):.0%}"
    return "95%"


def _section_normalization(page: Page, results: Path) -> None:
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


def _section_umap(page: Page, results: Path, settings: dict, sources: Sources) -> None:
    folder = results / "figures"
    order = list(settings.get("models") or [m.get("name") for m in sources.models])
    pngs = page.pngs(folder, "umap_*.png")
    pngs.sort(key=lambda p: order.index(p.stem[5:]) if p.stem[5:] in order else len(order))
    if not pngs:
        umap_on = (settings.get("settings") or {}).get("umap", True)
        page.add("umap", "UMAP maps", page.gap("UMAP maps: none drawn" + ("" if umap_on else " (analysis ran with umap off)")))
        return
    body = ("<p>Two-dimensional UMAP maps of the first, a middle and the top layer of each model, coloured by "
            "tone (finals only) and by speaker sex. Separate sex clusters in the top layer of a tone model would "
            "mean it kept the speaker; tone clusters that do not split by sex mean it normalized.</p>")
    for path in pngs:
        body += page.fig(page.png(path), path.stem, esc(path.stem[5:]))
    page.add("umap", "UMAP maps", body)


def _status_class(status: Any) -> str:
    return {"holds": "ok", "does not hold": "bad", "inconclusive": "unsure"}.get(str(status), "na")


def _ci(c: dict) -> str:
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return "–"
    return f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"


def _comparisons(check: dict) -> list[dict[str, Any]]:
    out = []
    for c in check.get("comparisons") or []:
        estimate = c.get("estimate")
        out.append({
            "model": check.get("model"), "comparison": c.get("name"),
            "evidence": c.get("evidence") + ("" if c.get("primary") else " (beside)"),
            "values": f"{_fmt(c.get('a_value'))} vs {_fmt(c.get('b_value'))}",
            "estimate": f"{estimate:+.3f}" if isinstance(estimate, (int, float)) else "–",
            "95% CI": _ci(c), "claimed": f"{c.get('direction')} {c.get('margin')}",
            "verdict": c.get("verdict"), "note": c.get("reason", ""),
        })
    return out


def _section_claims(page: Page, claims: Optional[dict]) -> None:
    if not claims or not claims.get("claims"):
        page.add("claims", "Claim checks", page.gap("claim checks: no claims.json"))
        return
    intervals = claims.get("intervals") or {}
    if intervals:
        how = (f"{esc(intervals.get('accuracies_and_differences'))} for accuracies and their differences, "
               f"{esc(intervals.get('similarity'))} for similarity; the same speakers on both sides of a difference. "
               "Each comparison names its method (claims.json <code>ci_method</code>)")
    else:  # claims.json written before the intervals were recorded
        boot = claims.get("bootstrap") or {}
        how = (f"paired bootstrap over speakers ({esc(boot.get('resamples', '?'))} resamples; the same resampled "
               "speakers on both sides of a difference)")
    summary = "".join(
        f"<tr><td><b>{esc(c.get('claim'))}</b></td><td>{esc(c.get('statement', ''))}</td>"
        f"<td>{esc(c.get('criterion', ''))}</td>"
        f"<td><span class=\"status {_status_class(c.get('status'))}\">{esc(c.get('status'))}</span>"
        + (f"<p class=\"reason\">{esc(c['reason'])}</p>" if c.get("reason") else "")
        + "".join(f"<p class=\"reason\">{esc(f)}</p>" for f in c.get("fallback") or [])
        + "</td></tr>" for c in claims["claims"])
    body = ("<p>Each claim is decided from estimates with 95% confidence intervals against a margin fixed in "
            "advance: it <b>holds</b> when every interval lies on the claimed side of its margin, <b>does not "
            f"hold</b> when one lies wholly on the other side, and is <b>inconclusive</b> otherwise; it is <b>not "
            "testable</b> when its premise fails (e.g. the reference does not linearly decode the factor a "
            f"suppression would remove), whatever its other comparisons say. Intervals: {how}. Primary evidence "
            "decides; evidence marked <i>beside</i> is shown for comparison. Top layer = the last stored layer of "
            "each model.</p>" + _caveat(claims) +
            "<table class=\"claims\"><thead><tr><th>claim</th><th>statement</th><th>criterion</th>"
            f"<th>on this data</th></tr></thead><tbody>{summary}</tbody></table>")
    for c in claims["claims"]:
        rows = [r for check in c.get("measured") or [] for r in _comparisons(check)]
        if rows:
            body += (f"<h3>{esc(c.get('claim'))}: the comparisons</h3>"
                     + table(rows, ["model", "comparison", "evidence", "values", "estimate", "95% CI", "claimed",
                                    "verdict", "note"]))
    missing = claims.get("evaluations_missing") or []
    if missing:
        body += note(f"no evaluation (task accuracy) for {', '.join(missing)}: where it was needed the probes decided")
    constants = claims.get("constants") or {}
    if constants:
        body += "<p>Margins: " + esc(", ".join(f"{k} = {v}" for k, v in constants.items())) + "</p>"
    page.add("claims", "Claim checks", body)


def _kv(settings: dict[str, Any]) -> str:
    return table([{"setting": k, "value": json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v}
                  for k, v in settings.items()], ["setting", "value"], digits=6, cls="kv")


def _section_methods(page: Page, results: Path, sources: Sources, settings: dict, claims: Optional[dict]) -> None:
    body = f"<p>Inputs found from {esc(sources.found_from)}.</p>"
    experiment = sources.context.get("experiment") or {}
    if experiment.get("config"):
        import yaml

        body += (f"<h3>Experiment</h3><p>File <code>{esc(experiment.get('file'))}</code>, as validated (paths "
                 f"resolved):</p><pre>{esc(yaml.safe_dump(experiment['config'], sort_keys=False, allow_unicode=True))}</pre>")
    if sources.corpus is not None:
        labels = _read_json(sources.corpus / "labels.json") or {}
        corpus_settings = (labels.get("provenance") or {}).get("settings") or {}
        body += "<h3>Corpus preparation</h3>" + _kv({"scheme": labels.get("scheme"), "tone_mode": labels.get("tone_mode"),
                                                     **corpus_settings})
        synth = _path(sources.context.get("synth"))
        synth_meta = _read_json(synth / "synth.json") if synth else None
        if synth_meta:
            body += "<h4>Synthetic corpus</h4>" + _kv(synth_meta.get("settings") or
                                                      {k: v for k, v in synth_meta.items() if not isinstance(v, (dict, list))})
    model_rows = []
    for model in sources.models:
        folder = _path(model.get("folder"))
        card = ModelCard.load_if_any(folder)
        meta = card.model_dump(mode="json") if card else {}
        model_rows.append({"model": model.get("name"), "kind": model.get("kind"),
                           "base / source": model.get("base") or model.get("source") or meta.get("base_model") or "",
                           "tasks": ",".join(model.get("tasks") or meta.get("tasks") or []),
                           "model type": meta.get("model_type", ""),
                           "settings": json.dumps(meta.get("settings") or {}, ensure_ascii=False)})
    if model_rows:
        body += "<h3>Models</h3>" + table(model_rows, cls="kv")
    manifest = _store_manifest(sources.features)
    if manifest is not None:
        body += "<h3>Extraction</h3>" + _kv({"rows": manifest.rows, **manifest.settings})
        body += table([m.model_dump(include={"name", "source", "model_type", "n_layers", "dim", "dtype",
                                             "layer_convention", "group_norm"}) for m in manifest.models],
                      ["name", "source", "model_type", "n_layers", "dim", "dtype", "layer_convention", "group_norm"])
    if settings.get("settings"):
        body += "<h3>Analysis</h3>" + _kv({**settings["settings"], "rows in store": settings.get("store_rows"),
                                           "rows sampled for probes and maps": settings.get("sample_rows_used")})
    stages = sources.context.get("stages") or []
    if stages:
        body += ("<h3>Stages</h3><p>Wall-clock and CPU seconds each stage took when it last ran (a cached "
                 "stage was not redone in this run).</p>"
                 + table([{k: s.get(k) for k in ("stage", "name", "status", "seconds", "cpu_seconds", "key", "folder")}
                          for s in stages], digits=1))
    provenance = settings.get("provenance") or {}
    versions = provenance.get("versions") or library_versions()
    body += ("<h3>Versions</h3>" + _kv({"phonorm (analysis)": provenance.get("code_version", "unknown"),
                                        "phonorm (report)": code_version(), **versions})
             + f"<p>Report written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} from <code>{esc(results.resolve())}</code>.</p>")
    page.add("methods", "Methods", body)


# =========================================================================== the page
_STYLE = """
body{font-family:Georgia,'Times New Roman',serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:2em;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.4em} nav ol{columns:2;font-size:.95em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;font-family:Helvetica,Arial,sans-serif}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top} th{background:#f4f4f4}
table.kv td:last-child{font-family:monospace;word-break:break-all;max-width:700px}
table.study td{font-size:1.05em} table.claims td{max-width:330px}
table.claims ul,ul.glance{margin:0;padding-left:1.1em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid figure{flex:0 1 32%;margin:0}
.row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.caveat{background:#fde8e8;border-left:4px solid #c03030;padding:.4em .7em}
.missing{background:#fff6dd;border-left:4px solid #e0b000;padding:.4em .7em;font-family:Helvetica,Arial,sans-serif;font-size:.9em}
.status{font-family:Helvetica,Arial,sans-serif;font-weight:bold;padding:1px 6px;border-radius:3px;white-space:nowrap}
.status.ok{background:#dff3df;color:#185c18} .status.bad{background:#fbe1e1;color:#8a1c1c} .status.na{background:#eee;color:#555}
.status.unsure{background:#fdf3d0;color:#6b5200}
.reason{font-size:.85em;color:#666;margin:.3em 0 0} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
code{font-size:.9em}
"""


def _document(title: str, description: Optional[str], page: Page, results: Path) -> str:
    nav = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in page.sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in page.sections)
    intro = f"<p>{esc(description)}</p>" if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>{intro}<p>How fine-tuning normalizes a self-supervised speech model, layer by "
            f"layer. Results folder <code>{esc(results.resolve())}</code>.</p><nav><ol>{nav}</ol></nav>{body}"
            f"</body></html>\n")
