"""`phonorm run EXPERIMENT.yaml` and `phonorm demo`: every stage of a study, through the stage cache.

`--force` deletes and redoes every stage's folder of this experiment. Folders of earlier settings
stay in WORKDIR (a cache: switching a setting back costs nothing); delete WORKDIR/<stage>/ folders
to reclaim space. The report stage writes `context.json` (corpus, model folders, evaluation files,
stage timings) into its own folder and builds the page from it.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import yaml

from phonorm.artifacts import atomic_path, read_json, write_json
from phonorm.errors import InputError
from phonorm.experiment.cache import execute_all, execute_naming_owner, stage_record
from phonorm.experiment.config import Experiment
from phonorm.experiment.load import load_experiment
from phonorm.experiment.plan import Plan, plan_stages
from phonorm.experiment.schedule import default_jobs, execute_parallel, worker_spawner
from phonorm.filecheck import read_json_object
from phonorm.lock import folder_lock
from phonorm.progress import logger


def run_experiment(path: str | Path, force: bool = False, points: Sequence[str] = (), jobs: Optional[int] = None) -> str:
    """Run every stage of the experiment file `path` (cached, resumable); returns a summary that
    ends with the report's path. A file with `sweep:` runs every point (only `points`, when
    given) and the sweep's table and page (experiment/sweep.py). `jobs`: stages run side by side
    (independent trainings and evaluations, experiment/schedule.py; default `default_jobs()`; a
    sweep runs its stages one at a time)."""
    experiment, _ = load_experiment(path)
    _note_a_far_workdir(experiment.workdir, Path(path))
    if points and experiment.sweep is None:
        raise InputError(Path(path), "--point: this experiment has no sweep: section")
    ids = [p.id for p in experiment.sweep_points()]
    unknown = [p for p in points if p not in ids]
    if unknown:  # before taking the work folder's lock: a typo needs no wait
        raise InputError(Path(path), f"--point {', '.join(unknown)}: no such point of the sweep; its points are "
                                     f"{', '.join(ids)}")
    from phonorm.experiment.hub import check_hub_models

    check_hub_models(experiment, Path(path))  # before any stage: a misspelt hub id needs no synth to show
    with folder_lock(experiment.workdir, f"phonorm run {Path(path).name}"):
        mark_running(experiment.workdir)
        if experiment.sweep is not None:
            from phonorm.experiment.sweep import run_sweep

            return run_sweep(experiment, Path(path), force=force, only=points)
        return _run(experiment, Path(path), force, default_jobs() if jobs is None else jobs)


def _run(experiment: Experiment, path: Path, force: bool, jobs: int) -> str:
    plan = plan_stages(experiment, path.resolve())
    workdir = experiment.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    logger.info(f"phonorm run: experiment {experiment.name!r} → {workdir}")
    if jobs > 1:
        stages = plan.stages
        execute_parallel(stages, jobs=jobs, spawn=worker_spawner(path.resolve(), force), force=force,
                         run_here=lambda s: execute_naming_owner(s, stages[:stages.index(s)], force=force))
    else:
        execute_all(plan.stages, force=force)
    report = workdir / "report.html"
    source = plan.report.folder / "report.html"
    if not report.is_file() or report.read_bytes() != source.read_bytes():
        with atomic_path(report) as tmp:
            shutil.copyfile(source, tmp)
    write_json(workdir / "run.json", {
        "experiment": str(Path(path).resolve()), "report": str(report),
        "stages": [stage_record(s) for s in plan.stages], "complete": True,
    })
    return _summary(plan, report)


def _note_a_far_workdir(workdir: Path, path: Path) -> None:
    """Say so when `workdir` lies outside the experiment file's folder (and its parent, where the examples
    keep runs/) and the current directory: a mistyped `../../..` would otherwise write elsewhere in silence."""
    near = [path.resolve().parent, path.resolve().parent.parent, Path.cwd().resolve()]
    if not any(workdir.resolve().is_relative_to(folder) for folder in near):
        logger.warning(f"phonorm run: note: workdir {workdir.resolve()} lies outside the experiment file's folder "
                       f"and the current directory; every output goes there")


def mark_running(workdir: Path) -> None:
    """An earlier run.json now describes a run that is being replaced: `complete: false` until this run
    writes its own, so that `validate` never calls a killed run complete on the strength of the last one."""
    record = workdir / "run.json"
    if record.is_file():
        earlier, _ = read_json_object(record)  # a damaged earlier record: replaced by the mark alone
        write_json(record, {**(earlier or {}), "complete": False})


def _summary(plan: Plan, report: Path) -> str:
    lines = [f"experiment {plan.experiment.name}: {len(plan.stages)} stages "
             f"({sum(s.status in ('ran', 'resumed') for s in plan.stages)} run, "
             f"{sum(s.status == 'cached' for s in plan.stages)} unchanged)"]
    for s in plan.stages:
        took = f"{s.seconds:7.1f} s" + (" (earlier)" if s.status == "cached" else "")
        lines.append(f"  {s.title:<18} {s.status:<7} {took:<19} CPU {s.cpu_seconds:7.1f} s   {s.folder}")
    claims = plan.analyze.folder / "claims.json"
    if claims.is_file():
        for row in read_json(claims).get("claims", []):
            lines.append(f"  {row.get('claim')}: {row.get('status')}")
    lines.append(f"report: {report}")
    return "\n".join(lines)


DEMO_FILES = {False: "demo.yaml", True: "demo-quick.yaml"}


def demo_config_text(quick: bool = False) -> str:
    """The demo experiment shipped inside the package (src/phonorm/data/)."""
    return resources.files("phonorm").joinpath("data", DEMO_FILES[quick]).read_text(encoding="utf-8")


def run_demo(out: str | Path, quick: bool = False, jobs: Optional[int] = None) -> str:
    """The whole study offline on the built-in demo experiment, in the folder `out`. The experiment
    file is written to `out` (edit it and `phonorm run` it to vary the study)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(demo_config_text(quick))
    data["workdir"] = "."
    path = out / DEMO_FILES[quick]
    text = (f"# The built-in phonorm demo{' (quick)' if quick else ''}; re-run with: phonorm run {path}\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return run_experiment(path, jobs=jobs)
