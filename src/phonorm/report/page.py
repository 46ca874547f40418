"""The report page's pieces: where its inputs are (`Sources`), HTML helpers (escaping, numbers,
tables, embedded figures, notes) and the `Page` the sections are added to."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import pandas as pd

from phonorm import figures as figs
from phonorm.artifacts import JsonRecord
from phonorm.errors import InputError
from phonorm.features.manifest import StoreManifest
from phonorm.records.analysis import AnalysisRecord
from phonorm.records.context import ContextModel, RunContext

R = TypeVar("R", bound=JsonRecord)

RESULT_FILES = ("similarity.csv", "probes.csv", "normalization.csv", "claims.json", "settings.json")


# =========================================================================== finding the inputs
@dataclass
class Sources:
    """What the report reads, found from R/context.json or from the artifacts' own records."""

    results: Path
    context: Optional[RunContext]
    corpus: Optional[Path] = None
    features: Optional[Path] = None
    models: list[ContextModel] = field(default_factory=list)
    evaluations: dict[str, Path] = field(default_factory=dict)
    found_from: str = "context.json"

    @classmethod
    def discover(cls, results: Path, context_path: Optional[Path] = None) -> "Sources":
        """From `phonorm run`'s context when given, else from the results' settings → the store's
        manifest (corpus, each model's folder, kind and tasks) → the model cards."""
        if context_path is not None:
            context = RunContext.load_file(context_path)
            sources = cls(results, context)
            sources.corpus = as_path(context.corpus)
            sources.features = as_path(context.features)
            sources.models = list(context.models)
            sources.evaluations = {k: Path(v) for k, v in context.evaluations.items() if v}
            return sources
        sources = cls(results, None, found_from="the results' own records (no run context)")
        settings = read_record(AnalysisRecord, results / AnalysisRecord.FILE)
        sources.features = as_path(settings.features if settings else None)
        manifest = store_manifest(sources.features)
        if manifest is not None:
            sources.corpus = as_path(manifest.corpus)
            for entry in manifest.models:
                sources.models.append(ContextModel(
                    name=entry.name, kind="finetuned" if entry.kind == "finetuned" else "pretrained",
                    trained_here=False, source=entry.source, folder=entry.folder,
                    tasks=list(entry.tasks) or None, base=entry.base_model))
        return sources


def store_manifest(features: Optional[Path]) -> Optional[StoreManifest]:
    """The store's manifest, or None when there is no (readable) store: the report says what is missing."""
    if features is None:
        return None
    try:
        return StoreManifest.load(features)
    except InputError:
        return None


def as_path(value: Any) -> Optional[Path]:
    return Path(value) if value else None


def read_record(record: type[R], path: Path) -> Optional[R]:
    """The artifact at `path` read through its type, or None when it is missing or not what its writer
    writes: the report shows a gap for it rather than stopping (older versions' files read: the types
    give defaults for the fields added since)."""
    try:
        loaded: R = record.load_file(path)
    except InputError:
        return None
    return loaded


# =========================================================================== html helpers
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]] | pd.DataFrame, columns: Optional[list[str]] = None, digits: int = 3,
          cls: str = "") -> str:
    if isinstance(rows, pd.DataFrame):
        columns = columns or list(rows.columns)
        rows = rows.to_dict("records")
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(r.get(c), digits))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(png: Optional[bytes], alt: str, caption: str = "") -> str:
    if not png:
        return note(f"figure missing: {alt}")
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


@dataclass
class Page:
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, body)
    missing: list[str] = field(default_factory=list)
    figures: int = 0
    listed: set[Path] = field(default_factory=set)  # the figures this analysis drew (settings.json)

    def png(self, path: Path) -> Optional[bytes]:
        """A figure of the results, only if the analysis that wrote settings.json drew it (a file
        left over from an earlier run with other settings is not shown)."""
        return figs.read_png(path) if path.resolve() in self.listed else None

    def pngs(self, folder: Path, pattern: str) -> list[Path]:
        return sorted(p for p in folder.glob(pattern) if p.resolve() in self.listed) if folder.is_dir() else []

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def insert_after(self, after: str, anchor: str, title: str, body: str) -> None:
        """Add a section just after the section `after` (at the end when there is none)."""
        anchors = [a for a, _, _ in self.sections]
        at = anchors.index(after) + 1 if after in anchors else len(self.sections)
        self.sections.insert(at, (anchor, title, body))

    def fig(self, png: Optional[bytes], alt: str, caption: str = "") -> str:
        if png:
            self.figures += 1
        else:
            self.missing.append(f"figure {alt}")
        return image(png, alt, caption)

    def gap(self, what: str) -> str:
        self.missing.append(what)
        return note(what)
