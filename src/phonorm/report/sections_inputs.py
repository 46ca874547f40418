"""The report's sections on what went in: the corpus, the training curves, the accuracy per model
and task (the study's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from phonorm import figures as figs
from phonorm.records.analysis import EvaluationFile
from phonorm.records.card import FinetuneMetrics
from phonorm.records.context import ContextModel
from phonorm.records.corpus import LabelsFile
from phonorm.records.tables import read_csv_or_none
from phonorm.report.page import (
    Page,
    Sources,
    as_path,
    esc,
    note,
    read_record,
    table,
)
from phonorm.settings import TASKS


def section_corpus(page: Page, sources: Sources) -> None:
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


def _model_log(model: ContextModel) -> tuple[str, Optional[pd.DataFrame]]:
    folder = as_path(model.folder)
    if folder is None:
        return "", None
    for name, kind in (("train_log.csv", "finetune"), ("pretrain_log.csv", "pretrain")):
        log = read_csv_or_none(folder / name)
        if log is not None and len(log):
            return kind, log
    return "", None


def section_training(page: Page, sources: Sources) -> None:
    logs, absent = [], []
    for model in sources.models:
        kind, log = _model_log(model)
        if log is None:
            absent.append(model.name)
        else:
            logs.append((model.name, kind, log))
    body = ("<p>Loss per optimizer step and the held-out score: dev frame accuracy per task for the fine-tuned "
            "models (the best dev checkpoint is the one kept) and, for models phonorm pre-trained (here or "
            "shipped), the held-out pre-training accuracy: masked-prediction accuracy of the cluster ids "
            "(hubert objective) or contrastive accuracy (masked frame against distractors).</p>")
    body += page.fig(figs.training_curves_figure(logs), "training curves") if logs else \
        page.gap("training curves: no model folder with train_log.csv or pretrain_log.csv was found")
    if absent:
        body += note(f"no training log for: {', '.join(map(str, absent))} (models not trained here, or folders missing)")
    page.add("training", "Training curves", body)


def section_accuracy(page: Page, sources: Sources) -> None:
    rows, details, used_dev = [], [], []
    for model in sources.models:
        if model.kind != "finetuned":
            continue
        name = model.name
        evaluation = read_record(EvaluationFile, sources.evaluations[name]) if name in sources.evaluations else None
        scores, split = (evaluation.tasks, evaluation.split) if evaluation else (None, None)
        if not scores and model.folder:
            metrics = read_record(FinetuneMetrics, Path(model.folder) / FinetuneMetrics.FILE)
            scores, split = (metrics.dev if metrics else None) or None, "dev"
            if scores:
                used_dev.append(name)
        if not scores:
            continue
        row = {"model": name, "tasks": "+".join(model.tasks or scores), "split": split}
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
            "claims C3 and C4 (differences with 95% cluster-robust t intervals over speakers in the claim checks below); probe "
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
    unknown = "the evaluation split (no prepared corpus found to tell how it was split)"
    if sources.corpus is None:
        return unknown
    try:
        table = pd.read_parquet(sources.corpus / "utterances.parquet", columns=["speaker", "split"])
    except (OSError, ValueError, KeyError):
        return unknown
    if (table.groupby("speaker")["split"].nunique() <= 1).all():
        return "held-out speakers"
    labels = read_record(LabelsFile, sources.corpus / LabelsFile.FILE)
    split = labels.split if labels else None
    return (f"held-out utterances of speakers also heard in training (the corpus was split by "
            f"{split.by if split else 'utterance'}, not by speaker)")
