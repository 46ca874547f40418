"""Helpers several test modules share (imported as `helpers`; tests/ is on pytest's python path):
an experiment file and its writer, cheap stand-ins for every stage function (`FakeStages`), and
the check that a report's figures render in headless Chromium (`render_check`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from phonorm.experiment import hub

BASE = {
    "name": "t",
    "corpus": {"synth": {"speakers": 4, "utterances": 2}},
    "pretrain": [{"name": "pre", "steps": 5}],
    "finetune": [
        {"name": "tone", "base": "pre", "tasks": ["tone"], "settings": {"epochs": 1}},
        {"name": "sex", "base": "pre", "tasks": "sex", "settings": {"epochs": 1}},
    ],
    "analyze": {"probe_max_iter": 50},
}


def write_yaml(folder: Path, data, name: str = "exp.yaml") -> Path:
    """`data` (a dict, or YAML text) written to FOLDER/NAME; its path."""
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


class FakeStages:
    """Cheap stand-ins for every stage function, installed as the modules the stages import."""

    def __init__(self, monkeypatch):
        # stand-ins live in this process: stages run here, one at a time (workers would plan the real stages;
        # the scheduler is tested in test_schedule.py and end to end by the demo)
        monkeypatch.setattr("phonorm.experiment.run.default_jobs", lambda: 1)
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.models: dict[str, str] = {}  # fine-tuned name → the base it was given
        self.stored: dict[str, str] = {}  # extracted name → source

        def record(kind: str, out) -> Path:
            out = Path(out)
            self.calls.append((kind, out.name))
            out.mkdir(parents=True, exist_ok=True)
            (out / "partial").write_text("started")
            if f"{kind}:{out.name.rsplit('-', 1)[0]}" in self.fail:
                self.fail.discard(f"{kind}:{out.name.rsplit('-', 1)[0]}")
                raise KeyboardInterrupt("interrupted")
            return out

        def synthesize_corpus(out, n_speakers, n_utterances, seed, variation="none", language="cmn"):
            record("synth", out)
            return "synth"

        def prepare_corpus(out, **kwargs):
            record("corpus", out)
            return "prepared"

        def prepare_aishell(out, *, root, alignments, settings):
            assert Path(root).is_dir() and Path(alignments).is_dir()
            record("corpus", out)
            return "prepared"

        def pretrain(corpus, *, out, settings):
            assert Path(corpus).is_dir() and settings.size
            record("pretrain", out)
            return "pretrained"

        def finetune(corpus, *, model, out, settings):
            self.models[out.name.rsplit("-", 1)[0]] = model
            record("finetune", out)
            return "finetuned"

        def evaluate(corpus, *, model_dir, settings):
            return {"tone": {"accuracy": 0.5, "chance": 0.2}}

        def extract(corpus, *, models, out, settings):
            self.stored = dict(models)
            record("extract", out)
            return "extracted"

        def analyze(features, *, out, settings):
            record("analyze", out)
            return "analysed"

        def build_report(results, *, out, context, settings=None):
            assert Path(context).is_file() and Path(results).is_dir()
            record("report", Path(out).parent)
            Path(out).write_text("<html></html>")
            return "report"

        def evaluate_recorded(corpus, *, model_dir, settings):
            self.calls.append(("evaluate", Path(model_dir).name))
            return evaluate(corpus, model_dir=model_dir, settings=settings)

        modules = {
            "phonorm.corpus.synth": {"synthesize_corpus": synthesize_corpus},
            "phonorm.corpus.prepare": {"prepare_corpus": prepare_corpus},
            "phonorm.corpus.aishell": {"prepare_aishell": prepare_aishell},
            "phonorm.models.pretrain": {"pretrain": pretrain},
            "phonorm.models.finetune": {"finetune": finetune},
            "phonorm.models.evaluate": {"evaluate": evaluate_recorded},
            "phonorm.features.extract": {"extract": extract},
            "phonorm.analyze": {"analyze": analyze},
            "phonorm.report.html": {"build_report": build_report},
        }
        for name, attributes in modules.items():
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            monkeypatch.setitem(sys.modules, name, module)
        # No stage loads a model here, so no hub id needs to be there (test_an_unknown_hub_id_... checks them).
        monkeypatch.setattr(hub, "hub_model_problem", lambda repo_id: None)

    def kinds(self) -> list[str]:
        return sorted(f"{kind}:{name.rsplit('-', 1)[0]}" for kind, name in self.calls)

    def take(self) -> list[str]:
        done = self.kinds()
        self.calls.clear()
        return done


# --------------------------------------------------------------------------- rendering
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = document.images, broken = 0;
  for (var i = 0; i < images.length; i++) {
    var ok = images[i].complete && images[i].naturalWidth > 0;
    images[i].setAttribute('data-rendered', ok ? 'yes' : 'no');
    if (!ok) broken++;
  }
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken', broken);
});
</script>"""


def render_check(report: Path) -> tuple[int, int]:
    """(images, broken images) of `report` after loading it in headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium when it can: "
                    "scripts/ensure-chromium.sh)")
    checked = report.with_name("checked.html")
    checked.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
            capture_output=True, text=True, timeout=120)
    match = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-broken="(\d+)"', done.stdout)
    assert match, f"chromium did not render the page (rc {done.returncode}): {done.stderr[-500:]}"
    return int(match.group(1)), int(match.group(2))
