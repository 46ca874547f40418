"""Label schemes: what an alignment's phone labels mean (phone, tone, final or not).

`mandarin` reads two conventions, and both give a toneless phone label plus a tone 1-5 on the
syllable's tone bearer (the final):
- pinyin initials and tonal finals, as in the AISHELL lexicon: `zh ong1`, `g uo2`, `ii i1`
  (tone digit 1-5; 0 and a missing digit on a final mean the neutral tone, 5);
- Montreal Forced Aligner's Mandarin IPA phones with Chao tone letters on the vowel: `ʈʂ u˥˥ ŋ`,
  `k w o˧˥`. The contour decides the tone: high level ˥˥ → 1, rising ˧˥ → 2, dipping ˨˩˦ or low
  falling ˨˩ → 3, high falling ˥˩ → 4, a single short level (˧, ˨, ˩, ˦) or none on a vowel → 5.
  Glides and codas (j, w, ɥ, n, ŋ, ɻ) carry no tone: MFA writes the tone on the vowel only.
When the words tier holds Chinese characters, the tones come from pypinyin instead, provided the
word has one final per character: `tone_mode` surface applies pypinyin's third-tone sandhi
(`tone_sandhi=True`), citation does not. Both keep the readings of pypinyin's phrase dictionary,
where the tone changes of 一 and 不 are lexical (一百 yi4 bai3, 不对 bu2 dui4).

`plain` keeps every label as given, with no tone: any language.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from phonorm.corpus.alignment import Alignment, is_silence

SCHEMES = ("mandarin", "plain")
TONE_MODES = ("surface", "citation")
MANDARIN_TONES = ["1", "2", "3", "4", "5"]


class SchemeError(ValueError):
    """A phone label the scheme cannot parse (the caller names the file)."""


@dataclass(frozen=True)
class Phone:
    """A parsed label: `phone` (toneless), `tone` (1-5 on finals, 0 otherwise), `is_final`."""

    phone: str
    tone: int
    is_final: bool


# --------------------------------------------------------------------------- pinyin conventions
PINYIN_INITIALS = frozenset(
    "b p m f d t n l g k h j q x zh ch sh r z c s y w".split()
    # AISHELL-style placeholders for zero-initial syllables (一 → ii i1, 五 → uu u3).
    + "aa ee ii oo uu vv".split()
)
PINYIN_FINALS = frozenset(
    "a o e ê ai ei ao ou an en ang eng ong er "
    "i ia io ie iao iu iou ian in iang ing iong "
    "u ua uo uai ui uei uan un uen uang ueng "
    "v ve vn van ue "
    # apical vowels of zi/ci/si and zhi/chi/shi/ri in some lexicons, syllabic nasals
    "ix iy iz ii m n ng hm hng".split()
)
_PINYIN_LABEL = re.compile(r"^([a-zê]+?)([0-5])?$")

# --------------------------------------------------------------------------- MFA IPA conventions
TONE_LETTERS = {"˥": 5, "˦": 4, "˧": 3, "˨": 2, "˩": 1}
_IPA_VOWELS = set("aeiouyəɛɤɔɪʊæɑɒʌøœɯɨʉɐɚɘɵɜɞʏ") | {"ː", "ˑ"}
_IPA_CONSONANTS = set("bcdfghjklmnpqrstvwxzʰʈʂɕʐɻŋʔɥɲɡɹʃʒθðβɣχʁħʕɦɬɮʎʝçʋɾɽɭɳɖʑʦʧʲʷʼ")
_SYLLABIC_MARKS = {"\u0329", "\u030d"}  # combining vertical line below / above: ʐ̩, ŋ̍


def _is_combining(char: str) -> bool:
    return unicodedata.combining(char) != 0 or char == "\u0361"


def contour_tone(letters: str) -> int:
    """Mandarin tone 1-5 from Chao tone letters (e.g. `˧˥` → 2; see the module docstring)."""
    levels = [TONE_LETTERS[c] for c in letters]
    first, last = levels[0], levels[-1]
    if len(levels) == 1:
        return 1 if first == 5 else 5
    if len(levels) >= 3 and min(levels[1:-1]) < min(first, last):
        return 3
    if last > first:
        return 2
    if last < first:
        return 4 if first >= 4 else 3
    return 1 if first >= 4 else 3 if first <= 2 else 5


class MandarinScheme:
    """Pinyin initials + tonal finals, or MFA Mandarin IPA phones with tone letters."""

    name = "mandarin"
    tone_labels = MANDARIN_TONES

    def parse(self, label: str) -> Phone:
        text = unicodedata.normalize("NFC", label.strip()).replace("ü", "v")
        if not text:
            raise SchemeError("empty phone label")
        parsed = self._parse_pinyin(text.lower()) if text.isascii() or "ê" in text else None
        if parsed is None:
            parsed = self._parse_ipa(text)
        if parsed is None:
            raise SchemeError(
                f"phone {label!r} is neither a pinyin initial/final (zh, ong1) nor an MFA Mandarin phone (ʈʂ, u˥˥)"
            )
        return parsed

    @staticmethod
    def _parse_pinyin(text: str) -> Phone | None:
        match = _PINYIN_LABEL.match(text)
        if not match:
            return None
        base, digit = match.group(1), match.group(2)
        if digit is None and base in PINYIN_INITIALS:
            return Phone(base, 0, False)
        if base in PINYIN_FINALS:
            tone = int(digit) if digit not in (None, "0") else 5
            return Phone(base, tone, True)
        return None

    @staticmethod
    def _parse_ipa(text: str) -> Phone | None:
        base = text.rstrip("".join(TONE_LETTERS))
        letters = text[len(base):]
        if not base or any(c in TONE_LETTERS for c in base):
            return None
        core = [c for c in base if not _is_combining(c)]
        syllabic = any(c in _SYLLABIC_MARKS for c in base)
        if core and all(c in _IPA_VOWELS for c in core):
            return Phone(base, contour_tone(letters) if letters else 5, True)
        if core and all(c in _IPA_CONSONANTS for c in core):
            if syllabic:  # syllabic consonant (ʐ̩ of zhi, z̩ of zi): a final
                return Phone(base, contour_tone(letters) if letters else 5, True)
            return Phone(base, 0, False) if not letters else None
        return None


class PlainScheme:
    """Phone labels as given, no tone, no syllables: any language."""

    name = "plain"
    tone_labels: list[str] = []

    def parse(self, label: str) -> Phone:
        text = unicodedata.normalize("NFC", label.strip())
        if not text or any(c.isspace() for c in text):
            raise SchemeError(f"phone {label!r} is empty or contains white space")
        return Phone(text, 0, False)


def get_scheme(name: str) -> MandarinScheme | PlainScheme:
    if name == "mandarin":
        return MandarinScheme()
    if name == "plain":
        return PlainScheme()
    raise ValueError(f"unknown label scheme {name!r}; choose one of {', '.join(SCHEMES)}")


# --------------------------------------------------------------------------- syllables and words
def pinyin_syllable(initial: str, final: str, tone: int) -> str:
    """Pinyin spelling with tone digit of initial + final, e.g. (`zh`, `ong`, 1) → `zhong1`,
    ("", `iang`, 2) → `yang2`, (`j`, `v`, 3) → `ju3`. pypinyin converts characters to pinyin but not
    initial + final back to a spelling, hence these few orthography rules by hand."""
    if initial in ("", "aa", "ee", "ii", "oo", "uu", "vv"):
        if final in ("i", "in", "ing"):
            spelled = "y" + final
        elif final.startswith("i"):
            spelled = "y" + {"iu": "ou"}.get(final, final[1:])
        elif final == "u":
            spelled = "wu"
        elif final.startswith("u"):
            spelled = "w" + {"ui": "ei", "un": "en"}.get(final, final[1:])
        elif final.startswith("v"):
            spelled = "yu" + final[1:]
        else:
            spelled = final
    else:
        final = {"iou": "iu", "uei": "ui", "uen": "un"}.get(final, final)
        if initial in ("j", "q", "x", "y") and final.startswith("v"):
            final = "u" + final[1:]
        spelled = initial + final
    return f"{spelled}{tone}"


_PINYIN_WORD = re.compile(r"^[a-zv]+[1-5]$")
_CODA_ONLY = frozenset({"ŋ", "ng"})
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

    def add(self, other: "LabelNotes") -> None:
        self.han_words += other.han_words
        self.han_words_mismatched += other.han_words_mismatched


def label_alignment(alignment: Alignment, scheme, tone_mode: str = "surface") -> tuple[list[LabelledPhone], LabelNotes]:
    """The speech phones of one alignment with phone, tone, syllable and word filled in.

    Raises `SchemeError` for a label the scheme cannot parse. Silence intervals are dropped.
    """
    notes = LabelNotes()
    phones: list[LabelledPhone] = []
    for iv in alignment.phones:
        if is_silence(iv.label):
            continue
        try:
            parsed = scheme.parse(iv.label)
        except SchemeError as err:
            raise SchemeError(f"{err} (interval {iv.start:g}-{iv.end:g} s)") from None
        phones.append(LabelledPhone(iv.start, iv.end, iv.label, parsed.phone, parsed.tone, parsed.is_final))
    words = [w for w in alignment.words if not is_silence(w.label)]
    groups = _group_by_word(phones, words)
    if not isinstance(scheme, MandarinScheme):
        for word, members in groups:
            for p in members:
                p.word = word
        return phones, notes

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
                for (_, final), pinyin in zip(syllables, mine):
                    final.tone = int(pinyin[-1])
                for (members_of_syllable, _), pinyin in zip(syllables, mine):
                    for p in members_of_syllable:
                        p.syllable = pinyin
                continue
            notes.han_words_mismatched += 1
        if len(syllables) == 1 and _PINYIN_WORD.match(word.lower().replace("ü", "v")):
            for p in syllables[0][0]:
                p.syllable = word.lower().replace("ü", "v")
            continue
        for members_of_syllable, final in syllables:
            initial = "".join(p.phone for p in members_of_syllable if p is not final and p.start < final.start)
            if final.phone.isascii() and (initial == "" or initial in PINYIN_INITIALS):
                spelled = pinyin_syllable(initial, final.phone, final.tone)
                for p in members_of_syllable:
                    p.syllable = spelled
    return phones, notes


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
