"""Label schemes: what an alignment's phone labels mean (phone, tone, final or not).

`mandarin` reads the Mandarin phone sets of the common aligners and corpora, and all give a
toneless phone label plus a tone 1-5 on the syllable's tone bearer (the final):
- pinyin initials and tonal finals: the AISHELL-1 lexicon and Kaldi recipe (`zh ong1`, zero-initial
  placeholders `ii i1`, `uu u3`), THCHS-30 (also `aa ee oo vv`, apical `ix iy iz`: `zh ix4`, `s iy1`,
  `r iz4`), Charsiu and Biaobei/CSMSC (apical `ii`/`iii`: `z ii4`, `zh iii1`), MFA's pinyin
  dictionary (codas apart: `zh u1 ng`, `va` for yuan's üa). Tone digit 1-5; 0 and a missing digit
  on a final mean the neutral tone, 5. A toneless `ng` is a coda, `m`/`n` initials or codas;
  with a digit, `m2`, `n2`, `ng2` are syllabic finals.
- erhua in its common spellings: an r-final `uanr2`, `huar4` (Biaobei) keeps its r (phone `uanr`);
  a separate rhotic `rr` (Charsiu, also its 儿 `e2 rr`) or `r5` (tone digit on a toneless r) is the
  coda `rr`, no tone, part of the syllable before it; `er5` is its own syllable.
- whole pinyin syllables with a tone digit, one interval per character as AISHELL-3's labels
  (`guang3`, `zhou1`) come when an aligner puts them on the phone tier: one segment whose phone is
  the toneless syllable (`guang`) and whose tone is the digit.
- Montreal Forced Aligner's Mandarin IPA phones with Chao tone letters on the vowel, v2 (`ʈʂ u˥˥ ŋ`,
  `k w o˧˥`, `ai˥˩`) and v3 (`aj˥`, `aw˧˥`, `ej˨˩˦`, `ow˥˩`: diphthongs end in a glide). The contour
  decides the tone: high level ˥˥ or ˥ → 1, rising ˧˥ → 2, dipping ˨˩˦ or low falling ˨˩ → 3, high
  falling ˥˩ → 4, any other single level (˧, ˨, ˩, ˦) or none on a vowel → 5. In v3, ˩ and ˧ mark
  the neutral tone (its pitch after a 4th/1st tone, 子 in 位子 `ts z̩˩`, and after a 2nd, 兒子
  `ts z̩˧`), as ˨, ˦ and ˩ do in v2. Glides and codas (j, w, ɥ, n, ŋ, ɻ) carry no tone.
When the words tier holds Chinese characters, the tones come from pypinyin instead, provided the
word has one final per character: `tone_mode` surface applies pypinyin's third-tone sandhi
(`tone_sandhi=True`), citation does not. Both keep the readings of pypinyin's phrase dictionary,
where the tone changes of 一 and 不 are lexical (一百 yi4 bai3, 不对 bu2 dui4).

`tonal` is any tone language written segment + tone digit (Cantonese Jyutping `g wong4` or
`s i1`, Vietnamese, Thai, Yoruba with numbered tones): a label ending in a digit 1-9 is a tone
bearer (phone = the label less its digit), any other label a segment without tone; a word
interval holding one tone bearer and spelled with its digit (`gwong2`) is its syllable. The tone
inventory is the digits seen in the corpus, or the `--tones` given (then any other digit is an
unknown label). Tone 0 is not a tone (0 means "none" in the prepared corpus): renumber it with
`--phone-map`.

`mandarin` and `tonal` drop a Kaldi word-position suffix (`zh_B`, `ong1_E`) wherever it is left.
`plain` keeps every label as given, with no tone: any language.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, get_args

from phonorm.settings import LabelScheme, ToneMode

SCHEMES: tuple[str, ...] = get_args(LabelScheme)
TONE_MODES: tuple[str, ...] = get_args(ToneMode)
MANDARIN_TONES = ["1", "2", "3", "4", "5"]


class SchemeError(ValueError):
    """A phone label the scheme cannot parse (the caller names the file)."""


class UnknownLabels(SchemeError):
    """Every label of one alignment the scheme cannot parse: `counts` label → intervals."""

    def __init__(self, counts: Counter, hint: str):
        self.counts = counts
        self.hint = hint
        listed = ", ".join(f"{label!r} x{n}" for label, n in counts.most_common())
        super().__init__(f"{len(counts)} phone label(s) the scheme cannot parse: {listed} ({hint})")


@dataclass(frozen=True)
class Phone:
    """A parsed label: `phone` (toneless), `tone` (1-5 on finals, 0 otherwise), `is_final`;
    `syllable` (pinyin with tone digit) when the label is a whole syllable, else ""."""

    phone: str
    tone: int
    is_final: bool
    syllable: str = ""


# --------------------------------------------------------------------------- pinyin conventions
ZERO_INITIALS = frozenset("aa ee ii oo uu vv".split())
"""AISHELL/THCHS-30 placeholders for zero-initial syllables (一 → ii i1, 五 → uu u3)."""
PINYIN_INITIALS = frozenset("b p m f d t n l g k h j q x zh ch sh r z c s y w".split()) | ZERO_INITIALS
PINYIN_FINALS = frozenset(
    "a o e ê ai ei ao ou an en ang eng ong er "
    "i ia io ie iao iu iou ian in iang ing iong "
    "u ua uo uai ui uei uan un uen uang ueng "
    "v ve vn van ue va "
    # apical vowels of zi/ci/si and zhi/chi/shi/ri (AISHELL/THCHS-30 ix iy iz, Charsiu and
    # Biaobei ii iii), syllabic nasals
    "ix iy iz ii iii m n ng hm hng".split()
)
APICAL_FINALS = frozenset({"ix", "iy", "iz", "ii", "iii"})
CODA_CONSONANTS = frozenset({"ng"})
"""Toneless labels that are codas, never initials nor finals (MFA pinyin `zh u1 ng`)."""
ERHUA_CODA = "rr"
"""The phone given to the rhotic element of erhua written on its own (`rr`, `r5`)."""
_PINYIN_LABEL = re.compile(r"^([a-zê]+?)([0-5])?$")
_POSITION_SUFFIX = re.compile(r"_[BIES]$")


@lru_cache(maxsize=1)
def pinyin_syllables() -> frozenset[str]:
    """Every toneless pinyin syllable of pypinyin's character dictionary (`zhong`, `lv`, `nve`)."""
    from pypinyin import Style
    from pypinyin.pinyin_dict import pinyin_dict
    from pypinyin.style import convert

    return frozenset(
        convert(reading, Style.TONE3, strict=True).rstrip("12345").replace("ü", "v")
        for readings in pinyin_dict.values() for reading in readings.split(",")
    )


def _whole_syllable(base: str) -> str | None:
    """`base` as pypinyin spells the syllable (`jv` → `ju`, `lue` → `lve`), or None."""
    candidates = [base]
    if base[:1] in ("j", "q", "x", "y"):
        candidates.append(base.replace("v", "u"))
    if base[:1] in ("l", "n"):
        candidates.append(base.replace("ue", "ve"))
    return next((c for c in candidates if c in pinyin_syllables()), None)


# --------------------------------------------------------------------------- MFA IPA conventions
TONE_LETTERS = {"˥": 5, "˦": 4, "˧": 3, "˨": 2, "˩": 1}
_IPA_VOWELS = set("aeiouyəɛɤɔɪʊæɑɒʌøœɯɨʉɐɚɘɵɜɞʏ") | {"ː", "ˑ"}
_IPA_CONSONANTS = set("bcdfghjklmnpqrstvwxzʰʈʂɕʐɻŋʔɥɲɡɹʃʒθðβɣχʁħʕɦɬɮʎʝçʋɾɽɭɳɖʑʦʧʲʷʼ")
_IPA_OFFGLIDES = set("jwɥ")
"""Glides that end a diphthong (MFA v3 `aj`, `aw`, `ej`, `ow`): after a vowel they belong to it."""
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
    """Pinyin initials + tonal finals (or whole syllables), or MFA Mandarin IPA phones."""

    name = "mandarin"
    tone_labels = MANDARIN_TONES

    def parse(self, label: str, ipa: bool = False) -> Phone:
        """`ipa`: the alignment is in MFA's IPA (it has tone letters), so a bare `y` is the vowel
        [y] (neutral tone), not the pinyin initial y; IPA is then tried first. Case matters: upper
        case labels (ARPAbet `L`, `K`) are not pinyin."""
        # Kaldi's word-position suffix (`zh_B`), as TextGrids converted from Kaldi keep it
        text = _POSITION_SUFFIX.sub("", unicodedata.normalize("NFC", label.strip())).replace("ü", "v")
        if not text:
            raise SchemeError("empty phone label")
        parsed = self._parse_ipa(text) if ipa else None
        if parsed is None and (text.isascii() or "ê" in text):
            parsed = self._parse_pinyin(text)
        if parsed is None and not ipa:
            parsed = self._parse_ipa(text)
        if parsed is None:
            raise SchemeError(f"phone {label!r} is neither pinyin (zh, ong1, zhong1) nor an MFA Mandarin phone (ʈʂ, u˥˥, aj˧˥)")
        return parsed

    def check_tone(self, tone: int) -> None:
        if not 0 <= tone <= 5:
            raise SchemeError(f"tone {tone} is not a Mandarin tone (1-5, 0 for none)")

    @staticmethod
    def _parse_pinyin(text: str) -> Phone | None:
        match = _PINYIN_LABEL.match(text)
        if not match:
            return None
        base, digit = match.group(1), match.group(2)
        tone = int(digit) if digit not in (None, "0") else 5
        if digit is None and (base in PINYIN_INITIALS or base in CODA_CONSONANTS):
            return Phone(base, 0, False)
        if base == ERHUA_CODA or (base == "r" and digit is not None):
            return Phone(ERHUA_CODA, 0, False)
        if base in PINYIN_FINALS:
            return Phone(base, tone, True)
        if base.endswith("r") and base[:-1] in PINYIN_FINALS and base[:-1] != "e":  # r-final of erhua
            return Phone(base, tone, True)
        if digit is not None:
            syllable = _whole_syllable(base)
            if syllable is not None:
                return Phone(syllable, tone, True, syllable=f"{syllable}{tone}")
        return None

    @staticmethod
    def _parse_ipa(text: str) -> Phone | None:
        base = text.rstrip("".join(TONE_LETTERS))
        letters = text[len(base):]
        if not base or any(c in TONE_LETTERS for c in base):
            return None
        core = [c for c in base if not _is_combining(c)]
        syllabic = any(c in _SYLLABIC_MARKS for c in base)
        vowel_then_glides = bool(core) and core[0] in _IPA_VOWELS and all(
            c in _IPA_VOWELS or c in _IPA_OFFGLIDES for c in core)
        if vowel_then_glides:
            return Phone(base, contour_tone(letters) if letters else 5, True)
        if core and all(c in _IPA_CONSONANTS for c in core):
            if syllabic:  # syllabic consonant (ʐ̩ of zhi, z̩ of zi): a final
                return Phone(base, contour_tone(letters) if letters else 5, True)
            return Phone(base, 0, False) if not letters else None
        return None


_TONAL_LABEL = re.compile(r"^(.*?)(\d)$")


class TonalScheme:
    """Segment + tone digit (any tone language); the tone inventory is given or seen."""

    name = "tonal"

    def __init__(self, tones: Sequence[int] | None = None):
        self.given = sorted({int(t) for t in tones}) if tones else None
        if self.given is not None and any(t < 1 or t > 9 for t in self.given):
            raise SchemeError(f"--tones {','.join(map(str, self.given))}: tones are digits 1-9 (0 means no tone)")
        self.seen: set[int] = set()

    @property
    def tone_labels(self) -> list[str]:
        return [str(t) for t in (self.given if self.given is not None else sorted(self.seen))]

    def check_tone(self, tone: int) -> None:
        if tone < 0 or tone > 9 or (tone and self.given is not None and tone not in self.given):
            allowed = ",".join(map(str, self.given)) if self.given is not None else "1-9"
            raise SchemeError(f"tone {tone} is not one of the tones {allowed} (0 for none)")
        if tone:
            self.seen.add(tone)

    def parse(self, label: str) -> Phone:
        text = _POSITION_SUFFIX.sub("", unicodedata.normalize("NFC", label.strip()))
        if not text or any(c.isspace() for c in text):
            raise SchemeError(f"phone {label!r} is empty or contains white space")
        match = _TONAL_LABEL.match(text)
        if match is None:
            return Phone(text, 0, False)
        base, tone = match.group(1), int(match.group(2))
        if not base or base[-1].isdigit():
            raise SchemeError(f"phone {label!r}: expected a segment followed by one tone digit")
        if tone == 0:
            raise SchemeError(f"phone {label!r}: tone 0 means no tone in phonorm (renumber it with --phone-map)")
        self.check_tone(tone)
        return Phone(base, tone, True)


class PlainScheme:
    """Phone labels as given, no tone, no syllables: any language."""

    name = "plain"
    tone_labels: list[str] = []

    def check_tone(self, tone: int) -> None:
        if tone:
            raise SchemeError("the plain scheme has no tones (use --scheme tonal)")

    def parse(self, label: str) -> Phone:
        text = unicodedata.normalize("NFC", label.strip())
        if not text or any(c.isspace() for c in text):
            raise SchemeError(f"phone {label!r} is empty or contains white space")
        return Phone(text, 0, False)


def get_scheme(name: str, tones: Sequence[int] | None = None) -> MandarinScheme | TonalScheme | PlainScheme:
    """The scheme called `name`; `tones` (tonal only): the tone inventory, else the tones seen."""
    if tones and name != "tonal":
        raise ValueError(f"--tones applies to the tonal scheme only, not {name!r}")
    if name == "mandarin":
        return MandarinScheme()
    if name == "tonal":
        return TonalScheme(tones)
    if name == "plain":
        return PlainScheme()
    raise ValueError(f"unknown label scheme {name!r}; choose one of {', '.join(SCHEMES)}")


# --------------------------------------------------------------------------- syllables and words
def pinyin_syllable(initial: str, final: str, tone: int, coda: str = "") -> str:
    """Pinyin spelling with tone digit of initial + final (+ coda), e.g. (`zh`, `ong`, 1) → `zhong1`,
    ("", `iang`, 2) → `yang2`, (`j`, `v`, 3) → `ju3`, (`zh`, `iii`, 1) → `zhi1`, (`h`, `uar`, 1) →
    `huar1`, MFA pinyin (`zh`, `u`, 1, `ng`) → `zhong1`, erhua coda (`h`, `ua`, 1, `rr`) → `huar1`;
    "" when the parts do not make a pinyin final. pypinyin converts characters to pinyin but not
    initial + final back to a spelling, hence these few orthography rules by hand."""
    rhotic = coda.endswith(ERHUA_CODA)
    coda = coda[: -len(ERHUA_CODA)] if rhotic else coda
    if final.endswith("r") and final != "er":
        final, rhotic = final[:-1], True
    zero = initial in ("", "aa", "ee", "ii", "oo", "uu", "vv")
    final = final + coda
    final = {"ung": "ueng" if zero else "ong", "iung": "iong"}.get(final, final)
    if final not in PINYIN_FINALS:
        return ""
    if final in APICAL_FINALS:
        final = "i"
    if zero:
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
    return f"{spelled}{'r' if rhotic and spelled != 'er' else ''}{tone}"
