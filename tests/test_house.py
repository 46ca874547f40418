"""The house's rules are enforced: `make lint`'s import contracts (pyproject.toml) break on a copy of
the source where the analysis imports torch and the models, which the rules forbid (`.ci/run` runs
`make lint` before the tests, so such a change cannot land)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_analysis_module_that_imports_torch_or_the_models_breaks_the_lint(tmp_path):
    shutil.copytree(ROOT / "src" / "phonorm", tmp_path / "src" / "phonorm",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    probes = tmp_path / "src" / "phonorm" / "analysis" / "probes.py"
    probes.write_text(probes.read_text() + "\n\ndef _gpu():\n    import torch\n\n    return torch\n")
    sums = tmp_path / "src" / "phonorm" / "analysis" / "sums.py"
    sums.write_text(sums.read_text() + "\n\ndef _backbone():\n    from phonorm.models import backbone\n\n"
                    "    return backbone\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0, broken.stdout
    text = " ".join(broken.stdout.split())
    assert "never import torch, transformers, accelerate or concept-erasure BROKEN" in text
    assert "phonorm.analysis.probes -> torch" in text
    assert "Readers of results never import the models: analysis, report, validation, figures and records BROKEN" \
        in text
    assert "phonorm.analysis.sums -> phonorm.models.backbone" in text
