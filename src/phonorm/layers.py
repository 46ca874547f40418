"""Layer names, declared once: layer k of a model is named `L{k}` ("L0" = the input of the first
Transformer layer, i.e. the projected CNN features; "L12" = the output of the 12th layer). Every
module that writes, parses, sorts or picks layers by name uses these functions.
"""

from __future__ import annotations

from typing import Any

PREFIX = "L"


def layer_name(index: int) -> str:
    """7 → "L7"."""
    return f"{PREFIX}{int(index)}"


def layer_index(name: Any, missing: int = -1) -> int:
    """"L7" → 7; `missing` for anything else (a classic baseline's name such as "mfcc", NaN)."""
    text = str(name)
    digits = text[len(PREFIX):]
    return int(digits) if text.startswith(PREFIX) and digits.isdigit() else missing


def umap_layers(layers: list[str]) -> list[str]:
    """The layers that get UMAP maps by default: the first, the middle and the last of a model's
    layers (in order, without repeats)."""
    return list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))
