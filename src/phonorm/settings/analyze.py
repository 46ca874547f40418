"""`AnalyzeSettings`: the settings of `phonorm analyze` and of `phonorm run`'s analyze stage (the CLI
options and the YAML `analyze:` section are built from it, as for every other stage), and
`ANALYZE_DEFAULTS`, each analysis setting's default read from it."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from phonorm.settings.base import StageSettings, comma_list
from phonorm.settings.vocabulary import PROBE_LABELS, ProbeFamily, ProbeLabel, SvccaRule

# ---------------------------------------------------------------- analyze
#: Settings of earlier versions that are refused with the reason (bootstrap counts: intervals are analytic now).
REMOVED_ANALYZE_SETTINGS = ("bootstrap", "claim_bootstrap")


class AnalyzeSettings(StageSettings):
    """`phonorm analyze`: similarity, projections, probes, normalization measures and claim checks."""

    reference: str = Field(description="Name of the reference (pre-trained) model in the store.")
    umap: bool = Field(True, description="Compute UMAP maps (the slowest analysis).")
    held_out: bool = Field(False, description="Fit similarity on half the speakers, score on the rest.")
    folds: int = Field(5, ge=2, description="Speaker-disjoint cross-validation folds for probes.")
    seed: int = Field(0, description="Random seed.")
    models: Optional[list[str]] = Field(None, description="Models to analyse (default: all in the store).")
    labels: list[ProbeLabel] = Field(default_factory=lambda: list(PROBE_LABELS),  # type: ignore[arg-type]  # a list of the Literal's values: mypy sees list[str]
                                     description="Labels to probe: tone, phone, sex, speaker.")
    layer_matrix: bool = Field(True, description="Also compare every layer with every reference layer.")
    sample_rows: Optional[int] = Field(20000, ge=10, description="Rows (same share per speaker) used by probes, "
                                                                 "silhouettes and maps; 0 = all.")
    umap_fit_rows: int = Field(3000, ge=10, description="Rows the UMAP map is fitted on (stratified by speaker "
                                                        "and tone; the other sampled rows are transformed).")
    umap_dims: int = Field(50, ge=2, description="PCA dimensions UMAP sees.")
    umap_all_layers: bool = Field(False, description="UMAP for every layer (default: first, middle and last layer).")
    silhouette_rows: int = Field(2000, ge=10, description="Rows for silhouette scores.")
    probe: ProbeFamily = Field("logistic", description="The probes' classifier: logistic (L2 logistic regression, "
                               "C=1, lbfgs to its optimum) or lda (linear discriminant analysis with Ledoit-Wolf "
                               "shrinkage, closed form: faster on many classes, but it read speaker-level sex less "
                               "well on the demo). docs/statistics.md, 'The probe'.")
    probe_max_iter: int = Field(1000, ge=1, description="Most iterations of each logistic probe's solver (a limit, "
                                "not a stopping rule: probes stop at their optimum, docs/statistics.md; the demo's "
                                "64-dimension probes needed up to 823).")
    block: int = Field(8192, ge=1, description="Rows per streamed block (memory ≈ 3 × block × dim × 8 bytes "
                                               "per layer pair; 8192 was as fast as 16384 at 768 dims).")
    products: Literal["float32", "float64"] = Field("float32", description="Precision of each streamed block's d×d "
        "products (the sums across blocks are float64): float64 is the exact path (bench/scale.py --check-products).")
    figures: bool = Field(True, description="Draw the figures.")
    progress: bool = Field(True, description="Show a progress bar.")
    # claims with uncertainty, similarity floors, erasure (docs/statistics.md)
    similarity_jackknife: bool = Field(False, description="Delete-one-speaker jackknife CIs for every similarity "
                                                          "measure (one evaluation of each per speaker); linear CKA "
                                                          "always has one (claim C2 decides on it; SVCCA and PWCCA "
                                                          "decide no verdict, so theirs are off by default: about "
                                                          "4 s a layer at the study's size).")
    svcca_keep: float = Field(0.99, gt=0, le=1, description="SVCCA keeps the top directions explaining this share "
                                                            "of the variance (counted by --svcca-rule).")
    svcca_rule: SvccaRule = Field(
        "eigenvalue", description="How SVCCA counts the variance it keeps: eigenvalue (s², the variance) or "
                                  "singular_value (s).")
    svcca_dims: int = Field(20, ge=1, description="Directions kept by svcca_fixed (comparable across layers).")
    similarity_floor: bool = Field(True, description="Permutation floor of every similarity measure (the "
                                                     "reference's rows shuffled within speaker).")
    erasure: bool = Field(True, description="Linear concept erasure (LEACE) of sex and of tone, then tone and sex "
                                            "probes, per layer (the causal test of C4).")
    erasure_models: Optional[list[str]] = Field(None, description="Models to erase from (default: every model "
                                                                  "fine-tuned on tone).")
    evaluations: Optional[dict[str, str]] = Field(
        None, json_schema_extra={"cli": "repeat", "cli_name": "evaluation"},
        description="MODEL=PATH of an evaluation.json (the model's own task accuracy, primary evidence of claims "
                    "C3/C4); repeatable. phonorm run passes its evaluate stages' files.")
    speaker_sums_max_bytes: int = Field(1_000_000_000, ge=0, description="Memory cap of the per-speaker similarity "
                                                                         "sums (CKA bootstrap) per layer pair.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the streamed d×d sums run: auto (a CUDA GPU when torch sees one), cpu or cuda; "
                            "the same precision (--products) on both, so the numbers agree to rounding.")
    workers: int = Field(0, ge=0, description="Threads for the per-layer similarity measures and probe folds "
                                              "(0 = one per CPU core).")

    @field_validator("evaluations", mode="before")
    @classmethod
    def _evaluations_text(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            if not value:
                return None
            pairs = [part.partition("=") for part in (comma_list(value) if isinstance(value, str) else value)]
            bad = [a for a, sep, b in pairs if not sep or not a or not b]
            if bad:
                raise ValueError(f"expected MODEL=PATH, got {bad[0]!r}")
            return {a: b for a, _, b in pairs}
        return value

    @model_validator(mode="before")
    @classmethod
    def _removed_resamples(cls, value: Any) -> Any:
        removed = [k for k in REMOVED_ANALYZE_SETTINGS if isinstance(value, dict) and k in value]
        if removed:
            raise ValueError(f"{', '.join(removed)}: removed; every interval is now analytic (cluster-robust t, "
                             "jackknife; docs/statistics.md), so there is no resample count to set. Delete the setting.")
        return value

    @field_validator("models", "labels", "erasure_models", "sample_rows", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        if info.field_name == "sample_rows":
            return None if value in (0, "0") else value  # 0 = all rows
        return comma_list(value)


# Each analysis setting's default, read from AnalyzeSettings (the measures' keyword defaults, the report).
ANALYZE_DEFAULTS: dict[str, Any] = {name: field.get_default(call_default_factory=True)
                                    for name, field in AnalyzeSettings.model_fields.items() if not field.is_required()}
