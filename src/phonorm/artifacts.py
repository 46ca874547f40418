"""What every artifact on disk shares: atomic writes and a provenance record.

Every stage writes to a temporary name in the same folder and renames when complete, so an
interrupted run never leaves a file that looks finished. Every artifact records its settings,
the library versions and the code version (`provenance()`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Self, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from phonorm import __version__
from phonorm.errors import PhonormError, WriteError, write_failure

_LIBRARIES = (
    "torch", "transformers", "accelerate", "numpy", "scipy", "pandas", "pyarrow", "scikit-learn",
    "umap-learn", "praatio", "pypinyin", "praat-parselmouth", "soundfile", "soxr",
)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    A write that fails for lack of space, quota or permission is a `WriteError` naming `path`
    (the earlier `path`, if any, is untouched)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            if tmp_path.exists():  # mkstemp makes 0600; the file gets the mode any new file gets here
                follow_umask(tmp_path)
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def separate_folder(out: str | Path, source: str | Path, what: str) -> None:
    """Refuse an output folder that is the input folder `source`, lies inside it or holds it: a stage
    writing there would mix its files into (or delete parts of) what it reads."""
    o, s = Path(out).resolve(), Path(source).resolve()
    if o == s or o.is_relative_to(s) or s.is_relative_to(o):
        raise PhonormError(f"{out}: --out must be a folder of its own, not the {what} {source}, inside it or "
                           "around it")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError of the block that the user can fix (errors.WRITE_FAILURES: full disk, quota,
    read-only folder, permissions) into a one-line `WriteError` naming `path`."""
    try:
        yield
    except Exception as err:
        errno = write_failure(err)
        if errno is not None:
            raise WriteError(path, errno) from None
        raise


def follow_umask(*paths: Path) -> None:
    """Give files the mode any new file gets here (0666 less the umask): writers that go through
    mkstemp (ours, safetensors' `save_file`) leave 0600, unreadable to the user's group."""
    mode = 0o666 & ~_umask()
    for path in paths:
        path.chmod(mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | Path, frame) -> None:
    """Write a pandas DataFrame to parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_ready(value: Any) -> Any:
    """`value` as a JSON round trip returns it (tuples → lists, numpy scalars → numbers), so that
    settings compared before and after saving compare equal."""
    return json.loads(json.dumps(value, default=_json_default))


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: the installed libraries cannot change under code already imported, and
    every artifact records them (importlib.metadata took ~20 ms a call, a tenth of a small extraction's
    own overhead)."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(versions.items())


def library_versions() -> dict[str, str]:
    return dict(_installed_versions())


def code_version() -> str:
    """The package version plus the git commit (and `+dirty`) when run from a checkout,
    else a hash of the installed sources, so two different codes never share a version."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        if commit:
            return f"{__version__}+g{commit}" + (f".dirty{code_hash()[:8]}" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{__version__}+src{code_hash()[:12]}"


def code_hash(*modules: str, data: Sequence[str] = ()) -> str:
    """SHA-256 over the source of phonorm code: of `modules` and every phonorm module they import
    (also inside functions), transitively, found by reading the imports with `ast`, plus package
    data files matching the `data` globs; of every .py file of the package when no module is named.
    The one code hash of the project: stage cache keys, analysis resume keys, code versions."""
    root = Path(__file__).resolve().parent
    files: set[Path] = set()
    if not modules:
        files = set(root.rglob("*.py"))
    for module in modules:
        files |= _import_closure(module, root)
    for pattern in data:
        files |= set(root.glob(pattern))
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _module_file(module: str, root: Path) -> Optional[Path]:
    parts = module.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _import_closure(module: str, root: Path) -> set[Path]:
    """Files of `module` and of every phonorm module it imports (also inside functions), transitively,
    with the packages' __init__.py files."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        file = _module_file(name, root)
        if file is None or file in seen:
            continue
        seen.add(file)
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        package = name if file.name == "__init__.py" else ".".join(parts[:-1])
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == "phonorm"]
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    target = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([target] if target else []))
                if target.split(".")[0] != "phonorm":
                    continue
                todo.append(target)
                todo += [f"{target}.{a.name}" for a in node.names]  # `from phonorm.x import module`
    return seen




def provenance(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record every artifact carries: settings, versions, code version, command line."""
    return {
        "settings": settings or {},
        "code_version": code_version(),
        "versions": library_versions(),
        "command": sys.argv,
    }


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and (when imported) torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")  # seeded when loaded, never imported here: artifacts stays torch-free
    if torch is not None:
        torch.manual_seed(seed)


class JsonRecord(BaseModel):
    """A typed JSON artifact file: one class writes it (`save`) and reads it (`load`, which checks every
    field and names the file and the fields that are wrong). Subclasses set `FILE` (its name in the
    folder it describes) and `WHAT` (what it is, for messages); unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    FILE: ClassVar[str] = ""
    WHAT: ClassVar[str] = "record"

    @classmethod
    def path(cls, folder: str | Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return cls.path(folder).is_file()

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """The record of `folder`, as this type (InputError naming the file when missing or invalid)."""
        return cls.load_file(cls.path(folder))

    @classmethod
    def load_file(cls, path: str | Path) -> Self:
        from phonorm.errors import InputError

        path = Path(path)
        if not path.is_file():
            raise InputError(path, f"missing: {cls.MISSING}" if cls.MISSING else "missing")
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as err:
            text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors()[:5])
            raise InputError(path, f"not a valid {cls.WHAT} ({text})") from None
        except ValueError as err:
            raise InputError(path, f"not a valid {cls.WHAT} (not valid JSON: {err})") from None

    MISSING: ClassVar[str] = ""

    def save(self, folder: str | Path) -> Path:
        path = self.path(folder)
        write_json(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def write(cls, folder: str | Path, data: dict[str, Any]) -> Path:
        """Write `data` (as its writer builds it: dicts, numpy scalars) as this file, after checking
        its JSON form against this type: a writer that drifts from the type fails here, at once,
        rather than in a reader later. The file holds exactly `data`."""
        ready = json_ready(data)
        cls.model_validate(ready)
        path = cls.path(folder)
        write_json(path, ready)
        return path
