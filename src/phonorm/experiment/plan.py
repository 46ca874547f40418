"""The stages of an experiment, in the order they run, each with its key (nothing is run here):

    synth ─► corpus ─► pretrain[name] ─► finetune[name] ─► evaluate[name]
                                   └────────────┴──► extract ─► analyze ─► report

For one point of a sweep (`point`), the swept pretrain entry takes the point's settings (and keeps
snapshots at the sweep's checkpoints; a `snapshot` stage then takes the point's one as the
pre-trained model), and every stage that depends on it is named `<name>.<point id>`; the stages
that do not (synth, corpus, other models) keep their names and keys, so every point shares them.

Each stage body calls one stage function of the package, imported only when the stage runs (so
planning, and `phonorm run --help`, stay torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from phonorm.errors import PhonormError
from phonorm.experiment.cache import Stage, _sha, fingerprint, stage_record
from phonorm.experiment.config import AishellCorpus, CorpusConfig, Experiment, PrepareCorpus, SweepPoint, SynthCorpus
from phonorm.records.analysis import EvaluationFile
from phonorm.records.context import ContextExperiment, ContextModel, RunContext
from phonorm.settings import (
    ExtractSettings,
    FinetuneSettings,
    PretrainSettings,
    SynthSettings,
)
from phonorm.settings.analyze import AnalyzeSettings
from phonorm.settings.evaluate import EvaluateSettings


@dataclass(frozen=True)
class Plan:
    """The resolved stages of an experiment (or of one sweep point), in run order. Every stage an
    experiment always has is a field; `synth` (a synthetic corpus only) and `run` (a sweep point's
    pre-training run) are the optional ones. `plans[i].stages[j]` may be replaced by a shared stage
    object of an earlier point (`sweep.plan_sweep`): the list is the plan's, the order fixed."""

    experiment: Experiment
    file: Path
    stages: list[Stage]
    corpus: Stage
    models: dict[str, Stage]  # name → pretrain/finetune/snapshot/external stage
    evaluations: dict[str, Stage]
    extract: Stage
    analyze: Stage
    report: Stage
    specific: frozenset[str]  # keys of the stages that belong to `point`
    synth: Optional[Stage] = None
    point: Optional[SweepPoint] = None
    run: Optional[Stage] = None  # under a sweep point: the swept pre-training run


@dataclass
class _Stages:
    """The stages as `plan_stages` adds them (then frozen into a `Plan`)."""

    point: Optional[SweepPoint]
    stages: list[Stage] = field(default_factory=list)
    specific: set[str] = field(default_factory=set)

    def add(self, stage: Stage, own: bool = False) -> Stage:
        """Append `stage`; under a sweep point, a stage that is the point's `own` or takes an input
        from one of the point's stages is named after the point."""
        if self.point is not None and (own or any(v in self.specific for v in stage.inputs.values())):
            if not own:
                stage.name = f"{stage.name}.{self.point.id}"
            self.specific.add(stage.key)
        self.stages.append(stage)
        return stage


def plan_stages(experiment: Experiment, file: Path, point: Optional[SweepPoint] = None) -> Plan:
    """Every stage of the experiment with its key, in the order they run (nothing is run here);
    with `point`, those of that point of the experiment's sweep."""
    plan = _Stages(point)
    swept = experiment.swept.name if point is not None and experiment.swept is not None else None
    workdir = experiment.workdir

    # ---- corpus
    corpus, synth = _corpus_stages(plan, experiment.corpus, workdir)

    # ---- models
    models: dict[str, Stage] = {}
    evaluations: dict[str, Stage] = {}
    run: Optional[Stage] = None
    for name, source in experiment.models.items():
        key = fingerprint(source) if Path(source).is_dir() else f"hub:{source}"
        models[name] = Stage("model", name, {"source": key}, {"source": source}, None, workdir,
                             external=Path(source))
    for p in experiment.pretrain:
        settings = p.model_dump(exclude={"name"}, exclude_unset=True)
        # HuBERT's iteration 2 clusters a layer of an earlier pre-training of this file: it runs after it
        targets = models.get(str(settings.get("targets_from")))
        inputs = {"corpus": corpus.key, **({"targets_from": targets.key} if targets is not None else {})}
        if point is None or p.name != swept:
            models[p.name] = plan.add(Stage("pretrain", p.name, inputs, settings,
                                            _run_pretrain(corpus, settings, targets), workdir))
            continue
        checkpoints = experiment.sweep.checkpoints if experiment.sweep is not None else []
        settings = {**settings, **point.settings}
        if checkpoints:
            settings["keep_steps"] = sorted(set(settings.get("keep_steps", [])) | set(checkpoints))
        run_name = ".".join(n for n in (p.name, point.run) if n)
        stage = run = plan.add(Stage("pretrain", run_name, inputs, settings,
                                     _run_pretrain(corpus, settings, targets), workdir), own=True)
        if point.step is not None:
            # The snapshot's key leaves out which other steps the run keeps (saving snapshots does
            # not change training), so adding a checkpoint re-runs the pre-training but no other point.
            run_key = _sha({k: v for k, v in settings.items() if k != "keep_steps"})
            stage = plan.add(Stage("snapshot", f"{p.name}.{point.id}", {"corpus": corpus.key, "run": run_key},
                                   {"step": point.step}, _run_snapshot(stage, point.step), workdir), own=True)
        models[p.name] = stage
    for f in experiment.finetune:
        base = models.get(f.base)
        base_key = base.key if base is not None else (fingerprint(f.base) if Path(f.base).is_dir() else f"hub:{f.base}")
        settings = f.settings.model_dump(exclude_unset=True)
        models[f.name] = plan.add(Stage("finetune", f.name, {"corpus": corpus.key, "base": base_key}, settings,
                                        _run_finetune(corpus, base, f.base, settings), workdir))
        evaluations[f.name] = plan.add(Stage(
            "evaluate", f.name, {"corpus": corpus.key, "model": models[f.name].key},
            {"split": experiment.evaluate.split},
            _run_evaluate(corpus, models[f.name], experiment.evaluate), workdir))

    # ---- extract, analyze, report
    # The report stage's body needs the finished plan (its context names every stage): it reads it
    # from `resolved`, filled in below, when it runs.
    resolved: list[Plan] = []
    names = experiment.store_models
    extract_settings = experiment.extract.model_dump(exclude_unset=True, exclude={"models"})
    extract = plan.add(Stage("extract", "extract",
                             {"corpus": corpus.key, **{f"model:{n}": models[n].key for n in names}},
                             {"models": names, **extract_settings},
                             _run_extract(corpus, {n: models[n] for n in names}, extract_settings), workdir))
    analyze_settings = {"reference": experiment.reference,
                        **experiment.analyze.model_dump(exclude_unset=True, exclude={"reference"})}
    # The evaluations are the claims' primary evidence: inputs by key, their files given at run time
    # (so that the key does not depend on where the workdir is).
    analyze = plan.add(Stage("analyze", "analyze",
                             {"features": extract.key, **{f"evaluate:{n}": s.key for n, s in evaluations.items()}},
                             analyze_settings, _run_analyze(extract, analyze_settings, evaluations), workdir))
    report = plan.add(Stage(
        "report", "report",
        {"analyze": analyze.key, "corpus": corpus.key,
         **{f"model:{n}": s.key for n, s in models.items()},
         **{f"evaluate:{n}": s.key for n, s in evaluations.items()}},
        _report_settings(experiment, file, point), _run_report(resolved), workdir))
    resolved.append(Plan(experiment, file, plan.stages, corpus, models, evaluations, extract, analyze, report,
                         frozenset(plan.specific), synth=synth, point=point, run=run))
    return resolved[0]


def _corpus_stages(plan: _Stages, corpus_cfg: CorpusConfig, workdir: Path) -> tuple[Stage, Optional[Stage]]:
    """(the corpus stage, the synth stage or None) of the experiment's corpus: section."""
    synth: Optional[Stage] = None
    if corpus_cfg.prepared is not None:
        folder = corpus_cfg.prepared
        key = _sha([fingerprint(folder / n) for n in ("utterances.parquet", "segments.parquet", "labels.json")
                    if (folder / n).exists()])
        corpus = Stage("corpus", "corpus", {"prepared": key}, {"prepared": str(folder)}, None, workdir,
                       external=folder)
    elif corpus_cfg.synth is not None:
        s = corpus_cfg.synth
        synth = plan.add(Stage("synth", "synth", {},
                               s.model_dump(include=set(SynthSettings.model_fields), exclude_unset=True),
                               _run_synth(s), workdir))
        corpus = plan.add(Stage("corpus", "corpus", {"synth": synth.key},
                                {"from": "synth", "split_seed": s.split_seed, "dev": s.dev, "test": s.test},
                                _run_prepare_synth(synth, s), workdir))
    elif corpus_cfg.prepare is not None:
        c = corpus_cfg.prepare
        inputs = {"audio": fingerprint(c.audio), "alignments": fingerprint(c.alignments),
                  "speakers": fingerprint(c.speakers)}
        for name in ("split_file", "phone_map"):
            if getattr(c, name) is not None:
                inputs[name] = fingerprint(getattr(c, name))
        corpus = plan.add(Stage("corpus", "corpus", inputs, {"prepare": c.model_dump(mode="json")},
                                _run_prepare(c), workdir))
    else:
        a = corpus_cfg.aishell
        assert a is not None  # CorpusConfig holds exactly one of prepared, synth, prepare, aishell
        inputs = {"root": fingerprint(a.root), "alignments": fingerprint(a.alignments)}
        if a.phone_map is not None:
            inputs["phone_map"] = fingerprint(a.phone_map)
        corpus = plan.add(Stage("corpus", "corpus", inputs, {"aishell": a.model_dump(mode="json")},
                                _run_aishell(a), workdir))
    return corpus, synth


def _report_settings(experiment: Experiment, file: Path, point: Optional[SweepPoint]) -> dict[str, Any]:
    """What the report shows of the experiment file; a sweep point's report leaves out the sweep
    section (adding a point must not redo the other points' reports) and names its point."""
    if point is None:
        return {"experiment": experiment.model_dump(mode="json"), "file": str(file)}
    return {"experiment": experiment.model_dump(mode="json", exclude={"sweep"}), "file": str(file),
            "point": point.model_dump(mode="json")}


# ---- the stage bodies: each calls one stage function of the package (imported only when it runs)
def _run_synth(s: SynthCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.synth import synthesize_corpus

        return synthesize_corpus(folder, n_speakers=s.speakers, n_utterances=s.utterances, seed=s.seed,
                                 variation=s.variation, language=s.language)
    return run


def _run_prepare_synth(synth: Stage, s: SynthCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.prepare import prepare_corpus

        source = synth.folder
        return prepare_corpus(folder, audio_dir=source / "wav", alignments=source / "textgrid",
                              speakers_file=source / "speakers.tsv",
                              settings=s.prepare_settings())
    return run


def _run_prepare(c: PrepareCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.prepare import prepare_corpus

        return prepare_corpus(folder, audio_dir=c.audio, alignments=c.alignments, speakers_file=c.speakers,
                              settings=c.settings())
    return run


def _run_aishell(c: AishellCorpus) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.corpus.aishell import prepare_aishell

        return prepare_aishell(folder, root=c.root, alignments=c.alignments, settings=c.settings())
    return run


def _run_pretrain(corpus: Stage, settings: dict[str, Any], targets_from: Optional[Stage] = None
                  ) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.pretrain import pretrain

        given = {**settings, "targets_from": str(targets_from.folder)} if targets_from is not None else settings
        return pretrain(corpus.folder, out=folder, settings=PretrainSettings(**given))
    return run


def _run_snapshot(pretrain: Stage, step: int) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.pretrain import snapshot_folder

        source = snapshot_folder(pretrain.folder, step)
        if not (source / "phonorm.json").is_file():
            raise PhonormError(f"{source}: no snapshot of step {step} in the pre-training folder")
        _link_tree(source, folder)
        return f"the model of {pretrain.folder.name} after {step} steps"
    return run


def _link_tree(source: Path, target: Path) -> None:
    """Copy the folder `source` into `target`, as hard links where the file system allows (no
    second copy of the weights), else as copies."""
    import os
    import shutil

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def _run_finetune(corpus: Stage, base: Optional[Stage], source: str, settings: dict[str, Any]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.finetune import finetune

        model = source if base is None else _source_of(base)
        return finetune(corpus.folder, model=model, out=folder, settings=FinetuneSettings(**settings))
    return run


def _run_evaluate(corpus: Stage, model: Stage, settings: EvaluateSettings) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.models.evaluate import evaluate

        result = evaluate(corpus.folder, model_dir=model.folder, settings=settings)
        EvaluationFile.write(folder, {"model": model.name, "model_dir": str(model.folder), "split": settings.split,
                                      "tasks": result})
        return "; ".join(f"{task} accuracy {r['accuracy']:.3f} (chance {r['chance']:.3f})" for task, r in result.items())
    return run


def _run_extract(corpus: Stage, models: dict[str, Stage], settings: dict[str, Any]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.features.extract import extract

        sources = {name: _source_of(stage) for name, stage in models.items()}
        return extract(corpus.folder, models=sources, out=folder, settings=ExtractSettings(**settings))
    return run


def _source_of(model: Stage) -> str:
    """What to pass as `--model`: a stage's folder, or a `models:` entry as given (hub id or folder)."""
    return model.settings["source"] if model.kind == "model" else str(model.folder)


def _run_analyze(features: Stage, settings: dict[str, Any], evaluations: dict[str, Stage]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.analyze import analyze

        files = {name: str(stage.folder / "evaluation.json") for name, stage in evaluations.items()}
        files.update(settings.get("evaluations") or {})  # those written in the YAML (models not evaluated here)
        return analyze(features.folder, out=folder, settings=AnalyzeSettings(**{**settings, "evaluations": files or None}))
    return run


def _run_report(resolved: list[Plan]) -> Callable[[Path], str]:
    def run(folder: Path) -> str:
        from phonorm.report.html import build_report

        (plan,) = resolved
        context = write_context(plan, folder)
        return build_report(plan.analyze.folder, out=folder / "report.html", context=context,
                            settings=plan.experiment.report.settings())
    return run


def write_context(plan: Plan, folder: Path) -> Path:
    """FOLDER/context.json for the report of `plan` (FOLDER: the report stage's own folder)."""
    experiment = plan.experiment
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
