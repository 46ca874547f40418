"""What a model is, declared once: trained by phonorm (`ModelKind`: pre-trained or fine-tuned, its
model card says which), or, in a feature store, a model phonorm did not train (`StoredKind` "given":
a hub id or a foreign folder)."""

from __future__ import annotations

from typing import Literal, get_args

ModelKind = Literal["pretrained", "finetuned"]
StoredKind = Literal["pretrained", "finetuned", "given"]
TRAINED_KINDS: tuple[str, ...] = get_args(ModelKind)
GIVEN: StoredKind = "given"
