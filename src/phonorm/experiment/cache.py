"""The stage cache of `phonorm run`: content-addressed keys, stage folders, and running one stage.

- A stage writes into its own folder `WORKDIR/<stage>/<name>-<key>`; the key is a SHA-256 over the
  keys of its inputs (upstream stages, or a fingerprint of input files: relative path, size and
  modification time of each file), its settings as written in the YAML, the library versions, and
  a hash of the *source of the phonorm modules that stage runs* (`artifacts.code_hash`: the
  stage's entry module and every phonorm module it imports, transitively). Hashing only the code a
  stage executes redoes exactly the stages whose code changed (editing the report does not retrain
  models), and still catches a change in a shared module (frames.py, artifacts.py, ...). Settings
  enter the key as written: a default spelled out changes the key once (harmless).
- A stage is complete when `.phonorm-stage.json` (its key, inputs, settings, seconds, summary) is
  written in its folder, last. A folder without it is an interrupted stage: running again calls the
  stage in the same folder, and the stages resume (finetune and pretrain from their checkpoint,
  extract from its chunk progress, analyze from its per-layer parts, synth per speaker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from phonorm.artifacts import code_hash, library_versions, read_json, write_json
from phonorm.errors import InputError, PhonormError
from phonorm.progress import logger

MARKER = ".phonorm-stage.json"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str | Path) -> str:
    """A cheap fingerprint of input files: relative path, size and modification time of every
    non-hidden file (a file, or a folder recursively). Reading the bytes of a 15 GB corpus on every
    run would be too slow; size+mtime catches every ordinary edit or copy."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return _sha([path.name, st.st_size, st.st_mtime_ns])
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = Path(root) / name
            st = full.stat()
            entries.append((str(full.relative_to(path)), st.st_size, st.st_mtime_ns))
    return _sha(entries)


STAGE_MODULES = {
    "synth": ["phonorm.corpus.synth"],
    "corpus": ["phonorm.corpus.prepare", "phonorm.corpus.aishell"],
    "pretrain": ["phonorm.models.pretrain"],
    "snapshot": ["phonorm.models.pretrain"],  # a kept step of a pre-training run: the code that made it
    "finetune": ["phonorm.models.finetune"],
    "evaluate": ["phonorm.models.evaluate"],
    "extract": ["phonorm.features.extract"],
    "analyze": ["phonorm.analyze"],
    "report": ["phonorm.report.html"],
    "sweep": ["phonorm.experiment.summary"],
}
# Package data the stage's code reads (not found by the import scan).
STAGE_DATA = {"synth": ["data/*.tsv"], "corpus": ["data/*.tsv"]}


@cache
def stage_code_hash(stage: str) -> str:
    """SHA-256 over the source of the phonorm modules `stage` runs (see the module docstring)."""
    return code_hash(*STAGE_MODULES[stage], data=STAGE_DATA.get(stage, ()))


@dataclass
class Stage:
    """One unit of cached work. `run(folder)` does the work into `folder` and returns a summary."""

    kind: str
    name: str
    inputs: dict[str, str]
    settings: dict[str, Any]
    run: Optional[Callable[[Path], str]]
    workdir: Path
    external: Optional[Path] = None  # an existing folder used as is (no work, no marker)
    key: str = ""
    status: str = "planned"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    summary: str = ""

    def __post_init__(self) -> None:
        self.key = _sha({"stage": self.kind, "inputs": self.inputs, "settings": self.settings,
                         "code": stage_code_hash(self.kind) if self.kind in STAGE_MODULES else None,
                         "versions": _versions()})

    @property
    def folder(self) -> Path:
        if self.external is not None:
            return self.external
        label = self.kind if self.name == self.kind else self.name
        return self.workdir / self.kind / f"{label}-{self.key[:12]}"

    @property
    def title(self) -> str:
        return self.kind if self.name == self.kind else f"{self.kind} {self.name}"

    def read_marker(self) -> None:
        """Take the seconds, CPU seconds and summary of the finished stage from its marker."""
        marker = read_json(self.folder / MARKER)
        self.seconds, self.summary = float(marker.get("seconds", 0.0)), str(marker.get("summary", ""))
        self.cpu_seconds = float(marker.get("cpu_seconds", 0.0))

    def done(self) -> bool:
        if self.external is not None:
            return True
        marker = self.folder / MARKER
        if not marker.is_file():
            return False
        try:
            return read_json(marker).get("key") == self.key
        except (OSError, ValueError):
            return False


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    return library_versions()


def execute(stage: Stage, *, force: bool = False) -> None:
    """Run one stage unless its folder already holds a complete result with the same key."""
    if stage.external is not None:
        stage.status = "given"
        return
    folder = stage.folder
    if stage.done() and not force:
        stage.status = "cached"
        stage.read_marker()
        logger.info(f"phonorm run: {stage.title}: unchanged, reusing {folder}")
        return
    if force and folder.exists():
        shutil.rmtree(folder)
    resuming = folder.exists()
    logger.info(f"phonorm run: {stage.title}: {'resuming' if resuming else 'running'} → {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tic, cpu = time.perf_counter(), _cpu_seconds()
    assert stage.run is not None  # only given folders (`external`) have no body, and they returned above
    summary = stage.run(folder)
    stage.seconds, stage.cpu_seconds = time.perf_counter() - tic, _cpu_seconds() - cpu
    stage.summary = str(summary)
    stage.status = "resumed" if resuming else "ran"
    write_json(folder / MARKER, {  # written last: the folder is complete from here on
        "key": stage.key, "stage": stage.kind, "name": stage.name, "inputs": stage.inputs,
        "settings": stage.settings, "code": stage_code_hash(stage.kind), "seconds": round(stage.seconds, 2),
        "cpu_seconds": round(stage.cpu_seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": stage.summary,
    })
    logger.info(f"phonorm run: {stage.title}: done in {stage.seconds:.1f} s (CPU {stage.cpu_seconds:.1f} s)")


def execute_all(stages: list[Stage], *, force: bool = False,
                skip: Optional[Callable[[Stage], bool]] = None) -> None:
    """`execute` each stage in order (but those `skip` says need not run: status "not needed"). An input
    error about a file of an earlier, cached stage (a damaged artifact a re-run would otherwise meet
    again and again) names that stage and the remedy."""
    for i, stage in enumerate(stages):
        if skip is not None and skip(stage):
            stage.status = "not needed"
            stage.summary = "every snapshot it keeps is cached"
            continue
        execute_naming_owner(stage, stages[:i], force=force)


def execute_naming_owner(stage: Stage, earlier: list[Stage], *, force: bool = False) -> None:
    """`execute(stage)`; an input error about a file of one of the `earlier` stages names that stage."""
    try:
        execute(stage, force=force)
    except InputError as err:
        owner = _owner(earlier, err.path)
        if owner is None:
            raise
        raise PhonormError(f"{err} (the file belongs to the {owner.status} stage {owner.title}: delete "
                           f"{owner.folder}, or run again with --force, to make it anew)") from None


def _owner(stages: list[Stage], path: str | None) -> Stage | None:
    """The stage among `stages` whose folder holds `path`, if any."""
    if not path:
        return None
    resolved = Path(path).resolve()
    return next((s for s in stages if s.external is None and resolved.is_relative_to(s.folder.resolve())), None)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine it tells what a
    stage costs better than wall time. Not counted: synth's speaker workers, which are children of
    multiprocessing's forkserver rather than of this process."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def stage_record(stage: Stage) -> dict[str, Any]:
    """One stage as run.json and the report list it: kind, name, status, times, key, folder."""
    return {"stage": stage.kind, "name": stage.name, "status": stage.status, "seconds": round(stage.seconds, 2),
            "cpu_seconds": round(stage.cpu_seconds, 2), "key": stage.key[:12], "folder": str(stage.folder)}
