"""The vocabulary of labels that several stages share, declared once (a bottom-layer module: the
settings, the corpus, the analysis, the figures, the report and the records import it; it imports
nothing of phonorm).

- `LABELS`: one `LabelSpec` per label a frame carries (tone, phone, sex, speaker): its column in
  frames.parquet, how a row without it is written, whether it is a property of the speaker, how its
  probe's folds are grouped, and its classes when they are fixed. `LabelName` is the same list as a
  type (`settings.ProbeLabel`; the tasks are its first three, `settings.Task`).
- `SEXES`: the speaker-sex codes a corpus holds (speakers.tsv, frames, the sex task's classes).
- `CLASSIC_MODEL`: the model name under which the classic baselines (F0, MFCC) appear in probes.csv
  and normalization.csv (their "layer" is the feature's name), so no model may be called so.
- `ERASURE_CONDITIONS`: what concept erasure removes before the probes are trained again (nothing,
  sex, tone), and `ERASURE_PROBED`, the labels probed after it (analysis/erasure.py, figures.py).

A new label (say, word position) is one `LabelSpec` here, its name in `LabelName`, and the column
that the corpus and the extraction write (docs/architecture.md, "Where to change what").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import numpy as np

SEXES = ("F", "M")
CLASSIC_MODEL = "classic"
ERASURE_CONDITIONS = ("none", "sex", "tone")
ERASURE_PROBED = ("tone", "sex")

LabelName = Literal["tone", "phone", "sex", "speaker"]


@dataclass(frozen=True)
class LabelSpec:
    """One label of a frame.

    `missing`: how frames.parquet writes a row without the label: 0 for tone (an integer column;
    0 = no tone: initials, silence), "" for the text columns. `speaker_level`: one value per speaker
    (sex, speaker identity): its per-speaker tallies are all of one class. `probe_groups`: what a
    probe's folds keep apart, "speaker" (speaker-disjoint folds), or "utterance" for the speaker
    label itself, which cannot be speaker-disjoint. `classes`: the classes when fixed (sex), else
    None (the corpus decides)."""

    name: str
    missing: int | str = ""
    speaker_level: bool = False
    probe_groups: Literal["speaker", "utterance"] = "speaker"
    classes: Optional[tuple[str, ...]] = None

    def present(self, column) -> np.ndarray:
        """Which rows of a frames-table column (rows,) carry the label (bool (rows,))."""
        if isinstance(self.missing, int):
            return np.asarray(column) > self.missing
        return np.asarray(column).astype(str) != self.missing

    def names(self, column) -> np.ndarray:
        """The class names (text, as labels.json lists them) of a column's values (rows,); "" where a
        row has no label. A numeric label's names are its integers (tone 3 → "3")."""
        present = self.present(column)
        if isinstance(self.missing, int):
            return np.array([str(int(v)) if p else "" for v, p in zip(np.asarray(column), present)], dtype=object)
        return np.where(present, np.asarray(column).astype(str), "").astype(object)

    def values(self, column) -> np.ndarray:
        """The column's values as the label's classes are compared: integers for a numeric label
        (tone), text for the others (rows,)."""
        return np.asarray(column) if isinstance(self.missing, int) else np.asarray(column).astype(str)


LABELS: dict[str, LabelSpec] = {spec.name: spec for spec in (
    LabelSpec("tone", missing=0),
    LabelSpec("phone"),
    LabelSpec("sex", speaker_level=True, classes=SEXES),
    LabelSpec("speaker", speaker_level=True, probe_groups="utterance"),
)}
if tuple(LABELS) != get_args(LabelName):  # pragma: no cover - a mistake in this file
    raise ImportError("labels.LABELS and labels.LabelName list different labels")


def label_rows(frames, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows (indices into the frames table `frames`) that carry `label`, and the label's values there."""
    spec = LABELS[label]
    column = frames[label].to_numpy()
    keep = spec.present(column)
    return np.flatnonzero(keep), spec.values(column)[keep]
