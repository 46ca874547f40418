"""The shipped table of Cantonese syllables that `phonorm synth --language yue` draws from
(src/phonorm/data/jyutping_syllables.tsv): its row type and its reader. How the file is made:
`jyutping_table.py` (which needs the synthesizer to check each syllable, so it cannot be imported by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parent.parent / "data" / "jyutping_syllables.tsv"

CHECKED_CODAS = ("p", "t", "k")


@dataclass(frozen=True)
class JyutpingSyllable:
    """A toneless Cantonese syllable: `jyutping` (e.g. `gwong`), its Jyutping `initial` (`gw`;
    "" for zero-initial syllables such as `aa`, `ngo` has `ng`) and `final` (`ong`: nucleus +
    coda); `characters`: how many characters read so (a commonness weight)."""

    jyutping: str
    initial: str
    final: str
    characters: int

    @property
    def spelling(self) -> str:
        return self.jyutping

    @property
    def checked(self) -> bool:
        """A checked syllable (final in -p, -t, -k): only tones 1, 3 and 6 occur on it."""
        return self.final.endswith(CHECKED_CODAS)


def load_syllable_table(path: str | Path = TABLE_PATH) -> list[JyutpingSyllable]:
    """The shipped table (TSV: jyutping, initial, final, characters; `#` lines are comments)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("jyutping\t"):
            continue
        jyutping, initial, final, characters = line.split("\t")
        rows.append(JyutpingSyllable(jyutping, initial, final, int(characters)))
    return rows
