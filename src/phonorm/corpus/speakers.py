"""The speakers table (`speaker<TAB>sex`, header optional) and utterance → speaker lookup."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from phonorm.errors import InputError

SEXES = ("F", "M")
_HEADER_WORDS = {"speaker", "spk", "speaker_id", "spk_id", "id", "name"}


@dataclass
class SpeakerTable:
    """speaker → sex ("F"/"M"), and speaker → problem for rows that were wrong (bad sex,
    conflicting duplicates): utterances of those speakers are bad input."""

    path: Path
    sex: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def speaker_of(self, utterance_id: str, folder_name: str | None = None) -> str | None:
        """The speaker of an utterance: the folder it sits in (`SPK/UTT.wav`) when that folder
        names a speaker of the table, else the longest table id that prefixes the utterance id."""
        known = self.sex.keys() | self.problems.keys()
        if folder_name and folder_name in known:
            return folder_name
        matches = [spk for spk in known if utterance_id.startswith(spk)]
        return max(matches, key=len) if matches else None


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text (BOM tolerated) of a small table a user hands us; `what` names it in errors."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise InputError(path, f"unreadable {what} ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"{what} is not UTF-8 text (byte {err.start})") from None


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
