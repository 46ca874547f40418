"""Sweeps: `phonorm run` of an experiment file with a `sweep:` section.

Each point (`config.SweepConfig.points`) is the experiment with the swept pretrain entry's settings
replaced by the point's (or its snapshot at a checkpoint step): `plan.plan_stages(..., point=)`
gives its stages, named after the point where they depend on it. The points' stages go through the
one stage cache, each folder once: shared stages (synth, corpus, the one pre-training run of a
checkpoint sweep, models not swept) run once, and adding a point runs only that point's stages
(plus, on the checkpoint axis, the pre-training run again: a new step must be kept; the other
points' snapshots are reused, their keys do not depend on which steps are kept). A pre-training
run whose every snapshot is already cached is not run again.

Last, the `sweep` stage (`summary.summarize`) reads every point's analysis into `sweep.csv`, and
the sweep page is drawn from it (`report/sweep.py`): both are copied to / written in WORKDIR.

Points are independent: `phonorm run X.yaml --point ID` runs only those points' stages (no
summary); running the file without `--point` in a work folder holding every point's stage folders
(copied together from several machines) only adds the summary and the page.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from phonorm.artifacts import atomic_path, write_json
from phonorm.errors import InputError, PhonormError
from phonorm.experiment.cache import Stage, execute, execute_all, stage_record
from phonorm.experiment.config import Experiment, SweepConfig, SweepPoint
from phonorm.experiment.plan import Plan, plan_stages
from phonorm.progress import logger

PAGE = "sweep.html"


@dataclass(frozen=True)
class SweepPlan:
    experiment: Experiment
    file: Path
    points: list[SweepPoint]
    plans: list[Plan]  # one per point, in sweep order
    stages: list[Stage]  # the selected points' stages, each folder once, in run order
    summary: Stage
    selected: list[str]


def _point_entry(experiment: Experiment, point: SweepPoint, plan: Plan) -> dict[str, Any]:
    """What the summary reads of one point (folders and model names)."""
    tone = next((f.name for f in experiment.finetune if f.tasks == ["tone"] and f.name in experiment.store_models),
                None)
    swept = experiment.swept
    return {"id": point.id, "values": point.values, "results": str(plan.analyze.folder),
            "features": str(plan.extract.folder), "report": str(plan.report.folder / "report.html"),
            "reference": experiment.reference, "tone_model": tone,
            "pretrained": str(plan.models[swept.name].folder) if swept is not None else None}


def plan_sweep(experiment: Experiment, file: Path, only: Sequence[str] = ()) -> SweepPlan:
    """Every point's stages (only the points `only`, when given) and the summary stage."""
    points = experiment.sweep_points()
    ids = [p.id for p in points]
    unknown = [p for p in only if p not in ids]
    if unknown:
        raise InputError(file, f"--point {', '.join(unknown)}: no such point of the sweep; its points are "
                               f"{', '.join(ids)}")
    plans = [plan_stages(experiment, file, point=p) for p in points]
    selected = list(only) or ids
    stages: list[Stage] = []
    canonical: dict[Path, Stage] = {}
    for point, plan in zip(points, plans):
        for i, stage in enumerate(plan.stages):
            if stage.folder in canonical:  # a stage shared with an earlier point: one object, run once
                plan.stages[i] = stage = canonical[stage.folder]
            canonical[stage.folder] = stage
            if point.id in selected and not any(s is stage for s in stages):
                stages.append(stage)
    entries = [_point_entry(experiment, p, plan) for p, plan in zip(points, plans)]
    analyze = experiment.analyze
    resamples = (experiment.sweep or SweepConfig()).resamples
    settings = {"points": [p.model_dump(mode="json") for p in points], "resamples": resamples,
                "seed": analyze.seed}
    inputs = {f"{p.id}:{kind}": getattr(plan, kind).key for p, plan in zip(points, plans)
              for kind in ("analyze", "extract", "report")}
    inputs.update({f"{p.id}:model": plan.models[_swept_name(experiment)].key for p, plan in zip(points, plans)})
    summary = Stage("sweep", "sweep", inputs, settings, _run_summary(entries, resamples, analyze.seed),
                    experiment.workdir)
    return SweepPlan(experiment, file, points, plans, stages, summary, selected)


def _run_summary(entries: list[dict[str, Any]], resamples: int, seed: int) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.experiment.summary import summarize

        return summarize(entries, folder, resamples=resamples, seed=seed)
    return run


def _not_needed(stage: Stage, sweep: SweepPlan, force: bool) -> bool:
    """A checkpoint sweep's pre-training run whose every snapshot (of the selected points) is
    already cached: its final model is used by no point, so it need not run again."""
    if force or stage.kind != "pretrain" or stage.done():
        return False
    snapshots = [plan.models[_swept_name(plan.experiment)] for p, plan in zip(sweep.points, sweep.plans)
                 if plan.run is not None and plan.run.folder == stage.folder and p.id in sweep.selected]
    return bool(snapshots) and all(s.kind == "snapshot" and s.done() for s in snapshots)


def run_sweep(experiment: Experiment, path: Path, force: bool = False, only: Sequence[str] = ()) -> str:
    """Run the selected points of the sweep (all by default), then the summary and the page."""
    sweep = plan_sweep(experiment, path.resolve(), only)
    workdir = experiment.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    logger.info(f"phonorm run: sweep {experiment.name!r}: {len(sweep.selected)} of {len(sweep.points)} points "
                f"→ {workdir}")
    execute_all(sweep.stages, force=force, skip=lambda stage: _not_needed(stage, sweep, force))
    lines = []
    if only:
        lines.append(f"sweep {experiment.name}: ran points {', '.join(sweep.selected)}; run without --point "
                     "(in a work folder holding every point's stage folders) for the table and page")
    else:
        execute(sweep.summary, force=force)
        from phonorm.report.sweep import build_sweep_page

        with atomic_path(workdir / "sweep.csv") as tmp:
            shutil.copyfile(sweep.summary.folder / "sweep.csv", tmp)
        build_sweep_page(sweep.summary.folder, out=workdir / PAGE, title=experiment.report.title,
                         name=experiment.name, description=experiment.description)
    write_json(workdir / "run.json", {
        "experiment": str(path.resolve()), "report": str(workdir / PAGE) if not only else None,
        "points": [{**p.model_dump(mode="json"), "report": str(plan.report.folder / "report.html"),
                    "results": str(plan.analyze.folder)} for p, plan in zip(sweep.points, sweep.plans)
                   if p.id in sweep.selected],
        "complete": True,
        "stages": [stage_record(s) for s in sweep.stages + ([] if only else [sweep.summary])
                   if s.status != "not needed"],
        "not_needed": [stage_record(s) for s in sweep.stages if s.status == "not needed"],
    })
    return "\n".join(lines + [_summary(sweep, bool(only))])


def _summary(sweep: SweepPlan, partial: bool) -> str:
    stages = sweep.stages + ([] if partial else [sweep.summary])
    lines = [f"sweep {sweep.experiment.name}: {len(sweep.selected)} points, {len(stages)} stages "
             f"({sum(s.status in ('ran', 'resumed') for s in stages)} run, "
             f"{sum(s.status == 'cached' for s in stages)} unchanged, "
             f"{sum(s.status == 'not needed' for s in stages)} not needed)"]
    selected = [(p, plan) for p, plan in zip(sweep.points, sweep.plans) if p.id in sweep.selected]
    uses: dict[Path, int] = {}
    for _, plan in selected:
        for s in plan.stages:
            uses[s.folder] = uses.get(s.folder, 0) + 1
    for point, plan in selected:
        own = [s for s in plan.stages if s.key in plan.specific and uses[s.folder] == 1]
        seconds = sum(s.seconds for s in own)
        cpu = sum(s.cpu_seconds for s in own)
        lines.append(f"  point {point.id:<28} its own stages {seconds:8.1f} s (CPU {cpu:8.1f} s)   "
                     f"{plan.report.folder / 'report.html'}")
    shared = [s for s in stages if uses.get(s.folder, 0) > 1 or all(s.key not in plan.specific for _, plan in selected)]
    shared = [s for s in shared if s is not sweep.summary]
    lines.append(f"  shared stages {sum(s.seconds for s in shared):.1f} s: "
                 + ", ".join(f"{s.title} {s.status}" for s in shared))
    if not partial:
        lines.append(f"table: {sweep.experiment.workdir / 'sweep.csv'}")
        lines.append(f"sweep report: {sweep.experiment.workdir / PAGE}")
    return "\n".join(lines)


def _swept_name(experiment: Experiment) -> str:
    """The name of the pre-training entry a sweep varies (an `ExperimentConfig` with a sweep always has one)."""
    swept = experiment.swept
    if swept is None:
        raise PhonormError(f"{experiment.name}: a sweep needs the pre-training entry it varies (sweep.pretrain)")
    return str(swept.name)
