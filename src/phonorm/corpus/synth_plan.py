"""The plan of a synthetic corpus (`phonorm synth`): its speakers' voices (eSpeak NG variant, pitch,
range, rate; with `variation="wide"` also vocal-tract length, voice quality, channel and noise) and
each utterance's syllables and tones, all drawn from the seed before any audio is made."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from phonorm.corpus.languages import (
    CMN,
    LANGUAGES,
    Syllable,
    SynthLanguage,
    get_language,
)

FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
MIN_SYLLABLES, MAX_SYLLABLES = 4, 12
# eSpeak's pitch parameter (0-100, 50 = the variant's own pitch) per sex. With the variants'
# own pitches these give speaker median F0 of about 150-260 Hz (F) and 90-170 Hz (M), measured
# with Praat: the sexes overlap a little, as in real speech.
PITCH_PARAM = {"F": (44, 82), "M": (58, 100)}
RANGE_PARAM = (45, 70)  # eSpeak's pitch range (0-100); enough range to keep the tones distinct
RATE_WPM = (150, 210)  # eSpeak's rate; one pinyin syllable is one eSpeak word: ~3.5-5 syllables/s
LEADING_SILENCE_S = (0.15, 0.35)
NOISE_FLOOR = 10 ** (-66 / 20)  # a faint noise floor (about -66 dBFS) instead of digital silence

VARIATIONS = ("none", "wide")
# --- variation "wide" (see WideVoice). Speaker median F0 in Hz: log-normal per sex, median and
# between-speaker SD in semitones. Typical adult means are about 120 Hz (men) and 210 Hz (women)
# across languages, with a wider F0 spread in tone languages (Traunmueller & Eriksson 1995, "The
# frequency range of the voice fundamental in the speech of male and female adults", Stockholm
# University); Mandarin speakers' mean F0 is higher than English speakers' (Keating & Kuo 2012,
# "Comparison of speaking fundamental frequency in English and Mandarin", JASA 132(2):1050-1060);
# Mandarin citation tones span about 100-220 Hz in men and 140-300 Hz in women (Wu Zongji 1992,
# as summarised in textbook accounts of Mandarin tone). Hence medians 125 / 220 Hz, and an SD of
# 2 semitones between speakers (our choice: +-2 SD covers about 100-155 Hz and 175-275 Hz).
F0_MEDIAN_HZ = {"M": 125.0, "F": 220.0}
F0_SPEAKER_SD_SEMITONES = 2.0
# eSpeak variants per sex for "wide": the plain ones plus other voice qualities (klatt*: Klatt
# glottal source; croak: creaky; Annie, linda, steph: breathier female voices; edward, iven, max).
WIDE_VARIANTS = {"F": ("f1", "f2", "f3", "f4", "f5", "Annie", "linda", "steph"),
                 "M": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "croak", "edward", "iven", "max")}
WIDE_RANGE_PARAM = (35, 85)
WIDE_RATE_WPM = (140, 240)
FORMANT_SCALE_SD, FORMANT_SCALE_LIMITS = 0.05, (0.88, 1.12)  # vocal-tract length: about +-10% (2 SD)
BAND_LOW_HZ, BAND_HIGH_HZ = (50.0, 300.0), (3400.0, 7800.0)  # channel pass band (log-uniform / uniform)
EQ_CENTRE_HZ, EQ_GAIN = (300.0, 3500.0), (-0.6, 1.0)  # peak (+6 dB) or notch (-8 dB) somewhere in the band
SNR_DB, SNR_JITTER_DB = (10.0, 35.0), 3.0  # per-speaker SNR, +- per utterance
NOISE_LOWPASS_HZ = (500.0, 7900.0)  # noise colour: white through a first-order low-pass




@dataclass(frozen=True)
class SpeakerVoice:
    """One synthetic speaker: eSpeak variant (`f3`), base pitch and pitch range (eSpeak's 0-100
    units) and rate (eSpeak words, i.e. syllables, per minute)."""

    speaker: str
    sex: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    wide: "WideVoice | None" = None
    language: str = "cmn"

    @property
    def voice_name(self) -> str:
        return f"{LANGUAGES[self.language].voice}+{self.variant}"


@dataclass(frozen=True)
class WideVoice:
    """What variation "wide" adds to a speaker: target median F0 (Hz), formant scale (vocal-tract
    length: > 1 shorter tract, higher formants; also the factor speech gets faster by), channel
    pass band (Hz), EQ centre (Hz) and gain (linear, added band-passed copy), SNR (dB) and the
    noise's low-pass corner (Hz)."""

    f0_target: float
    formant_scale: float
    band: tuple[float, float]
    eq_centre: float
    eq_gain: float
    snr_db: float
    noise_lowpass: float


def pitch_setting(variant: str, f0_hz: float, language: SynthLanguage | None = None) -> int:
    """eSpeak's pitch parameter (0-100) that gives `variant` a median F0 near `f0_hz`
    (interpolated in log F0 over the language's `variant_f0`, Mandarin's by default, clipped to 0-100)."""
    table = np.log((language or CMN).variant_f0[variant])
    return int(np.clip(round(float(np.interp(np.log(f0_hz), table, (0.0, 50.0, 100.0), left=0.0, right=100.0))), 0, 100))


def measure_variant_f0(language: SynthLanguage, pitches: tuple[int, ...] = (0, 50, 100), pitch_range: int = 55,
                       rate: int = 180, seed: int = 0) -> dict[str, tuple[float, ...]]:
    """Median F0 (Hz, Praat pitch) of every `WIDE_VARIANTS` variant with `language`'s
    voice at each eSpeak pitch setting, saying 12 syllables drawn from its table with `seed` (pitch
    floor 40 Hz: the low male variants reach about 50 Hz at pitch 0):
    how a language's `variant_f0` table is made (printed by `python -m phonorm.corpus.synth LANG`)."""
    import parselmouth

    from phonorm.corpus.espeak import Espeak

    drawer = SyllableDrawer(language.table(), np.random.default_rng(seed), language=language)
    text = " ".join(f"{s.spelling}{tone}" for s, tone in drawer.draw(12))
    espeak = Espeak.get()
    table = {}
    for variant in (*WIDE_VARIANTS["F"], *WIDE_VARIANTS["M"]):
        medians = []
        for pitch in pitches:
            espeak.set_voice(f"{language.voice}+{variant}", pitch=pitch, pitch_range=pitch_range, rate=rate)
            samples, _ = espeak.synthesize(text, seed=seed)
            sound = parselmouth.Sound(samples.astype(np.float64) / 32768.0, espeak.sample_rate)
            f0 = sound.to_pitch(pitch_floor=40, pitch_ceiling=600).selected_array["frequency"]
            medians.append(round(float(np.median(f0[f0 > 0])), 1))
        table[variant] = tuple(medians)
    return table


def draw_wide_speakers(n_speakers: int, rng: np.random.Generator, language: SynthLanguage | None = None) -> list[SpeakerVoice]:
    """Variation "wide": half F, half M (ids as `draw_speakers`), every speaker's voice drawn
    independently of the others (see the module docstring and the constants above)."""
    n_female = (n_speakers + 1) // 2
    counts = {"F": n_female, "M": n_speakers - n_female}
    width = max(2, len(str(max(counts.values()))))
    language = language or CMN
    voices: list[SpeakerVoice] = []
    for sex in ("F", "M"):
        dealt: list[str] = []
        for i in range(counts[sex]):
            if not dealt:
                dealt = [str(v) for v in rng.permutation(WIDE_VARIANTS[sex])]
            variant = dealt.pop()
            f0 = F0_MEDIAN_HZ[sex] * 2 ** (rng.normal(0.0, F0_SPEAKER_SD_SEMITONES) / 12)
            scale = float(np.clip(rng.normal(1.0, FORMANT_SCALE_SD), *FORMANT_SCALE_LIMITS))
            wide = WideVoice(
                f0_target=round(float(f0), 1), formant_scale=round(scale, 4),
                band=(round(float(np.exp(rng.uniform(*np.log(BAND_LOW_HZ)))), 1), round(float(rng.uniform(*BAND_HIGH_HZ)), 1)),
                eq_centre=round(float(np.exp(rng.uniform(*np.log(EQ_CENTRE_HZ)))), 1), eq_gain=round(float(rng.uniform(*EQ_GAIN)), 3),
                snr_db=round(float(rng.uniform(*SNR_DB)), 2), noise_lowpass=round(float(np.exp(rng.uniform(*np.log(NOISE_LOWPASS_HZ)))), 1),
            )
            voices.append(SpeakerVoice(
                f"{sex}{i + 1:0{width}d}", sex, variant, pitch_setting(variant, wide.f0_target / scale, language),
                int(rng.integers(WIDE_RANGE_PARAM[0], WIDE_RANGE_PARAM[1] + 1)),
                int(rng.integers(WIDE_RATE_WPM[0], WIDE_RATE_WPM[1] + 1)), wide, language.code,
            ))
    return voices


@dataclass(frozen=True)
class PlannedUtterance:
    utterance_id: str
    syllables: tuple[tuple[Syllable, int], ...]  # (syllable, tone)
    seed: int  # seeds eSpeak's noise, the leading silence and the noise floor

    @property
    def words(self) -> list[str]:
        return [f"{s.spelling}{tone}" for s, tone in self.syllables]


# --------------------------------------------------------------------------- planning
def draw_speakers(n_speakers: int, rng: np.random.Generator, language: SynthLanguage | None = None) -> list[SpeakerVoice]:
    """Half the speakers F (ids F01, F02 ...), half M (the odd one out is F); each a distinct
    (variant, pitch, rate): variants are dealt out in a shuffled cycle, pitch and rate drawn."""
    n_female = (n_speakers + 1) // 2
    counts = {"F": n_female, "M": n_speakers - n_female}
    width = max(2, len(str(max(counts.values()))))
    voices: list[SpeakerVoice] = []
    taken: set[tuple[str, int, int]] = set()
    for sex, variants in (("F", FEMALE_VARIANTS), ("M", MALE_VARIANTS)):
        dealt: list[str] = []
        for i in range(counts[sex]):
            if not dealt:
                dealt = [str(v) for v in rng.permutation(variants)]
            variant = dealt.pop()
            while True:
                pitch = int(rng.integers(PITCH_PARAM[sex][0], PITCH_PARAM[sex][1] + 1))
                rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
                if (variant, pitch, rate) not in taken:
                    break
            taken.add((variant, pitch, rate))
            pitch_range = int(rng.integers(RANGE_PARAM[0], RANGE_PARAM[1] + 1))
            voices.append(SpeakerVoice(f"{sex}{i + 1:0{width}d}", sex, variant, pitch, pitch_range, rate,
                                       language=(language or CMN).code))
    return voices


class SyllableDrawer:
    """Draws syllable sequences whose tones, initials and finals stay balanced.

    Randomised greedy: for each position a random subset of the allowed (syllable, tone) pairs
    is scored by how far its tone, initial and final already are above their target shares
    (count / share), and the least represented one is taken. Targets: the language's tones
    equal; the initials and the zero initial equal; every common final (in at least
    `common_final_min` syllables) equal, and the rare ones (Mandarin `er`, `ueng`, `iong`) at the
    share a uniform syllable draw would give them. A syllable carries only the tones it may carry
    (Cantonese checked syllables 1, 3, 6) and the language's sequence rules hold (Mandarin: two
    tone-3 syllables never adjacent, eSpeak would apply third-tone sandhi; no neutral tone first).
    """

    def __init__(self, table: Sequence[Syllable], rng: np.random.Generator, candidates: int = 48, common_final_min: int = 3,
                 language: SynthLanguage | None = None):
        self.language = language = language or CMN
        self.table = table
        self.rng = rng
        self.candidates = candidates
        initials = sorted({s.initial for s in table})
        finals_syllables = collections.Counter(s.final for s in table)
        common = [f for f, n in finals_syllables.items() if n >= common_final_min]
        rare_share = {f: n / len(table) for f, n in finals_syllables.items() if n < common_final_min}
        common_share = (1 - sum(rare_share.values())) / len(common)
        self.final_share = {f: rare_share.get(f, common_share) for f in finals_syllables}
        self.initial_share = {i: 1 / len(initials) for i in initials}
        self.tone_share = {t: 1 / len(language.tones) for t in language.tones}
        self.tone_count = collections.Counter({t: 0 for t in language.tones})
        self.initial_count = collections.Counter({i: 0 for i in initials})
        self.final_count = collections.Counter({f: 0 for f in finals_syllables})
        self.pairs = [(s, t) for s in table for t in language.tones_of(s)]

    def _score(self, syllable: Syllable, tone: int) -> float:
        return (
            (self.tone_count[tone] + 1) / self.tone_share[tone]
            + (self.initial_count[syllable.initial] + 1) / self.initial_share[syllable.initial]
            + (self.final_count[syllable.final] + 1) / self.final_share[syllable.final]
        )

    def draw(self, n: int) -> tuple[tuple[Syllable, int], ...]:
        out: list[tuple[Syllable, int]] = []
        for position in range(n):
            previous_tone = out[-1][1] if out else None
            best, best_score = None, float("inf")
            for index in self.rng.choice(len(self.pairs), size=self.candidates, replace=False):
                syllable, tone = self.pairs[int(index)]
                if not self.language.allows(tone, previous_tone, position):
                    continue
                score = self._score(syllable, tone)
                if score < best_score:
                    best, best_score = (syllable, tone), score
            if best is None:  # every candidate was excluded (vanishingly rare): any syllable in its first tone
                syllable = self.table[int(self.rng.integers(len(self.table)))]
                best = (syllable, self.language.tones_of(syllable)[0])
            syllable, tone = best
            self.tone_count[tone] += 1
            self.initial_count[syllable.initial] += 1
            self.final_count[syllable.final] += 1
            out.append(best)
        return tuple(out)


def plan_corpus(n_speakers: int, n_utterances: int, seed: int, variation: str = "none", language: str = "cmn"
                ) -> tuple[list[SpeakerVoice], dict[str, list[PlannedUtterance]]]:
    """Speakers and, per speaker, the utterances to say (ids `F01_0001`), deterministic for a seed."""
    lang = get_language(language)
    rng = np.random.default_rng(seed)
    voices = draw_wide_speakers(n_speakers, rng, lang) if variation == "wide" else draw_speakers(n_speakers, rng, lang)
    drawer = SyllableDrawer(lang.table(), rng, language=lang)
    plan: dict[str, list[PlannedUtterance]] = {}
    for voice in voices:
        utterances = []
        for u in range(n_utterances):
            n = int(rng.integers(MIN_SYLLABLES, MAX_SYLLABLES + 1))
            utterances.append(PlannedUtterance(f"{voice.speaker}_{u + 1:04d}", drawer.draw(n), int(rng.integers(2**31 - 1))))
        plan[voice.speaker] = utterances
    return voices, plan
