"""The analysis of a fixed feature store gives the point estimates stored in tests/data/analysis_summary.json.

The stored file was written by this module (`python tests/test_regression.py --write`, run from the
repository root with phonorm importable) from the code before the analysis was split into steps; a
refactor must reproduce it. Tolerances: similarity and normalization values 1e-5 (float32 block
products accumulated in float64 move them by < 1e-6), accuracies and claim estimates 1e-3 (probe
solvers may stop at slightly different points), claim statuses and verdicts exactly.

Rewrite the stored file only for a change that is meant to change the numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

STORED = Path(__file__).parent / "data" / "analysis_summary.json"
TOLERANCE = {"similarity": 1e-5, "layer_matrix": 1e-5, "normalization": 1e-5, "probes": 1e-3, "erasure": 1e-3,
             "claims": 1e-3}


def run_fixed_analysis(root: Path) -> Path:
    """Analyse the fixed store (4 models × 3 layers, 10 speakers, 480 rows) into root/r; returns root/r."""
    from fake_store import make_feature_store
    from phonorm.analyze import analyze
    from phonorm.settings.analyze import AnalyzeSettings

    store = make_feature_store(root / "f", models=("pretrained", "tone", "sex", "tone_sex"), n_speakers=10,
                               n_utterances=2, n_frames=24, n_layers=3, parts=2)
    settings = AnalyzeSettings(reference="pretrained", umap=False, figures=False, held_out=True, folds=3, seed=0,
                               progress=False, workers=2, device="cpu", similarity_jackknife=False,
                               labels=["tone", "sex"], erasure_models=["tone_sex"])
    analyze(store, out=root / "r", settings=settings)
    return root / "r"


def _number(value) -> float | None:
    """A JSON-safe float: None for NaN/None."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _rows(table: pd.DataFrame, keys: list[str], values: list[str]) -> dict[str, dict[str, float | None]]:
    return {"|".join(str(row[k]) for k in keys): {v: _number(row[v]) for v in values}
            for row in table.to_dict("records")}


def summarize(out: Path) -> dict:
    """The point estimates of an analysis folder: {section: {key: {field: value}}}, claims with
    statuses and every comparison's estimate and verdict."""
    similarity = pd.read_csv(out / "similarity.csv")
    normalization = pd.read_csv(out / "normalization.csv")
    probes = pd.read_csv(out / "probes.csv")
    erasure = pd.read_csv(out / "erasure.csv")
    matrices = {}
    for path in sorted((out / "layer_matrix").glob("*.csv")):
        table = pd.read_csv(path, index_col=0)
        matrices.update({f"{path.stem}|{a}|{b}": {"value": _number(table.loc[a, b])}
                         for a in table.index for b in table.columns})
    claims = json.loads((out / "claims.json").read_text())
    claim_summary = {}
    for claim in claims["claims"]:
        claim_summary[claim["claim"]] = {"status": claim["status"]}
        for i, measured in enumerate(claim.get("measured", [])):
            for j, comparison in enumerate(measured.get("comparisons", [])):
                claim_summary[f"{claim['claim']}|{i}|{j}|{comparison['name']}"] = {
                    "verdict": comparison.get("verdict"), "estimate": _number(comparison.get("estimate"))}
    return {
        "similarity": _rows(similarity, ["model", "layer", "measure"],
                            ["value", "floor", "held_out_value", "held_out_floor"]),
        "layer_matrix": matrices,
        "normalization": _rows(normalization, ["model", "layer", "measure", "label"], ["value"]),
        "probes": _rows(probes, ["model", "layer", "label"], ["accuracy", "chance"]),
        "erasure": _rows(erasure, ["model", "layer", "erased", "probed"], ["accuracy", "chance", "change"]),
        "claims": claim_summary,
    }


def differences(fresh: dict, stored: dict) -> list[str]:
    """One line per value of `fresh` that is missing from `stored`, extra, or outside its tolerance."""
    problems = []
    for section, tolerance in TOLERANCE.items():
        a, b = fresh.get(section, {}), stored.get(section, {})
        for key in sorted(set(a) ^ set(b)):
            problems.append(f"{section} {key}: {'new' if key in a else 'missing'}")
        for key in sorted(set(a) & set(b)):
            for field in sorted(set(a[key]) | set(b[key])):
                x, y = a[key].get(field), b[key].get(field)
                if isinstance(x, str) or isinstance(y, str) or x is None or y is None:
                    if x != y:
                        problems.append(f"{section} {key} {field}: {x!r}, stored {y!r}")
                elif abs(x - y) > tolerance:
                    problems.append(f"{section} {key} {field}: {x:.8g}, stored {y:.8g} (tolerance {tolerance:g})")
    return problems


def test_point_estimates_match_the_stored_summary(tmp_path):
    stored = json.loads(STORED.read_text())
    fresh = summarize(run_fixed_analysis(tmp_path))
    assert all(fresh[section] for section in TOLERANCE)  # every section holds values
    problems = differences(fresh, stored)
    assert not problems, "\n".join(problems[:40])


def test_the_comparison_can_fail():
    stored = json.loads(STORED.read_text())
    changed = json.loads(json.dumps(stored))
    key = next(iter(changed["similarity"]))
    changed["similarity"][key]["value"] += 2e-5
    changed["claims"]["C1"]["status"] = "inconclusive"
    del changed["probes"][next(iter(changed["probes"]))]
    problems = differences(changed, stored)
    assert len(problems) == 3, problems
    assert any(p.startswith(f"similarity {key} value") for p in problems)
    assert any(p.startswith("probes ") and p.endswith("missing") for p in problems)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_regression.py --write   (rewrites tests/data/analysis_summary.json)")
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as folder:
        summary = summarize(run_fixed_analysis(Path(folder)))
    STORED.parent.mkdir(exist_ok=True)
    STORED.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED}: " + ", ".join(f"{len(v)} {k}" for k, v in summary.items()))
