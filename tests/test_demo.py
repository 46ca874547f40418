"""End to end: `phonorm demo --quick` runs every stage offline and writes a report with every section;
a second run with nothing changed redoes nothing, quickly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

SECTIONS = ["glance", "corpus", "training", "accuracy", "similarity", "matrices", "probes", "normalization",
            "umap", "explorer", "erasure", "claims", "methods"]


def _demo(out):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "phonorm.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    seconds = time.perf_counter() - tic
    assert done.returncode == 0, done.stderr[-3000:]
    return done, seconds


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done, seconds = _demo(out)
    last = done.stdout.strip().splitlines()[-1]
    report = out / "report.html"
    assert last == f"report: {report.resolve()}", "the report's path is printed at the end"
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["synth", "corpus"] + ["finetune", "evaluate"] * 4 + [
        "extract", "analyze", "report"]
    assert all(s["status"] == "ran" for s in stages)

    text = report.read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text
    assert 'class="missing"' not in text, re.findall(r'class="missing">([^<]*)', text)
    for model in ("tone", "phone", "sex", "tone_sex"):
        assert f"<td>{model}</td>" in text
    claims = json.loads(next((out / "analyze").glob("analyze-*/claims.json")).read_text())["claims"]
    assert [c["claim"] for c in claims] == ["C1", "C2", "C3", "C4"]
    for claim in ("C1", "C2", "C3", "C4"):
        assert claim in text
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        from helpers import render_check

        images, broken = render_check(report)
        assert images >= 8 and broken == 0

    # every artifact folder of the run is recognised, complete and consistent
    from phonorm.validate import validate

    for stage in stages:
        result = validate(stage["folder"])
        assert result.ok, result.text()
    kinds = {validate(s["folder"]).kind for s in stages}
    assert {"prepared corpus", "finetuned model folder", "feature store", "analysis results"} <= kinds, kinds
    from phonorm.models.shipped import resolve_model

    shipped = validate(resolve_model("phonorm:tiny-hubert"))  # the demo's reference
    assert shipped.ok and shipped.kind == "pretrained model folder", shipped.text()
    assert validate(out).ok, validate(out).text()

    again, rerun_seconds = _demo(out)
    assert "(0 run, 13 unchanged)" in again.stdout
    print(f"quick demo: {seconds:.1f} s; re-run {rerun_seconds:.1f} s")
