"""The "upstream" of the analysis: a backbone that turns waveforms into every layer's states.

As in s3prl, getting all layers (here) is kept apart from choosing or combining them (the feature
store and the analysis). `Upstream(source)` loads any wav2vec 2.0 / HuBERT / WavLM model in eval
mode (LayerDrop off), prepares waveforms the way the model expects (zero-mean unit-variance when
its feature extractor says so; no attention mask for group-norm models, whose outputs padding
would change), and returns the chosen layers with each utterance's frame count from the one
samples → frames formula (`frames.FrameGeometry`), checked against what the model produced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from phonorm.errors import PhonormError
from phonorm.frames import FrameGeometry
from phonorm.models.backbone import all_layers, load_backbone, normalize_waveform, num_layers, uses_group_norm

# Extraction runs one forward pass per utterance length, and on CPU torch's oneDNN keeps the
# kernels it builds for each input shape: in its primitive cache and in ideep's computation cache,
# up to 1024 shapes each by default. Every distinct utterance length is a new shape, so over a
# corpus resident memory grew with the number of utterances (~100 KB per distinct length for a
# tiny model) until those caches filled. Kernels are rarely re-used across utterances (lengths
# differ), so 16 entries (about what one forward pass builds) bound that memory (~10 MB for a
# tiny model; bench/scale_extract.py saw no speed difference against 64 or 1024). Both
# are read once, when oneDNN first runs, so they are set when this module is imported (importing
# torch does not run oneDNN), before any forward pass of this process; a value the user exported
# is kept.
SHAPE_CACHE_CAPACITY = "16"


def _bound_shape_caches() -> None:
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(variable, SHAPE_CACHE_CAPACITY)


_bound_shape_caches()


def wants_normalized_input(source: str | Path) -> bool:
    """Whether the model expects zero-mean unit-variance waveforms: its feature extractor's
    `do_normalize` when it ships one (e.g. False for some HuBERT checkpoints), else True (the
    default of Wav2Vec2FeatureExtractor and of models phonorm writes)."""
    try:
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(str(source), trust_remote_code=False)
    except Exception:  # no preprocessor_config.json (our own folders) or offline: use the default
        return True
    return bool(getattr(extractor, "do_normalize", True))


class Upstream:
    """Every layer L0..Ln of one model. `name` is used in messages only."""

    def __init__(self, source: str, *, device: Any = "cpu", normalize: bool | None = None, name: str = ""):
        self.name = name or str(source)
        self.device = device
        self.model = load_backbone(source).to(device).eval()
        self.config = self.model.config
        self.geometry = FrameGeometry.from_config(self.config)
        self.group_norm = uses_group_norm(self.config)
        self.n_layers = num_layers(self.config)
        self.normalize = wants_normalized_input(source) if normalize is None else normalize

    def __call__(self, waves: Sequence[np.ndarray], layers: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """(states (len(layers), batch, frames, dim) float32 on `device`, frames of each utterance) for a
        batch of 16 kHz mono waveforms (samples,). Group-norm models need waves of one length."""
        lengths = [len(w) for w in waves]
        longest = max(lengths)
        if self.group_norm and len(set(lengths)) > 1:
            raise PhonormError(f"model {self.name}: a group-norm model needs a batch of equal lengths")
        batch = torch.zeros(len(waves), longest, dtype=torch.float32)
        for i, wave in enumerate(waves):
            signal = torch.from_numpy(np.asarray(wave, dtype=np.float32))
            batch[i, : len(wave)] = normalize_waveform(signal) if self.normalize else signal
        mask = None
        if not self.group_norm and len(set(lengths)) > 1:
            mask = torch.zeros(len(waves), longest, dtype=torch.long)
            for i, length in enumerate(lengths):
                mask[i, :length] = 1
            mask = mask.to(self.device)
        with torch.inference_mode():
            hidden = all_layers(self.model, batch.to(self.device), attention_mask=mask)
        expected = self.geometry.num_frames(longest)
        if hidden[0].shape[1] != expected:
            raise PhonormError(f"model {self.name}: {hidden[0].shape[1]} frames for {longest} samples, but its conv "
                               f"geometry gives {expected}: unsupported frame geometry")
        return torch.stack([hidden[k] for k in layers]), [self.geometry.num_frames(n) for n in lengths]
