"""The feature store's `manifest.json`: one class writes and reads it (torch-free: analysis and report read it).

`StoreManifest` is the contract between extraction and everything after it (docs/architecture.md,
"Feature store"): rows, each model's entry (source, model folder, kind, fine-tuning tasks, layers,
dim, dtype, frame geometry, input normalisation), the classic baselines, the selection settings,
the corpus and its fingerprint, provenance. The manifest is written last (by
`extract.finish_store`): a store without it is incomplete.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict

from phonorm.artifacts import JsonRecord
from phonorm.features import layout
from phonorm.records.kinds import GIVEN, StoredKind
from phonorm.settings import Task


class StoreModel(BaseModel):
    """One model of a store."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    """As given to extract: a hub id or a folder."""
    folder: Optional[str] = None
    """The model folder (absolute), when the source is one."""
    kind: StoredKind = GIVEN
    """From the folder's model card; `given`: a model phonorm did not train (hub id, foreign folder)."""
    tasks: list[Task] = []
    """Fine-tuning tasks (model card); empty for pre-trained models."""
    base_model: Optional[str] = None
    model_type: str
    n_layers: int
    dim: int
    layers: list[str]
    layer_convention: str
    group_norm: bool
    normalize_waveform: bool
    geometry: dict[str, Any]
    dtype: Literal["float16", "float32"]
    parts: int = 1
    forward_passes: Optional[int] = None
    key: Optional[str] = None
    """What the stored layers were computed from (rows, the model's files with their sizes and times,
    layers, dtype): the analysis reuses a saved layer result only for the same key, so layers
    extracted again from a retrained model at the same path are analysed again."""


class StoreManifest(JsonRecord):
    """`F/manifest.json`."""

    FILE: ClassVar[str] = layout.MANIFEST_FILE
    WHAT: ClassVar[str] = "feature store manifest"
    MISSING: ClassVar[str] = ("the feature store is incomplete (extraction unfinished? run phonorm extract again with "
                              "the same options to resume)")

    format: str
    rows: int
    row_unit: Literal["frame", "segment"]
    models: list[StoreModel]
    layer_convention: str
    classic: list[str]
    classic_counts: dict[str, Any] = {}
    geometry: dict[str, Any]
    corpus: str
    corpus_fingerprint: Optional[str] = None
    rows_key: str
    counts: dict[str, Any]
    settings: dict[str, Any]
    provenance: dict[str, Any]

    def model(self, name: str) -> StoreModel:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise KeyError(name)
