"""The feature store's `manifest.json`: one class writes and reads it (torch-free: analysis and report read it).

`StoreManifest` is the contract between extraction and everything after it (docs/architecture.md,
"Feature store"): rows, each model's entry (source, model folder, kind, fine-tuning tasks, layers,
dim, dtype, frame geometry, input normalisation), the classic baselines, the selection settings,
the corpus and its fingerprint, provenance. The manifest is written last (by
`extract.finish_store`): a store without it is incomplete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from phonorm.artifacts import read_json, write_json
from phonorm.errors import InputError
from phonorm.features import store as layout


class StoreModel(BaseModel):
    """One model of a store."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    """As given to extract: a hub id or a folder."""
    folder: Optional[str] = None
    """The model folder (absolute), when the source is one."""
    kind: Literal["pretrained", "finetuned", "given"] = "given"
    """From the folder's model card; `given`: a model phonorm did not train (hub id, foreign folder)."""
    tasks: list[str] = []
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


class StoreManifest(BaseModel):
    """`F/manifest.json`."""

    model_config = ConfigDict(extra="forbid")

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

    @classmethod
    def path(cls, folder: str | Path) -> Path:
        return Path(folder) / layout.MANIFEST_FILE

    @classmethod
    def load(cls, folder: str | Path) -> "StoreManifest":
        """The manifest of store `folder`; InputError naming the file and the fields that are wrong."""
        path = cls.path(folder)
        if not path.is_file():
            raise InputError(path, "missing: the feature store is incomplete (extraction unfinished? run phonorm "
                                   "extract again with the same options to resume)")
        try:
            return cls.model_validate(read_json(path))
        except ValueError as err:
            if isinstance(err, ValidationError):
                text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors()[:5])
            else:
                text = f"not valid JSON ({err})"
            raise InputError(path, f"not a valid feature store manifest ({text})") from None

    def save(self, folder: str | Path) -> None:
        write_json(self.path(folder), self.model_dump(mode="json"))

    def model(self, name: str) -> StoreModel:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise KeyError(name)
