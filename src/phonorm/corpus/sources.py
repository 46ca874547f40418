"""The utterances a corpus folder offers before any is read (`list_sources`): one `UtteranceSource`
per utterance id seen among the audio files or the alignments (TextGrids, or CTM files), with the
problem found while listing (a duplicate id, a bad CTM line); `Skipped`: what `--skip-bad` left out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from phonorm.corpus.alignment import Alignment
from phonorm.corpus.audio import AUDIO_SUFFIXES
from phonorm.corpus.ctm import ctm_files, read_ctm_utterances
from phonorm.corpus.textgrid import ALIGNMENT_SUFFIXES
from phonorm.errors import InputError


@dataclass
class UtteranceSource:
    """What is known about one utterance before it is read."""

    utterance_id: str
    audio: Path | None = None
    alignment_file: Path | None = None
    alignment: Alignment | None = None
    folder_speaker: str | None = None
    problem: tuple[str, Path, str] | None = None  # (step, file, problem) found while listing


@dataclass
class Skipped:
    item: str
    file: str
    problem: str
    step: str


def find_audio(audio_dir: Path) -> list[Path]:
    return sorted(p for p in audio_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def list_sources(
    audio_dir: Path, alignments: Path, fmt: str, skip_bad: bool, skipped: list[Skipped],
    audio_files: Iterable[Path] | None = None,
) -> list[UtteranceSource]:
    """One `UtteranceSource` per utterance id seen in the audio folder or the alignments."""
    sources: dict[str, UtteranceSource] = {}
    for path in (find_audio(audio_dir) if audio_files is None else audio_files):
        src = sources.setdefault(path.stem, UtteranceSource(path.stem))
        if src.audio is not None:
            src.problem = src.problem or ("duplicate", path, f"duplicate utterance id {path.stem!r}: also {src.audio}")
            continue
        src.audio = path.resolve()
        src.folder_speaker = path.parent.name if path.parent.resolve() != audio_dir.resolve() else None
    if fmt == "textgrid":
        _add_textgrids(sources, alignments)
    else:
        _add_ctm(sources, alignments, skip_bad, skipped)
    return [sources[utt] for utt in sorted(sources)]


def _add_textgrids(sources: dict[str, UtteranceSource], alignments: Path) -> None:
    """Each TextGrid (or Biaobei .interval) file of the folder `alignments` to its utterance's source."""
    if not alignments.is_dir():
        raise InputError(alignments, "no such folder of TextGrids (give a folder with --alignments)")
    grids = sorted(p for p in alignments.rglob("*") if p.is_file() and p.suffix.lower() in ALIGNMENT_SUFFIXES)
    if not grids:
        raise InputError(alignments, "no *.TextGrid (or Biaobei *.interval) files in this folder")
    for path in grids:
        src = sources.setdefault(path.stem, UtteranceSource(path.stem))
        if src.alignment_file is not None:
            src.problem = src.problem or ("duplicate", path, f"duplicate utterance id {path.stem!r}: also {src.alignment_file}")
            continue
        src.alignment_file = path.resolve()


def _add_ctm(sources: dict[str, UtteranceSource], alignments: Path, skip_bad: bool, skipped: list[Skipped]) -> None:
    """Each utterance of the CTM file(s) `alignments` to its source; a bad line spoils only its utterance."""
    for path in ctm_files(alignments):
        try:
            by_utterance, problems = read_ctm_utterances(path)
        except InputError as err:
            if not skip_bad:
                raise
            skipped.append(Skipped(err.item or path.name, str(path), err.problem, "file"))
            continue
        for utt, line_error in problems.items():
            src = sources.setdefault(utt, UtteranceSource(utt))
            src.problem = src.problem or ("alignment", path, line_error.problem)
        for utt, alignment in by_utterance.items():
            src = sources.setdefault(utt, UtteranceSource(utt))
            if src.alignment is not None:
                src.problem = src.problem or ("duplicate", path, f"utterance {utt!r} is aligned in two CTM files: also {src.alignment_file}")
                continue
            src.alignment, src.alignment_file = alignment, path.resolve()
