"""The table of Cantonese syllables that `phonorm synth --language yue` draws from
(src/phonorm/data/jyutping_syllables.tsv).

The shipped file pins the syllable inventory, so a seed gives the same corpus whatever version
of the source is installed and the source is not needed at run time. `derive_syllable_table()`
is how the file was made: the single-character readings of the rime-cantonese dictionary as
PyCantonese ships it (`pycantonese.data.rime_cantonese`, CC BY 4.0), split into Jyutping initial
and final by PyCantonese's `parse_jyutping`, less the syllables eSpeak NG does not say as
Cantonese with the expected initial (`synth.YUE`). PyCantonese is needed only to rewrite the
file: `python -m phonorm.corpus.jyutping_table` (with `pip install pycantonese`).
"""

from __future__ import annotations

import collections
from pathlib import Path

from phonorm.corpus.jyutping_syllables import TABLE_PATH, JyutpingSyllable

# Syllabic nasals (m 唔, ng 五, hm, hng): their final is a nasal that is also an initial (`m`),
# so the phone labels would confuse initial and final; Mandarin's table leaves them out as well.
SYLLABIC_NASALS = frozenset({"m", "ng", "hm", "hng"})
# A syllable read by fewer characters than this is a rarity (colloquial or loan spellings such
# as `pe`, `de`, `lu`): left out so the corpus sounds like ordinary Cantonese (as pinyin_table).
MIN_CHARACTERS = 3


def derive_syllable_table() -> tuple[list[JyutpingSyllable], list[str]]:
    """(the syllables, sorted by Jyutping; the syllables left out because eSpeak NG does not say
    them as Cantonese with their initial, each with eSpeak's problem)."""
    from pycantonese import parse_jyutping
    from pycantonese.data.rime_cantonese import CHARS_TO_JYUTPING

    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for characters, reading in CHARS_TO_JYUTPING.items():
        if len(characters) != 1:
            continue
        for syllable in parse_jyutping(reading):
            counts[(syllable.onset + syllable.nucleus + syllable.coda, syllable.onset, syllable.nucleus + syllable.coda)] += 1
    candidates = [
        JyutpingSyllable(jyutping, initial, final, n) for (jyutping, initial, final), n in sorted(counts.items())
        if n >= MIN_CHARACTERS and jyutping not in SYLLABIC_NASALS and jyutping.isascii() and jyutping.isalpha()
    ]
    refused = espeak_problems(candidates)
    return [s for s in candidates if s.jyutping not in refused], [f"{k}: {v}" for k, v in sorted(refused.items())]


def espeak_problems(table: list[JyutpingSyllable]) -> dict[str, str]:
    """{syllable: problem} for the syllables that eSpeak NG's Cantonese voice, saying each one
    alone with every tone it may carry, does not split into the expected initial phonemes and a
    final (a language switch, an unknown spelling, another initial)."""
    from phonorm.corpus.espeak import Espeak
    from phonorm.corpus.languages import YUE
    from phonorm.corpus.synth_align import align_syllables
    from phonorm.errors import PhonormError

    espeak = Espeak.get()
    espeak.set_voice(f"{YUE.voice}+m3")
    problems = {}
    for syllable in table:
        for tone in YUE.tones_of(syllable):
            word = f"{syllable.jyutping}{tone}"
            samples, events = espeak.synthesize(word)
            try:
                align_syllables(events, [word], [(syllable, tone)], [1], len(samples), YUE)
            except PhonormError as err:
                problems[syllable.jyutping] = str(err)
                break
    return problems


def write_syllable_table(path: str | Path = TABLE_PATH) -> list[str]:
    """Rewrite the shipped table; returns the syllables eSpeak refused (with the reason)."""
    from importlib import metadata

    from phonorm.artifacts import atomic_path

    table, refused = derive_syllable_table()
    lines = [
        "# Cantonese syllables for `phonorm synth --language yue`, made by `python -m phonorm.corpus.jyutping_table`",
        f"# from the rime-cantonese character readings in pycantonese {metadata.version('pycantonese')} (CC BY 4.0;",
        "# see phonorm/corpus/jyutping_table.py for what is left out).",
        "jyutping\tinitial\tfinal\tcharacters",
    ]
    lines += [f"{s.jyutping}\t{s.initial}\t{s.final}\t{s.characters}" for s in table]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return refused


if __name__ == "__main__":
    left_out = write_syllable_table()
    print(f"wrote {TABLE_PATH}; eSpeak NG refused {len(left_out)}:" + "".join(f"\n  {p}" for p in left_out))
