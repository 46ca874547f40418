"""The speakers table (`speaker<TAB>sex`, header optional) and utterance → speaker matching.

An utterance finds its speaker by one rule (`--speaker-from`), never by a guess that could give it
another speaker's id and sex:
- `auto` (default): the folder the audio file sits in (`SPK/UTT.wav`) when that folder is a speaker
  id of the table; else the speaker id that starts the utterance id and is followed by a separator
  (`F01_0001`, `F01-0001`, `F01.0001`) or is the whole id. `F0` does not match `F01_0001`.
- `folder`: the audio file's folder name, exactly.
- `prefix`: the one speaker id the utterance id starts with, separator or not (`SSB0005` for
  `SSB00050001`); refused when several ids do (`F0` and `F01` for `F01_0001`).
- `regex:PATTERN`: the group named `speaker` (else the first group) of PATTERN matched at the start
  of the utterance id, e.g. `regex:BAC009(S\\d{4})`.
The speaker must be an id of the table, exactly, whatever the rule.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path

from phonorm.corpus.text import read_text
from phonorm.errors import InputError
from phonorm.labels import SEXES

_HEADER_WORDS = {"speaker", "spk", "speaker_id", "spk_id", "id", "name"}
SEPARATORS = "_-."
"""Characters that end a speaker id at the start of an utterance id under the `auto` rule."""


class SpeakerMismatch(ValueError):
    """No speaker of the table, or more than one, fits an utterance under the rule."""


@dataclass
class SpeakerTable:
    """speaker → sex ("F"/"M"), and speaker → problem for rows that were wrong (bad sex,
    conflicting duplicates): utterances of those speakers are bad input. `rule`: how utterances
    find their speaker (module docstring)."""

    path: Path
    sex: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    rule: str = "auto"

    def speaker_of(self, utterance_id: str, folder_name: str | None = None) -> str:
        """The speaker of an utterance under `self.rule`; raises `SpeakerMismatch` naming the
        problem when none or several fit."""
        return self.match(utterance_id, folder_name)[0]

    def match(self, utterance_id: str, folder_name: str | None = None) -> tuple[str, str]:
        """(speaker, how it matched: "folder", "prefix" or "regex"); see `speaker_of`."""
        return self._match(utterance_id, folder_name)

    def _match(self, utt: str, folder_name: str | None) -> tuple[str, str]:
        known = self.sex.keys() | self.problems.keys()
        rule = self.rule
        if rule == "folder" or (rule == "auto" and folder_name in known):
            return _by_folder(folder_name, known)
        if rule.startswith("regex:"):
            return _by_regex(rule, utt, known)
        prefixes = sorted(spk for spk in known if utt.startswith(spk))
        if rule == "prefix":
            return _by_prefix(prefixes)
        return _by_whole_prefix(utt, prefixes, folder_name)


def _by_folder(folder_name: str | None, known: Set[str]) -> tuple[str, str]:
    if folder_name is not None and folder_name in known:
        return folder_name, "folder"
    if not folder_name:
        raise SpeakerMismatch("the audio file is not in a speaker folder (--speaker-from folder)")
    raise SpeakerMismatch(f"its folder {folder_name!r} is not a speaker of the table (--speaker-from folder)")


def _by_regex(rule: str, utt: str, known: Set[str]) -> tuple[str, str]:
    found = re.match(rule[len("regex:"):], utt)
    if found is None:
        raise SpeakerMismatch(f"--speaker-from {rule}: does not match the utterance id")
    speaker = found.groupdict().get("speaker") or found.group(1)
    if speaker not in known:
        raise SpeakerMismatch(f"--speaker-from {rule}: gives speaker {speaker!r}, not in the table")
    return speaker, "regex"


def _by_prefix(prefixes: list[str]) -> tuple[str, str]:
    if len(prefixes) == 1:
        return prefixes[0], "prefix"
    if prefixes:
        raise SpeakerMismatch(f"ambiguous: speakers {', '.join(map(repr, prefixes))} all start the utterance "
                              "id; give the speaker by folder or by --speaker-from regex:PATTERN")
    raise SpeakerMismatch("no speaker id of the table starts the utterance id (--speaker-from prefix)")


def _by_whole_prefix(utt: str, prefixes: list[str], folder_name: str | None) -> tuple[str, str]:
    """The rule "auto" without a speaker folder: a speaker id ending at a separator (or the whole utterance id)."""
    whole = [spk for spk in prefixes if len(utt) == len(spk) or utt[len(spk)] in SEPARATORS]
    if len(whole) == 1:
        return whole[0], "prefix"
    if whole:
        raise SpeakerMismatch(f"ambiguous: speakers {', '.join(map(repr, whole))} all start the utterance id; "
                              "give the speaker by folder or by --speaker-from regex:PATTERN")
    where = f"its folder {folder_name!r} is not a speaker and " if folder_name else ""
    if prefixes:
        raise SpeakerMismatch(
            f"{where}no speaker id of the table starts the utterance id followed by one of {SEPARATORS!r}; "
            f"{', '.join(map(repr, prefixes))} starts it but is not followed by a separator: add the utterance's "
            "speaker to the table, or say how to find it with --speaker-from prefix, folder or regex:PATTERN")
    raise SpeakerMismatch(f"{where}no speaker of this table matches the utterance (no speaker id starts {utt!r}); "
                          "see --speaker-from")


def read_speakers(path: str | Path) -> SpeakerTable:
    """Read a speakers table: one `speaker<TAB>sex` per line (white space also separates), sex F or
    M in any case; an optional header line; blank lines and `#` comments skipped."""
    path = Path(path)
    text = read_text(path, "speakers table")
    table = SpeakerTable(path)
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if first and fields[0].lower() in _HEADER_WORDS:
            first = False
            continue
        first = False
        if len(fields) < 2 or not fields[0]:
            raise InputError(path, "expected 'speaker<TAB>sex'", item=f"line {number}")
        speaker, sex = fields[0], fields[1].upper()
        if sex not in SEXES:
            table.problems[speaker] = f"speaker {speaker!r} has sex {fields[1]!r} in {path.name} (line {number}); expected F or M"
            continue
        if speaker in table.sex and table.sex[speaker] != sex:
            table.problems[speaker] = f"speaker {speaker!r} is listed as both {table.sex[speaker]} and {sex}"
            continue
        table.sex[speaker] = sex
    for speaker in table.problems:
        table.sex.pop(speaker, None)
    if not table.sex and not table.problems:
        raise InputError(path, "speakers table has no rows")
    return table
