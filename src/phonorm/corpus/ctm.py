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
    """Utterance id → its phone alignment, from one CTM file.

    Raises `InputError(path, problem, item="line N")` for anything malformed; never another exception.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"unreadable CTM file ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text (byte {err.start})") from None
    by_utterance: dict[str, list[Interval]] = defaultdict(list)
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0].startswith("#"):
            continue
        if len(fields) not in (5, 6):
            raise InputError(path, f"expected 'UTT CHANNEL START DURATION PHONE', got {len(fields)} fields", item=f"line {number}")
        utterance, _channel, start_text, duration_text, phone = fields[:5]
        try:
            start, duration = float(start_text), float(duration_text)
        except ValueError:
            raise InputError(path, f"start {start_text!r} or duration {duration_text!r} is not a number", item=f"line {number}") from None
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration <= 0:
            raise InputError(path, f"start {start_text} / duration {duration_text}: need start >= 0 and duration > 0", item=f"line {number}")
        by_utterance[utterance].append(Interval(start, start + duration, strip_position(phone)))
    if not by_utterance:
        raise InputError(path, "no alignment lines in this CTM file")
    result: dict[str, Alignment] = {}
    for utterance, intervals in by_utterance.items():
        intervals.sort(key=lambda iv: (iv.start, iv.end))
        problem = check_intervals(intervals)
        if problem:
            raise InputError(path, problem, item=utterance)
        result[utterance] = Alignment(phones=intervals, words=[], end=intervals[-1].end)
    return result
