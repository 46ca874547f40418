"""`phonorm validate FOLDER`: what an artifact folder is, and whether it is complete and consistent.

Each kind of folder is recognised by the file its stage writes last and checked with the same
class that writes it (as lhotse validates each manifest type): a prepared corpus
(`corpus.store.PreparedCorpus`), a model folder (`records.card.ModelCard`, config.json, the
safetensors files), a feature store (`features.manifest.StoreManifest`, every layer file's header,
size and values against it), a results folder (`settings.json`, written last, and the tables and
figures it lists), a run folder of `phonorm run` (`run.json`, every stage folder's marker, and each
stage folder validated in turn). A folder that holds a stage's files but not the record it writes
last is named unfinished. The checks of model folders and feature stores, file by file, and the
`Validation` verdict live in `validate_files.py`.

Every file is checked from its header and size (`filecheck.py`: npy shape × dtype against the bytes,
safetensors header and tensor sizes, Parquet footer, JSON against its model); layers and weights are
scanned for NaN/inf a block at a time. Each problem is one line naming the file and the defect;
nothing a damaged file does ends in a traceback. Torch is not imported.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Optional, TypeVar

from phonorm.artifacts import JsonRecord
from phonorm.errors import InputError, PhonormError
from phonorm.filecheck import (
    parquet_problem,
    read_json_object,
)
from phonorm.records.analysis import AnalysisRecord, ClaimsFile, EvaluationFile
from phonorm.records.context import RunContext
from phonorm.records.corpus import LabelsFile, SynthFile
from phonorm.records.tables import ERASURE, NORMALIZATION, PROBES, SIMILARITY, ResultTable
from phonorm.validate_files import Validation, check_model, check_store, relative_to
from phonorm.wording import counted

R = TypeVar("R", bound=JsonRecord)


def validate(folder: str | Path) -> Validation:
    """Recognise and check `folder`. InputError when it is no phonorm artifact folder at all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    for marker, kind, check in _KINDS:
        if (folder / marker).is_file():
            return _checked(folder, kind, check)
    unfinished = _unfinished(folder)
    if unfinished is not None:
        return unfinished
    raise InputError(folder, "not a phonorm artifact folder (no run.json, manifest.json, phonorm.json, "
                             "labels.json, settings.json, synth.json or .phonorm-stage.json)")


def _checked(folder: Path, kind: str, check: Callable[[Path], Validation]) -> Validation:
    """`check(folder)`; a damage the checks did not foresee becomes a problem line, not a traceback."""
    try:
        return check(folder)
    except PhonormError as err:
        return Validation(folder, kind, problems=[str(err)])
    except Exception as err:  # validate reports every damage as a line, whatever raised it
        return Validation(folder, kind, problems=[f"{folder}: cannot be read ({type(err).__name__}: {err})"])


# =========================================================================== unfinished folders
# (files a stage writes before its last record, the record it writes last, the kind, the command)
_UNFINISHED = (
    (("similarity.csv", "probes.csv", "normalization.csv", "claims.json", ".parts"), "settings.json",
     "analysis results", "phonorm analyze"),
    (("frames.parquet", ".extract.json"), "manifest.json", "feature store", "phonorm extract"),
    (("checkpoint",), "phonorm.json", "model folder", "phonorm pretrain or finetune"),
)


def _unfinished(folder: Path) -> Optional[Validation]:
    """The verdict on a folder a stage began but did not finish (its last record missing), or None."""
    for evidence, record, kind, command in _UNFINISHED:
        if any((folder / name).exists() for name in evidence):
            result = Validation(folder, f"unfinished {kind}")
            result.problem(folder / record, f"missing: {command} writes it last, so this {kind} is unfinished "
                                            f"(interrupted, or still running); run {command} again with the "
                                            "same options to complete it")
            return result
    return None


# =========================================================================== prepared corpus
def _corpus(folder: Path) -> Validation:
    from phonorm.corpus.store import PreparedCorpus

    result = Validation(folder, "prepared corpus")
    for name in ("utterances.parquet", "segments.parquet"):
        _, defect = parquet_problem(folder / name)
        if defect:
            result.problem(folder / name, defect)
    _typed(result, LabelsFile, folder)
    if result.problems:
        return result
    try:
        corpus = PreparedCorpus(folder)
        utterances, segments = corpus.all_utterances, corpus.segments
    except InputError as err:
        result.problems.append(str(err))
        return result
    tasks = corpus.label_maps
    result.facts.append(f"{len(utterances)} utterances, {utterances['speaker'].nunique()} speakers, "
                        f"{len(segments)} segments; tasks {', '.join(tasks)}")
    unknown = set(segments["utterance_id"]) - set(utterances["utterance_id"])
    if unknown:
        result.problems.append(f"segments.parquet: {len(unknown)} utterance ids not in utterances.parquet")
    if utterances["utterance_id"].duplicated().any():
        result.problems.append("utterances.parquet: duplicate utterance ids")
    for split, n in utterances["split"].value_counts().items():
        result.facts.append(f"split {split}: {n} utterances")
    _check_audio_files(result, utterances)
    if "phone" in tasks:
        missing = set(segments["phone"].astype(str)) - set(tasks["phone"])
        if missing:
            result.problems.append(f"labels.json: phones {sorted(missing)[:5]} of segments.parquet not in its phone list")
    return result


def _check_audio_files(result: Validation, utterances) -> None:
    """Every utterance's audio file is there and lasts what prepare recorded (its header only): audio
    deleted or replaced after prepare is named here, before a stage meets it."""
    from phonorm.corpus.audio import RECORDED_DURATION_TOLERANCE_S, audio_info

    missing, changed = [], []
    for row in utterances.itertuples(index=False):
        try:
            seconds, _, _ = audio_info(row.audio_path)
        except InputError:
            missing.append(str(row.audio_path))
            continue
        if abs(seconds - float(row.duration)) > RECORDED_DURATION_TOLERANCE_S:
            changed.append(f"{row.audio_path} ({seconds:.3f} s, recorded {float(row.duration):.3f} s)")
    if missing:
        result.problems.append(f"utterances.parquet: {counted(len(missing), 'audio file')} missing or unreadable "
                               f"(first: {missing[0]}); prepare the corpus again")
    if changed:
        result.problems.append(f"utterances.parquet: {counted(len(changed), 'audio file')} changed length since "
                               f"prepare (first: {changed[0]}); prepare the corpus again")


# =========================================================================== results
#: The tables every analysis writes (erasure.csv only for a tone model: checked when it is there).
RESULT_TABLES = (SIMILARITY, PROBES, NORMALIZATION)


def check_results(folder: Path, columns: bool = True) -> Validation:
    """A results folder of `phonorm analyze`: settings.json (written last) and every file it implies —
    the tables with their header rows, claims.json, the figures and projections it lists. `columns`:
    also require every column of each table's row type (the report, which reads the files of earlier
    versions too, checks completeness only)."""
    result = Validation(folder, "analysis results")
    record = _typed(result, AnalysisRecord, folder)
    if record is None:
        return result
    result.facts.append(f"models {', '.join(record.models)}; store {record.features}")
    for table in RESULT_TABLES + ((ERASURE,) if (folder / ERASURE.file).is_file() else ()):
        _check_csv(result, folder / table.file, record.table_rows.get(table.file), table if columns else None)
    _typed(result, ClaimsFile, folder)
    for figure in record.figures:  # paths relative to the results folder
        if not (folder / figure).is_file():
            result.problem(folder / figure, "listed in settings.json but missing")
    for path in sorted((folder / "projections").glob("*.parquet")):
        _, defect = parquet_problem(path)
        if defect:
            result.problem(path, defect)
    return result


def _typed(result: Validation, kind: type[R], folder: Path) -> R | None:
    """The file `kind.FILE` of `folder` read through its type, or None with its problem recorded:
    missing, not JSON, or which fields are wrong (`JsonRecord.load`)."""
    try:
        return kind.load(folder)
    except InputError as err:
        result.problem(err.path or kind.path(folder), err.problem)
        return None


def _check_csv(result: Validation, path: Path, rows: Optional[int] = None, table: Optional[ResultTable] = None) -> None:
    """A table phonorm analyze writes: there, readable to its last line, with a header row (with every
    column of its row type, `table`), every line as many fields as the header and, when the writer
    recorded it, as many data rows."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            lines = list(reader)
    except FileNotFoundError:
        result.problem(path, "missing")
        return
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        result.problem(path, f"unreadable ({err})")
        return
    if "model" not in header:
        result.problem(path, "no header row naming its columns (empty or damaged)")
        return
    missing = table.missing_columns(header) if table is not None else []
    if table is not None and missing:
        result.problem(path, f"lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)} of {table.row.__name__} "
                             "(written by another phonorm version? run phonorm analyze again)")
    short = next((i for i, line in enumerate(lines) if len(line) != len(header)), None)
    if short is not None:
        result.problem(path, f"line {short + 2} has {len(lines[short])} fields, the header {len(header)} "
                             "(the file was cut or edited)")
    elif rows is not None and len(lines) != rows:
        result.problem(path, f"{len(lines)} data rows, settings.json records {rows} (the file was cut or edited)")


# =========================================================================== run and stage folders
def _run(folder: Path) -> Validation:
    """run.json, each stage folder of this work folder complete (its marker, the key of run.json),
    and each stage folder validated as the kind of folder it is."""
    result = Validation(folder, "phonorm run folder")
    record, defect = read_json_object(folder / "run.json")
    if defect or record is None:
        result.problem(folder / "run.json", defect or "missing")
        return result
    if record.get("complete") is False:
        result.problem(folder / "run.json", "the last phonorm run in this folder did not finish (killed or failed); "
                                            "run it again")
    stages = record.get("stages") or []
    result.facts.append(f"{len(stages)} stages; report {record.get('report')}")
    inside = folder.resolve()
    # where the run was made: run.json's report is WORKDIR/report.html. A copied or moved run folder
    # still lists the old absolute paths; its stages are read at the same place inside this folder.
    made_in = Path(str(record.get("report", ""))).parent
    for stage in stages:
        stage_folder = Path(stage.get("folder", ""))
        if stage.get("stage") == "model":
            continue  # a model the experiment names: not this folder's to judge
        if not stage_folder.resolve().is_relative_to(inside):
            if not (made_in.is_absolute() and stage_folder.is_relative_to(made_in)):
                continue  # a folder the experiment names from outside
            stage_folder = inside / stage_folder.relative_to(made_in)
        _check_stage(result, stage, stage_folder)
    return result


def _check_stage(result: Validation, stage: dict, stage_folder: Path) -> None:
    """One stage of run.json: its marker with the same key, then its folder validated in turn."""
    marker = stage_folder / ".phonorm-stage.json"
    what = f"stage {stage.get('stage')} {stage.get('name')}"
    saved, defect = read_json_object(marker)
    if defect == "missing":
        result.problem(stage_folder, f"{what} not complete (no .phonorm-stage.json); run phonorm run again")
        return
    if defect or saved is None:
        result.problem(marker, defect or "missing")
        return
    if not str(saved.get("key", "")).startswith(str(stage.get("key"))):
        result.problem(marker, "key differs from run.json")
    inner = validate(stage_folder)
    for problem in inner.problems:
        result.problems.append(f"{relative_to(result.folder, stage_folder)}/{problem}"
                               if not problem.startswith("/") else problem)
    result.facts.append(f"{relative_to(result.folder, stage_folder)}: {inner.kind}, "
                        + ("complete and consistent" if inner.ok else f"{len(inner.problems)} problem(s)"))


def _stage(folder: Path) -> Validation:
    """A stage folder of phonorm run that holds no other artifact kind (evaluate, report)."""
    marker, defect = read_json_object(folder / ".phonorm-stage.json")
    if defect or marker is None:
        result = Validation(folder, "stage folder of phonorm run")
        result.problem(folder / ".phonorm-stage.json", defect or "missing")
        return result
    result = Validation(folder, f"stage folder of phonorm run ({marker.get('stage')} {marker.get('name')})")
    result.facts.append(f"key {str(marker.get('key'))[:12]}, {marker.get('seconds')} s: {marker.get('summary')}")
    for kind in (EvaluationFile, RunContext):
        if kind.exists(folder):
            _typed(result, kind, folder)
    return result


def _synth(folder: Path) -> Validation:
    result = Validation(folder, "synthetic corpus (phonorm synth)")
    record = _typed(result, SynthFile, folder)
    if record is None:
        return result
    if not record.complete:
        result.problem(folder / "synth.json", "not marked complete (run phonorm synth again to resume)")
    for name in ("wav", "textgrid", "speakers.tsv"):
        if not (folder / name).exists():
            result.problem(folder / name, "missing")
    return result


_KINDS: list[tuple[str, str, Callable[[Path], Validation]]] = [
    ("run.json", "phonorm run folder", _run), ("manifest.json", "feature store", check_store),
    ("phonorm.json", "model folder", check_model), ("labels.json", "prepared corpus", _corpus),
    ("settings.json", "analysis results", check_results), ("synth.json", "synthetic corpus (phonorm synth)", _synth),
    (".phonorm-stage.json", "stage folder of phonorm run", _stage),
]


def validate_or_raise(folder: str | Path) -> str:
    """The validation text; PhonormError carrying it when the folder has problems (exit status 2)."""
    result = validate(folder)
    if not result.ok:
        raise PhonormError(result.text())
    return result.text()
