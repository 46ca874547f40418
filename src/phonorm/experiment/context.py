"""The run context the report stage hands to the report (`report.context.RunContext`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phonorm.experiment.cache import Stage
from phonorm.experiment.plan import Plan
from phonorm.report.context import ContextExperiment, ContextModel, RunContext


def stage_record(stage: Stage) -> dict[str, Any]:
    return {"stage": stage.kind, "name": stage.name, "status": stage.status, "seconds": round(stage.seconds, 2),
            "cpu_seconds": round(stage.cpu_seconds, 2), "key": stage.key[:12], "folder": str(stage.folder)}


def write_context(plan: Plan, folder: Path) -> Path:
    """FOLDER/context.json for the report of `plan` (FOLDER: the report stage's own folder)."""
    experiment = plan.experiment
    assert plan.corpus is not None and plan.extract is not None and plan.analyze is not None
    models = []
    for name, stage in plan.models.items():
        entry = ContextModel(name=name, kind="finetuned" if stage.kind == "finetune" else "pretrained",
                             trained_here=stage.kind != "model")
        if stage.kind == "model":
            source = stage.settings["source"]
            entry.source, entry.folder = source, source if Path(source).is_dir() else None
        else:
            entry.folder = str(stage.folder)
        if stage.kind == "finetune":
            spec = next(f for f in experiment.finetune if f.name == name)
            entry.tasks, entry.base = list(spec.tasks), spec.base
        models.append(entry)
    context = RunContext(
        experiment=ContextExperiment(name=experiment.name, description=experiment.description, file=str(plan.file),
                                     title=experiment.report.title, config=experiment.model_dump(mode="json")),
        corpus=str(plan.corpus.folder), synth=str(plan.synth.folder) if plan.synth else None,
        features=str(plan.extract.folder), results=str(plan.analyze.folder), reference=experiment.reference,
        models=models,
        evaluations={name: str(stage.folder / "evaluation.json") for name, stage in plan.evaluations.items()},
        stages=[stage_record(s) for s in plan.stages if s is not plan.report],
    )
    folder.mkdir(parents=True, exist_ok=True)
    return context.save(folder)
