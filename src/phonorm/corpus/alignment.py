"""What every alignment reader returns: labelled intervals in seconds.

Readers (`textgrid.py`, `ctm.py`) only check that the file is well formed; the label scheme
(`schemes.py`) decides what a label means, and `prepare.py` decides what is silence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

SILENCE_LABELS = frozenset({
    "", "sil", "sp", "spn", "nsn", "pau", "silence", "noise", "#", "h#", "epi", "<eps>", "<sil>", "<unk>",
})
"""Interval labels that mean silence or non-speech (compared case-insensitively, after a Kaldi
word-position suffix `_B/_I/_E/_S` is removed: `SIL_S` is `sil`): excluded from segments, but their
time still counts in the alignment's extent. Covers MFA (`sil`, `sp`, `spn`, `<eps>`, `<unk>`),
Kaldi (`SIL`, `SPN`, `NSN`), Festival/HTS (`pau`), TIMIT (`h#`, `epi`), Biaobei (`sil`, `sp1`...),
THCHS-30 (`sil`). Besides these, see `is_silence`."""

_NON_SPEECH = re.compile(r"^(\[[^\[\]]*\]|<[^<>]*>|sp\d+|#\d*)$")
"""Any label wholly in brackets (`[SIL]`, `[SPN]`, `[NOISE]`, `[laughter]` of Charsiu and MFA
dictionaries; `<SIL>`, `<NOISE>`, `<sss>` of Kaldi recipes), numbered short pauses (`sp1`) and
prosodic-boundary marks (`#1`...`#4`) are non-speech too: no phone set writes a phone that way."""

_POSITION_SUFFIX = re.compile(r"_[BIES]$")


def is_silence(label: str, extra: frozenset[str] = frozenset()) -> bool:
    """True for silence and non-speech labels (see `SILENCE_LABELS`); `extra` adds the user's
    own (`--silence LABEL`, compared case-insensitively like the built-in ones)."""
    key = _POSITION_SUFFIX.sub("", label.strip()).lower()
    return key in SILENCE_LABELS or key in extra or bool(_NON_SPEECH.match(key))


OVERLAP_TOLERANCE = 0.005
"""Seconds two neighbouring intervals may overlap by before it is an error: writers round start and
duration separately (CTM), so start + duration can pass the next start by a digit. Half a 10 ms
aligner frame is far below the 20 ms model frame, where such an overlap cannot change a label
beyond the boundary frame."""


def silence_set(labels) -> frozenset[str]:
    """The user's extra silence labels as `is_silence` compares them (stripped, lower case)."""
    return frozenset(str(label).strip().lower() for label in (labels or ()))


@dataclass(frozen=True)
class Interval:
    """One labelled span: `start`, `end` in seconds, `label` as written in the file (stripped)."""

    start: float
    end: float
    label: str


@dataclass
class Alignment:
    """One utterance's alignment: phone intervals (silence included), word intervals (may be
    empty, e.g. from CTM), and `end`, the last time the alignment claims (s)."""

    phones: list[Interval]
    words: list[Interval] = field(default_factory=list)
    end: float = 0.0


def check_intervals(intervals: list[Interval]) -> str | None:
    """The first problem with a tier's intervals (sorted, finite, non-negative, non-overlapping),
    or None when they are fine. `intervals` must already be sorted by start."""
    previous_end = 0.0
    for i, iv in enumerate(intervals):
        if not (math.isfinite(iv.start) and math.isfinite(iv.end)):
            return f"interval {i + 1} ({iv.label!r}) has a non-finite time"
        if iv.start < 0:
            return f"interval {i + 1} ({iv.label!r}) starts before 0 s ({iv.start:g})"
        if iv.end <= iv.start:
            return f"interval {i + 1} ({iv.label!r}) ends at {iv.end:g} s, not after its start {iv.start:g} s"
        if iv.start < previous_end - OVERLAP_TOLERANCE:
            return f"interval {i + 1} ({iv.label!r}) starts at {iv.start:g} s, before the previous one ends ({previous_end:g} s)"
        previous_end = iv.end
    return None
