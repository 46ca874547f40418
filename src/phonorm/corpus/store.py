"""Reading a prepared corpus folder (the contract every stage after `prepare` relies on)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pandas as pd

from phonorm.errors import InputError
from phonorm.records.corpus import LabelsFile
from phonorm.settings import SPLITS

UTTERANCE_COLUMNS = ("utterance_id", "speaker", "sex", "split", "audio_path", "duration", "sample_rate", "channels")
SEGMENT_COLUMNS = ("utterance_id", "segment_id", "start", "end", "phone", "tone", "syllable", "word", "is_final")


class PreparedCorpus:
    """A prepared corpus folder: `utterances.parquet`, `segments.parquet`, `labels.json`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        for name in ("utterances.parquet", "segments.parquet", "labels.json"):
            if not (self.folder / name).is_file():
                raise InputError(self.folder / name, "missing: not a prepared corpus (run phonorm prepare first)")

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the three files' bytes: which corpus a model or store was made from (a model
        folder refuses to resume or to count as done on another corpus)."""
        import hashlib

        digest = hashlib.sha256()
        for name in ("utterances.parquet", "segments.parquet", "labels.json"):
            digest.update((self.folder / name).read_bytes())
        return digest.hexdigest()

    @cached_property
    def all_utterances(self) -> pd.DataFrame:
        table = _read_table(self.folder / "utterances.parquet")
        _check_columns(table, UTTERANCE_COLUMNS, self.folder / "utterances.parquet")
        return table

    @cached_property
    def segments(self) -> pd.DataFrame:
        table = _read_table(self.folder / "segments.parquet")
        _check_columns(table, SEGMENT_COLUMNS, self.folder / "segments.parquet")
        return table

    @cached_property
    def labels(self) -> LabelsFile:
        """labels.json through its type (a damaged file is an InputError naming it and its wrong fields)."""
        loaded: LabelsFile = LabelsFile.load(self.folder)
        return loaded

    @property
    def label_maps(self) -> dict[str, list[str]]:
        """task → list of labels; a label's class id is its index."""
        return self.labels.tasks

    def utterances(self, split: str | None = None) -> pd.DataFrame:
        """Utterances of one split (all when None), in a stable order."""
        table = self.all_utterances
        if split is not None:
            if split not in SPLITS:
                raise InputError(self.folder, f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
            table = table[table["split"] == split]
        return table.sort_values("utterance_id").reset_index(drop=True)

    @cached_property
    def _segments_by_utterance(self) -> dict[str, pd.DataFrame]:
        return {utt: rows.reset_index(drop=True) for utt, rows in self.segments.groupby("utterance_id", sort=False)}

    def segments_of(self, utterance_id: str) -> pd.DataFrame:
        """The utterance's segments sorted by start (an empty frame when it has none)."""
        rows = self._segments_by_utterance.get(utterance_id)
        if rows is None:
            return self.segments.iloc[0:0]
        return rows

    @cached_property
    def syllable_spans(self) -> pd.DataFrame:
        """Each segment's syllable as a time span: `segment_id`, `syllable_start`, `syllable_end` (s).
        A syllable is a run of consecutive segments of one utterance with the same `syllable` and
        `word`, closed by its tone-bearing final (`is_final`), so that two identical syllables in a row
        stay two; a segment with no syllable ("") spans itself."""
        table = self.segments.sort_values(["utterance_id", "start"], kind="stable").reset_index(drop=True)
        previous = table.shift(1)
        new = ((table.utterance_id != previous.utterance_id) | (table.syllable != previous.syllable)
               | (table.word != previous.word) | previous.is_final.fillna(True).astype(bool)
               | (table.syllable == ""))
        run = new.cumsum()
        spans = table.groupby(run).agg(syllable_start=("start", "min"), syllable_end=("end", "max"))
        return pd.DataFrame({"segment_id": table.segment_id.to_numpy(),
                             "syllable_start": spans.syllable_start.reindex(run).to_numpy(),
                             "syllable_end": spans.syllable_end.reindex(run).to_numpy()})


def _check_columns(table: pd.DataFrame, expected: tuple[str, ...], path: Path) -> None:
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise InputError(path, f"missing columns {', '.join(missing)}: written by another phonorm version?")


def _read_table(path: Path) -> pd.DataFrame:
    """A Parquet table of the corpus, or an InputError naming it when it cannot be decoded."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputError(path, f"damaged Parquet file ({err}); prepare the corpus again") from None
