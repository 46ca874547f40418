"""Loading any Hugging Face SSL speech model and reading all its layers in one forward pass.

The layer convention (pitfall 2, docs/pitfalls.md), recorded in every artifact as `LAYER_CONVENTION`:
`L0` is the input to the first Transformer layer (after the positional convolution, and after the
encoder LayerNorm in post-LN "base" models); `Lk` is the output of Transformer layer k, the
residual stream *before* any final encoder LayerNorm of pre-LN ("stable layer norm", large)
models. This is what `output_hidden_states=True` returns in transformers 5.x (pinned in
pyproject.toml); `tests/test_backbone.py` checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from phonorm.errors import InputError, PhonormError
from phonorm.frames import FrameGeometry
from phonorm.layers import layer_name
from phonorm.models.shipped import resolve_model
from phonorm.settings import MODEL_SIZES, SUPPORTED_MODEL_TYPES
from phonorm.wording import counted

LAYER_CONVENTION = (
    "L0 = input to the first Transformer layer; Lk = output of Transformer layer k "
    "(residual stream, before the final encoder LayerNorm of stable-layer-norm models); "
    "transformers 5.x hidden_states order"
)

# Sizes for models phonorm creates itself (pre-training offline, tests): settings.MODEL_SIZES.
SIZES = MODEL_SIZES


QUANTIZER_FIELDS = ("codevector_dim", "proj_codevector_dim", "num_codevector_groups", "num_codevectors_per_group")
"""Size fields of wav2vec 2.0's quantizer (contrastive pre-training), which a HuBERT model has not."""


def make_config(size: str = "tiny", *, stable_layer_norm: bool = False, model_type: str = "wav2vec2",
                **overrides: Any) -> PretrainedConfig:
    """A wav2vec 2.0 (`model_type="wav2vec2"`) or HuBERT (`"hubert"`) config of one of `SIZES`, the
    same encoder either way; `stable_layer_norm=True` gives the large-style (pre-LN, layer-norm
    feature encoder, attention mask) variant."""
    from transformers import HubertConfig, Wav2Vec2Config

    if size not in SIZES:
        raise PhonormError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    if model_type not in ("wav2vec2", "hubert"):
        raise PhonormError(f"phonorm creates wav2vec2 or hubert models, not {model_type!r}")
    params = dict(SIZES[size])
    if model_type == "hubert":
        params = {k: v for k, v in params.items() if k not in QUANTIZER_FIELDS}
    params.update(
        do_stable_layer_norm=stable_layer_norm,
        feat_extract_norm="layer" if stable_layer_norm else "group",
        feat_extract_activation="gelu",
        # LayerDrop off for small models: extraction is in eval mode anyway (pitfall 1, docs/pitfalls.md).
        layerdrop=0.0,
        mask_time_length=5,
        mask_time_prob=0.05,
    )
    params.update(overrides)
    if model_type == "hubert":
        # masked_spec_embed (the learnt mask vector) exists only with masking on, and transformers
        # uses given mask_time_indices only when apply_spec_augment is on (it ignores them otherwise).
        return HubertConfig(apply_spec_augment=True, **params)
    return Wav2Vec2Config(**params)


def freeze_feature_encoder(backbone: PreTrainedModel) -> None:
    """Stop the convolutional feature encoder of any supported model from learning (HubertModel and
    WavLMModel lack transformers' `freeze_feature_encoder`; their heads' versions do this)."""
    backbone.feature_extractor._freeze_parameters()  # type: ignore[operator, union-attr]  # transformers types the module attribute loosely


def load_config(name_or_path: str | Path) -> PretrainedConfig:
    """The config of a hub id, a local folder or a shipped model (`phonorm:NAME`), checked to be a
    supported speech model."""
    name_or_path = resolve_model(str(name_or_path))
    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise PhonormError(f"{name_or_path}: cannot load a model config ({err})") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise PhonormError(
            f"{name_or_path}: model type {config.model_type!r} is not a supported speech model "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


def load_backbone(name_or_path: str | Path, *, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The bare encoder (no heads) of a hub id or local folder, in eval mode.

    A folder written by `phonorm finetune` holds the backbone at its top level, so it loads here too.
    Heads for pre-training or CTC in a checkpoint are dropped by `AutoModel`.
    """
    from transformers.utils import logging as hf_logging

    name_or_path = resolve_model(str(name_or_path))
    config = load_config(name_or_path)
    # transformers prints a table of every checkpoint key the bare encoder does not use (the
    # quantizer and projections of a pre-training checkpoint, a CTC head): expected, and noise in
    # every stage's log. Weights the encoder needs but the checkpoint lacks are reported below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():  # its "Loading weights" bar would write \r frames into a log
        hf_logging.disable_progress_bar()
    try:
        model, loading = AutoModel.from_pretrained(str(name_or_path), config=config, trust_remote_code=False,
                                                   dtype=dtype, output_loading_info=True)
    except Exception as err:  # OSError, ValueError, safetensors' SafetensorError on a damaged header, ...
        raise PhonormError(f"{name_or_path}: cannot load model weights ({type(err).__name__}: {err})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = nonfinite_weights(model)
    if bad:
        raise InputError(name_or_path, f"{counted(len(bad), 'weight tensor')} hold NaN or Inf (first: {bad[0]}): the "
                                       "model is damaged or its training diverged; nothing can be computed from it")
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        print(f"phonorm: warning: {name_or_path}: {len(missing)} encoder weight(s) not in the checkpoint, "
              f"initialised at random: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    model.eval()
    return model


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of `model` holding NaN or Inf (a diverged or damaged model)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def uses_group_norm(config: PretrainedConfig) -> bool:
    """True for base-style models whose feature encoder uses group norm: they must get no
    attention mask and padding changes their outputs (pitfall 4, docs/pitfalls.md), so batch equal lengths."""
    return getattr(config, "feat_extract_norm", "group") == "group"


def num_layers(config: PretrainedConfig) -> int:
    """Number of Transformer layers n; a model yields layers L0..Ln."""
    return int(config.num_hidden_layers)


def layer_names(config: PretrainedConfig) -> list[str]:
    return [layer_name(k) for k in range(num_layers(config) + 1)]


def geometry(config: PretrainedConfig) -> FrameGeometry:
    return FrameGeometry.from_config(config)


def all_layers(
    model: PreTrainedModel,
    waveforms: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Every layer L0..Ln for a batch, from one forward pass.

    `waveforms`: (batch, samples) at 16 kHz, normalised as the model's feature extractor expects.
    Returns n+1 tensors of shape (batch, frames, hidden). Raises if the model is in train mode
    (LayerDrop would drop layers, pitfall 1, docs/pitfalls.md) or the layer count is not n+1.
    """
    if model.training:
        raise RuntimeError("all_layers needs the model in eval mode (LayerDrop skips layers in train mode)")
    if attention_mask is not None and uses_group_norm(model.config):
        raise RuntimeError("group-norm models must not get an attention mask; batch equal lengths instead")
    output = model(waveforms, attention_mask=attention_mask, output_hidden_states=True)
    hidden = tuple(output.hidden_states)
    expected = num_layers(model.config) + 1
    if len(hidden) != expected:
        raise RuntimeError(f"model returned {len(hidden)} hidden states, expected {expected} (L0..L{expected - 1})")
    return hidden


def normalize_waveform(wave: torch.Tensor, config: PretrainedConfig | None = None) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its last axis, as Wav2Vec2FeatureExtractor
    does with `do_normalize=True` (every released wav2vec2/HuBERT/WavLM checkpoint uses it)."""
    mean = wave.mean(dim=-1, keepdim=True)
    var = wave.var(dim=-1, keepdim=True, unbiased=False)
    return (wave - mean) / torch.sqrt(var + 1e-7)
