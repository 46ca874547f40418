"""Any aligned corpus → the prepared corpus every later stage reads (docs/architecture.md).

Inputs: a folder of audio files (`UTT.wav` or `SPK/UTT.wav`, any common format, rate and channel
count), alignments (a folder of TextGrids `UTT.TextGrid`, long or short format, or Biaobei
`UTT.interval` files; or Kaldi CTM), a speakers table. Labels: silence and non-speech dropped
(`alignment.is_silence`, plus `silence`), then `phone_map` (`phone_map.py`), then the scheme
(`schemes.py`). Every label no rule can read is counted, and one error lists them all with their
counts and the first file of each (with `skip_bad`, the summary lists them and the utterances are
skipped).
Outputs in OUT: `utterances.parquet`, `segments.parquet`, `labels.json`, and `skipped.tsv` when
`skip_bad` skipped anything. Every bad utterance is an `InputError` naming the file and the problem;
with `skip_bad` it is skipped, listed and counted instead.

Utterance → speaker: by the rule `speaker_from` (`corpus/speakers.py`): by default the folder an
audio file sits in when that folder is a speaker of the table (`SPK/UTT.wav`), else the speaker id
that starts the utterance id followed by a separator (`F01_0001`); never a guess. `labels.json`
records the rule and how many utterances matched each way (`phonorm info` shows them).
Audio a model cannot read is bad input: shorter than one model frame (400 samples at 16 kHz), or
NaN/infinite samples (`audio.check_audio`). A bad CTM line spoils only its utterance.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from phonorm.artifacts import atomic_path, provenance, write_parquet
from phonorm.corpus.alignment import Alignment, silence_set
from phonorm.corpus.audio import check_audio, is_digital_silence
from phonorm.corpus.labelling import REMEDY, LabelNotes, LabelRules, label_alignment
from phonorm.corpus.phone_map import read_phone_map
from phonorm.corpus.schemes import SchemeError, UnknownLabels, get_scheme
from phonorm.corpus.sources import Skipped, UtteranceSource, list_sources
from phonorm.corpus.speakers import SpeakerMismatch, SpeakerTable, read_speakers
from phonorm.corpus.split import (
    SPLITS,
    read_split_file,
    speaker_split,
    split_problems,
    utterance_split,
)
from phonorm.corpus.textgrid import read_textgrid
from phonorm.errors import InputError, PhonormError
from phonorm.labels import LABELS
from phonorm.lock import folder_lock
from phonorm.records.corpus import LabelsFile
from phonorm.settings import TASKS, PrepareSettings
from phonorm.wording import counted

DURATION_TOLERANCE = 0.05
"""Seconds an alignment may run past the end of its audio (aligners round to frames) before it is bad."""

# What went wrong, by the step that failed: the summary groups skipped utterances by these.
STEP_NAMES = {
    "duplicate": "duplicate utterance id",
    "no-audio": "alignment without audio",
    "no-alignment": "audio without alignment",
    "audio": "unreadable, empty, too short or non-finite audio",
    "speaker": "speaker missing, ambiguous or sex not F/M",
    "alignment": "unreadable alignment",
    "too-long": "alignment longer than audio",
    "labels": "phone the scheme cannot parse",
    "empty": "no speech in alignment",
    "split": "no split in split file",
    "file": "unreadable alignment file",
}


SPEAKER_BY = "_speaker_by"
"""Key of an utterance row (dropped before writing) saying how its speaker was matched."""


class BadUtterance(Exception):
    def __init__(self, step: str, error: InputError, unknown: Counter | None = None):
        super().__init__(str(error))
        self.step, self.error, self.unknown = step, error, unknown


class UnknownLabelTally:
    """Labels no rule could read, over the corpus: label → [intervals, first file, first utterance]."""

    def __init__(self):
        self.seen: dict[str, list] = {}
        self.utterances = 0
        self.first_file: str | None = None
        self.first_utterance: str | None = None

    def add(self, counts: Counter, file, utterance: str) -> None:
        if self.first_file is None:
            self.first_file, self.first_utterance = file, utterance
        for label, n in counts.items():
            entry = self.seen.setdefault(label, [0, Path(str(file)).name, utterance])
            entry[0] += n
        self.utterances += 1

    def describe(self) -> str:
        ordered = sorted(self.seen.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return ", ".join(f"{label!r} x{n} (first in {file} [{utt}])" for label, (n, file, utt) in ordered)


def _label_inventory(task: str, segments: pd.DataFrame, utterances: pd.DataFrame, tone_labels: list[str]) -> list[str]:
    """The labels of `task` in labels.json: the label scheme's tones (tone); a label's fixed classes
    (sex: `labels.SEXES`); else the names found in its column (segments, or utterances for a
    speaker-level label), sorted."""
    spec = LABELS[task]
    if task == "tone":
        return tone_labels
    if spec.classes is not None:
        return list(spec.classes)
    column = utterances[task] if spec.speaker_level else segments[task]
    return sorted(column.astype(str).unique().tolist())


def prepare_corpus(out, *, audio_dir, alignments, speakers_file, settings: PrepareSettings | None = None,
                   **options) -> str:
    """Prepare a corpus; returns a summary for people. See the module docstring.

    `settings` (`PrepareSettings`), or its fields as keywords (`fmt`/`tone_mode` also accepted for
    `format`/`tone`). `dev`, `test`: shares of each sex's speakers in the default speaker split
    (ignored with a split file); with `split_by="utterance"`, shares of each speaker's utterances
    (not speaker-disjoint). `silence`: extra silence labels; `phone_map`: a TSV file (`phone_map.py`);
    `tones`: the tonal scheme's tone inventory (default: the tones seen).
    """
    settings = settings if settings is not None else PrepareSettings.parse(options)
    with folder_lock(out, "phonorm prepare"):
        return _prepare_corpus(out, Path(audio_dir), Path(alignments), Path(speakers_file), settings)


def _prepare_corpus(out, audio_dir: Path, alignments: Path, speakers_file: Path, settings: PrepareSettings) -> str:
    split_file, phone_map = settings.split_file, settings.phone_map
    label_scheme, rules = label_rules(settings.scheme, settings.tones, settings.silence, phone_map)
    if not audio_dir.is_dir():
        raise InputError(audio_dir, "no such audio folder")
    speakers = read_speakers(speakers_file)
    speakers.rule = settings.speaker_from
    split_of_utterance = read_split_file(split_file) if split_file is not None else None
    skipped: list[Skipped] = []
    sources = list_sources(audio_dir, alignments, settings.format, settings.skip_bad, skipped)
    recorded = dict(
        audio_dir=str(audio_dir.resolve()), alignments=str(alignments.resolve()),
        speakers_file=str(speakers_file.resolve()), **settings.as_dict(),
    )
    recorded.update(tone_mode=settings.tone, silence=sorted(rules.silence),
                    split_file=str(Path(split_file).resolve()) if split_file else None,
                    phone_map=str(Path(phone_map).resolve()) if phone_map else None)
    return build_prepared_corpus(
        out, sources, speakers, scheme=settings.scheme, tone_mode=settings.tone, split_of_utterance=split_of_utterance,
        split_file=Path(split_file) if split_file else None, skip_bad=settings.skip_bad, seed=settings.seed,
        settings=recorded, skipped=skipped, dev=settings.dev, test=settings.test, label_scheme=label_scheme,
        rules=rules, split_by=settings.split_by,
    )


def label_rules(scheme: str, tones, silence, phone_map) -> tuple[object, LabelRules]:
    """The scheme object and the user's label rules (`--tones`, `--silence`, `--phone-map`)."""
    try:
        label_scheme = get_scheme(scheme, tones)
    except (ValueError, SchemeError) as err:
        raise PhonormError(str(err)) from None
    mapping = read_phone_map(phone_map, label_scheme) if phone_map is not None else {}
    return label_scheme, LabelRules(silence=silence_set(silence), phone_map=mapping)


# --------------------------------------------------------------------------- one utterance
def read_utterance(
    src: UtteranceSource, speakers: SpeakerTable, scheme, tone_mode: str,
    split_of_utterance: dict[str, str] | None, split_file: Path | None, rules: LabelRules | None = None,
) -> tuple[dict, list, LabelNotes]:
    """(utterance row, labelled phones, notes) of one utterance; raises `BadUtterance`."""
    utt = src.utterance_id
    audio, alignment_file = _paired_files(src)
    try:
        duration, rate, channels = check_audio(audio)
    except InputError as err:
        raise BadUtterance("audio", InputError(err.path, err.problem, item=utt)) from None
    speaker, speaker_by = _speaker_of(src, speakers)
    split = None
    if split_of_utterance is not None:
        split = split_of_utterance.get(utt)
        if split is None:
            raise _bad(utt, "split", split_file, "utterance has no split in the split file")
    try:
        alignment = src.alignment if src.alignment is not None else read_textgrid(alignment_file)
    except InputError as err:
        raise BadUtterance("alignment", InputError(err.path, err.problem, item=utt)) from None
    if alignment.end > duration + DURATION_TOLERANCE:
        raise _bad(utt, "too-long", alignment_file,
                   f"alignment ends at {alignment.end:.3f} s but the audio {audio.name} lasts {duration:.3f} s")
    phones, notes = _labelled(utt, alignment, alignment_file, scheme, tone_mode, rules)
    if is_digital_silence(audio):
        notes.silent.append(utt)
    row = dict(
        utterance_id=utt, speaker=speaker, sex=speakers.sex[speaker], split=split,
        audio_path=str(audio), duration=float(duration), sample_rate=int(rate), channels=int(channels),
    )
    row[SPEAKER_BY] = speaker_by  # not a column: counted into labels.json
    return row, phones, notes


def _bad(utt: str, step: str, path, problem: str) -> BadUtterance:
    return BadUtterance(step, InputError(path, problem, item=utt))


def _paired_files(src: UtteranceSource) -> tuple[Path, Path]:
    """(audio file, alignment file) of a source that has both and no earlier problem; else `BadUtterance`."""
    utt = src.utterance_id
    if src.problem:
        step, path, problem = src.problem
        raise _bad(utt, step, path, problem)
    if src.audio is None:
        raise _bad(utt, "no-audio", src.alignment_file, "alignment without audio (no audio file with this name)")
    if src.alignment_file is None:
        raise _bad(utt, "no-alignment", src.audio, "no alignment for this audio file")
    return src.audio, src.alignment_file


def _speaker_of(src: UtteranceSource, speakers: SpeakerTable) -> tuple[str, str]:
    """(speaker, how it was found) of an utterance; `BadUtterance` when no rule or a bad row names it."""
    try:
        speaker, speaker_by = speakers.match(src.utterance_id, src.folder_speaker)
    except SpeakerMismatch as err:
        raise _bad(src.utterance_id, "speaker", speakers.path, str(err)) from None
    if speaker in speakers.problems:
        raise _bad(src.utterance_id, "speaker", speakers.path, speakers.problems[speaker])
    return speaker, speaker_by


def _labelled(utt: str, alignment: Alignment, alignment_file: Path, scheme, tone_mode: str,
              rules: LabelRules | None) -> tuple[list, LabelNotes]:
    """The labelled phones of an alignment (`label_alignment`); `BadUtterance` naming unreadable labels."""
    try:
        phones, notes = label_alignment(alignment, scheme, tone_mode, rules)
    except UnknownLabels as err:
        raise BadUtterance("labels", InputError(alignment_file, str(err), item=utt), err.counts) from None
    except SchemeError as err:
        raise _bad(utt, "labels", alignment_file, str(err)) from None
    if not phones:
        raise _bad(utt, "empty", alignment_file, "alignment has no phone intervals (only silence)")
    return phones, notes


# --------------------------------------------------------------------------- the whole corpus
def build_prepared_corpus(
    out, sources: list[UtteranceSource], speakers: SpeakerTable, *, scheme: str, tone_mode: str,
    split_of_utterance: dict[str, str] | None, split_file: Path | None, skip_bad: bool, seed: int,
    settings: dict, skipped: list[Skipped] | None = None,
    add_words: Callable[[str, Alignment], None] | None = None, dev: float = 0.1, test: float = 0.1,
    label_scheme=None, rules: LabelRules | None = None, split_by: str = "speaker",
) -> str:
    """Read every source, write the prepared corpus to `out`, return the summary. `dev`, `test`:
    shares of each sex's speakers in the default split (used when `split_of_utterance` is None),
    or of each speaker's utterances with `split_by="utterance"`. `label_scheme`, `rules`: from
    `label_rules` (default: the scheme named `scheme`, no extra rules)."""
    out = Path(out)
    _refuse_another_corpus(out, settings)
    skipped = skipped if skipped is not None else []
    label_scheme = label_scheme if label_scheme is not None else get_scheme(scheme)
    read = _ReadUtterances()
    # `with`: an error closes the bar first, so that its message starts on a line of its own
    with tqdm(sources, desc="prepare", unit="utt", disable=None) as bar:
        for src in bar:
            if add_words is not None and src.alignment is not None:
                add_words(src.utterance_id, src.alignment)
            try:
                read.add(src.utterance_id, *read_utterance(src, speakers, label_scheme, tone_mode,
                                                           split_of_utterance, split_file, rules))
            except BadUtterance as bad:
                if bad.unknown:
                    read.unknown.add(bad.unknown, bad.error.path, src.utterance_id)
                    if not skip_bad:
                        continue  # read on: one error at the end names every unknown label
                if not skip_bad:
                    raise bad.error from None
                skipped.append(Skipped(src.utterance_id, bad.error.path or "", bad.error.problem, bad.step))
    rows, segments, notes, unknown, matched = read.rows, read.segments, read.notes, read.unknown, read.matched

    if unknown.seen and not skip_bad:  # one error for the corpus, named by its first bad file
        raise InputError(
            unknown.first_file,
            f"{len(unknown.seen)} phone label(s) the {scheme} scheme cannot read, in {unknown.utterances} "
            f"utterance(s): {unknown.describe()}; {REMEDY} (or skip those utterances with --skip-bad)",
            item=unknown.first_utterance,
        )
    out.mkdir(parents=True, exist_ok=True)
    write_skipped(out, skipped)
    if not rows:
        raise PhonormError(
            f"no utterance could be prepared ({len(skipped)} skipped, see {out / 'skipped.tsv'})" if skipped
            else "no utterances found: is --audio the right folder?"
        )
    utterances = pd.DataFrame(rows)
    if split_of_utterance is None:
        utterances["split"] = _default_split(utterances, split_by, seed=seed, dev=dev, test=test)
    utterances = utterances.sort_values("utterance_id").reset_index(drop=True)
    utterances["sample_rate"] = utterances["sample_rate"].astype("int64")
    utterances["channels"] = utterances["channels"].astype("int64")
    table = pd.DataFrame(segments).sort_values(["utterance_id", "start"], kind="stable").reset_index(drop=True)
    table.insert(1, "segment_id", range(len(table)))
    table["tone"] = table["tone"].astype("int8")
    table["is_final"] = table["is_final"].astype(bool)
    tone_labels = list(label_scheme.tone_labels)
    if scheme == "tonal" and getattr(label_scheme, "given", None) is None:  # the tones of what was kept
        tone_labels = [str(t) for t in sorted(set(int(t) for t in table["tone"]) - {0})]
    problems = split_problems(utterances)
    labels = {
        "scheme": scheme,
        "tone_mode": tone_mode,
        "tasks": {task: _label_inventory(task, table, utterances, tone_labels) for task in TASKS},
        # How the splits were made and whether dev/test (and the probes' held-out speakers) are
        # speaker-disjoint: the report says so when they are not.
        "split": {
            "by": "file" if split_of_utterance is not None else split_by,
            "speaker_disjoint": bool((utterances.groupby("speaker")["split"].nunique() == 1).all()),
            "problems": problems,
        },
        # How utterances were matched to the speakers table (`phonorm info` says it).
        "speakers": {"rule": speakers.rule, "matched": dict(sorted(matched.items()))},
        "provenance": provenance(settings),
    }
    write_parquet(out / "segments.parquet", table)
    write_parquet(out / "utterances.parquet", utterances)
    LabelsFile.write(out, labels)  # last: a folder without it is not a prepared corpus
    return summarize(out, utterances, table, skipped, notes, problems, unknown)


def _refuse_another_corpus(out: Path, settings: dict) -> None:
    """A folder that holds a corpus prepared from other inputs or settings is never replaced: models
    and stores made from it would silently meet another corpus (its splits and speakers) under the
    same path. Preparing again with the same inputs and settings is allowed (it refreshes the files)."""
    if not LabelsFile.exists(out):
        return
    earlier = LabelsFile.load(out).provenance.get("settings", {})
    changed = sorted(k for k in set(earlier) | set(settings) if earlier.get(k) != settings.get(k))
    if changed:
        raise PhonormError(f"{out}: already holds a corpus prepared with other inputs or settings "
                           f"({', '.join(changed)}); prepare into a new folder, or delete this one first")


@dataclass
class _ReadUtterances:
    """What `build_prepared_corpus` gathers utterance by utterance."""

    rows: list[dict] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    notes: LabelNotes = field(default_factory=LabelNotes)
    unknown: UnknownLabelTally = field(default_factory=UnknownLabelTally)
    matched: Counter = field(default_factory=Counter)  # how utterances found their speaker (folder, prefix, regex)

    def add(self, utt: str, row: dict, phones: list, notes: LabelNotes) -> None:
        self.matched[row.pop(SPEAKER_BY)] += 1
        self.rows.append(row)
        self.notes.add(notes)
        self.segments += [dict(utterance_id=utt, start=p.start, end=p.end, phone=p.phone, tone=p.tone,
                               syllable=p.syllable, word=p.word, is_final=p.is_final) for p in phones]


def _default_split(utterances: pd.DataFrame, split_by: str, *, seed: int, dev: float, test: float) -> pd.Series:
    """The split of each utterance (row) without a split file: by speaker (shares of each sex's
    speakers) or, with `split_by="utterance"`, by utterance (shares of each speaker's utterances)."""
    if split_by == "utterance":
        split_of = utterance_split(dict(zip(utterances["utterance_id"], utterances["speaker"])), seed=seed,
                                   dev=dev, test=test)
        return utterances["utterance_id"].map(split_of)
    split_of_speaker = speaker_split(dict(zip(utterances["speaker"], utterances["sex"])), seed=seed,
                                     dev=dev, test=test)
    return utterances["speaker"].map(split_of_speaker)


def write_skipped(out: Path, skipped: list[Skipped]) -> None:
    """`skipped.tsv` (item, file, problem) when anything was skipped; a stale one is removed."""
    path = out / "skipped.tsv"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["item", "file", "problem"])
            for s in skipped:
                writer.writerow([s.item, s.file, s.problem.replace("\t", " ").replace("\n", " ")])


def summarize(
    out: Path, utterances: pd.DataFrame, segments: pd.DataFrame, skipped: list[Skipped], notes: LabelNotes,
    problems: Sequence[str] = (), unknown: UnknownLabelTally | None = None,
) -> str:
    speakers = utterances.drop_duplicates("speaker")
    sexes = speakers["sex"].value_counts()
    splits = utterances["split"].value_counts()
    lines = [
        f"prepared corpus: {out}",
        f"  {len(utterances)} utterances, {utterances['duration'].sum() / 3600:.3f} h, "
        f"{len(speakers)} speakers ({int(sexes.get('F', 0))} F, {int(sexes.get('M', 0))} M), {len(segments)} phone segments",
        "  splits: " + ", ".join(f"{s} {int(splits.get(s, 0))} utterances" for s in SPLITS),
    ]
    lines += [f"  note: {problem}" for problem in problems]
    if notes.han_words_mismatched:
        lines.append(
            f"  note: {notes.han_words_mismatched} of {notes.han_words} character words did not have one final per "
            "character; their tones come from the phone labels, not pypinyin"
        )
    if notes.silent:
        lines.append(f"  note: {counted(len(notes.silent), 'utterance')} with audio of digital silence (every sample 0; "
                     f"first: {notes.silent[0]}): kept, but they hold no speech; check those recordings")
    if skipped:
        counts = Counter(s.step for s in skipped)
        detail = ", ".join(f"{n} {STEP_NAMES.get(step, step)}" for step, n in counts.most_common())
        lines.append(f"  skipped {len(skipped)}: {detail}; listed in {out / 'skipped.tsv'}")
    if unknown is not None and unknown.seen:
        lines.append(f"  unknown labels ({len(unknown.seen)}): {unknown.describe()}; {REMEDY}")
    return "\n".join(lines)
