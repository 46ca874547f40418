"""Reading MFA-style Praat TextGrids (tiers `words` and `phones`) with praatio.

praatio keeps empty intervals (`includeEmptyIntervals=True`) and renames repeated tier names
(`duplicateNamesMode="rename"`), the two places hand-written readers go wrong (BRIEF trap 11).
Multi-speaker MFA output names tiers `SPEAKER - words` / `SPEAKER - phones`; those are accepted too.
Praat's short text format (Charsiu's output) reads like the long one. A file with a single interval
tier of any name is that tier's phones: Biaobei/CSMSC `PhoneLabeling/*.interval` files are short
TextGrids with one tier named after the utterance.
"""

from __future__ import annotations

from pathlib import Path

from phonorm.corpus.alignment import Alignment, Interval, check_intervals
from phonorm.errors import InputError

ALIGNMENT_SUFFIXES = (".textgrid", ".interval")
"""File suffixes (lower case) read as TextGrids: Praat's, and Biaobei's `.interval` files."""
PHONE_TIER_NAMES = ("phones", "phone")
WORD_TIER_NAMES = ("words", "word")


def read_textgrid(path: str | Path) -> Alignment:
    """The `phones` tier (required) and `words` tier (optional) of one TextGrid, in seconds.

    Raises `InputError(path, problem)` for anything that is not a well-formed TextGrid with an
    interval tier of phones; never another exception.
    """
    from praatio import textgrid

    path = Path(path)
    try:
        grid = textgrid.openTextgrid(
            str(path), includeEmptyIntervals=True, reportingMode="error", duplicateNamesMode="rename"
        )
    # praatio raises many types (ValueError, IndexError, KeyError, UnicodeError, its own errors) on
    # malformed files; at this boundary every one of them means "not a readable TextGrid".
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"not a readable TextGrid ({type(err).__name__}: {_short(err)})") from None
    try:
        phones_tier = _find_tier(grid, PHONE_TIER_NAMES)
        interval_tiers = [n for n in grid.tierNames if type(grid.getTier(n)).__name__ == "IntervalTier"]
        if phones_tier is None and len(interval_tiers) == 1 and _find_tier(grid, WORD_TIER_NAMES) is None:
            phones_tier = grid.getTier(interval_tiers[0])
        if phones_tier is None:
            names = ", ".join(repr(n) for n in grid.tierNames) or "none"
            raise InputError(path, f"no 'phones' interval tier (tiers: {names})")
        words_tier = _find_tier(grid, WORD_TIER_NAMES)
        phones = _intervals(path, phones_tier)
        words = _intervals(path, words_tier) if words_tier is not None else []
        end = max([float(grid.maxTimestamp)] + [iv.end for iv in phones + words])
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001  (odd objects praatio accepted but we cannot use)
        raise InputError(path, f"malformed TextGrid ({type(err).__name__}: {_short(err)})") from None
    return Alignment(phones=phones, words=words, end=end)


def _find_tier(grid, names: tuple[str, ...]):
    """The first interval tier named one of `names` (or `X - name`), case-insensitively."""
    for tier_name in grid.tierNames:
        key = tier_name.strip().lower()
        if key in names or any(key.endswith(f" - {n}") for n in names):
            tier = grid.getTier(tier_name)
            if type(tier).__name__ == "IntervalTier":
                return tier
    return None


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
