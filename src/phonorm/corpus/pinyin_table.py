"""The table of Mandarin syllables that `phonorm synth` draws from (src/phonorm/data/pinyin_syllables.tsv).

The shipped file pins the syllable inventory, so a seed gives the same corpus whatever pypinyin
version is installed. `derive_syllable_table()` is how the file was made (from pypinyin's
character dictionary and pypinyin's own split into initial and final); run this module to
rewrite it: `python -m phonorm.corpus.pinyin_table`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parent.parent / "data" / "pinyin_syllables.tsv"

# Interjections with no regular final (m, hm, ng, ê ...) or spellings used almost only for
# interjections (lo, yo): not syllables of read speech.
INTERJECTIONS = frozenset({"m", "n", "ng", "hm", "hng", "ê", "lo", "yo", "o"})
# Syllables eSpeak NG's cmn-latn-pinyin dictionary does not know: it switches to English for
# them (its phoneme events then show `(en)`), so they would not be Mandarin speech.
NOT_SPOKEN_BY_ESPEAK = frozenset({"jiong", "qiong", "xiong", "wong"})
# A syllable read by fewer characters than this in pypinyin's dictionary is a rarity
# (biang, fiao, nun ...): left out so the corpus sounds like ordinary Mandarin.
MIN_CHARACTERS = 3


@dataclass(frozen=True)
class Syllable:
    """A toneless Mandarin syllable: `pinyin` as typed with `v` for ü (e.g. `zhong`, `nv`, `lve`),
    its pinyin `initial` ("" for zero-initial syllables such as `wan`, `yi`, `er`) and its
    `final` in the standard (strict) analysis (`wan` → `uan`, `yi` → `i`, `gui` → `uei`,
    `ju` → `v`); `characters`: how many characters read so (a commonness weight)."""

    pinyin: str
    initial: str
    final: str
    characters: int

    @property
    def spelling(self) -> str:
        return self.pinyin


def derive_syllable_table() -> list[Syllable]:
    """All syllables of pypinyin's character dictionary, less interjections, rarities and the
    few eSpeak cannot say; sorted by pinyin."""
    from pypinyin import Style
    from pypinyin.contrib.tone_convert import to_finals, to_initials
    from pypinyin.pinyin_dict import pinyin_dict
    from pypinyin.style import convert

    counts: collections.Counter[str] = collections.Counter()
    for readings in pinyin_dict.values():
        for reading in readings.split(","):
            counts[convert(reading, Style.TONE3, strict=True).rstrip("12345")] += 1
    table = []
    for pinyin, n in sorted(counts.items()):
        if pinyin in INTERJECTIONS or pinyin in NOT_SPOKEN_BY_ESPEAK or n < MIN_CHARACTERS:
            continue
        if not pinyin.isascii() or not pinyin.isalpha():
            continue
        final = to_finals(pinyin, strict=True)
        if not final:
            continue
        table.append(Syllable(pinyin, to_initials(pinyin, strict=True), final, n))
    return table


def load_syllable_table(path: str | Path = TABLE_PATH) -> list[Syllable]:
    """The shipped table (TSV: pinyin, initial, final, characters; `#` lines are comments)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("pinyin\t"):
            continue
        pinyin, initial, final, characters = line.split("\t")
        rows.append(Syllable(pinyin, initial, final, int(characters)))
    return rows


def write_syllable_table(path: str | Path = TABLE_PATH) -> None:
    from phonorm.artifacts import atomic_path

    lines = [
        "# Mandarin syllables for `phonorm synth`, made by `python -m phonorm.corpus.pinyin_table`",
        "# from pypinyin's character dictionary (see phonorm/corpus/pinyin_table.py for what is left out).",
        "pinyin\tinitial\tfinal\tcharacters",
    ]
    lines += [f"{s.pinyin}\t{s.initial}\t{s.final}\t{s.characters}" for s in derive_syllable_table()]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_syllable_table()
    print(f"wrote {TABLE_PATH}")
