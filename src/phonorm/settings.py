"""The settings of every stage, each declared once (torch-free, so `--help` and YAML checks are fast).

One pydantic model per stage. The same class serves the Python API (`finetune(..., settings=
FinetuneSettings(tasks=["tone"]))`), the command line (`cli.py` builds each command's options from
the fields: name, default, constraint and help text) and the experiment YAML (`experiment/config.py`
nests these classes). Constraints live in `Field(...)`/`Literal[...]`; `extra="forbid"` makes a
misspelt setting an error instead of a silently ignored line (scikit-learn's per-estimator
`_parameter_constraints` is the model: the rule is next to the parameter, checked before any work).

Forms the command line writes as text are accepted as text too: `tasks="tone,sex"`,
`loss_weights="tone=1,sex=0.5"`, `layers=[0, 4]` or `"0,4"`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phonorm.errors import PhonormError

# ---------------------------------------------------------------- one list of tasks, splits, labels
Task = Literal["tone", "phone", "sex"]
Split = Literal["train", "dev", "test"]
ProbeLabel = Literal["tone", "phone", "sex", "speaker"]
SvccaRule = Literal["eigenvalue", "singular_value"]
TASKS: tuple[str, ...] = get_args(Task)
"""Frame-wise tasks every prepared corpus can label."""
SPLITS: tuple[str, ...] = get_args(Split)
PROBE_LABELS: tuple[str, ...] = get_args(ProbeLabel)
"""What probes decode: the tasks, plus speaker identity."""
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

_LAYERS = re.compile(r"^\s*(all|L?\d+(\s*,\s*L?\d+)*)\s*$")


class StageSettings(BaseModel):
    """Base of every stage's settings: unknown fields are errors; values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def as_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (what artifacts record and resume checks compare)."""
        return self.model_dump(mode="json")

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Any:
        """`cls(**values)` (None values left to the defaults), or one PhonormError naming each
        rejected setting as its command-line option (`--batch-seconds: got -1; ...`)."""
        given = {name: value for name, value in values.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as err:
            lines = []
            for error in err.errors():
                loc = error.get("loc", ())
                message = error.get("msg", "").removeprefix("Value error, ")
                if not loc:  # a rule across fields: its message starts with the field it is about
                    field, sep, rest = message.partition(": ")
                    lines.append(f"--{field.replace('_', '-')}: {rest}" if sep and field in cls.model_fields else message)
                    continue
                lines.append(f"--{str(loc[0]).replace('_', '-')}: got {given.get(str(loc[0]))!r}; {message}")
            raise PhonormError("; ".join(lines)) from None


def comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# ---------------------------------------------------------------- corpus
class SynthSettings(StageSettings):
    """`phonorm synth`: an offline Mandarin or Cantonese corpus (eSpeak NG) with exact alignments."""

    speakers: int = Field(24, ge=2, le=10_000, description="Number of speakers (half F, half M).")
    utterances: int = Field(40, ge=1, le=10_000, description="Utterances per speaker.")
    seed: int = Field(0, description="Random seed; the corpus is deterministic for a seed.")
    variation: Literal["none", "wide"] = Field(
        "none", description="none, or wide: speakers differ in F0 by sex, formants (vocal-tract length), rate, "
                            "voice quality, channel and noise (for pre-training).")
    language: Literal["cmn", "yue"] = Field(
        "cmn", description="cmn: Mandarin (pinyin, tones 1-5; prepared with the mandarin scheme) or yue: Cantonese "
                           "(Jyutping, tones 1-6; prepared with --scheme tonal --tones 1,2,3,4,5,6).")


REPEATABLE: dict[str, Any] = {"cli": "repeat"}
"""Marks a list field whose command-line option is given once per value (`--silence a --silence b`)."""
SPEAKER_RULES = ("auto", "folder", "prefix")
"""`PrepareSettings.speaker_from` rules besides `regex:PATTERN` (`corpus/speakers.py` applies them)."""


class LabelSettings(StageSettings):
    """How alignment labels are read (shared by `prepare` and `prepare-aishell`)."""

    format: AlignmentFormat = Field("textgrid", validation_alias=AliasChoices("format", "fmt"),
                                    description="Alignment format: textgrid or ctm.")
    tone: ToneMode = Field("surface", validation_alias=AliasChoices("tone", "tone_mode"),
                           description="For Chinese-character words: surface (third-tone sandhi) or citation tone.")
    skip_bad: bool = Field(False, description="Skip bad utterances (listed in OUT/skipped.tsv) instead of stopping.")
    silence: list[str] = Field(default_factory=list, json_schema_extra=REPEATABLE,
                               description="A further silence/non-speech label (repeatable), e.g. --silence breath.")
    phone_map: Optional[Path] = Field(None, description="TSV label<TAB>phone[<TAB>tone], applied before the scheme.")

    @field_validator("silence", mode="before")
    @classmethod
    def _silence_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else list(value or [])


class PrepareSettings(LabelSettings):
    """`phonorm prepare`: any aligned corpus → the prepared corpus every later stage reads."""

    scheme: LabelScheme = Field("mandarin", description="Label scheme: mandarin (phone + tone), tonal (any tone "
                                "language: segment + tone digit, e.g. Jyutping wong4) or plain (phones as given).")
    split_file: Optional[Path] = Field(None, description="utterance<TAB>split (train/dev/test) instead of the "
                                                         "speaker-disjoint default.")
    seed: int = Field(0, description="Seed of the default split.")
    dev: float = Field(0.1, ge=0, lt=1, description="Share of each sex's speakers in dev (default split).")
    test: float = Field(0.1, ge=0, lt=1, description="Share of each sex's speakers in test (default split).")
    tones: Optional[list[int]] = Field(None, description="Tonal scheme: the tone digits, e.g. 1,2,3,4,5,6 "
                                                         "(default: those seen).")
    split_by: Literal["speaker", "utterance"] = Field(
        "speaker", description="speaker (speaker-disjoint, default) or utterance (each speaker's utterances split; "
                               "for corpora with fewer than three speakers of a sex).")
    speaker_from: str = Field(
        "auto", description="How an utterance finds its speaker in the table: auto (the audio's folder when it is a "
                            "speaker id, else the speaker id that starts the utterance id followed by _ - or .), "
                            "folder, prefix (the one speaker id the utterance id starts with) or regex:PATTERN "
                            "(PATTERN's first group, matched at the start of the utterance id).")

    @field_validator("speaker_from")
    @classmethod
    def _speaker_rule(cls, value: str) -> str:
        if value in SPEAKER_RULES:
            return value
        if not value.startswith("regex:"):
            raise ValueError(f"one of {', '.join(SPEAKER_RULES)} or regex:PATTERN")
        try:
            pattern = re.compile(value[len("regex:"):])
        except re.error as err:
            raise ValueError(f"a valid regular expression after regex: ({err})") from None
        if pattern.groups < 1:
            raise ValueError(r"a regular expression with a group for the speaker id, e.g. regex:([A-Z]+\d+)_")
        return value

    @field_validator("tones", mode="before")
    @classmethod
    def _tones_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = comma_list(value)
            if not all(p.isdigit() for p in parts):
                raise ValueError("expected tone digits separated by commas, e.g. 1,2,3,4,5,6")
            return [int(p) for p in parts]
        return value

    @model_validator(mode="after")
    def _split(self) -> "PrepareSettings":
        if self.dev + self.test >= 1:
            raise ValueError(f"dev: dev + test must be below 1 (got {self.dev} + {self.test})")
        if self.split_file is not None and self.split_by != "speaker":
            raise ValueError("split_file: give either a split file or --split-by utterance, not both")
        return self


class AishellSettings(LabelSettings):
    """`phonorm prepare-aishell`: AISHELL-1 with its own split and speaker sex (mandarin scheme)."""


# ---------------------------------------------------------------- pretrain
PretrainObjective = Literal["hubert", "contrastive"]


class PretrainSettings(StageSettings):
    """`phonorm pretrain`: self-supervised pre-training of a small model from scratch, by HuBERT's masked
    prediction of frame cluster ids (a HuBERT model) or wav2vec 2.0's contrastive objective."""

    objective: PretrainObjective = Field(
        "hubert", description="hubert: masked prediction of cluster ids (k-means of MFCCs, or of a model's layer "
                              "with --targets-from; a HuBERT model) or contrastive (wav2vec 2.0's loss; a wav2vec 2.0 "
                              "model).")
    size: ModelSize = Field("tiny", description="Model size: tiny, small or base.")
    steps: int = Field(2000, ge=1, description="Optimizer steps.")
    seed: int = Field(0, description="Random seed.")
    batch_seconds: float = Field(16.0, gt=0, description="Seconds of audio per batch.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    warmup: float = Field(0.08, ge=0, lt=1, description="Linear warm-up, as a fraction of the steps.")
    eval_every: Optional[int] = Field(None, ge=1, description="Held-out accuracy (masked prediction or contrastive) every N steps "
                                                              "(default: 10 times in the run).")
    keep_steps: list[int] = Field(default_factory=list, description="Also save the model at these steps "
                                  "(comma-separated), each as a loadable folder OUT/snapshots/step-<N>.")
    max_hours: Optional[float] = Field(None, gt=0, description="Pre-train on at most this many hours of the train "
                                       "split (whole utterances in a fixed random order; default: all).")
    clusters: int = Field(100, ge=2, description="hubert: number of k-means clusters (the targets' classes).")
    targets_from: Optional[str] = Field(None, description="hubert, iteration 2: cluster this model's layer "
                                        "(--targets-layer) instead of MFCCs (a folder or hub id).")
    targets_layer: Optional[int] = Field(None, ge=0, description="hubert, iteration 2: the layer Lk of "
                                         "--targets-from to cluster.")
    unmasked_weight: float = Field(0.0, ge=0, description="hubert: the loss is the cross-entropy on masked frames "
                                   "plus this times the one on unmasked frames (0: masked frames only).")
    pitch_clusters: int = Field(0, ge=0, description="hubert: also predict k-means clusters of the pitch track (F0 "
                                "in semitones, relative to the utterance, its slope, voicing; Praat) with a head of "
                                "their own, HuBERT's cluster ensemble (0: MFCC or layer clusters only).")
    pitch_weight: float = Field(1.0, gt=0, description="hubert: the pitch stream's loss is multiplied by this "
                                "before the streams' losses are summed (1: equal weight).")
    feature_grad_mult: float = Field(0.1, gt=0, le=1, description="Gradient scale of the convolutional front end "
                                     "(wav2vec 2.0 and HuBERT: 0.1, a tenth of the learning rate).")

    @field_validator("keep_steps", mode="before")
    @classmethod
    def _steps_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [int(v) for v in comma_list(value)] if isinstance(value, str) else value

    @field_validator("keep_steps")
    @classmethod
    def _sorted_steps(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _steps_within_run(self) -> "PretrainSettings":
        outside = [s for s in self.keep_steps if not 1 <= s <= self.steps]
        if outside:
            raise ValueError(f"keep_steps: {', '.join(map(str, outside))} outside the run's steps 1..{self.steps}")
        return self

    @model_validator(mode="after")
    def _targets_of_hubert(self) -> "PretrainSettings":
        if (self.targets_from is None) != (self.targets_layer is None):
            raise ValueError("targets_from: give --targets-from and --targets-layer together")
        if self.objective != "hubert" and (self.targets_from is not None or self.pitch_clusters):
            raise ValueError("targets_from: cluster targets (--targets-from, --pitch-clusters) belong to "
                             "--objective hubert")
        return self


# ---------------------------------------------------------------- finetune
class FinetuneSettings(StageSettings):
    """`phonorm finetune`: frame-wise (multi)task fine-tuning, one linear head per task on the last layer."""

    tasks: list[Task] = Field(min_length=1, description="Comma-separated tasks: tone, phone, sex (e.g. tone,sex).")
    loss_weights: dict[Task, float] = Field(default_factory=dict,
                                            description="Per-task loss weights, e.g. tone=1,sex=0.5 (default 1).")
    epochs: float = Field(10.0, gt=0, le=100_000, description="Passes over the training split.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (backbone); heads use head_lr_scale times it.")
    head_lr_scale: float = Field(10.0, gt=0, description="Learning rate of the heads relative to --lr.")
    warmup: float = Field(0.1, ge=0, lt=1, description="Warm-up, as a fraction of the steps.")
    batch_seconds: float = Field(32.0, gt=0, description="Seconds of audio per batch.")
    freeze_feature_encoder: bool = Field(True, description="Keep the convolutional feature encoder frozen.")
    front_end_cache_gb: float = Field(2.0, ge=0, description="With the feature encoder frozen, compute its output "
                                                             "of each train utterance once and keep it in memory "
                                                             "when it fits in this many GB (0: recompute every "
                                                             "epoch); docs/architecture.md, models/frontend.py.")
    eval_every: int = Field(100, ge=1, description="Evaluate on dev every N steps.")
    mixed_precision: MixedPrecision = Field("auto", description="auto, no, bf16 or fp16 "
                                                                "(auto: bf16 on a GPU that has it).")
    seed: int = Field(0, description="Random seed.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each head.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_text(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each task at most once")
        return value

    @field_validator("loss_weights", mode="before")
    @classmethod
    def _weights_text(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, str):
            return value
        weights: dict[str, Any] = {}
        for part in comma_list(value):
            name, sep, number = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not TASK=NUMBER")
            weights[name.strip()] = number.strip()
        return weights

    @field_validator("loss_weights")
    @classmethod
    def _weights_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()):
            raise ValueError("weights must not be negative")
        return value

    @model_validator(mode="after")
    def _weights_of_tasks(self) -> "FinetuneSettings":
        extra = [t for t in self.loss_weights if t not in self.tasks]
        if extra:
            raise ValueError(f"loss_weights: {', '.join(extra)} not among the tasks ({', '.join(self.tasks)})")
        return self

    def weight(self, task: str) -> float:
        return float(self.loss_weights.get(task, 1.0))  # type: ignore[call-overload]  # loss_weights is dict | str before validation


# ---------------------------------------------------------------- extract
class ExtractSettings(StageSettings):
    """`phonorm extract`: every layer of several models on the very same frames. Times in seconds of audio."""

    split: Split = Field("test", description="Split to extract: train, dev or test.")
    layers: str = Field("all", description="all, or a list like 0,6,12 or L0,L6.")
    frames: FrameMode = Field("labelled", description="labelled, middle (middle third of each segment) or all.")
    pool: PoolMode = Field("frame", description="frame, or segment (mean over the segment's frames).")
    max_per_speaker_label: Optional[int] = Field(None, ge=1, description="Cap rows per speaker and phone label.")
    dtype: StoreDtype = Field("float16", description="float16 or float32 on disk.")
    batch_seconds: float = Field(60.0, gt=0, description="Seconds of audio per forward batch.")
    classic: bool = Field(True, description="Also store classic baselines (F0 Hz, z-scored F0 in semitones, MFCC).")
    seed: int = Field(0, description="Seed for the per-speaker caps.")
    chunk_seconds: float = Field(600.0, gt=0, description="Audio per resumable unit: progress is recorded "
                                                          "after each chunk.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ",".join(str(int(v)) for v in value)
        return value

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, value: str) -> str:
        if not _LAYERS.match(value):
            raise ValueError("'all' or a comma-separated list of layer indices such as 0,6,12 or L0,L6")
        return value.strip()

    def selection_settings(self) -> dict[str, Any]:
        """The settings that decide the rows (a store resumes or grows only when they match)."""
        return dict(split=self.split, frames=self.frames, pool=self.pool,
                    max_per_speaker_label=self.max_per_speaker_label, seed=self.seed)
