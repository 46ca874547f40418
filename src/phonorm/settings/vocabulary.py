"""The shared vocabulary of the settings: one list of tasks, splits, probe labels and the choices
the stages' settings offer (each a `Literal`, its values a tuple for code that loops over them)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from phonorm.labels import LabelName

Task = Literal["tone", "phone", "sex"]
Split = Literal["train", "dev", "test"]
ProbeLabel = LabelName
SvccaRule = Literal["eigenvalue", "singular_value"]
ProbeFamily = Literal["lda", "logistic"]
TASKS: tuple[str, ...] = get_args(Task)
"""Frame-wise tasks every prepared corpus can label."""
SPLITS: tuple[str, ...] = get_args(Split)
PROBE_LABELS: tuple[str, ...] = get_args(ProbeLabel)
"""What probes decode: the tasks, plus speaker identity."""
PROBE_FAMILIES: tuple[str, ...] = get_args(ProbeFamily)
"""The probe's classifiers: shrinkage LDA (closed form) or logistic regression (lbfgs); docs/statistics.md."""
SVCCA_RULES: tuple[str, ...] = get_args(SvccaRule)  # what SVCCA's `keep` counts: s² (variance) or s

AlignmentFormat = Literal["textgrid", "ctm"]
LabelScheme = Literal["mandarin", "tonal", "plain"]
ToneMode = Literal["surface", "citation"]
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 conv_dim=(64,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
                 codevector_dim=64, proj_codevector_dim=64, num_codevector_groups=2, num_codevectors_per_group=64),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024,
                  conv_dim=(256,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8,
                  codevector_dim=128, proj_codevector_dim=128, num_codevector_groups=2, num_codevectors_per_group=160),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_dim=(512,) * 7, codevector_dim=256, proj_codevector_dim=256),
}
"""wav2vec 2.0 configurations of the models phonorm pre-trains itself ("base" is wav2vec2-base's)."""
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "data2vec-audio")
"""`model_type`s of config.json phonorm loads (`models/backbone.py`; checked torch-free by `validate`)."""
ModelSize = Literal["tiny", "small", "base"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
FrameMode = Literal["labelled", "middle", "all"]
PoolMode = Literal["frame", "segment"]
StoreDtype = Literal["float16", "float32"]
