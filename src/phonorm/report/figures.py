"""The report's own figures (matplotlib, Agg), returned as PNG bytes for embedding.

The analysis stage draws its figures under R/figures/; the report draws only what analysis does
not: the corpus's label counts, the training curves, and simple stand-ins for the similarity and
probe figures when R/figures/ lacks them (e.g. `analyze` ran with `figures: false`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _layer_index(layer: str) -> int:
    return int(layer[1:]) if str(layer)[:1] == "L" and str(layer)[1:].isdigit() else 0


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
    return _png(fig)


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
                         else [c for c in log.columns if c == "held_out_contrastive_accuracy"])
        for i, column in enumerate(score_columns):
            part = log[["step", column]].dropna()
            label = column.replace("dev_acc_", "dev accuracy: ").replace("held_out_contrastive_accuracy",
                                                                          "held-out contrastive accuracy")
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
    return _png(fig)


def similarity_fallback(similarity: pd.DataFrame, reference: str) -> bytes | None:
    """SVCCA and CKA to the reference, per layer, one line per model."""
    part = similarity[similarity.measure.isin(["svcca", "cka"])]
    if not len(part):
        return None
    plt = _plt()
    measures = list(dict.fromkeys(part.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for model, rows in part[part.measure == measure].groupby("model", sort=False):
            rows = rows.assign(k=rows.layer.map(_layer_index)).sort_values("k")
            ax.plot(rows.k, rows.value, marker="o", ms=3, label=model)
        ax.set_title(f"{measure} to {reference}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def probes_fallback(probes: pd.DataFrame) -> bytes | None:
    """Probe accuracy per layer, one panel per label; classic baselines as dashed lines."""
    if not len(probes):
        return None
    plt = _plt()
    labels = list(dict.fromkeys(probes.label))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3), squeeze=False)
    classic = probes[probes.model == "classic"]
    for ax, label in zip(axes[0], labels):
        for model, rows in probes[(probes.label == label) & (probes.model != "classic")].groupby("model", sort=False):
            rows = rows.assign(k=rows.layer.map(_layer_index)).sort_values("k")
            ax.plot(rows.k, rows.accuracy, marker="o", ms=3, label=model)
        for i, row in enumerate(classic[classic.label == label].itertuples()):
            ax.axhline(row.accuracy, ls="--", lw=1, color=f"C{7 + i % 3}", label=f"classic {row.layer}")
        chance = probes[probes.label == label].chance.mean()
        if np.isfinite(chance):
            ax.axhline(chance, ls=":", color="grey", lw=1, label="chance")
        ax.set_title(f"probe: {label}", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _png(fig)


def read_png(path: Path) -> bytes | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if data.startswith(b"\x89PNG") else None
