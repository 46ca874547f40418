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
import io
import multiprocessing
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from phonorm.artifacts import atomic_path, provenance
from phonorm.corpus.languages import (
    CMN,
    LANGUAGES,
    SynthLanguage,
    get_language,
)
from phonorm.corpus.synth_align import Interval, align_syllables
from phonorm.corpus.synth_plan import (
    LEADING_SILENCE_S,
    MAX_SYLLABLES,
    MIN_SYLLABLES,
    NOISE_FLOOR,
    SNR_JITTER_DB,
    VARIATIONS,
    PlannedUtterance,
    SpeakerVoice,
    WideVoice,
    plan_corpus,
)
from phonorm.errors import InputError, PhonormError
from phonorm.frames import SAMPLE_RATE
from phonorm.lock import LOCK_FILE, folder_lock
from phonorm.records.corpus import SynthFile
from phonorm.wording import counted


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
    encoded = io.BytesIO()  # encoded in memory: libsndfile reports a failed write as "System error." with no errno
    sf.write(encoded, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with atomic_path(out / "wav" / f"{utterance.utterance_id}.wav") as tmp:
        tmp.write_bytes(encoded.getvalue())
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
            previous = SynthFile.load_file(meta_path).settings
        except InputError as err:
            raise InputError(meta_path, f"{err.problem}; use a new folder") from None
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
    meta_path = SynthFile.path(out)
    _check_resumable(out, meta_path, settings)

    voices, plan = plan_corpus(n_speakers, n_utterances, seed, variation, language.code)
    SynthFile.write(out, {"complete": False, "settings": settings})
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
    SynthFile.write(out, {
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

    from phonorm.corpus.languages import get_language
    from phonorm.corpus.synth_plan import measure_variant_f0

    for name, values in measure_variant_f0(get_language(sys.argv[1] if len(sys.argv) > 1 else "yue")).items():
        print(f"{name!r}: {values},")
