"""Train/dev/test splits: speaker-disjoint and balanced by sex by default, or from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phonorm.corpus.speakers import read_text
from phonorm.errors import InputError
from phonorm.settings import SPLITS


def _shares(n: int, dev: float, test: float) -> tuple[int, int]:
    """(n_dev, n_test) of a group of `n`: with three or more, dev and test get at least one each
    and train keeps at least one; with two, one goes to test; a lone member goes to train. A share
    of exactly 0 means none (`--test 0`: no test split, as asked)."""
    if n >= 3:
        n_test = max(1, int(round(test * n))) if test > 0 else 0
        n_dev = max(1, int(round(dev * n))) if dev > 0 else 0
        while n - n_test - n_dev < 1:  # tiny groups with large fractions: keep one for training
            if n_dev >= n_test and n_dev > 1:
                n_dev -= 1
            else:
                n_test -= 1
        return n_dev, n_test
    if n == 2:
        return 0, 1 if test > 0 else 0
    return 0, 0


def speaker_split(sex_of: dict[str, str], seed: int = 0, dev: float = 0.1, test: float = 0.1) -> dict[str, str]:
    """speaker → split, speaker-disjoint, about (1-dev-test)/dev/test of the speakers of each sex.

    Each sex is split on its own, so every split has about the corpus's sex ratio. With three or
    more speakers of a sex, dev and test get at least one each (and train keeps at least one);
    with two, one goes to train and one to test; a lone speaker goes to train. Deterministic for
    `seed` (speakers are sorted before shuffling).
    """
    return _split_groups(sex_of, seed, dev, test)


def utterance_split(speaker_of: dict[str, str], seed: int = 0, dev: float = 0.1, test: float = 0.1) -> dict[str, str]:
    """utterance → split, about (1-dev-test)/dev/test of each speaker's utterances (the rule of
    `speaker_split`, applied to each speaker's utterances): every speaker with three or more
    utterances is in all three splits, so dev and test are NOT speaker-disjoint. For corpora with
    too few speakers of a sex for a speaker-disjoint split. Deterministic for `seed`."""
    return _split_groups(speaker_of, seed, dev, test)


def _split_groups(group_of: dict[str, str], seed: int, dev: float, test: float) -> dict[str, str]:
    """item → split: within each group (sorted), the items in a seeded random order get `_shares` of
    test, then dev, the rest train."""
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for group in sorted(set(group_of.values())):
        items = sorted(item for item, g in group_of.items() if g == group)
        order = [items[i] for i in rng.permutation(len(items))]
        n_dev, n_test = _shares(len(order), dev, test)
        for i, item in enumerate(order):
            split_of[item] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    return split_of


def split_problems(utterances) -> list[str]:
    """What a user must know about a prepared corpus's splits, in words: a sex with no speaker
    in dev or test, and speakers shared between splits (probes then not speaker-disjoint).
    `utterances`: a table with columns `speaker`, `sex`, `split`."""
    problems = []
    speakers = utterances.drop_duplicates(["speaker", "split"])
    for sex in sorted(set(utterances["sex"])):
        of_sex = speakers[speakers["sex"] == sex]
        missing = [s for s in ("dev", "test") if not (of_sex["split"] == s).any()]
        if missing:
            n = of_sex["speaker"].nunique()
            problems.append(
                f"sex {sex} has {n} speaker{'s' if n != 1 else ''}: no {sex} utterance in {' or '.join(missing)} "
                "(a speaker-disjoint split needs three speakers of each sex; --split-by utterance splits "
                "each speaker's utterances instead)"
            )
    shared = int((utterances.groupby("speaker")["split"].nunique() > 1).sum())
    if shared:
        # Probes fold by speaker on their own, but a fine-tuned model has seen every speaker in train.
        problems.append(f"{shared} speaker{'s' if shared != 1 else ''} appear in more than one split: dev/test "
                        "are not speaker-disjoint from train, so evaluation and probes of fine-tuned models "
                        "are not on speakers unseen in training")
    return problems


def read_split_file(path: str | Path) -> dict[str, str]:
    """utterance → split from `utterance<TAB>split` lines (header optional, split train/dev/test)."""
    path = Path(path)
    text = read_text(path, "split file")
    split_of: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        if len(fields) < 2:
            raise InputError(path, "expected 'utterance<TAB>split'", item=f"line {number}")
        utterance, split = fields[0], fields[1].lower()
        if not split_of and split not in SPLITS and fields[0].lower() in ("utterance", "utterance_id", "utt", "id"):
            continue  # header
        if split not in SPLITS:
            raise InputError(path, f"split {fields[1]!r} is not one of {', '.join(SPLITS)}", item=f"line {number}")
        if utterance in split_of and split_of[utterance] != split:
            raise InputError(path, f"utterance {utterance!r} is given two splits ({split_of[utterance]}, {split})", item=f"line {number}")
        split_of[utterance] = split
    if not split_of:
        raise InputError(path, "split file has no rows")
    return split_of
