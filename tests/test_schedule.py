"""`phonorm run --jobs`: independent stages side by side, each only after the stages it needs, the
others in order; a failed worker stops the run with its error line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phonorm.errors import PhonormError
from phonorm.experiment.cache import Stage
from phonorm.experiment.schedule import execute_parallel, log_path

# A worker stand-in: note its start, sleep, note its end, then write the stage's marker (or fail).
WORKER = """
import json, sys, time, pathlib
folder, key, journal, seconds, fail = sys.argv[1:6]
with open(journal, "a") as f: f.write(json.dumps(["start", folder, time.time()]) + "\\n")
time.sleep(float(seconds))
if fail == "1":
    print("error: the corpus has no tone labels"); sys.exit(2)
pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
(pathlib.Path(folder) / ".phonorm-stage.json").write_text(json.dumps({"key": key, "seconds": float(seconds), "summary": "ok"}))
with open(journal, "a") as f: f.write(json.dumps(["end", folder, time.time()]) + "\\n")
"""


def _stages(workdir: Path) -> list[Stage]:
    def here(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        with open(workdir / "journal", "a") as f:
            f.write(json.dumps(["here", str(folder), time.time()]) + "\n")
        return "ok"

    corpus = Stage("corpus", "corpus", {"root": "x"}, {}, here, workdir)
    stages = [corpus]
    models = {}
    for name in ("tone", "phone", "sex"):
        models[name] = Stage("finetune", name, {"corpus": corpus.key}, {"n": name}, here, workdir)
        stages += [models[name], Stage("evaluate", name, {"model": models[name].key}, {}, here, workdir)]
    stages.append(Stage("extract", "extract", {f"model:{n}": s.key for n, s in models.items()}, {}, here, workdir))
    return stages


def _spawner(workdir: Path, seconds: float = 0.6, failing: str = ""):
    def spawn(stage: Stage, threads: int) -> subprocess.Popen:
        log = log_path(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            return subprocess.Popen([sys.executable, "-c", WORKER, str(stage.folder), stage.key,
                                     str(workdir / "journal"), str(seconds), "1" if stage.name == failing else "0"],
                                    stdout=out, stderr=subprocess.STDOUT)
    return spawn


def _journal(workdir: Path) -> list[tuple[str, str, float]]:
    rows = [json.loads(line) for line in (workdir / "journal").read_text().splitlines()]
    return [(what, Path(folder).name.split("-")[0] + ":" + Path(folder).parent.name, at) for what, folder, at in rows]


def test_independent_stages_run_side_by_side_and_each_after_what_it_needs(tmp_path):
    stages = _stages(tmp_path)
    execute_parallel(stages, jobs=2, spawn=_spawner(tmp_path))
    assert all(s.done() for s in stages) and all(s.status == "ran" for s in stages)
    events = _journal(tmp_path)
    when = {(what, name): at for what, name, at in events}
    # two workers at a time, never three
    running, most = 0, 0
    for what, _, _ in sorted(events, key=lambda e: e[2]):
        running += {"start": 1, "end": -1}.get(what, 0)
        most = max(most, running)
    assert most == 2
    # the second fine-tune starts before the first ends; each evaluation only after its model
    assert when[("start", "phone:finetune")] < when[("end", "tone:finetune")]
    for name in ("tone", "phone", "sex"):
        assert when[("start", f"{name}:evaluate")] >= when[("end", f"{name}:finetune")]
    # the corpus before every worker, the extraction after all of them
    assert when[("here", "corpus:corpus")] < min(at for what, _, at in events if what == "start")
    assert when[("here", "extract:extract")] >= max(at for what, _, at in events if what == "end")
    # a second run finds every stage done and starts no worker
    (tmp_path / "journal").unlink()
    again = _stages(tmp_path)
    execute_parallel(again, jobs=2, spawn=_spawner(tmp_path))
    assert all(s.status == "cached" for s in again) and not (tmp_path / "journal").exists()


def test_a_failed_worker_stops_the_run_with_its_error_line_and_keeps_the_others_work(tmp_path):
    stages = _stages(tmp_path)
    with pytest.raises(PhonormError, match=r"finetune phone failed in its worker \(exit 2\): error: the corpus has no "
                                           r"tone labels \(log: .*finetune-phone-"):
        execute_parallel(stages, jobs=2, spawn=_spawner(tmp_path, failing="phone"))
    by_name = {s.title: s for s in stages}
    assert by_name["finetune tone"].done()  # the worker beside it finished its stage
    assert not by_name["evaluate phone"].done() and not by_name["extract"].done()


def test_one_job_never_runs_two_workers_at_once(tmp_path):
    stages = _stages(tmp_path)
    execute_parallel(stages, jobs=1, spawn=_spawner(tmp_path, seconds=0.2))
    events = sorted(_journal(tmp_path), key=lambda e: e[2])
    workers = [what for what, _, _ in events if what in ("start", "end")]
    assert workers == ["start", "end"] * 6 and all(s.done() for s in stages)
