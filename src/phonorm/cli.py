"""The `phonorm` command line: parses options and calls one function per command.

Heavy libraries (torch, transformers) are imported inside each command so that `--help` is fast.
A `PhonormError` (bad input, bad settings) is printed as one line naming the file and the problem,
with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

# NumPy's OpenBLAS started with its own thread pool burns CPU when several threads call it at once,
# even limited to one thread later: `analyze` runs its BLAS calls on its own worker threads (one
# BLAS thread each), and its probe fits took 1.7× the CPU time (1.5× the wall time) unless OpenBLAS
# starts single-threaded. Only read when NumPy is first imported (after this line: nothing above
# imports it); a value the user set wins. torch (extraction, training) uses its own threads, not OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer

from phonorm.cli_settings import SETTINGS, with_settings
from phonorm.errors import PhonormError, WriteError, write_failure
from phonorm.settings import (
    AishellSettings,
    ExtractSettings,
    FinetuneSettings,
    PrepareSettings,
    PretrainSettings,
    SynthSettings,
)
from phonorm.settings.analyze import AnalyzeSettings
from phonorm.settings.evaluate import EvaluateSettings
from phonorm.settings.report import ReportSettings

app = typer.Typer(
    name="phonorm",
    help="How fine-tuning normalizes self-supervised speech models, layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from phonorm import __version__
        from phonorm.artifacts import code_version

        typer.echo(f"phonorm {__version__} ({code_version()})")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """How fine-tuning normalizes self-supervised speech models, layer by layer."""


# --------------------------------------------------------------------------- corpus
@app.command()
@with_settings(SynthSettings)
def synth(
    out: Path = typer.Argument(..., help="Folder to write the corpus to."),
    settings: SynthSettings = SETTINGS,
) -> None:
    """Make an offline Mandarin (or Cantonese) corpus: OUT/wav, OUT/textgrid, OUT/speakers.tsv.

    Example: phonorm synth /tmp/c --speakers 8 --utterances 10 --seed 3 [--language yue]
    """
    from phonorm.corpus.synth import synthesize_corpus

    typer.echo(synthesize_corpus(out, n_speakers=settings.speakers, n_utterances=settings.utterances,
                                 seed=settings.seed, variation=settings.variation, language=settings.language))


@app.command()
@with_settings(PrepareSettings)
def prepare(
    out: Path = typer.Argument(..., help="Folder to write the prepared corpus to."),
    audio: Path = typer.Option(..., help="Folder of audio files (<utt>.wav, .flac, ...; searched recursively)."),
    alignments: Path = typer.Option(..., help="Folder of TextGrids, or a CTM file / folder of CTM files."),
    speakers: Path = typer.Option(..., help="Speakers table: speaker<TAB>sex (F or M)."),
    settings: PrepareSettings = SETTINGS,
) -> None:
    """Turn any aligned corpus into the prepared corpus every later stage reads.

    Example: phonorm prepare /tmp/p --audio /tmp/c/wav --alignments /tmp/c/textgrid --speakers /tmp/c/speakers.tsv
    """
    from phonorm.corpus.prepare import prepare_corpus

    typer.echo(prepare_corpus(out, audio_dir=audio, alignments=alignments, speakers_file=speakers, settings=settings))


@app.command("prepare-aishell")
@with_settings(AishellSettings)
def prepare_aishell(
    out: Path = typer.Argument(..., help="Folder to write the prepared corpus to."),
    root: Path = typer.Option(..., help="AISHELL-1 root (holds data_aishell/ and resource_aishell/)."),
    alignments: Path = typer.Option(..., help="Folder of TextGrids, or a CTM file / folder of CTM files."),
    settings: AishellSettings = SETTINGS,
) -> None:
    """AISHELL-1 with its own train/dev/test split and speaker sex.

    Example: phonorm prepare-aishell /tmp/a --root /data/aishell --alignments /data/aishell_mfa
    """
    from phonorm.corpus.aishell import prepare_aishell as run

    typer.echo(run(out, root=root, alignments=alignments, settings=settings))


@app.command()
def info(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Hours, utterances, speakers by sex, splits and frame counts per label of each task.

    Example: phonorm info /tmp/p --json
    """
    from phonorm.corpus.info import corpus_info, format_info

    summary = corpus_info(corpus)
    typer.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_info(summary))


# --------------------------------------------------------------------------- models
@app.command()
@with_settings(PretrainSettings)
def pretrain(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder (its train split is used)."),
    out: Path = typer.Option(..., help="Model folder to write (Hugging Face format)."),
    settings: PretrainSettings = SETTINGS,
) -> None:
    """Self-supervised pre-training of a small model from scratch: HuBERT's masked prediction of MFCC
    cluster ids (default; a second iteration clusters a model's layer) or wav2vec 2.0's contrastive loss.

    Example: phonorm pretrain /tmp/p --out /tmp/m/pre --steps 2500 --lr 0.003 --unmasked-weight 0.5
    (iteration 2: --targets-from /tmp/m/pre --targets-layer 2; wav2vec 2.0: --objective contrastive)
    """
    from phonorm.models.pretrain import pretrain as run

    typer.echo(run(corpus, out=out, settings=settings))


@app.command()
@with_settings(FinetuneSettings)
def finetune(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: str = typer.Option(..., help="Hub id or local folder of a wav2vec 2.0 / HuBERT / WavLM model."),
    out: Path = typer.Option(..., help="Model folder to write."),
    settings: FinetuneSettings = SETTINGS,
) -> None:
    """Frame-wise (multi)task fine-tuning: one linear head per task on the last layer.

    Example: phonorm finetune /tmp/p --model /tmp/m/pre --tasks tone,sex --out /tmp/m/tone_sex
    """
    from phonorm.models.finetune import finetune as run

    typer.echo(run(corpus, model=model, out=out, settings=settings))


@app.command()
@with_settings(EvaluateSettings)
def evaluate(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: Path = typer.Option(..., help="A model folder written by phonorm finetune."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by task."),
    settings: EvaluateSettings = SETTINGS,
) -> None:
    """Per-task frame accuracy, macro-F1, chance, confusion matrix, by-sex breakdown.

    Example: phonorm evaluate /tmp/p --model /tmp/m/tone_sex --split test --json
    """
    from phonorm.models.evaluate import evaluate as run
    from phonorm.models.evaluate import format_evaluation

    result = run(corpus, model_dir=model, settings=settings)
    typer.echo(json.dumps(result, ensure_ascii=False) if as_json else format_evaluation(result))


# --------------------------------------------------------------------------- features
@app.command()
@with_settings(ExtractSettings)
def extract(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: List[str] = typer.Option(..., help="NAME=MODEL (hub id or folder); repeat for several models."),
    out: Path = typer.Option(..., help="Feature store folder to write."),
    settings: ExtractSettings = SETTINGS,
) -> None:
    """Embeddings of every layer of several models, on the very same frames.

    Example: phonorm extract /tmp/p --model pre=/tmp/m/pre --model tone=/tmp/m/tone --out /tmp/f
    """
    from phonorm.features.extract import extract as run

    typer.echo(run(corpus, models=_parse_models(model), out=out, settings=settings))


@app.command()
def export(
    features: Path = typer.Argument(..., help="A feature store folder."),
    model: str = typer.Option(..., help="Model name in the store."),
    layer: str = typer.Option(..., help="Layer, e.g. L6."),
    out: Path = typer.Option(..., help="FILE.parquet or FILE.csv."),
) -> None:
    """One row per frame or segment with its labels and embedding columns, for pandas or R.

    Example: phonorm export /tmp/f --model tone --layer L4 --out tone_L4.csv
    """
    from phonorm.features.export import export as run

    typer.echo(run(features, model=model, layer=layer, out=out))


# --------------------------------------------------------------------------- analysis, report
@app.command()
@with_settings(AnalyzeSettings)
def analyze(
    features: Path = typer.Argument(..., help="A feature store folder."),
    out: Path = typer.Option(..., help="Results folder to write."),
    settings: AnalyzeSettings = SETTINGS,
) -> None:
    """Similarity, projections, probes, normalization measures and the study's claim checks.

    Example: phonorm analyze /tmp/f --reference pre --out /tmp/r
    """
    from phonorm.analyze import analyze as run

    typer.echo(run(features, out=out, settings=settings))


@app.command()
@with_settings(ReportSettings)
def report(
    results: Path = typer.Argument(..., help="A results folder written by phonorm analyze."),
    out: Path = typer.Option(Path("report.html"), help="HTML file to write."),
    settings: ReportSettings = SETTINGS,
) -> None:
    """One self-contained HTML page with every number and figure, and an explorer of the frames you can
    hover, listen to and slide through the layers (--static: figures only; --no-audio: no sound).

    Example: phonorm report /tmp/r --out report.html
    """
    from phonorm.report.html import build_report

    typer.echo(build_report(results, out=out, settings=settings))


@app.command()
def validate(
    folder: Path = typer.Argument(..., help="Any folder phonorm wrote: prepared corpus, model, feature store, results, run."),
) -> None:
    """Say what an artifact folder is and whether it is complete and consistent (exit status 2 if not).

    Example: phonorm validate phonorm-demo/extract/extract-0123456789ab
    """
    from phonorm.validate import validate_or_raise

    typer.echo(validate_or_raise(folder))


JOBS_HELP = ("Stages run side by side: independent fine-tunes, evaluations and pre-trainings, each in a worker "
             "process with cores/jobs threads (default: 2 on a CPU machine with 2+ cores, 1 with a GPU; sweeps: 1).")


@app.command()
def run(
    experiment: Path = typer.Argument(..., help="An experiment YAML file (see examples/)."),
    force: bool = typer.Option(False, help="Redo every stage even when cached."),
    point: Optional[list[str]] = typer.Option(None, help="Sweeps: run only this point (repeatable; ids as in "
                                                         "the run's summary), e.g. to share points out among machines."),
    jobs: Optional[int] = typer.Option(None, min=1, help=JOBS_HELP),
) -> None:
    """Run every stage of an experiment, skipping those whose inputs, settings and code are unchanged.

    Example: phonorm run examples/demo.yaml
    """
    from phonorm.experiment import run_experiment

    typer.echo(run_experiment(experiment, force=force, points=point or (), jobs=jobs))


@app.command()
def demo(
    out: Path = typer.Option(Path("phonorm-demo"), help="Folder for the demo's corpus, models and report."),
    quick: bool = typer.Option(False, "--quick", help="A smaller demo (about 2 minutes on a 2-core CPU) that checks the pipeline."),
    jobs: Optional[int] = typer.Option(None, min=1, help=JOBS_HELP),
) -> None:
    """The whole study offline: synth, pretrain, fine-tune, extract, analyze, report.

    Example: phonorm demo --quick
    """
    from phonorm.experiment import run_demo

    typer.echo(run_demo(out, quick=quick, jobs=jobs))


# --------------------------------------------------------------------------- helpers
def _parse_models(specs: List[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise PhonormError(f"--model {spec!r}: expected NAME=MODEL (hub id or folder)")
        if name in models:
            raise PhonormError(f"--model: the name {name!r} is given twice")
        models[name] = source
    return models


def main() -> None:
    # Stage milestones go to stderr through the `phonorm` logger (progress bars only on a terminal).
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except PhonormError as err:
        _fail(err)
    except Exception as err:
        errno = write_failure(err)
        if errno is None:
            raise
        # A write outside phonorm's own writers (torch, transformers, safetensors, numpy) on a full disk
        # or a read-only folder: still one line, naming the file when the library said which.
        _fail(WriteError(getattr(err, "filename", None), errno))


def _fail(err: PhonormError) -> None:
    """Print `err` as one line (`phonorm: error: ...`) and exit with status 2."""
    from phonorm.progress import close_bars

    close_bars()  # the error starts on its own line, not after a half-drawn bar
    typer.echo(f"phonorm: error: {err}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
