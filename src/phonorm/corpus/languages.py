"""What `phonorm synth` knows about each language it speaks (`SynthLanguage`: `CMN`, `YUE`).

Kept apart from `synth.py` (no numpy, no eSpeak) so that the experiment's configuration can ask
how a language's synthetic corpus is prepared without loading the synthesizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from phonorm.corpus import jyutping_syllables, pinyin_table
from phonorm.errors import PhonormError

# Median F0 (Hz, Praat) of each variant at eSpeak pitch 0, 50 and 100 (range 55, rate 180; measured
# with espeakng-loader 0.2.4 on a fixed 12-syllable sentence). The pitch setting for a target F0 is
# interpolated in log F0; the population the synth really made is measured by the tests, not assumed.
VARIANT_F0_AT_PITCH = {
    "f1": (94.0, 157.6, 284.8), "f2": (101.0, 166.9, 295.8), "f3": (110.0, 176.5, 301.7),
    "f4": (92.4, 158.3, 287.7), "f5": (106.1, 181.8, 326.7), "Annie": (159.9, 181.8, 288.0),
    "linda": (116.4, 211.2, 396.5), "steph": (93.4, 171.7, 324.2),
    "m1": (52.8, 81.3, 146.7), "m2": (50.1, 90.7, 167.2), "m3": (54.1, 89.4, 158.4), "m4": (52.5, 78.5, 138.0),
    "m5": (52.8, 88.3, 156.4), "m6": (52.7, 88.4, 158.8), "m7": (56.6, 88.4, 151.7), "klatt": (55.4, 87.8, 156.1),
    "klatt2": (52.6, 88.3, 156.6), "klatt3": (52.9, 87.7, 156.5), "croak": (53.6, 90.9, 164.0),
    "edward": (52.4, 87.7, 156.3), "iven": (56.1, 84.4, 147.5), "max": (53.3, 88.0, 157.0),
}

# The eSpeak NG phoneme (mnemonic, stress marks stripped) that each pinyin initial is spoken as.
ESPEAK_INITIALS = {
    "b": "p", "p": "ph", "m": "m", "f": "f", "d": "t", "t": "th", "n": "n", "l": "l",
    "g": "k", "k": "kh", "h": "X", "j": "tS;", "q": "tS;h", "x": "S;",
    "zh": "ts.", "ch": "ts.h", "sh": "s.", "r": "z.", "z": "ts", "c": "tsh", "s": "s",
}


class Syllable(Protocol):
    """A toneless syllable of a language's table (`pinyin_table.Syllable`,
    `jyutping_syllables.JyutpingSyllable`): its `spelling` (`zhong`, `gwong`), `initial` ("" for none)
    and `final`."""

    @property
    def spelling(self) -> str: ...
    @property
    def initial(self) -> str: ...
    @property
    def final(self) -> str: ...


@dataclass(frozen=True)
class SynthLanguage:
    """What `phonorm synth` needs to know about one language; the rest of synth.py is the same for
    every language.

    `voice`: eSpeak NG's voice reading the romanisation with tone digits; `table`: loads the
    syllables; `initials`: each initial → the eSpeak phonemes it is spoken as (everything after
    them is the final, so an alignment is exact only if this holds for every syllable; checked
    while synthesising); `tones`: the inventory; `checked_tones`: the only tones of checked
    syllables (final in -p/-t/-k), None when the language has no such rule; `no_repeat_tone`: a
    tone never drawn twice in a row (Mandarin 3: eSpeak applies third-tone sandhi, so the written
    tone would differ from the spoken one); `not_first_tone`: a tone never drawn first (Mandarin's
    neutral tone 5); `scheme`/`prepare_tones`: how `phonorm prepare` reads the TextGrids;
    `variant_f0`: eSpeak variant → median F0 (Hz) at pitch 0, 50, 100 with this voice (variation "wide")."""

    code: str
    name: str
    voice: str
    table: Callable[[], Sequence[Syllable]]
    initials: Mapping[str, tuple[str, ...]]
    tones: tuple[int, ...]
    scheme: str
    variant_f0: Mapping[str, tuple[float, float, float]]
    checked_tones: tuple[int, ...] | None = None
    no_repeat_tone: int | None = None
    not_first_tone: int | None = None
    prepare_tones: tuple[int, ...] | None = None

    def tones_of(self, syllable: Syllable) -> tuple[int, ...]:
        """The tones `syllable` may carry."""
        if self.checked_tones is not None and syllable.final.endswith(jyutping_syllables.CHECKED_CODAS):
            return self.checked_tones
        return self.tones

    def allows(self, tone: int, previous_tone: int | None, position: int) -> bool:
        """Whether `tone` may follow `previous_tone` (None at the start) at `position` (0-based)."""
        if self.no_repeat_tone is not None and tone == self.no_repeat_tone == previous_tone:
            return False
        return not (position == 0 and tone == self.not_first_tone)


# Median F0 (Hz, Praat) of each eSpeak variant with the Cantonese voice at pitch 0, 50 and 100 (range
# 55, rate 180), made by `synth_plan.measure_variant_f0` (`python -m phonorm.corpus.synth yue`, espeakng-loader
# 0.2.4), which gives the Mandarin table above within about 2% at pitch 50 and 100.
YUE_VARIANT_F0_AT_PITCH: dict[str, tuple[float, float, float]] = {
    "f1": (81.0, 146.3, 274.1), "f2": (85.7, 151.9, 280.6), "f3": (90.6, 155.5, 282.5), "f4": (81.2, 147.5, 276.5),
    "f5": (92.3, 167.8, 313.4), "Annie": (101.6, 150.1, 257.4), "linda": (107.6, 203.2, 388.0), "steph": (86.8, 165.3, 317.4),
    "m1": (44.6, 75.2, 138.5), "m2": (46.5, 86.0, 163.1), "m3": (46.0, 81.0, 150.1), "m4": (46.6, 71.0, 129.9),
    "m5": (45.2, 80.4, 149.2), "m6": (45.9, 81.5, 152.4), "m7": (46.1, 78.3, 142.3), "klatt": (50.2, 83.7, 149.2),
    "klatt2": (50.1, 85.2, 149.3), "klatt3": (45.4, 80.3, 149.2), "croak": (52.5, 86.8, 156.6), "edward": (45.3, 80.3, 149.3),
    "iven": (46.7, 76.1, 138.9), "max": (45.6, 80.6, 149.2),
}

CMN = SynthLanguage(
    code="cmn", name="Mandarin", voice="cmn-latn-pinyin", table=pinyin_table.load_syllable_table,
    initials={initial: (phoneme,) for initial, phoneme in ESPEAK_INITIALS.items()}, tones=(1, 2, 3, 4, 5),
    scheme="mandarin", variant_f0=VARIANT_F0_AT_PITCH, no_repeat_tone=3, not_first_tone=5,
)
# eSpeak NG's Cantonese phonemes carry the Jyutping letters (`c`, `z`, `j`: `z` + `'eoi` for
# zeoi), except `ng` = `N`; the labialised `gw`, `kw` are two phonemes, `g`/`k` then `w`.
YUE = SynthLanguage(
    code="yue", name="Cantonese", voice="yue-Latn-jyutping", table=jyutping_syllables.load_syllable_table,
    initials={**{i: (i,) for i in ("b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "z", "c", "s", "j", "w")},
              "ng": ("N",), "gw": ("g", "w"), "kw": ("k", "w")},
    tones=(1, 2, 3, 4, 5, 6), checked_tones=(1, 3, 6), scheme="tonal", prepare_tones=(1, 2, 3, 4, 5, 6),
    variant_f0=YUE_VARIANT_F0_AT_PITCH,
)
LANGUAGES = {language.code: language for language in (CMN, YUE)}


def get_language(code: str) -> SynthLanguage:
    try:
        return LANGUAGES[code]
    except KeyError:
        raise PhonormError(f"--language {code!r}: choose one of {', '.join(LANGUAGES)}") from None
