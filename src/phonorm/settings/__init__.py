"""The settings of every stage, each declared once (torch-free, so `--help` and YAML checks are fast):
one module per stage (`corpus`, `pretrain`, `finetune`, `evaluate`, `extract`, `analyze`, `report`),
the shared vocabulary beside them (`vocabulary`: tasks, splits, probe labels, choices; `base`:
`StageSettings`). Everything is importable from `phonorm.settings`.

One pydantic model per stage. The same class serves the Python API (`finetune(..., settings=
FinetuneSettings(tasks=["tone"]))`), the command line (`cli.py` builds each command's options from
the fields: name, default, constraint and help text) and the experiment YAML (`experiment/config.py`
nests these classes). Constraints live in `Field(...)`/`Literal[...]`; `extra="forbid"` makes a
misspelt setting an error instead of a silently ignored line (scikit-learn's per-estimator
`_parameter_constraints` is the model: the rule is next to the parameter, checked before any work).

Forms the command line writes as text are accepted as text too: `tasks="tone,sex"`,
`loss_weights="tone=1,sex=0.5"`, `layers=[0, 4]` or `"0,4"`.
"""

from phonorm.settings.analyze import ANALYZE_DEFAULTS, REMOVED_ANALYZE_SETTINGS, AnalyzeSettings
from phonorm.settings.base import REPEATABLE, StageSettings, comma_list
from phonorm.settings.corpus import SPEAKER_RULES, AishellSettings, LabelSettings, PrepareSettings, SynthSettings
from phonorm.settings.evaluate import EvaluateSettings
from phonorm.settings.extract import ExtractSettings
from phonorm.settings.finetune import FinetuneSettings
from phonorm.settings.pretrain import PretrainObjective, PretrainSettings
from phonorm.settings.report import ReportSettings
from phonorm.settings.vocabulary import (
    MODEL_SIZES,
    PROBE_FAMILIES,
    PROBE_LABELS,
    SPLITS,
    SUPPORTED_MODEL_TYPES,
    SVCCA_RULES,
    TASKS,
    AlignmentFormat,
    FrameMode,
    LabelScheme,
    MixedPrecision,
    ModelSize,
    PoolMode,
    ProbeFamily,
    ProbeLabel,
    Split,
    StoreDtype,
    SvccaRule,
    Task,
    ToneMode,
)

__all__ = [
    "ANALYZE_DEFAULTS", "MODEL_SIZES", "PROBE_FAMILIES", "PROBE_LABELS", "REMOVED_ANALYZE_SETTINGS", "REPEATABLE", "SPEAKER_RULES",
    "SPLITS", "SUPPORTED_MODEL_TYPES", "SVCCA_RULES", "TASKS", "AishellSettings", "AlignmentFormat",
    "AnalyzeSettings", "EvaluateSettings", "ExtractSettings", "FinetuneSettings", "FrameMode", "LabelScheme",
    "LabelSettings", "MixedPrecision", "ModelSize", "PoolMode", "PrepareSettings", "PretrainObjective",
    "PretrainSettings", "ProbeFamily", "ProbeLabel", "ReportSettings", "Split", "StageSettings", "StoreDtype", "SvccaRule",
    "SynthSettings", "Task", "ToneMode", "comma_list",
]
