"""Counts and amounts in the messages phonorm prints ("1 speaker", "3 speakers", "12.4 min")."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in the number it takes: counted(1, "speaker") == "1 speaker"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def speech(hours: float) -> str:
    """An amount of speech in the unit that shows it: "2.50 h", "12.4 min" (a small corpus is not "0.00 h")."""
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"
