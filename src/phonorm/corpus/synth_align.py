"""Word and phone intervals of a synthesized utterance from eSpeak NG's word and phoneme events:
each syllable split into its initial (the language's eSpeak phonemes for it) and its final."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from phonorm.corpus.languages import (
    CMN,
    Syllable,
    SynthLanguage,
)
from phonorm.errors import PhonormError

_STRESS_MARKS = "',%="


@dataclass(frozen=True)
class Interval:
    start: int  # samples at the synthesizer's rate
    end: int
    label: str


def align_syllables(events, words: list[str], syllables: Sequence[tuple[Syllable, int]], text_positions: list[int], n_samples: int,
                    language: SynthLanguage | None = None) -> tuple[list[Interval], list[Interval]]:
    """Word and phone intervals (in samples) from eSpeak's events for one utterance.

    `events`: eSpeak's word and phoneme events in time order; `text_positions`: the 1-based
    character position of each syllable in the text given to eSpeak; `language`: whose
    initial → phoneme table applies (Mandarin by default). A phoneme lasts until the
    next phoneme event (the last until `n_samples`); pauses (`_`, `_|`, `_:`) are silence.
    Raises PhonormError when the events do not match the syllables (never expected: it means
    the phoneme mapping is wrong for this eSpeak version).
    """
    word_positions = [e.text_position for e in events if e.kind == "word"]
    if word_positions != text_positions:
        raise PhonormError(f"eSpeak's word events {word_positions} do not match the syllables at {text_positions} of {' '.join(words)!r}")
    phonemes = [e for e in events if e.kind == "phoneme"]
    starts = [e.sample for e in phonemes]
    if any(b < a for a, b in zip(starts, starts[1:])) or (starts and starts[-1] > n_samples):
        raise PhonormError(f"eSpeak's phoneme events are out of order in {' '.join(words)!r}")
    ends = starts[1:] + [n_samples]
    table = (language or CMN).initials
    initial_phonemes = {phonemes[0] for phonemes in table.values()}
    word_tier: list[Interval] = []
    phone_tier: list[Interval] = []
    for word, (syllable, tone), position in zip(words, syllables, text_positions):
        mine = [i for i, e in enumerate(phonemes) if e.text_position == position and not e.name.startswith("_")]
        names = [phonemes[i].name.lstrip(_STRESS_MARKS) for i in mine]
        problem = _phoneme_problem(mine, names, syllable, table, initial_phonemes)
        if problem is None:
            first_final = mine[len(table[syllable.initial])] if syllable.initial else mine[0]
            start, final_start, end = starts[mine[0]], starts[first_final], ends[mine[-1]]
            if (syllable.initial and not start < final_start) or not final_start < end:
                problem = "an empty initial or final"
        if problem:
            raise PhonormError(f"eSpeak's phonemes {names} for {word!r} do not split into initial and final: {problem}")
        word_tier.append(Interval(start, end, word))
        if syllable.initial:
            phone_tier.append(Interval(start, final_start, syllable.initial))
        phone_tier.append(Interval(final_start, end, f"{syllable.final}{tone}"))
    return word_tier, phone_tier


def _phoneme_problem(mine: list[int], names: list[str], syllable: Syllable, table: Mapping[str, tuple[str, ...]],
                     initial_phonemes: set[str]) -> str | None:
    """Why eSpeak's phonemes `names` (event indices `mine`) of one syllable do not split into its
    initial (eSpeak's phonemes `table[initial]`) and a final; None when they do."""
    if not mine:
        return "no phonemes"
    if mine != list(range(mine[0], mine[-1] + 1)):
        return "a pause inside the syllable"
    if any("(" in name for name in names):
        return "a language switch (eSpeak does not know the syllable)"
    if syllable.initial:
        expected = table[syllable.initial]
        if len(mine) <= len(expected) or tuple(names[: len(expected)]) != expected:
            return f"initial {syllable.initial!r} should be eSpeak's {' '.join(expected)!r} followed by the final"
    elif names[0] in initial_phonemes:
        return "a zero-initial syllable starts with an initial consonant"
    return None
