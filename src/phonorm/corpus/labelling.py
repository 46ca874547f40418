"""Labelling one alignment (`label_alignment`): its speech phones parsed by a scheme (after the
phone map; silence dropped), grouped by word, and each phone's word and syllable named (pinyin from
Han characters or spelled from the phones in the Mandarin scheme; the tone-digit word otherwise).
Every unreadable label is counted: `UnknownLabels` lists them all."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from phonorm.corpus.alignment import Alignment, is_silence
from phonorm.corpus.schemes import (
    ERHUA_CODA,
    PINYIN_INITIALS,
    TONE_LETTERS,
    MandarinScheme,
    Phone,
    SchemeError,
    UnknownLabels,
    pinyin_syllable,
)

_PINYIN_WORD = re.compile(r"^[a-zv]+[1-5]$")
_CODA_ONLY = frozenset({"ŋ", "ng", ERHUA_CODA})
_CODA_OR_ONSET = frozenset({"n", "ɻ", "r"})


def is_han(text: str) -> bool:
    return bool(text) and all("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in text)


def han_pinyin(words: Sequence[str], tone_mode: str) -> list[str] | None:
    """Pinyin with tone digit (neutral = 5) of every character of `words` (Han words only), in
    order, or None when pypinyin does not give one syllable per character. The words are read as
    one text so pypinyin's phrase dictionary picks polyphone readings and sandhi in context."""
    from pypinyin import Style, lazy_pinyin

    text = "".join(words)
    if not text:
        return []
    syllables = lazy_pinyin(
        text, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=(tone_mode == "surface"), v_to_u=False
    )
    if len(syllables) != len(text) or not all(_PINYIN_WORD.match(s) for s in syllables):
        return None
    return syllables


@dataclass
class LabelledPhone:
    start: float
    end: float
    label: str
    phone: str
    tone: int
    is_final: bool
    syllable: str = ""
    word: str = ""


@dataclass
class LabelNotes:
    """Counts worth telling the user about, summed over a corpus."""

    han_words: int = 0
    han_words_mismatched: int = 0
    silent: list[str] = field(default_factory=list)
    """Utterances whose audio is digital silence (kept: the user decides)."""

    def add(self, other: "LabelNotes") -> None:
        self.han_words += other.han_words
        self.han_words_mismatched += other.han_words_mismatched
        self.silent += other.silent


@dataclass
class LabelRules:
    """What the user adds to a scheme: `silence` (extra silence labels, lower case, see
    `alignment.silence_set`) and `phone_map` (label as written → a label for the scheme to
    parse, or a ready `Phone`), applied before the scheme."""

    silence: frozenset[str] = frozenset()
    phone_map: dict = field(default_factory=dict)


REMEDY = "map them with --phone-map FILE.tsv (label<TAB>phone[<TAB>tone]) or --silence LABEL, or choose another --scheme"


def label_alignment(
    alignment: Alignment, scheme, tone_mode: str = "surface", rules: LabelRules | None = None,
) -> tuple[list[LabelledPhone], LabelNotes]:
    """The speech phones of one alignment with phone, tone, syllable and word filled in.

    Raises `UnknownLabels` naming every label the scheme cannot parse (with counts). Silence
    intervals are dropped.
    """
    rules = rules or LabelRules()
    notes = LabelNotes()
    phones = _parse_phones(alignment, scheme, rules)
    words = [w for w in alignment.words if not is_silence(w.label, rules.silence)]
    groups = _group_by_word(phones, words)
    if isinstance(scheme, MandarinScheme):
        _name_pinyin_syllables(groups, tone_mode, notes)
    else:
        _name_tonal_words(groups)
    return phones, notes


def _parse_phones(alignment: Alignment, scheme, rules: LabelRules) -> list[LabelledPhone]:
    """The alignment's speech phones parsed by the scheme (after the phone map); `UnknownLabels`
    naming every label it cannot parse."""
    phones: list[LabelledPhone] = []
    unknown: Counter = Counter()
    first_problem = ""
    # MFA's IPA phones come with tone letters on every toned vowel: such an alignment reads as IPA
    ipa = isinstance(scheme, MandarinScheme) and any(c in TONE_LETTERS for iv in alignment.phones for c in iv.label)
    options = {"ipa": True} if ipa else {}
    for iv in alignment.phones:
        mapped = rules.phone_map.get(iv.label, iv.label)
        if isinstance(mapped, Phone):
            parsed = mapped
        else:
            if is_silence(mapped, rules.silence):
                continue
            try:
                parsed = scheme.parse(mapped, **options)
            except SchemeError as err:
                unknown[iv.label] += 1
                first_problem = first_problem or f"{err} (interval {iv.start:g}-{iv.end:g} s)"
                continue
        phones.append(LabelledPhone(iv.start, iv.end, iv.label, parsed.phone, parsed.tone, parsed.is_final,
                                    syllable=parsed.syllable))
    if unknown:
        raise UnknownLabels(unknown, f"first: {first_problem}; {REMEDY}")
    return phones


def _name_tonal_words(groups: list[tuple[str, list[LabelledPhone]]]) -> None:
    """Word and syllable of every phone of a non-Mandarin scheme. A word that is one syllable written
    with its tone digit (Jyutping `gwong2` over `gw ong2`, as `phonorm synth --language yue` writes)
    names the syllable; otherwise it stays unknown ("")."""
    for word, members in groups:
        bearers = [p for p in members if p.tone]
        syllable = word if len(bearers) == 1 and word.endswith(str(bearers[0].tone)) else ""
        for p in members:
            p.word = word
            p.syllable = syllable


def _name_pinyin_syllables(groups: list[tuple[str, list[LabelledPhone]]], tone_mode: str, notes: LabelNotes) -> None:
    """Word, pinyin syllable (and, for Han words, the dictionary's tone) of every phone of the
    Mandarin scheme: from the Han characters of the word when their syllable count matches, else
    from a pinyin word, else spelled from the phones (initial + final + tone)."""
    han = [word for word, _ in groups if is_han(word)]
    han_syllables = han_pinyin(han, tone_mode) if han else []
    cursor = 0
    for word, members in groups:
        for p in members:
            p.word = word
        syllables = _syllables_of_word(members)
        if is_han(word):
            notes.han_words += 1
            mine = han_syllables[cursor:cursor + len(word)] if han_syllables is not None else None
            cursor += len(word)
            if mine is not None and len(mine) == len(syllables):
                _take_han_syllables(syllables, mine)
                continue
            notes.han_words_mismatched += 1
        if len(syllables) == 1 and _PINYIN_WORD.match(word.lower().replace("ü", "v")):
            for p in syllables[0][0]:
                p.syllable = word.lower().replace("ü", "v")
            continue
        _spell_syllables(syllables)


def _take_han_syllables(syllables: list[tuple[list[LabelledPhone], LabelledPhone]], pinyin: list[str]) -> None:
    """Each syllable's final takes the tone, and its phones the pinyin, of the dictionary reading."""
    for (members_of_syllable, final), reading in zip(syllables, pinyin):
        final.tone = int(reading[-1])
        for p in members_of_syllable:
            p.syllable = reading


def _spell_syllables(syllables: list[tuple[list[LabelledPhone], LabelledPhone]]) -> None:
    """Each syllable spelled from its phones (initial + final + tone + coda); a whole-syllable label
    spells itself; "" when the initial is not a pinyin initial."""
    for members_of_syllable, final in syllables:
        spelled = final.syllable
        if not spelled and final.phone.isascii():
            initial = "".join(p.phone for p in members_of_syllable if p is not final and p.start < final.start)
            coda = "".join(p.phone for p in members_of_syllable if p.start > final.start)
            if initial == "" or initial in PINYIN_INITIALS:
                spelled = pinyin_syllable(initial, final.phone, final.tone, coda)
        for p in members_of_syllable:
            p.syllable = spelled


def _group_by_word(phones: list[LabelledPhone], words) -> list[tuple[str, list[LabelledPhone]]]:
    """Consecutive phones grouped by the word interval holding their midpoint; consecutive phones
    outside every word (or all phones, when there is no words tier) form one group with word ""."""
    groups: list[tuple[str, list[LabelledPhone]]] = []
    last_key = None
    for p in phones:
        mid = (p.start + p.end) / 2
        index = next((i for i, w in enumerate(words) if w.start <= mid < w.end), None)
        key = (index, words[index].label if index is not None else "")
        if key != last_key:
            groups.append((key[1], []))
        groups[-1][1].append(p)
        last_key = key
    return groups


def _syllables_of_word(members: list[LabelledPhone]) -> list[tuple[list[LabelledPhone], LabelledPhone]]:
    """Split one word's phones into syllables, each (phones, its final): onsets and glides join
    the next final; codas (ŋ always; n, ɻ when no final follows) and trailing phones join the
    previous one."""
    syllables: list[tuple[list[LabelledPhone], LabelledPhone]] = []
    pending: list[LabelledPhone] = []
    for i, p in enumerate(members):
        if p.is_final:
            syllables.append((pending + [p], p))
            pending = []
            continue
        next_is_final = i + 1 < len(members) and members[i + 1].is_final
        if syllables and not pending and (p.phone in _CODA_ONLY or (p.phone in _CODA_OR_ONSET and not next_is_final)):
            syllables[-1][0].append(p)
        else:
            pending.append(p)
    if pending and syllables:
        syllables[-1][0].extend(pending)
    return syllables
