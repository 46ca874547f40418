"""Scoring a fine-tuned model on a split: frame accuracy, macro-F1, chance, confusion, by sex,
and for tone the syllable-level accuracy (majority vote over the frames of each final)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError
from phonorm.frames import IGNORE_INDEX, FrameGeometry
from phonorm.models.backbone import uses_group_norm
from phonorm.models.data import FrameDataset, inference_batches
from phonorm.models.heads import MultitaskHeads, load_finetuned, predict_tasks
from phonorm.progress import progress as progress_bar
from phonorm.settings.evaluate import EvaluateSettings


@dataclass
class Predictions:
    """Scored frames of one split, per task: true and predicted class ids, speaker sex, and
    (utterance position, segment row) of the frame for syllable-level voting. 1-D arrays."""

    tasks: list[str]
    true: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pred: dict[str, list[np.ndarray]] = field(default_factory=dict)
    sex: dict[str, list[np.ndarray]] = field(default_factory=dict)
    unit: dict[str, list[np.ndarray]] = field(default_factory=dict)
    #: speaker of each scored frame (for per-speaker counts: paired speaker bootstraps in the claims)
    speaker: dict[str, list[np.ndarray]] = field(default_factory=dict)
    n_utterances: int = 0

    def add(self, utterance_number: int, sex: str, labels: dict[str, np.ndarray], predicted: dict[str, np.ndarray],
            segment: np.ndarray, speaker: str = "") -> None:
        for task in self.tasks:
            truth = labels[task]
            guess = predicted[task][: len(truth)]
            scored = truth != IGNORE_INDEX
            self.true.setdefault(task, []).append(truth[scored])
            self.pred.setdefault(task, []).append(guess[scored])
            self.sex.setdefault(task, []).append(np.full(int(scored.sum()), sex, dtype=object))
            unit = utterance_number * 1_000_000 + segment[: len(truth)][scored]
            self.unit.setdefault(task, []).append(unit.astype(np.int64))
            self.speaker.setdefault(task, []).append(np.full(int(scored.sum()), speaker, dtype=object))
        self.n_utterances += 1

    def arrays(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)  # noqa: E731
        return (cat(self.true.get(task, []), np.int64), cat(self.pred.get(task, []), np.int64),
                cat(self.sex.get(task, []), object), cat(self.unit.get(task, []), np.int64))


def predict_split(backbone: torch.nn.Module, heads: MultitaskHeads, dataset: FrameDataset, *,
                  indices: Sequence[int] | None = None, device: str | torch.device = "cpu",
                  batch_seconds: float = 60.0, progress: bool = True, desc: str = "evaluate") -> Predictions:
    """Run the model over whole utterances of `dataset` (all, or `indices`) and collect scored frames.
    Group-norm models see one utterance (or equal-length batch) at a time, never padding."""
    backbone.eval()
    heads.eval()
    group_norm = uses_group_norm(backbone.config)  # type: ignore[arg-type]  # transformers' config attribute is typed as a union
    result = Predictions(list(dataset.tasks))
    indices = list(range(len(dataset))) if indices is None else list(indices)
    bar = progress_bar(total=len(indices), desc=desc, unit="utt", enabled=progress, leave=False)
    dtype = next(backbone.parameters()).dtype
    for examples, inputs in inference_batches(dataset, group_norm, batch_seconds, indices):
        inputs = {k: (v.to(device, dtype) if k == "input_values" else v.to(device)) for k, v in inputs.items()}
        predicted = predict_tasks(backbone, heads, inputs, dataset.tasks)
        for row, e in enumerate(examples):
            result.add(result.n_utterances, e.sex, e.labels,
                       {t: p[row].cpu().numpy() for t, p in predicted.items()}, e.segment, speaker=e.speaker)
        bar.update(len(examples))
    bar.close()
    return result


def _chance(truth: np.ndarray, names: list[str]) -> tuple[float, str | None]:
    if truth.size == 0:
        return float("nan"), None
    label, count = Counter(truth.tolist()).most_common(1)[0]
    return count / truth.size, names[label]


def _scores(truth: np.ndarray, guess: np.ndarray, names: list[str]) -> dict[str, Any]:
    chance, majority = _chance(truth, names)
    if truth.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "chance": chance, "majority_label": None,
                "n_frames": 0}
    return {
        "accuracy": float(accuracy_score(truth, guess)),
        # macro over the classes present in the truth or the predictions (scikit-learn's default)
        "macro_f1": float(f1_score(truth, guess, average="macro", zero_division=0)),
        "chance": chance,
        "majority_label": majority,
        "n_frames": int(truth.size),
    }


def score_predictions(predictions: Predictions, label_maps: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The metrics dict of `evaluate` from collected predictions."""
    out: dict[str, dict[str, Any]] = {}
    for task in predictions.tasks:
        names = list(label_maps[task])
        truth, guess, sex, unit = predictions.arrays(task)
        entry = _scores(truth, guess, names)
        entry["labels"] = names
        entry["confusion"] = confusion_matrix(truth, guess, labels=list(range(len(names)))).tolist() if truth.size else \
            [[0] * len(names) for _ in names]
        entry["confusion_axes"] = "rows: true label, columns: predicted label, in the order of `labels`"
        entry["by_sex"] = {s: _scores(truth[sex == s], guess[sex == s], names) for s in sorted(set(sex.tolist()))}
        entry["n_utterances"] = predictions.n_utterances
        speakers = np.concatenate(predictions.speaker[task]) if predictions.speaker.get(task) else np.zeros(0, object)
        if len(speakers) == len(truth) and all(speakers):
            entry["by_speaker"] = {str(s): {"correct": int((truth[speakers == s] == guess[speakers == s]).sum()),
                                            "n_frames": int((speakers == s).sum())} for s in sorted(set(speakers.tolist()))}
        if task == "tone":
            entry["syllable"] = _syllable_scores(truth, guess, unit, names)
        out[task] = entry
    return out


def _syllable_scores(truth: np.ndarray, guess: np.ndarray, unit: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Majority vote of the predicted tone over each final's frames (ties: the lowest class id).
    Finals without any scored frame cannot be voted on; frames map to one final each."""
    if truth.size == 0:
        return {"accuracy": float("nan"), "chance": float("nan"), "n_syllables": 0}
    order = np.argsort(unit, kind="stable")
    units, starts = np.unique(unit[order], return_index=True)
    bounds = list(starts) + [len(order)]
    syl_true, syl_pred = [], []
    for i in range(len(units)):
        members = order[bounds[i]:bounds[i + 1]]
        syl_true.append(int(truth[members[0]]))
        syl_pred.append(int(np.bincount(guess[members], minlength=len(names)).argmax()))
    syl_true_arr, syl_pred_arr = np.array(syl_true), np.array(syl_pred)
    chance, majority = _chance(syl_true_arr, names)
    return {"accuracy": float((syl_true_arr == syl_pred_arr).mean()), "chance": chance, "majority_label": majority,
            "macro_f1": float(f1_score(syl_true_arr, syl_pred_arr, average="macro", zero_division=0)),
            "n_syllables": int(len(units))}


def evaluate(corpus: str | Path, *, model_dir: str | Path, settings: Optional[EvaluateSettings] = None
             ) -> dict[str, dict[str, Any]]:
    """Scores of a `phonorm finetune` model on one split of a prepared corpus (`settings.split`; the
    test split by default), keyed by task.

    Each task has `accuracy` and `macro_f1` (frames), `chance` (frequency of the split's majority
    class), `majority_label`, `n_frames`, `labels`, `confusion` (rows true, columns predicted),
    `by_sex` ({"F": {...}, "M": {...}}), `by_speaker` ({speaker: {correct, n_frames}}: frame hits
    per speaker, for speaker-level bootstraps), `n_utterances`; tone also `syllable` (majority vote
    over each final's frames).
    """
    split = (settings or EvaluateSettings()).split
    prepared = PreparedCorpus(corpus)
    _refuse_a_changed_corpus(prepared, Path(model_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone, heads, meta = load_finetuned(model_dir, device=device)
    tasks = list(meta["tasks"])
    label_maps = meta["label_maps"]
    for task in tasks:
        if task not in prepared.label_maps:
            raise InputError(prepared.folder / "labels.json", f"has no labels for task {task!r} the model was trained on")
        if list(prepared.label_maps[task]) != list(label_maps[task]):
            raise InputError(prepared.folder / "labels.json",
                             f"labels of task {task!r} differ from the model's ({Path(model_dir) / 'phonorm.json'})")
    dataset = FrameDataset(prepared, split, tasks, FrameGeometry.from_config(backbone.config), label_maps)
    predictions = predict_split(backbone, heads, dataset, device=device, desc=f"evaluate {split}")
    result = score_predictions(predictions, label_maps)
    for entry in result.values():
        entry["split"] = split
    return result


def _refuse_a_changed_corpus(prepared: PreparedCorpus, model_dir: Path) -> None:
    """The corpus folder the model was fine-tuned on, prepared again since (other splits, so perhaps
    the model's own training speakers in "test"), is refused naming both fingerprints. Another corpus
    folder is a cross-corpus evaluation, which is the user's choice."""
    from phonorm.records.card import ModelCard

    if not ModelCard.exists(model_dir):
        return
    card = ModelCard.load(model_dir)
    if Path(card.corpus).resolve() == prepared.folder.resolve() and card.corpus_fingerprint != prepared.fingerprint:
        raise InputError(prepared.folder, f"changed since {model_dir} was fine-tuned on it (corpus fingerprint "
                                          f"{card.corpus_fingerprint[:12]} then, {prepared.fingerprint[:12]} now): its "
                                          "test split may hold the model's training speakers; fine-tune again on it")


def format_evaluation(result: dict[str, dict[str, Any]]) -> str:
    """A short human-readable table of `evaluate`'s dict."""
    lines = []
    for task, entry in result.items():
        line = (f"{task:>6}: accuracy {entry['accuracy']:.3f}  macro-F1 {entry['macro_f1']:.3f}  "
                f"chance {entry['chance']:.3f} ({entry.get('majority_label')})  frames {entry['n_frames']}")
        by_sex = "  ".join(f"{s} {v['accuracy']:.3f}" for s, v in entry.get("by_sex", {}).items())
        if by_sex:
            line += f"  by sex: {by_sex}"
        lines.append(line)
        if "syllable" in entry:
            syl = entry["syllable"]
            lines.append(f"{'':>6}  syllables (majority vote): accuracy {syl['accuracy']:.3f}  "
                         f"chance {syl['chance']:.3f}  n {syl['n_syllables']}")
        names = entry.get("labels", [])
        if names and len(names) <= 12:
            width = max(5, max(len(n) for n in names) + 1)
            lines.append(f"{'':>8}true\\pred " + "".join(f"{n:>{width}}" for n in names))
            for name, row in zip(names, entry["confusion"]):
                lines.append(f"{'':>8}{name:>9} " + "".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)
