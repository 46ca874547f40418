"""The `phonorm` command line: parses options and calls one function per command.

Heavy libraries (torch, transformers) are imported inside each command so that `--help` is fast.
A `PhonormError` (bad input, bad settings) is printed as one line naming the file and the problem,
with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from phonorm.errors import PhonormError

app = typer.Typer(
    name="phonorm",
    help="How fine-tuning normalizes self-supervised speech models, layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# --------------------------------------------------------------------------- corpus
@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the corpus to."),
    speakers: int = typer.Option(24, help="Number of speakers (half F, half M)."),
    utterances: int = typer.Option(40, help="Utterances per speaker."),
    seed: int = typer.Option(0, help="Random seed; the corpus is deterministic for a seed."),
) -> None:
    """Make an offline Mandarin corpus: OUT/wav, OUT/textgrid, OUT/speakers.tsv.

    Example: phonorm synth /tmp/c --speakers 8 --utterances 10 --seed 3
    """
    from phonorm.corpus.synth import synthesize_corpus

    summary = synthesize_corpus(out, n_speakers=speakers, n_utterances=utterances, seed=seed)
    typer.echo(summary)


@app.command()
def prepare(
    out: Path = typer.Argument(..., help="Folder to write the prepared corpus to."),
    audio: Path = typer.Option(..., help="Folder of audio files (<utt>.wav, .flac, ...; searched recursively)."),
    alignments: Path = typer.Option(..., help="Folder of TextGrids, or a CTM file / folder of CTM files."),
    speakers: Path = typer.Option(..., help="Speakers table: speaker<TAB>sex (F or M)."),
    format: str = typer.Option("textgrid", help="Alignment format: textgrid or ctm."),
    scheme: str = typer.Option("mandarin", help="Label scheme: mandarin (phone + tone) or plain (phones as given)."),
    tone: str = typer.Option("surface", help="For Chinese-character words: surface (third-tone sandhi) or citation tone."),
    split_file: Optional[Path] = typer.Option(None, help="utterance<TAB>split (train/dev/test) instead of the speaker-disjoint default."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad utterances (listed in OUT/skipped.tsv) instead of stopping."),
    seed: int = typer.Option(0, help="Seed of the default speaker split."),
    dev: float = typer.Option(0.1, help="Share of each sex's speakers in dev (default split)."),
    test: float = typer.Option(0.1, help="Share of each sex's speakers in test (default split)."),
) -> None:
    """Turn any aligned corpus into the prepared corpus every later stage reads.

    Example: phonorm prepare /tmp/p --audio /tmp/c/wav --alignments /tmp/c/textgrid --speakers /tmp/c/speakers.tsv
    """
    from phonorm.corpus.prepare import prepare_corpus

    report = prepare_corpus(
        out, audio_dir=audio, alignments=alignments, speakers_file=speakers, fmt=format, scheme=scheme,
        tone_mode=tone, split_file=split_file, skip_bad=skip_bad, seed=seed, dev=dev, test=test,
    )
    typer.echo(report)


@app.command("prepare-aishell")
def prepare_aishell(
    out: Path = typer.Argument(..., help="Folder to write the prepared corpus to."),
    root: Path = typer.Option(..., help="AISHELL-1 root (holds data_aishell/ and resource_aishell/)."),
    alignments: Path = typer.Option(..., help="Folder of TextGrids, or a CTM file / folder of CTM files."),
    format: str = typer.Option("textgrid", help="Alignment format: textgrid or ctm."),
    tone: str = typer.Option("surface", help="surface (third-tone sandhi) or citation tone for character text."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad utterances instead of stopping."),
) -> None:
    """AISHELL-1 with its own train/dev/test split and speaker sex.

    Example: phonorm prepare-aishell /tmp/a --root /data/aishell --alignments /data/aishell_mfa
    """
    from phonorm.corpus.aishell import prepare_aishell as run

    typer.echo(run(out, root=root, alignments=alignments, fmt=format, tone_mode=tone, skip_bad=skip_bad))


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
def pretrain(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder (its train split is used)."),
    out: Path = typer.Option(..., help="Model folder to write (Hugging Face format)."),
    size: str = typer.Option("tiny", help="tiny, small or base."),
    steps: int = typer.Option(2000, help="Optimizer steps."),
    seed: int = typer.Option(0, help="Random seed."),
    batch_seconds: float = typer.Option(16.0, help="Seconds of audio per batch."),
    lr: float = typer.Option(5e-4, help="Peak learning rate."),
    warmup: float = typer.Option(0.08, help="Linear warm-up, as a fraction of the steps."),
    eval_every: Optional[int] = typer.Option(None, help="Held-out contrastive accuracy every N steps (default: 10 times)."),
) -> None:
    """Self-supervised wav2vec 2.0 pre-training of a small model (contrastive + diversity loss).

    Example: phonorm pretrain /tmp/p --out /tmp/m/pre --size tiny --steps 1500
    """
    from phonorm.models.pretrain import pretrain as run

    typer.echo(run(corpus, out=out, size=size, steps=steps, seed=seed, batch_seconds=batch_seconds, lr=lr,
                   warmup=warmup, eval_every=eval_every))


@app.command()
def finetune(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: str = typer.Option(..., help="Hub id or local folder of a wav2vec 2.0 / HuBERT / WavLM model."),
    tasks: str = typer.Option(..., help="Comma-separated tasks: tone, phone, sex (e.g. tone,sex)."),
    out: Path = typer.Option(..., help="Model folder to write."),
    loss_weights: Optional[str] = typer.Option(None, help="Per-task loss weights, e.g. tone=1,sex=0.5."),
    epochs: float = typer.Option(10.0, help="Passes over the training split."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (backbone); heads use 10x."),
    warmup: float = typer.Option(0.1, help="Warm-up, as a fraction of the steps."),
    batch_seconds: float = typer.Option(32.0, help="Seconds of audio per batch."),
    freeze_feature_encoder: bool = typer.Option(True, help="Keep the convolutional feature encoder frozen."),
    eval_every: int = typer.Option(100, help="Evaluate on dev every N steps."),
    mixed_precision: str = typer.Option("auto", help="auto, no, bf16 or fp16 (auto: bf16 on a GPU that has it)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Frame-wise (multi)task fine-tuning: one linear head per task on the last layer.

    Example: phonorm finetune /tmp/p --model /tmp/m/pre --tasks tone,sex --out /tmp/m/tone_sex
    """
    from phonorm.models.finetune import FinetuneSettings, finetune as run

    settings = FinetuneSettings(
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        loss_weights=_parse_weights(loss_weights), epochs=epochs, max_steps=max_steps, lr=lr,
        warmup=warmup, batch_seconds=batch_seconds, freeze_feature_encoder=freeze_feature_encoder,
        eval_every=eval_every, mixed_precision=mixed_precision, seed=seed,
    )
    typer.echo(run(corpus, model=model, out=out, settings=settings))


@app.command()
def evaluate(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: Path = typer.Option(..., help="A model folder written by phonorm finetune."),
    split: str = typer.Option("test", help="train, dev or test."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by task."),
) -> None:
    """Per-task frame accuracy, macro-F1, chance, confusion matrix, by-sex breakdown.

    Example: phonorm evaluate /tmp/p --model /tmp/m/tone_sex --split test --json
    """
    from phonorm.models.evaluate import evaluate as run, format_evaluation

    result = run(corpus, model_dir=model, split=split)
    typer.echo(json.dumps(result, ensure_ascii=False) if as_json else format_evaluation(result))


# --------------------------------------------------------------------------- features
@app.command()
def extract(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    model: List[str] = typer.Option(..., help="NAME=MODEL (hub id or folder); repeat for several models."),
    out: Path = typer.Option(..., help="Feature store folder to write."),
    split: str = typer.Option("test", help="Split to extract."),
    layers: str = typer.Option("all", help="all, or a list like 0,6,12 or L0,L6."),
    frames: str = typer.Option("labelled", help="labelled, middle (middle third of each segment) or all."),
    pool: str = typer.Option("frame", help="frame, or segment (mean over the segment's frames)."),
    max_per_speaker_label: Optional[int] = typer.Option(None, help="Cap rows per speaker and phone label."),
    dtype: str = typer.Option("float16", help="float16 or float32 on disk."),
    batch_seconds: float = typer.Option(60.0, help="Seconds of audio per forward batch."),
    classic: bool = typer.Option(True, help="Also store classic baselines (F0 Hz, z-scored F0 in semitones, MFCC)."),
    seed: int = typer.Option(0, help="Seed for the per-speaker caps."),
) -> None:
    """Embeddings of every layer of several models, on the very same frames.

    Example: phonorm extract /tmp/p --model pre=/tmp/m/pre --model tone=/tmp/m/tone --out /tmp/f
    """
    from phonorm.features.extract import ExtractSettings, extract as run

    settings = ExtractSettings(
        split=split, layers=layers, frames=frames, pool=pool, max_per_speaker_label=max_per_speaker_label,
        dtype=dtype, batch_seconds=batch_seconds, classic=classic, seed=seed,
    )
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
def analyze(
    features: Path = typer.Argument(..., help="A feature store folder."),
    reference: str = typer.Option(..., help="Name of the reference (pre-trained) model in the store."),
    out: Path = typer.Option(..., help="Results folder to write."),
    umap: bool = typer.Option(True, help="Compute UMAP maps (the slowest analysis)."),
    umap_all_layers: bool = typer.Option(False, help="UMAP for every layer (default: first, middle and last layer)."),
    held_out: bool = typer.Option(False, "--held-out", help="Fit similarity on half the speakers, score on the rest."),
    folds: int = typer.Option(5, help="Speaker-disjoint cross-validation folds for probes."),
    bootstrap: int = typer.Option(2000, help="Bootstrap resamples over speakers for probe CIs."),
    seed: int = typer.Option(0, help="Random seed."),
    sample_rows: int = typer.Option(20000, help="Rows (same share per speaker) used by probes, silhouettes and maps; 0 = all."),
    layer_matrix: bool = typer.Option(True, help="Also compare every layer with every reference layer."),
    evaluation: list[str] = typer.Option([], help="MODEL=PATH of an evaluation.json (the model's own task accuracy, "
                                         "primary evidence of claims C3/C4); repeatable."),
    claim_bootstrap: int = typer.Option(2000, help="Paired speaker-bootstrap resamples of the claim checks."),
    erasure: bool = typer.Option(True, help="Linear concept erasure (LEACE) of sex and tone, then probes (causal test of C4)."),
) -> None:
    """Similarity, projections, probes, normalization measures and the study's claim checks.

    Example: phonorm analyze /tmp/f --reference pre --out /tmp/r
    """
    from phonorm.analysis.run import AnalyzeSettings, analyze as run

    evaluations = {}
    for item in evaluation:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--evaluation expects MODEL=PATH, got {item!r}")
        evaluations[name] = path
    settings = AnalyzeSettings(reference=reference, umap=umap, umap_all_layers=umap_all_layers, held_out=held_out, folds=folds,
                               bootstrap=bootstrap, seed=seed, sample_rows=sample_rows or None,
                               layer_matrix=layer_matrix, evaluations=evaluations or None,
                               claim_bootstrap=claim_bootstrap, erasure=erasure)
    typer.echo(run(features, out=out, settings=settings))


@app.command()
def report(
    results: Path = typer.Argument(..., help="A results folder written by phonorm analyze."),
    out: Path = typer.Option(Path("report.html"), help="HTML file to write."),
) -> None:
    """One self-contained HTML page with every number and figure.

    Example: phonorm report /tmp/r --out report.html
    """
    from phonorm.report.html import build_report

    typer.echo(build_report(results, out=out))


@app.command()
def run(
    experiment: Path = typer.Argument(..., help="An experiment YAML file (see examples/)."),
    force: bool = typer.Option(False, help="Redo every stage even when cached."),
) -> None:
    """Run every stage of an experiment, skipping those whose inputs, settings and code are unchanged.

    Example: phonorm run examples/demo.yaml
    """
    from phonorm.experiment import run_experiment

    typer.echo(run_experiment(experiment, force=force))


@app.command()
def demo(
    out: Path = typer.Option(Path("phonorm-demo"), help="Folder for the demo's corpus, models and report."),
    quick: bool = typer.Option(False, "--quick", help="A smaller demo (about 3 minutes)."),
) -> None:
    """The whole study offline: synth, pretrain, fine-tune, extract, analyze, report.

    Example: phonorm demo --quick
    """
    from phonorm.experiment import run_demo

    typer.echo(run_demo(out, quick=quick))


# --------------------------------------------------------------------------- helpers
def _parse_weights(text: Optional[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise PhonormError(f"--loss-weights: {part!r} is not TASK=NUMBER") from None
    return weights


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
    try:
        app()
    except PhonormError as err:
        typer.echo(f"phonorm: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
