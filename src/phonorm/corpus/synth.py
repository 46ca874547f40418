"""`phonorm synth`: an offline Mandarin (or Cantonese) corpus in the formats a real user brings.

Writes OUT/wav/<utt>.wav (16 kHz mono, 16-bit), OUT/textgrid/<utt>.TextGrid (long format, tiers
`words` = one interval per syllable labelled `zhong1`, and `phones` = initial `zh` + tonal final
`ong1`; silence is left as empty intervals), OUT/speakers.tsv (`speaker<TAB>sex`) and
OUT/synth.json (settings, each speaker's voice, counts, provenance).

Languages (`languages.SynthLanguage`, one small object each: voice, syllable table, initial →
eSpeak phonemes, tones and tone rules): `cmn` Mandarin, eSpeak NG's `cmn-latn-pinyin` voice
(pinyin with tone digits in, tones 1-5), and `yue` Cantonese, its `yue-Latn-jyutping` voice
(Jyutping with tone digits in, tones 1-6, labels `gw ong2`). The boundaries are eSpeak's own
phoneme events (exact sample positions), split into initial and final: in eSpeak's phoneme sets
every initial is a fixed sequence of phonemes (Mandarin: exactly one, `ESPEAK_INITIALS`;
Cantonese: one, or `g w` / `k w` for `gw` / `kw`), and everything after it - Mandarin medial
glides `j`/`w` included - is the final; zero-initial syllables are all final. Each syllable's
phonemes are checked against that table while synthesising, so a wrong alignment stops the run
instead of being written.

Determinism: eSpeak keeps hidden state between utterances (its pitch-flutter phase), so its
output depends on what it said before in the same process. Each speaker is therefore
synthesised in a fresh worker process, in a fixed order, with eSpeak's noise seeded per
utterance: the same settings and seed give byte-identical wav, TextGrid and speakers.tsv files.
Resuming works per speaker: a re-run over the same OUT with the same settings skips speakers
whose files are all there and redoes the others.

Speaker variation (`variation`): "none" (the default, and the corpus of earlier versions, byte for
byte) draws each speaker's eSpeak variant, pitch, pitch range and rate within narrow ranges.
"wide" makes speakers differ the way real speakers do, for pre-training a reference model
(`WideVoice`): a target median F0 drawn per speaker from a log-normal distribution by sex
(`F0_MEDIAN_HZ`, sources in its comment), pitch range, speaking rate, voice quality (eSpeak
variants with other glottal sources: Klatt, creaky, breathy), vocal-tract length (all formants
scaled by `formant_scale`: the synthesizer's output is read as if sampled at `rate x scale`,
which scales every frequency by `scale` and every duration by 1/`scale`; eSpeak's pitch is set
to target / scale beforehand so F0 lands on the target, and the TextGrid times are divided by
the same exact factor, so boundaries stay exact), channel (zero-phase band-limiting and a
peak/notch EQ: no delay, boundaries unmoved) and background noise (coloured Gaussian noise at a
per-speaker SNR). It is opt-in because it changes every file of the default corpus. Each language
sets pitch from its own voice's measured F0 per variant (`SynthLanguage.variant_f0`, made by
`measure_variant_f0`).
"""

from __future__ import annotations

import collections
import multiprocessing
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from phonorm.artifacts import atomic_path, provenance, read_json, write_json
from phonorm.corpus.languages import (  # noqa: F401 (ESPEAK_INITIALS, VARIANT_F0_AT_PITCH: re-exported)
    CMN,
    ESPEAK_INITIALS,
    LANGUAGES,
    VARIANT_F0_AT_PITCH,
    YUE,
    Syllable,
    SynthLanguage,
    get_language,
)
from phonorm.errors import InputError, PhonormError
from phonorm.frames import SAMPLE_RATE
from phonorm.lock import LOCK_FILE, folder_lock
from phonorm.wording import counted

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

_STRESS_MARKS = "',%="



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


# --------------------------------------------------------------------------- alignment
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


# --------------------------------------------------------------------------- synthesis (worker side)
def _write_textgrid(path: Path, words: list[Interval], phones: list[Interval], to_seconds, duration: float) -> None:
    from praatio import textgrid

    grid = textgrid.Textgrid()
    for name, tier in (("words", words), ("phones", phones)):
        entries = [(min(to_seconds(i.start), duration), min(to_seconds(i.end), duration), i.label) for i in tier]
        grid.addTier(textgrid.IntervalTier(name, entries, 0.0, duration))
    with atomic_path(path) as tmp:
        # includeBlankSpaces: the gaps (silence) become empty intervals, as MFA writes them.
        grid.save(str(tmp), format="long_textgrid", includeBlankSpaces=True, reportingMode="error")


def apply_channel(audio: np.ndarray, wide: WideVoice, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The speaker's channel and background noise on `audio` (float (samples,) at `sample_rate`).

    Band-pass (4th-order Butterworth) and EQ are applied forwards and backwards (scipy's
    `sosfiltfilt`, zero phase), so nothing is delayed and the alignment stays exact. Noise:
    Gaussian through a first-order low-pass, scaled to the utterance's SNR (speaker SNR +-
    `SNR_JITTER_DB`) relative to the mean power of the speech over the utterance.
    """
    from scipy import signal

    nyquist = sample_rate / 2
    low, high = wide.band[0], min(wide.band[1], 0.98 * nyquist)
    band = signal.butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    shaped = signal.sosfiltfilt(band, audio)
    centre = min(wide.eq_centre, 0.9 * high)
    eq = signal.butter(1, [centre / 1.4, centre * 1.4], btype="bandpass", fs=sample_rate, output="sos")
    shaped = shaped + wide.eq_gain * signal.sosfiltfilt(eq, shaped)
    snr = wide.snr_db + rng.uniform(-SNR_JITTER_DB, SNR_JITTER_DB)
    noise = signal.sosfilt(signal.butter(1, min(wide.noise_lowpass, 0.98 * nyquist), fs=sample_rate, output="sos"),
                           rng.standard_normal(len(audio)))
    speech_power = float(np.mean(shaped**2))
    noise *= np.sqrt(speech_power / 10 ** (snr / 10) / max(float(np.mean(noise**2)), 1e-20))
    mixed = shaped + noise
    peak = float(np.max(np.abs(mixed))) if len(mixed) else 0.0
    return mixed * (0.9 / peak) if peak > 0.9 else mixed  # no clipping; the level is normalised by models anyway


def synthesize_utterance(espeak, utterance: PlannedUtterance, out: Path, wide: WideVoice | None = None,
                         language: SynthLanguage | None = None) -> float:
    """Say one utterance with the current voice; write its wav and TextGrid. Returns seconds.

    `wide`: the speaker's variation "wide" settings (formant scale, channel, noise), else None;
    `language`: the utterance's language (Mandarin by default; the current voice must speak it)."""
    import soundfile as sf
    import soxr

    words = utterance.words
    text = " ".join(words)
    positions, at = [], 1
    for word in words:
        positions.append(at)
        at += len(word) + 1
    samples, events = espeak.synthesize(text, seed=utterance.seed)
    rng = np.random.default_rng(utterance.seed)
    pad = int(rng.uniform(*LEADING_SILENCE_S) * espeak.sample_rate)
    words_tier, phones_tier = align_syllables(events, words, utterance.syllables, positions, len(samples), language)
    audio = np.concatenate([np.zeros(pad, np.float32), samples.astype(np.float32) / 32768.0])
    # Variation "wide" reads the synthesizer's samples as if taken at rate x scale (formants and F0
    # times scale, durations / scale); `rate` is that nominal rate, so sample / rate stays exact.
    rate = espeak.sample_rate * (wide.formant_scale if wide else 1)
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    if wide is not None:
        # A separate stream, so the "none" corpus keeps its bytes.
        audio = apply_channel(audio.astype(np.float64), wide, np.random.default_rng([utterance.seed, 1]))
    audio = audio + NOISE_FLOOR * rng.standard_normal(len(audio))
    audio = np.clip(audio, -1.0, 32767 / 32768).astype(np.float32)
    duration = len(audio) / SAMPLE_RATE
    with atomic_path(out / "wav" / f"{utterance.utterance_id}.wav") as tmp:
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    _write_textgrid(out / "textgrid" / f"{utterance.utterance_id}.TextGrid", words_tier, phones_tier, lambda s: (s + pad) / rate, duration)
    return duration


def _synthesize_speaker(job: tuple[str, SpeakerVoice, list[PlannedUtterance]]) -> str:
    """Worker entry: one speaker, in a fresh process (see the module docstring)."""
    from phonorm.corpus.espeak import Espeak

    out, voice, utterances = job
    espeak = Espeak.get()
    espeak.set_voice(voice.voice_name, pitch=voice.pitch, pitch_range=voice.pitch_range, rate=voice.rate)
    for utterance in utterances:
        synthesize_utterance(espeak, utterance, Path(out), voice.wide, LANGUAGES[voice.language])
    return voice.speaker


# --------------------------------------------------------------------------- the command
def _is_complete(out: Path, utterances: list[PlannedUtterance]) -> bool:
    return all(
        (out / "wav" / f"{u.utterance_id}.wav").is_file() and (out / "textgrid" / f"{u.utterance_id}.TextGrid").is_file()
        for u in utterances
    )


def _voice_record(voice: SpeakerVoice) -> dict:
    """A speaker's row of synth.json (`wide` only for variation "wide", `language` only when not
    Mandarin: the rows of earlier corpora stay as they were)."""
    record = asdict(voice)
    if record["wide"] is None:
        del record["wide"]
    if record["language"] == CMN.code:
        del record["language"]
    return record


def _espeak_version() -> str:
    try:
        return metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        return "unknown"


def synthesize_corpus(out: str | Path, n_speakers: int = 24, n_utterances: int = 40, seed: int = 0, jobs: int = 1,
                      variation: str = "none", language: str = "cmn") -> str:
    """Write the corpus to `out` (see the module docstring); returns a one-paragraph summary.

    `variation`: "none" or "wide" (how much speakers differ; see the module docstring).
    `language`: "cmn" (Mandarin, pinyin) or "yue" (Cantonese, Jyutping); see `LANGUAGES`.
    `jobs`: worker processes (each speaker is synthesised in its own fresh process anyway).
    Re-running with the same settings over the same `out` skips speakers already complete.
    """
    out = Path(out)
    if n_speakers < 2:
        raise PhonormError(f"--speakers must be at least 2 (half F, half M), got {n_speakers}")
    if n_utterances < 1:
        raise PhonormError(f"--utterances must be at least 1, got {n_utterances}")
    if variation not in VARIATIONS:
        raise PhonormError(f"--variation {variation!r}: choose one of {', '.join(VARIATIONS)}")
    lang = get_language(language)
    if variation == "wide" and not lang.variant_f0:
        raise PhonormError(f"--variation wide is not available for --language {language}: "
                           "its voices' F0 at each pitch setting has not been measured")
    with folder_lock(out, "phonorm synth"):
        return _synthesize_corpus(out, n_speakers, n_utterances, seed, jobs, variation, lang)


def _check_resumable(out: Path, meta_path: Path, settings: dict) -> None:
    """Refuse a folder that holds a corpus made with other settings, or anything but a corpus."""
    if meta_path.exists():
        try:
            previous = read_json(meta_path).get("settings")
        except (ValueError, AttributeError):
            raise InputError(meta_path, "not a readable synth.json; use a new folder") from None
        if previous != settings:
            raise PhonormError(f"{meta_path}: this folder holds a corpus made with other settings ({previous}); use a new folder")
    elif any(p.name != LOCK_FILE for p in out.iterdir()):  # our own lock file is no content
        raise PhonormError(f"{out}: the folder is not empty and holds no synth.json; use a new or empty folder")


def _synthesize_speakers(out: Path, todo: list, plan: dict, jobs: int, done: Callable[[], object]) -> None:
    """Synthesize the speakers `todo` (voices) in worker processes; `done()` after each speaker.
    A fresh process per speaker (maxtasksperchild=1): eSpeak's hidden state must start from
    scratch for the output to be deterministic. forkserver forks from a clean server that never
    loaded eSpeak; spawn where there is no forkserver."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # import once in the server, not in every worker
        context.set_forkserver_preload(["phonorm.corpus.synth", "soxr", "soundfile", "praatio.textgrid", "scipy.signal"])
    with context.Pool(processes=max(1, min(jobs, len(todo))), maxtasksperchild=1) as pool:
        for _ in pool.imap_unordered(_synthesize_speaker, [(str(out), v, plan[v.speaker]) for v in todo]):
            done()


def _synthesize_corpus(out: Path, n_speakers: int, n_utterances: int, seed: int, jobs: int, variation: str,
                       language: SynthLanguage) -> str:
    from tqdm import tqdm

    settings = {
        "speakers": n_speakers, "utterances": n_utterances, "seed": seed, "sample_rate": SAMPLE_RATE,
        "voice": language.voice, "syllables_per_utterance": [MIN_SYLLABLES, MAX_SYLLABLES], "espeakng_loader": _espeak_version(),
    }
    # Recorded only when not the default: corpora made before the setting existed still resume.
    if variation != "none":
        settings["variation"] = variation
    if language is not CMN:
        settings["language"] = language.code
    meta_path = out / "synth.json"
    _check_resumable(out, meta_path, settings)

    voices, plan = plan_corpus(n_speakers, n_utterances, seed, variation, language.code)
    write_json(meta_path, {"complete": False, "settings": settings})
    for folder in ("wav", "textgrid"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for leftover in (out / folder).glob(".*.tmp"):  # temp files of an interrupted run
            leftover.unlink()

    todo = [v for v in voices if not _is_complete(out, plan[v.speaker])]
    skipped = len(voices) - len(todo)
    total = n_speakers * n_utterances
    with tqdm(total=total, initial=skipped * n_utterances, unit="utt", desc="synth", disable=None) as bar:
        if todo:
            _synthesize_speakers(out, todo, plan, jobs, lambda: bar.update(n_utterances))

    with atomic_path(out / "speakers.tsv") as tmp:
        tmp.write_text("speaker\tsex\n" + "".join(f"{v.speaker}\t{v.sex}\n" for v in voices))

    import soundfile as sf

    seconds = sum(sf.info(str(out / "wav" / f"{u.utterance_id}.wav")).duration for us in plan.values() for u in us)
    syllables = [pair for us in plan.values() for u in us for pair in u.syllables]
    tones = collections.Counter(tone for _, tone in syllables)
    initials = collections.Counter(syllable.initial or "(zero)" for syllable, _ in syllables)
    finals = collections.Counter(syllable.final for syllable, _ in syllables)
    counts = {
        "utterances": total, "syllables": sum(tones.values()), "seconds": round(seconds, 3),
        "tones": {str(t): tones[t] for t in language.tones}, "initials": dict(sorted(initials.items())), "finals": dict(sorted(finals.items())),
    }
    write_json(meta_path, {
        "complete": True, "settings": settings, "speakers": [_voice_record(v) for v in voices], "counts": counts,
        "provenance": provenance(settings),
    })
    n_female = sum(v.sex == "F" for v in voices)
    scheme = f" --scheme {language.scheme}" if language.scheme != "mandarin" else ""
    if language.prepare_tones:
        scheme += f" --tones {','.join(map(str, language.prepare_tones))}"
    return (
        f"Wrote {total} {language.name} utterances of {n_speakers} speakers ({n_female} F, {n_speakers - n_female} M"
        f"{', the odd one out is F' if n_speakers % 2 else ''}"
        f"{'; variation ' + variation if variation != 'none' else ''}), "
        f"{seconds / 60:.1f} min of speech, to {out} ({counted(len(todo), 'speaker')} synthesised, {skipped} already complete). "
        f"Syllables per tone {language.tones[0]}-{language.tones[-1]}: {' '.join(str(tones[t]) for t in language.tones)}; "
        f"{len(initials)} initials (incl. zero), {len(finals)} finals. Next: phonorm prepare OUT_PREPARED --audio {out / 'wav'} "
        f"--alignments {out / 'textgrid'} --speakers {out / 'speakers.tsv'}{scheme}"
    )


if __name__ == "__main__":  # the measurement behind a language's `variant_f0` table
    import sys

    for name, values in measure_variant_f0(get_language(sys.argv[1] if len(sys.argv) > 1 else "yue")).items():
        print(f"{name!r}: {values},")
