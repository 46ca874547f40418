"""Every figure of phonorm (matplotlib, Agg backend): one module draws them all.

The analysis writes its figures as PNG and SVG under R/figures/ (`draw_all`); the report embeds
them, draws the corpus's label counts and the training curves itself (as PNG bytes), and draws
the similarity and probe figures from the tables when R/figures/ lacks them (`figures: false`).

- similarity_per_layer: each measure vs layer, one line per fine-tuned model (vs the reference):
  in-sample (solid), held out (dotted), permutation floor (dashed, same colour)
- erasure_per_layer: tone and sex probe accuracy per layer before and after LEACE erasure of sex
  (and of tone), per erased model, chance dotted
- layer_matrix_<model>__<measure>: layer × layer heatmaps against the reference
- probes_per_layer: probe accuracy vs layer per label, one line per model, chance dotted, classic
  baselines as horizontal dashed reference lines
- normalization_per_layer: variance share of speaker/sex/tone/phone vs layer, per model
- pca_variance: components needed for 90% of the variance, and PC1's share, per layer
- umap_<model>: UMAP maps of the first, middle and last layers, coloured by tone and by sex
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phonorm.artifacts import atomic_path
from phonorm.labels import CLASSIC_MODEL, ERASURE_CONDITIONS, ERASURE_PROBED, LABELS
from phonorm.layers import layer_index as _index
from phonorm.layers import umap_layers

HELD_OUT_SCORES = {"held_out_masked_accuracy": "held-out masked-prediction accuracy",
                   "held_out_contrastive_accuracy": "held-out contrastive accuracy"}
"""The held-out score columns of a pre-training log (one per objective) and their labels."""

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> list[str]:
    written = []
    for ext in ("png", "svg"):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight")
        written.append(str(path.relative_to(folder.parent)))
    _plt().close(fig)
    return written


def layer_index(layer: str) -> int:
    """`L7` → 7 (0 for anything else, e.g. a classic baseline's name)."""
    return _index(layer, missing=0)


def draw_all(out: Path, *, similarity: pd.DataFrame, probes: pd.DataFrame, normalization: pd.DataFrame,
             pca_variance: pd.DataFrame, matrices: dict[str, pd.DataFrame], models: list[str],
             layers: dict[str, list[str]], reference: str, projections: Path,
             erasure: pd.DataFrame | None = None) -> list[str]:
    """Draw every figure; returns the written paths relative to `out`."""
    folder = Path(out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if len(similarity):
        written += similarity_figure(similarity, folder, reference)
    for name, table in matrices.items():
        if name.endswith("__svcca") or name.endswith("__cka"):
            written += matrix_figure(table, folder, name)
    if len(probes):
        written += probes_figure(probes, folder, models)
    if erasure is not None and len(erasure):
        written += erasure_figure(erasure, folder)
    if len(normalization):
        written += normalization_figure(normalization, folder, models)
    if len(pca_variance):
        written += pca_figure(pca_variance, folder, models)
    for model in models:
        written += umap_figure(projections, folder, model, layers[model])
    return written


def similarity_figure(similarity: pd.DataFrame, folder: Path, reference: str) -> list[str]:
    return _save(similarity_plot(similarity, reference), folder, "similarity_per_layer")


def similarity_plot(similarity: pd.DataFrame, reference: str):
    """Each measure vs layer, one line per model: in-sample (solid, with its CI band when given),
    held out (dotted), permutation floor (dashed)."""
    plt = _plt()
    measures = list(dict.fromkeys(similarity.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures), 3.4), squeeze=False, sharey=True)
    for ax, measure in zip(axes[0], measures):
        part = similarity[similarity.measure == measure]
        for model, rows in part.groupby("model", sort=False):
            rows = rows.assign(k=rows.layer.map(layer_index)).sort_values("k")
            line, = ax.plot(rows.k, rows.value, marker="o", ms=3, label=model)
            if "ci_low" in rows and rows.ci_low.notna().any():
                ax.fill_between(rows.k, rows.ci_low, rows.ci_high, color=line.get_color(), alpha=0.15)
            if "held_out_value" in rows and rows.held_out_value.notna().any():
                ax.plot(rows.k, rows.held_out_value, ls=":", color=line.get_color(), lw=1)
            if "floor" in rows and rows.floor.notna().any():
                ax.plot(rows.k, rows.floor, ls="--", color=line.get_color(), lw=1, alpha=0.7)
        ax.set_title(measure)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"similarity to {reference}")
    axes[0][-1].plot([], [], color="grey", ls=":", label="held out")
    axes[0][-1].plot([], [], color="grey", ls="--", label="permutation floor")
    axes[0][-1].legend(fontsize=7)
    return fig


def erasure_figure(erasure: pd.DataFrame, folder: Path) -> list[str]:
    """Per erased model: tone and sex probe accuracy per layer, before and after erasing each factor."""
    plt = _plt()
    models = list(dict.fromkeys(erasure.model))
    fig, axes = plt.subplots(len(models), 2, figsize=(8, 3 * len(models)), squeeze=False, sharey=True)
    styles = dict(zip(ERASURE_CONDITIONS, (("-", "no erasure"), ("--", "sex erased"), (":", "tone erased"))))
    for row, model in enumerate(models):
        for col, probed in enumerate(ERASURE_PROBED):
            ax = axes[row][col]
            part = erasure[(erasure.model == model) & (erasure.probed == probed)]
            for i, (erased, (ls, label)) in enumerate(styles.items()):
                rows = part[part.erased == erased]
                rows = rows.assign(k=rows.layer.map(layer_index)).sort_values("k")
                if not len(rows):
                    continue
                ax.plot(rows.k, rows.accuracy, ls=ls, marker="o", ms=3, color=f"C{i}", label=label)
                ax.fill_between(rows.k, rows.ci_low, rows.ci_high, color=f"C{i}", alpha=0.12)
            if len(part):
                ax.axhline(part.chance.mean(), color="grey", ls=":", lw=1, label="chance")
            ax.set_title(f"{model}: {probed} probe", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, folder, "erasure_per_layer")


def matrix_figure(table: pd.DataFrame, folder: Path, name: str) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_yticks(range(len(table.index)), table.index, fontsize=7)
    ax.set_xticks(range(len(table.columns)), table.columns, fontsize=7, rotation=90)
    model, _, rest = name.partition("__vs__")
    reference, _, measure = rest.partition("__")
    ax.set_ylabel(model)
    ax.set_xlabel(reference)
    ax.set_title(measure)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, folder, f"layer_matrix_{model}__{measure}")


def probes_figure(probes: pd.DataFrame, folder: Path, models: list[str]) -> list[str]:
    return _save(probes_plot(probes, models), folder, "probes_per_layer")


def probes_plot(probes: pd.DataFrame, models: list[str]):
    """Probe accuracy vs layer per label, one line per model with its CI band, chance dotted,
    classic baselines dashed."""
    plt = _plt()
    labels = list(dict.fromkeys(probes.label))
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.4), squeeze=False)
    classic = probes[probes.model == CLASSIC_MODEL]
    for ax, label in zip(axes[0], labels):
        for model in models:
            rows = probes[(probes.model == model) & (probes.label == label)]
            if not len(rows):
                continue
            rows = rows.assign(k=rows.layer.map(layer_index)).sort_values("k")
            line, = ax.plot(rows.k, rows.accuracy, marker="o", ms=3, label=model)
            ax.fill_between(rows.k, rows.ci_low, rows.ci_high, color=line.get_color(), alpha=0.15)
        chance = probes[probes.label == label].chance.mean()
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        for i, row in enumerate(classic[classic.label == label].itertuples()):
            ax.axhline(row.accuracy, color=f"C{7 + i % 3}", ls="--", lw=1, label=f"classic {row.layer}")
        ax.set_title(f"probe: {label}")
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (speaker-disjoint CV)")
    axes[0][-1].legend(fontsize=7)
    return fig


def normalization_figure(normalization: pd.DataFrame, folder: Path, models: list[str]) -> list[str]:
    plt = _plt()
    part = normalization[(normalization.measure == "variance_share") & normalization.model.isin(models)]
    if not len(part):
        return []
    factors = list(dict.fromkeys(part.label))
    fig, axes = plt.subplots(1, len(factors), figsize=(4 * len(factors), 3.4), squeeze=False, sharey=True)
    for ax, factor in zip(axes[0], factors):
        for model in models:
            rows = part[(part.model == model) & (part.label == factor)]
            rows = rows.assign(k=rows.layer.map(layer_index)).sort_values("k")
            ax.plot(rows.k, rows.value, marker="o", ms=3, label=model)
        ax.set_title(f"variance share: {factor}")
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("between-group SS / total SS")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, folder, "normalization_per_layer")


def pca_figure(pca_variance: pd.DataFrame, folder: Path, models: list[str]) -> list[str]:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for model in models:
        rows = pca_variance[pca_variance.model == model]
        if not len(rows):
            continue
        need = rows[rows.cumulative >= 0.9].groupby("layer").component.min()
        first = rows[rows.component == 1].set_index("layer").explained
        order = sorted(first.index, key=layer_index)
        left.plot([layer_index(k) for k in order], [need.get(k, np.nan) for k in order], marker="o", ms=3, label=model)
        right.plot([layer_index(k) for k in order], [first[k] for k in order], marker="o", ms=3, label=model)
    left.set_title("components for 90% of variance")
    right.set_title("share of variance on PC1")
    for ax in (left, right):
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    return _save(fig, folder, "pca_variance")


def umap_figure(projections: Path, folder: Path, model: str, layers: list[str]) -> list[str]:
    plt = _plt()
    picks = umap_layers(layers)
    tables = []
    for layer in picks:
        path = projections / f"{model}__{layer}.parquet"
        if path.is_file():
            table = pd.read_parquet(path)
            if table.umap1.notna().any():
                tables.append((layer, table))
    if not tables:
        return []
    fig, axes = plt.subplots(2, len(tables), figsize=(3.3 * len(tables), 6.4), squeeze=False)
    for col, (layer, table) in enumerate(tables):
        for row, (by, title) in enumerate((("tone", "tone"), ("sex", "sex"))):
            ax = axes[row][col]
            part = table[LABELS[by].present(table[by])]
            values = sorted(part[by].unique())
            colour = {value: f"C{i % 10}" for i, value in enumerate(values)}
            # one scatter in random order: drawing group after group would bury the first groups
            # under the last ones wherever they overlap (all F points hidden under M points)
            order = np.random.default_rng(0).permutation(len(part))
            shuffled = part.iloc[order]
            ax.scatter(shuffled.umap1, shuffled.umap2, s=2, alpha=0.5, c=[colour[v] for v in shuffled[by]])
            for value in values:
                ax.scatter([], [], s=2, color=colour[value], label=str(value))
            ax.set_title(f"{model} {layer}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == len(tables) - 1:
                ax.legend(fontsize=7, markerscale=4, loc="best")
    return _save(fig, folder, f"umap_{model}")


# =========================================================================== the report's own figures (PNG bytes)
def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (to embed in a page); closes it."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buffer.getvalue()


def similarity_png(similarity: pd.DataFrame, reference: str) -> bytes | None:
    return png_bytes(similarity_plot(similarity, reference)) if len(similarity) else None


def probes_png(probes: pd.DataFrame) -> bytes | None:
    models = [m for m in dict.fromkeys(probes.model) if m != CLASSIC_MODEL]
    return png_bytes(probes_plot(probes, models)) if len(probes) else None


def label_counts_figure(labels: dict[str, dict[str, int]]) -> bytes | None:
    """Bar charts of frames per label, one panel per task (tone, phone, sex)."""
    tasks = [t for t in ("tone", "sex", "phone") if labels.get(t)]
    if not tasks:
        return None
    plt = _plt()
    widths = [1.0 if t != "phone" else 3.0 for t in tasks]
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.2 * sum(widths) + 1, 2.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, task in zip(axes[0], tasks):
        names, counts = list(labels[task]), list(labels[task].values())
        ax.bar(range(len(names)), counts, color="C0" if task != "sex" else "C1")
        ax.set_xticks(range(len(names)), names, fontsize=6 if task == "phone" else 8,
                      rotation=90 if task == "phone" else 0)
        ax.set_title(f"{task}: frames per label", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    return png_bytes(fig)


def training_curves_figure(logs: list[tuple[str, str, pd.DataFrame]]) -> bytes | None:
    """One row per model: training loss by optimizer step, and the held-out score by step
    (dev frame accuracy per task for fine-tuned models, held-out contrastive accuracy for
    pre-trained ones). `logs`: (model name, "finetune" or "pretrain", its log table)."""
    if not logs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(logs), 2, figsize=(9, 2.4 * len(logs)), squeeze=False)
    for row, (name, kind, log) in enumerate(logs):
        loss_ax, score_ax = axes[row]
        if "loss" in log and "step" in log:
            part = log[["step", "loss"]].dropna()
            loss_ax.plot(part.step, part.loss, lw=0.8, color="C0", alpha=0.5, label="per step")
            if len(part) >= 10:
                smooth = part.loss.rolling(max(2, len(part) // 20), min_periods=1).mean()
                loss_ax.plot(part.step, smooth, lw=1.5, color="C0", label="running mean")
            loss_ax.legend(fontsize=7)
        loss_ax.set_title(f"{name}: training loss", fontsize=9)
        loss_ax.set_xlabel("step", fontsize=8)
        score_columns = ([c for c in log.columns if c.startswith("dev_acc_")] if kind == "finetune"
                         else [c for c in log.columns if c in HELD_OUT_SCORES])
        for i, column in enumerate(score_columns):
            part = log[["step", column]].dropna()
            label = HELD_OUT_SCORES.get(column, column.replace("dev_acc_", "dev accuracy: "))
            score_ax.plot(part.step, part[column], marker="o", ms=3, color=f"C{i + 1}", label=label)
        if score_columns:
            score_ax.legend(fontsize=7)
            score_ax.set_ylim(0, 1.02)
        score_ax.set_title(f"{name}: {'dev frame accuracy' if kind == 'finetune' else 'held-out score'}", fontsize=9)
        score_ax.set_xlabel("step", fontsize=8)
        for ax in (loss_ax, score_ax):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def read_png(path: Path) -> bytes | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if data.startswith(b"\x89PNG") else None
