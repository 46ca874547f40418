"""Models that ship inside the package, named `phonorm:NAME` wherever a model is asked for.

Each lives in `phonorm/data/models/NAME/`: a transformers model folder (config.json,
model.safetensors), its phonorm model card (phonorm.json) and a README.md with the recipe that
made it, its cost and its fidelity table. Torch-free: the experiment file resolves names too.
"""

from __future__ import annotations

from pathlib import Path

from phonorm.errors import PhonormError

PREFIX = "phonorm:"
SHIPPED_FOLDER = Path(__file__).resolve().parent.parent / "data" / "models"


def shipped_models() -> list[str]:
    """The names of the shipped models (`phonorm:NAME`)."""
    if not SHIPPED_FOLDER.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_FOLDER.iterdir() if (p / "config.json").is_file())


def resolve_model(source: str) -> str:
    """A `phonorm:NAME` source as the folder of that shipped model; any other source unchanged."""
    source = str(source)
    if not source.startswith(PREFIX):
        return source
    name = source[len(PREFIX):]
    folder = SHIPPED_FOLDER / name
    if not name or "/" in name or not (folder / "config.json").is_file():
        raise PhonormError(f"{source}: no such shipped model; shipped: "
                           f"{', '.join(PREFIX + n for n in shipped_models()) or 'none'}")
    return str(folder)
