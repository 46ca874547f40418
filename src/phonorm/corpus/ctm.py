"""Reading Kaldi CTM phone alignments: `UTT CHANNEL START DURATION PHONE [CONFIDENCE]` per line.

Kaldi's position-dependent phone suffixes (`zh_B`, `ong1_E`, `a_S`, `x_I`) are stripped, so that
the label scheme sees `zh`, `ong1`. The format is five whitespace-separated fields, too simple to
need a library.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from phonorm.corpus.alignment import Alignment, Interval, check_intervals
from phonorm.corpus.text import decode_text
from phonorm.errors import InputError

_POSITION_SUFFIX = re.compile(r"_[BIES]$")


def strip_position(phone: str) -> str:
    """`zh_B` → `zh` (Kaldi word-position suffixes _B _I _E _S)."""
    return _POSITION_SUFFIX.sub("", phone)


def ctm_files(path: str | Path) -> list[Path]:
    """The CTM file itself, or every `*.ctm` under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".ctm")
        if not files:
            raise InputError(path, "no *.ctm files in this folder")
        return files
    raise InputError(path, "no such CTM file or folder")


def read_ctm(path: str | Path) -> dict[str, Alignment]:
    """Utterance id → its phone alignment, from one CTM file, refusing the whole file at its first
    bad line (`read_ctm_utterances` keeps the good utterances).

    Raises `InputError(path, problem, item=UTTERANCE)` for anything malformed; never another exception.
    """
    alignments, problems = read_ctm_utterances(path)
    if problems:
        raise next(iter(problems.values()))
    return alignments


def read_ctm_utterances(path: str | Path) -> tuple[dict[str, Alignment], dict[str, InputError]]:
    """(utterance id → its phone alignment, utterance id → what is wrong with its lines) of one CTM
    file: a malformed line spoils only its own utterance (its first field), so that one bad line
    does not lose every utterance of the file. Each problem names the line (`line N: ...`).

    Raises `InputError(path, problem)` for a file that cannot be read at all (unreadable, not text,
    no alignment lines); never another exception.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"unreadable CTM file ({err.strerror or err})") from None
    text = decode_text(data, path, "CTM file")
    by_utterance: dict[str, list[Interval]] = defaultdict(list)
    problems: dict[str, InputError] = {}

    def bad(utterance: str, number: int, problem: str) -> None:
        problems.setdefault(utterance, InputError(path, f"line {number}: {problem}", item=utterance))

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0].startswith("#"):
            continue
        utterance = fields[0]
        if len(fields) not in (5, 6):
            bad(utterance, number, f"expected 'UTT CHANNEL START DURATION PHONE', got {len(fields)} fields")
            continue
        _channel, start_text, duration_text, phone = fields[1:5]
        try:
            start, duration = float(start_text), float(duration_text)
        except ValueError:
            bad(utterance, number, f"start {start_text!r} or duration {duration_text!r} is not a number")
            continue
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration <= 0:
            bad(utterance, number, f"start {start_text} / duration {duration_text}: need start >= 0 and duration > 0")
            continue
        by_utterance[utterance].append(Interval(start, start + duration, strip_position(phone)))
    if not by_utterance and not problems:
        raise InputError(path, "no alignment lines in this CTM file")
    result: dict[str, Alignment] = {}
    for utterance, intervals in by_utterance.items():
        if utterance in problems:
            continue
        intervals.sort(key=lambda iv: (iv.start, iv.end))
        problem = check_intervals(intervals)
        if problem:
            problems[utterance] = InputError(path, problem, item=utterance)
            continue
        result[utterance] = Alignment(phones=intervals, words=[], end=intervals[-1].end)
    return result, problems
