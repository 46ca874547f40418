"""AISHELL-1 (openslr 33) with its own speaker-disjoint train/dev/test split and speaker sex.

Layout under ROOT (as distributed, after extracting the per-speaker archives):
    data_aishell/wav/{train,dev,test}/S0002/BAC009S0002W0122.wav
    data_aishell/transcript/aishell_transcript_v0.8.txt     UTT word word ...
    resource_aishell/lexicon.txt                             word initial final ... (中国 zh ong1 g uo2)
    resource_aishell/speaker.info                            0002 F   (speaker number, sex)
The split comes from the wav folder names, the sex from speaker.info. CTM alignments carry no
words; for them the transcript and the lexicon give each word its phones, so that character words
(and with them pypinyin tones, surface or citation) are known wherever the phones match.
"""

from __future__ import annotations

from pathlib import Path

from phonorm.corpus.alignment import Alignment, Interval, is_silence
from phonorm.corpus.prepare import build_prepared_corpus, label_rules
from phonorm.corpus.sources import Skipped, list_sources
from phonorm.corpus.speakers import SEXES, SpeakerTable
from phonorm.corpus.split import SPLITS
from phonorm.corpus.text import read_text
from phonorm.errors import InputError
from phonorm.lock import folder_lock
from phonorm.settings import AishellSettings

TRANSCRIPT = Path("data_aishell/transcript/aishell_transcript_v0.8.txt")
LEXICON = Path("resource_aishell/lexicon.txt")
SPEAKER_INFO = Path("resource_aishell/speaker.info")
WAV = Path("data_aishell/wav")


def prepare_aishell(out, *, root, alignments, settings: AishellSettings | None = None, **options) -> str:
    """Prepare AISHELL-1 from its root folder and an alignment of it; returns the summary.
    `settings` (`AishellSettings`) or its fields as keywords, as for `prepare_corpus`."""
    settings = settings if settings is not None else AishellSettings.parse(options)
    with folder_lock(out, "phonorm prepare-aishell"):
        return _prepare_aishell(out, Path(root), Path(alignments), settings)


def _prepare_aishell(out, root: Path, alignments: Path, settings: AishellSettings) -> str:
    fmt, tone_mode, skip_bad = settings.format, settings.tone, settings.skip_bad
    silence, phone_map = settings.silence, settings.phone_map
    label_scheme, rules = label_rules("mandarin", None, silence, phone_map)
    wav_root = root / WAV
    for needed in (wav_root, root / SPEAKER_INFO):
        if not needed.exists():
            raise InputError(needed, "missing: is --root the AISHELL-1 folder that holds data_aishell/ and resource_aishell/?")
    speakers = read_speaker_info(root / SPEAKER_INFO)
    speakers.rule = "folder"  # data_aishell/wav/SPLIT/S0002/BAC009S0002W0122.wav
    audio_files, split_of_utterance = [], {}
    for split in SPLITS:
        for path in sorted((wav_root / split).glob("*/*.wav")):
            audio_files.append(path)
            split_of_utterance[path.stem] = split
    if not audio_files:
        raise InputError(wav_root, "no SPK/UTT.wav files under train/, dev/ or test/ (AISHELL-1 ships each speaker as "
                                   "a .tar.gz: extract them in place first)")
    skipped: list[Skipped] = []
    sources = list_sources(wav_root, alignments, fmt, skip_bad, skipped, audio_files=audio_files)
    add_words = None
    if fmt == "ctm":
        transcript = read_transcript(root / TRANSCRIPT) if (root / TRANSCRIPT).is_file() else {}
        lexicon = read_lexicon(root / LEXICON) if (root / LEXICON).is_file() else {}

        def add_words(utterance_id: str, alignment: Alignment) -> None:
            if not alignment.words and utterance_id in transcript:
                alignment.words = words_from_lexicon(alignment, transcript[utterance_id], lexicon, rules.silence) or []

    recorded = dict(corpus="aishell-1", root=str(root.resolve()), alignments=str(alignments.resolve()), format=fmt,
                    scheme="mandarin", tone_mode=tone_mode, skip_bad=skip_bad, silence=sorted(rules.silence),
                    phone_map=str(Path(phone_map).resolve()) if phone_map else None)
    return build_prepared_corpus(
        out, sources, speakers, scheme="mandarin", tone_mode=tone_mode, split_of_utterance=split_of_utterance,
        split_file=wav_root, skip_bad=skip_bad, seed=0, settings=recorded, skipped=skipped, add_words=add_words,
        label_scheme=label_scheme, rules=rules,
    )


def speaker_id(text: str) -> str:
    """AISHELL speaker ids as the wav folders spell them: `0002`, `2`, `S0002` → `S0002`."""
    text = text.strip()
    if text[:1] in ("S", "s") and text[1:].isdigit():
        text = text[1:]
    return f"S{int(text):04d}" if text.isdigit() else text


def read_speaker_info(path: Path) -> SpeakerTable:
    """speaker.info: one `NUMBER SEX` per line (white space separated; extra columns ignored)."""
    text = read_text(path, "speaker info")
    table = SpeakerTable(path)
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise InputError(path, "expected 'SPEAKER SEX'", item=f"line {number}")
        speaker, sex = speaker_id(fields[0]), fields[1].upper()
        if sex not in SEXES:
            table.problems[speaker] = f"speaker {fields[0]!r} has sex {fields[1]!r} in {path.name} (line {number}); expected F or M"
        else:
            table.sex[speaker] = sex
    if not table.sex and not table.problems:
        raise InputError(path, "no speakers in the speaker info")
    return table


def read_transcript(path: Path) -> dict[str, list[str]]:
    """utterance → its words (`UTT word word ...`)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable transcript ({err})") from None
    words: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            words[fields[0]] = fields[1:]
    return words


def read_lexicon(path: Path) -> dict[str, list[list[str]]]:
    """word → its pronunciations, each a list of phones."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable lexicon ({err})") from None
    lexicon: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            lexicon.setdefault(fields[0], []).append(fields[1:])
    return lexicon


def words_from_lexicon(
    alignment: Alignment, words: list[str], lexicon: dict[str, list[list[str]]], silence: frozenset[str] = frozenset(),
) -> list[Interval] | None:
    """Word intervals for a phone alignment: each transcript word takes the next phones when one of
    its lexicon pronunciations matches them exactly. None when the phones do not match the words.
    `silence`: the user's extra silence labels."""
    phones = [iv for iv in alignment.phones if not is_silence(iv.label, silence)]
    intervals, position = [], 0
    for word in words:
        for pronunciation in lexicon.get(word, []):
            span = phones[position:position + len(pronunciation)]
            if len(span) == len(pronunciation) and [iv.label for iv in span] == pronunciation:
                intervals.append(Interval(span[0].start, span[-1].end, word))
                position += len(pronunciation)
                break
        else:
            return None
    return intervals if position == len(phones) else None
