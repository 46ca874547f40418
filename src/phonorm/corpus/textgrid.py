"""Reading MFA-style Praat TextGrids (tiers `words` and `phones`) with praatio.

praatio keeps empty intervals (`includeEmptyIntervals=True`) and renames repeated tier names
(`duplicateNamesMode="rename"`), the two places hand-written readers go wrong (pitfall 11, docs/pitfalls.md).
Multi-speaker MFA output names tiers `SPEAKER - words` / `SPEAKER - phones`; those are accepted when
the file holds one speaker (several speakers' phone tiers are refused, never reduced to the first).
Praat's short text format (Charsiu's output) reads like the long one. A file with a single interval
tier of any name is that tier's phones: Biaobei/CSMSC `PhoneLabeling/*.interval` files are short
TextGrids with one tier named after the utterance.
"""

from __future__ import annotations

import codecs
import re
import tempfile
from pathlib import Path

from phonorm.corpus.alignment import Alignment, Interval, check_intervals
from phonorm.corpus.text import utf16_without_bom
from phonorm.errors import InputError

ALIGNMENT_SUFFIXES = (".textgrid", ".interval")
"""File suffixes (lower case) read as TextGrids: Praat's, and Biaobei's `.interval` files."""
PHONE_TIER_NAMES = ("phones", "phone")
WORD_TIER_NAMES = ("words", "word")


def read_textgrid(path: str | Path) -> Alignment:
    """The `phones` tier (required) and `words` tier (optional) of one TextGrid, in seconds.

    A file with several speakers' phone tiers (`spk1 - phones` and `spk2 - phones`, or two tiers
    named `phones`) is refused: an utterance has one speaker, and keeping one tier would silently
    drop the others' speech. UTF-16 without a byte-order mark is read like UTF-16 with one.

    Raises `InputError(path, problem)` for anything that is not a well-formed TextGrid with an
    interval tier of phones; never another exception.
    """
    path = Path(path)
    _refuse_negative_times(path)
    try:
        grid = _open(path)
    # praatio raises many types (ValueError, IndexError, KeyError, UnicodeError, its own errors) on
    # malformed files; at this boundary every one of them means "not a readable TextGrid".
    except Exception as err:
        raise InputError(path, f"not a readable TextGrid ({type(err).__name__}: {_short(err)})") from None
    try:
        interval_tiers = [n for n in grid.tierNames if type(grid.getTier(n)).__name__ == "IntervalTier"]
        phone_names = _tier_names(interval_tiers, PHONE_TIER_NAMES)
        word_names = _tier_names(interval_tiers, WORD_TIER_NAMES)
        if len(phone_names) > 1:
            raise InputError(path, f"{len(phone_names)} phone tiers ({', '.join(map(repr, phone_names))}): several "
                                   "speakers in one file; phonorm needs one speaker per utterance, so cut the "
                                   "recording and its TextGrid per speaker")
        if not phone_names and len(interval_tiers) == 1 and not word_names:
            phone_names = interval_tiers  # a single tier of any name (Biaobei .interval) is the phones
        if not phone_names:
            names = ", ".join(repr(n) for n in grid.tierNames) or "none"
            raise InputError(path, f"no 'phones' interval tier (tiers: {names})")
        phones_name = phone_names[0]
        prefix = phones_name.rpartition(" - ")[0]
        same_speaker = [n for n in word_names if n.rpartition(" - ")[0] == prefix]
        if not same_speaker and len(word_names) == 1:
            same_speaker = word_names
        if len(same_speaker) > 1:
            raise InputError(path, f"{len(same_speaker)} word tiers ({', '.join(map(repr, same_speaker))}) for the "
                                   f"phone tier {phones_name!r}: keep one")
        phones = _intervals(path, grid.getTier(phones_name))
        words = _intervals(path, grid.getTier(same_speaker[0])) if same_speaker else []
        end = max([float(grid.maxTimestamp)] + [iv.end for iv in phones + words])
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"malformed TextGrid ({type(err).__name__}: {_short(err)})") from None
    return Alignment(phones=phones, words=words, end=end)


_NEGATIVE_TIME = re.compile(r"^[ \t]*(xmin|xmax|number)[ \t]*=[ \t]*(-\s*[0-9.eE+-]+)", re.MULTILINE)


def _refuse_negative_times(path: Path) -> None:
    """A time before 0 s, named with its line: praatio drops the minus sign (xmin = -0.5 reads as 0.5) and
    then reports an interval that ends before it starts, which points the user at the wrong number."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return  # UTF-16 and unreadable files: left to the reader below
    match = _NEGATIVE_TIME.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise InputError(path, f"a time before 0 s: {match.group(1)} = {match.group(2)} (line {line}); "
                               "alignments must start at 0 s or later")


def _open(path: Path):
    """praatio's Textgrid of `path`. praatio reads UTF-8 and UTF-16 with a byte-order mark; UTF-16
    without one (its zero bytes would read as UTF-8) is handed to it with the mark added."""
    from praatio import textgrid

    def open_textgrid(name: str):
        return textgrid.openTextgrid(name, includeEmptyIntervals=True, reportingMode="error",
                                     duplicateNamesMode="rename")

    data = path.read_bytes()
    encoding = utf16_without_bom(data)
    if encoding is None:
        return open_textgrid(str(path))
    bom = codecs.BOM_UTF16_LE if encoding == "utf-16-le" else codecs.BOM_UTF16_BE
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(bom + data)
        return open_textgrid(str(copy))


def _tier_names(names: list[str], wanted: tuple[str, ...]) -> list[str]:
    """The tiers of `names` named one of `wanted`, `SPEAKER - name`, or a repeat of one of those
    (praatio renames a second `phones` tier `phones_2`), case-insensitively, in file order."""
    def base(name: str) -> str:
        key = name.strip().lower()
        stem, _, number = key.rpartition("_")
        return stem if number.isdigit() and stem in lowered else key

    lowered = {n.strip().lower() for n in names}
    return [n for n in names if (k := base(n)) in wanted or any(k.endswith(f" - {w}") for w in wanted)]


def _intervals(path: Path, tier) -> list[Interval]:
    intervals = sorted(
        (Interval(float(start), float(end), str(label).strip()) for start, end, label in tier.entries),
        key=lambda iv: (iv.start, iv.end),
    )
    problem = check_intervals(intervals)
    if problem:
        raise InputError(path, f"tier {tier.name!r}: {problem}")
    return intervals


def _short(err: Exception, limit: int = 160) -> str:
    text = str(err).replace("\n", " ").strip() or "no detail"
    return text if len(text) <= limit else text[: limit - 1] + "…"
