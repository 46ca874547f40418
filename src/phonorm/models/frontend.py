"""The frozen convolutional front end computed once per utterance, not once per epoch.

With the feature encoder frozen (the study's recipe and the demo's), the convolutions' output of an
utterance never changes during fine-tuning, yet each epoch recomputes it; for the tiny model it is
about 40 M multiply-adds per second of audio against about 15 M for the Transformer's forward. So
`finetune` computes each train utterance's front-end output once (`front_end_features`: the whole
utterance, alone, as extraction and evaluation see it) and trains on it: the collator crops or pads
these features exactly as it crops or pads the waveform (crop offsets are whole frames), and the
backbone's feature encoder passes 3-D input through (`accept_features`), so everything after it
(feature projection, masking, Transformer) runs as before. Dev evaluation and saving are untouched.

What the cache reproduces: the per-utterance (unpadded, uncropped) forward. For layer-norm front
ends (large models: padded batches with an attention mask) that is what training computed anyway.
Group-norm front ends (wav2vec 2.0 base style, our tiny models) normalise each channel over the
whole input, so a cropped waveform's features differ slightly from the same frames cut out of the
whole utterance's: the cache gives the latter (the statistics the model sees at extraction time).
`bench/frontend.py` measures both the time saved and the accuracies with and without it.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Optional

import numpy as np
import torch

from phonorm.models.data import Example, FrameDataset
from phonorm.progress import logger, progress


def accept_features(backbone: Any) -> None:
    """Let the backbone's feature encoder take precomputed features: a 3-D input (batch, channels,
    frames) is returned as it is, a waveform (batch, samples) goes through the convolutions. The
    forward of this one module instance is replaced (its weights, state dict and saving are not)."""
    encoder = backbone.feature_extractor
    if getattr(encoder, "_phonorm_accepts_features", False):
        return
    convolve: Callable[[torch.Tensor], torch.Tensor] = encoder.forward

    def forward(self: Any, input_values: torch.Tensor) -> torch.Tensor:
        return input_values if input_values.dim() == 3 else convolve(input_values)

    encoder.forward = types.MethodType(forward, encoder)
    encoder._phonorm_accepts_features = True


def cache_bytes(dataset: FrameDataset, channels: int) -> int:
    """Bytes the front-end output of every utterance of `dataset` takes (float32)."""
    frames = sum(dataset.geometry.num_frames(int(round(d * dataset.geometry.sample_rate))) for d in dataset.durations)
    return int(frames) * channels * 4


def front_end_features(backbone: Any, dataset: FrameDataset, device: torch.device | str,
                       limit_gb: float) -> tuple[Optional[dict[str, np.ndarray]], str]:
    """{utterance id: (channels, frames) float32} of the frozen feature encoder, each utterance alone,
    or None with the reason when the cache is off or would exceed `limit_gb`; and a sentence for the
    model's metrics saying which."""
    channels = int(backbone.config.conv_dim[-1])
    size = cache_bytes(dataset, channels)
    if limit_gb <= 0:
        return None, "off (front_end_cache_gb 0)"
    if size > limit_gb * 1e9:
        return None, (f"off: the train split's front-end output would take {size / 1e9:.1f} GB, over "
                      f"front_end_cache_gb {limit_gb:g}")
    encoder = backbone.feature_extractor
    features: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for index in progress(iterable=range(len(dataset)), desc="front end (once)", unit="utt"):
            wave = dataset.wave(index)
            output = encoder(torch.from_numpy(wave)[None].to(device))[0].float().cpu().numpy()
            expected = dataset.geometry.num_frames(len(wave))
            if output.shape[1] != expected:
                raise RuntimeError(f"front end gave {output.shape[1]} frames for {len(wave)} samples, the frame "
                                   f"geometry {expected}: the model's convolutions differ from its config")
            features[str(dataset.table.at[index, "utterance_id"])] = output
    logger.info("front end computed once for %d utterances (%.0f MB)", len(features), size / 1e6)
    return features, f"used ({len(features)} utterances, {size / 1e6:.0f} MB)"


def with_features(features: dict[str, np.ndarray]) -> Callable[[Example], Example]:
    """A FrameDataset transform that attaches each utterance's cached front-end output."""
    def attach(example: Example) -> Example:
        example.features = features[example.utterance_id]
        return example
    return attach


def train_on_cached_front_end(backbone: Any, dataset: FrameDataset, device: torch.device | str, frozen: bool,
                              limit_gb: float) -> str:
    """Make `dataset` carry each utterance's front-end output and `backbone` accept it, when the front
    end is frozen and its output fits `limit_gb`; returns what was done, for the model's metrics."""
    if not frozen:
        return "recomputed every step (feature encoder trained)"
    backbone.to(device)  # where training puts it anyway: compute the cache there
    features, said = front_end_features(backbone, dataset, device, limit_gb)
    if features is not None:
        accept_features(backbone)
        dataset.transform = with_features(features)
    return said
