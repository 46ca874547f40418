"""`phonorm extract`: every layer of several models, on the very same frames, into a feature store.

How it works (docs/architecture.md, "Feature store"):
1. The rows are decided once (`selection.select_rows`) from the corpus and the first model's frame
   geometry, and written to `F/frames.parquet`. Every model is then indexed on these rows by time
   (`selection.pooling_index`), so all models share the rows exactly (BRIEF trap 3).
2. Each model runs in eval mode; one forward pass per batch yields L0..Ln (`backbone.all_layers`,
   which checks the layer count: BRIEF traps 1-2). Batches hold about `batch_seconds` of audio.
   Group-norm models (base-style) get only utterances of equal length per batch and no attention
   mask, so batched results equal one-at-a-time results (trap 4); layer-norm models get padded
   batches with an attention mask.
3. Rows are written as they come (`writer.RowWriter`: bounded memory, hidden partial files renamed
   when complete). Work is cut into chunks of about `chunk_seconds` of audio; after each chunk the
   files are synced and the progress recorded, so an interrupted run resumes at the next chunk.
4. Under `accelerate launch`, process p of n takes a contiguous, duration-balanced share of the
   utterances and writes `F/<model>/L<k>/part-<p>.npy`; the main process then writes the classic
   baselines and `F/manifest.json`, last.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from phonorm.artifacts import provenance, read_json, set_seed, write_json, write_parquet
from phonorm.corpus.store import SPLITS, PreparedCorpus
from phonorm.errors import InputError, PhonormError
from phonorm.features import store as layout
from phonorm.features.classic import CLASSIC_DIMS, classic_features, semitone_z
from phonorm.features.selection import FRAME_MODES, POOL_MODES, Selection, pooling_index, select_rows
from phonorm.features.writer import RowWriter, partial_matches, partial_path
from phonorm.frames import SAMPLE_RATE, FrameGeometry

DTYPES = ("float16", "float32")
STATE_FILE = ".extract.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class ExtractSettings:
    """Options of `phonorm extract` (see its --help). Times in seconds of audio."""

    split: str = "test"
    layers: str = "all"
    frames: str = "labelled"
    pool: str = "frame"
    max_per_speaker_label: int | None = None
    dtype: str = "float16"
    batch_seconds: float = 60.0
    classic: bool = True
    seed: int = 0
    chunk_seconds: float = 600.0
    """Audio per resumable unit: progress is recorded after each chunk."""

    def check(self) -> None:
        if self.split not in SPLITS:
            raise PhonormError(f"--split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if self.frames not in FRAME_MODES:
            raise PhonormError(f"--frames {self.frames!r}: choose one of {', '.join(FRAME_MODES)}")
        if self.pool not in POOL_MODES:
            raise PhonormError(f"--pool {self.pool!r}: choose one of {', '.join(POOL_MODES)}")
        if self.dtype not in DTYPES:
            raise PhonormError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if not self.batch_seconds > 0:
            raise PhonormError(f"--batch-seconds {self.batch_seconds}: must be positive")
        if not self.chunk_seconds > 0:
            raise PhonormError(f"chunk_seconds {self.chunk_seconds}: must be positive")
        if self.max_per_speaker_label is not None and self.max_per_speaker_label < 1:
            raise PhonormError(f"--max-per-speaker-label {self.max_per_speaker_label}: must be at least 1")

    def selection_settings(self) -> dict[str, Any]:
        """The settings that decide the rows (a store resumes or grows only when they match)."""
        return dict(split=self.split, frames=self.frames, pool=self.pool,
                    max_per_speaker_label=self.max_per_speaker_label, seed=self.seed)


@dataclass
class ModelSpec:
    """One model of a store, as planned before anything heavy is loaded."""

    name: str
    source: str
    config: Any
    geometry: FrameGeometry
    group_norm: bool
    n_layers: int
    dim: int
    layers: list[int]
    normalize: bool
    key: str = ""

    @property
    def layer_names(self) -> list[str]:
        return [f"L{k}" for k in self.layers]

    def describe(self) -> dict[str, Any]:
        from phonorm.models.backbone import LAYER_CONVENTION

        return dict(name=self.name, source=self.source, model_type=self.config.model_type,
                    n_layers=self.n_layers, dim=self.dim, layers=self.layer_names,
                    layer_convention=LAYER_CONVENTION, group_norm=self.group_norm,
                    normalize_waveform=self.normalize, geometry=_geometry_dict(self.geometry))


@dataclass
class Plan:
    corpus: PreparedCorpus
    out: Path
    settings: ExtractSettings
    models: list[ModelSpec]
    geometry: FrameGeometry
    selection: Selection
    todo_models: list[ModelSpec] = field(default_factory=list)
    todo_classic: bool = False
    kept_models: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.selection.key


# =========================================================================== entry point
def extract(corpus: str | Path, *, models: dict[str, str], out: str | Path, settings: ExtractSettings) -> str:
    """Extract every chosen layer of `models` (name → hub id or folder) on one split of `corpus`
    into the feature store `out`; resumes an interrupted run. Returns a one-paragraph summary."""
    from phonorm.launch import process_state

    state = process_state()
    plan = plan_extraction(corpus, models=models, out=out, settings=settings)
    if not plan.todo_models and not plan.todo_classic and (Path(out) / layout.MANIFEST_FILE).is_file():
        return f"{out}: already complete ({summary_line(plan)}); nothing to do"
    state.wait_for_everyone()
    if state.is_main_process:
        start_store(plan)
    run_share(plan, state.process_index, state.num_processes, device=state.device,
              progress=state.is_local_main_process)
    state.wait_for_everyone()
    message = f"{out}: process {state.process_index} done"
    if state.is_main_process:
        message = finish_store(plan, state.num_processes)
    state.wait_for_everyone()
    return message


# =========================================================================== planning
def plan_extraction(corpus: str | Path, *, models: dict[str, str], out: str | Path,
                    settings: ExtractSettings) -> Plan:
    """Check everything that can be checked before heavy work, decide the rows, and find what is
    left to do in `out` (reads only; every process computes the same plan)."""
    from phonorm.models.backbone import geometry as geometry_of, load_config, num_layers, uses_group_norm

    settings.check()
    if not models:
        raise PhonormError("--model: give at least one NAME=MODEL")
    for name in models:
        if not _NAME_PATTERN.match(name) or name == layout.CLASSIC_DIR:
            raise PhonormError(f"--model {name}=...: a name must be letters, digits, '_', '-', '.', '+' "
                               f"(it becomes a folder), and not {layout.CLASSIC_DIR!r}")
    corpus = PreparedCorpus(corpus)
    specs: list[ModelSpec] = []
    for name, source in models.items():
        text = str(source)
        if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
            raise InputError(text, f"--model {name}: no such model folder")
        config = load_config(source)
        try:
            grid = geometry_of(config)
        except ValueError as err:
            raise PhonormError(f"--model {name}={source}: {err}") from None
        n = num_layers(config)
        specs.append(ModelSpec(
            name=name, source=str(source), config=config, geometry=grid, group_norm=uses_group_norm(config),
            n_layers=n, dim=int(config.hidden_size), layers=parse_layers(settings.layers, n, name),
            normalize=wants_normalized_input(source),
        ))
    reference = specs[0].geometry
    for spec in specs[1:]:
        if spec.geometry.sample_rate != reference.sample_rate:
            raise PhonormError(f"--model {spec.name}: sample rate {spec.geometry.sample_rate} Hz differs from "
                               f"{specs[0].name}'s {reference.sample_rate} Hz")
    set_seed(settings.seed)
    selection = select_rows(corpus, settings.split, reference, settings.frames, settings.pool,
                            settings.max_per_speaker_label, settings.seed)
    if len(selection.frames) == 0:
        raise InputError(corpus.folder, f"no rows to extract: split {settings.split!r} has "
                         f"{selection.counts['utterances_in_split']} utterances and none has a selected frame")
    plan = Plan(corpus=corpus, out=Path(out), settings=settings, models=specs, geometry=reference, selection=selection)
    for spec in specs:
        spec.key = _model_key(plan, spec)
    _find_work(plan)
    return plan


def parse_layers(text: str, n_layers: int, model: str) -> list[int]:
    """`all`, or `0,6,12` / `L0,L6,L12` → sorted layer numbers, each checked to lie in 0..n_layers."""
    if text.strip().lower() == "all":
        return list(range(n_layers + 1))
    chosen: set[int] = set()
    for token in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"[Ll]?(\d+)", token)
        if not match or int(match.group(1)) > n_layers:
            raise PhonormError(f"--layers {text!r}: {token!r} is not a layer of model {model!r} "
                               f"(it has L0..L{n_layers})")
        chosen.add(int(match.group(1)))
    if not chosen:
        raise PhonormError(f"--layers {text!r}: no layer given (use all, or e.g. 0,6,12)")
    return sorted(chosen)


def wants_normalized_input(source: str | Path) -> bool:
    """Whether the model expects zero-mean unit-variance waveforms: its feature extractor's
    `do_normalize` when it ships one (e.g. False for some HuBERT checkpoints), else True (the
    default of Wav2Vec2FeatureExtractor and of models phonorm writes)."""
    try:
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(str(source), trust_remote_code=False)
    except Exception:  # no preprocessor_config.json (our own folders) or offline: use the default
        return True
    return bool(getattr(extractor, "do_normalize", True))


def _model_key(plan: Plan, spec: ModelSpec) -> str:
    """What must match for a model's files to be reused: rows, source (and, for a folder, its
    files' sizes and times), layers, dtype, input normalisation."""
    source = Path(spec.source)
    stamp = []
    if source.is_dir():
        stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in source.iterdir() if p.is_file())
    blob = json.dumps(dict(rows=plan.key, source=spec.source, stamp=stamp, layers=spec.layers,
                           dtype=plan.settings.dtype, normalize=spec.normalize), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _find_work(plan: Plan) -> None:
    """Compare with what `out` already holds: fill `todo_models`, `todo_classic`, `kept_models`;
    refuse to mix rows of another selection or another model under the same name."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = read_json(state_path)
        if state.get("rows_key") != plan.key:
            raise InputError(out, "holds a feature store of other rows (another corpus, split or frame settings: "
                             f"{state.get('selection')}); use another --out or delete it")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(out, "is not empty and not a phonorm feature store; use a new or empty folder")
    previous = read_json(out / layout.MANIFEST_FILE) if (out / layout.MANIFEST_FILE).is_file() else None
    requested = {spec.name for spec in plan.models}
    for spec in plan.models:
        marker = out / spec.name / ".complete.json"
        if marker.is_file():
            done = read_json(marker)
            if done.get("key") == spec.key:
                continue
            raise InputError(out / spec.name, f"model {spec.name!r} is already stored from {done.get('source')} "
                             "with other settings (source, layers or dtype); use another name or --out")
        plan.todo_models.append(spec)
    if previous:
        plan.kept_models = [m for m in previous["models"] if m["name"] not in requested]
    classic_marker = out / layout.CLASSIC_DIR / ".complete.json"
    plan.todo_classic = plan.settings.classic and not (
        classic_marker.is_file() and read_json(classic_marker).get("rows_key") == plan.key)


def start_store(plan: Plan) -> None:
    """Main process: mark the store incomplete (remove manifest.json) and write the row index."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / layout.MANIFEST_FILE).unlink(missing_ok=True)
    write_json(plan.out / STATE_FILE, {"rows_key": plan.key, "selection": plan.settings.selection_settings(),
                                       "corpus": str(plan.corpus.folder.resolve())})
    frames_path = plan.out / layout.FRAMES_FILE
    if not frames_path.is_file():
        write_parquet(frames_path, plan.selection.frames)


# =========================================================================== one process's share
def share_of(utterances: pd.DataFrame, process_index: int, num_processes: int) -> pd.DataFrame:
    """Contiguous block `process_index` of `num_processes`, balanced by audio duration, so the
    parts concatenated in process order give the rows in order."""
    if num_processes <= 1:
        return utterances
    cumulative = np.cumsum(utterances["duration"].to_numpy(dtype=np.float64))
    edges = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, num_processes) / num_processes, side="left")
    bounds = np.clip(np.concatenate([[0], edges + 1, [len(utterances)]]), 0, len(utterances))
    return utterances.iloc[bounds[process_index]:bounds[process_index + 1]]


def chunks_of(share: pd.DataFrame, chunk_seconds: float) -> list[pd.DataFrame]:
    """Consecutive runs of utterances of about `chunk_seconds` of audio (at least one each)."""
    chunks, begin, total = [], 0, 0.0
    durations = share["duration"].to_numpy(dtype=np.float64)
    for i, seconds in enumerate(durations):
        if i > begin and total + seconds > chunk_seconds:
            chunks.append(share.iloc[begin:i])
            begin, total = i, 0.0
        total += seconds
    if begin < len(share):
        chunks.append(share.iloc[begin:])
    return chunks


def run_share(plan: Plan, process_index: int = 0, num_processes: int = 1, device: Any = "cpu",
              progress: bool = True) -> None:
    """Extract this process's share of the utterances for every model left to do (and the
    classic baselines' raw parts)."""
    share = share_of(plan.selection.utterances, process_index, num_processes)
    for spec in plan.todo_models:
        _run_model(plan, spec, share, process_index, num_processes, device, progress)
    if plan.todo_classic:
        _run_classic(plan, share, process_index, num_processes, progress)


def _layer_path(plan: Plan, model: str, layer: str, process_index: int, num_processes: int) -> Path:
    if num_processes == 1:
        return plan.out / model / f"{layer}.npy"
    return plan.out / model / layer / layout.part_name(process_index)


def _share_rows(share: pd.DataFrame) -> tuple[int, int]:
    if len(share) == 0:
        return 0, 0
    return int(share["row_begin"].iloc[0]), int(share["row_end"].iloc[-1])


def _run_chunked(
    *, plan: Plan, what: str, key: str, folder: Path, share: pd.DataFrame, process_index: int,
    num_processes: int, outputs: dict[str, tuple[Path, int, str]], progress: bool,
    process_chunk: Callable[[pd.DataFrame, dict[str, RowWriter], int, Callable[[pd.Series], None]], dict],
) -> dict:
    """The resumable loop shared by models and classic baselines.

    `outputs`: name → (final path, dim, dtype). `process_chunk(utterances, writers, first_row, tick)`
    writes the chunk's rows (row numbers relative to the share's first row) and calls `tick(utt)`
    after each utterance. Progress is recorded in `folder/.progress-p-of-n.json` after each chunk.
    """
    from tqdm.auto import tqdm

    tag = f"{process_index}-of-{num_processes}"
    progress_path = folder / f".progress-{tag}.json"
    done_path = folder / f".done-{tag}.json"
    chunks = chunks_of(share, plan.settings.chunk_seconds)
    row_begin, row_end = _share_rows(share)
    chunk_plan = hashlib.sha256(json.dumps([len(c) for c in chunks] + [row_begin, row_end]).encode()).hexdigest()[:12]
    if done_path.is_file() and read_json(done_path).get("key") == key:
        return read_json(done_path)
    record = read_json(progress_path) if progress_path.is_file() else {}
    resume = record.get("key") == key and record.get("chunk_plan") == chunk_plan
    done_chunks = int(record.get("chunks_done", 0)) if resume else 0
    if resume and done_chunks < len(chunks) and not all(
            partial_matches(partial_path(path), row_end - row_begin, dim, dtype)
            for path, dim, dtype in outputs.values()):
        resume, done_chunks = False, 0  # a partial file went missing or changed: start this share again
    if not resume:
        for path, _, _ in outputs.values():
            path.unlink(missing_ok=True)  # a stale file of an older run must not look complete
    counters = dict(record.get("counters", {})) if resume else {}
    writers: dict[str, RowWriter] = {}
    if done_chunks < len(chunks):
        writers = {name: RowWriter(path, row_end - row_begin, dim, dtype, resume=resume)
                   for name, (path, dim, dtype) in outputs.items()}
    seconds = share["duration"].to_numpy(dtype=np.float64)
    done_utts = sum(len(c) for c in chunks[:done_chunks])
    bar = tqdm(total=float(seconds.sum()), initial=float(seconds[:done_utts].sum()), unit="s", desc=what,
               disable=not progress, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
               "[{elapsed}<{remaining}{postfix}]", dynamic_ncols=True)
    state = {"utts": done_utts}

    def tick(utt) -> None:
        state["utts"] += 1
        bar.update(min(float(utt.duration), max(bar.total - bar.n, 0.0)))  # float sums may overshoot
        bar.set_postfix_str(f"{state['utts']}/{len(share)} utterances", refresh=False)

    try:
        for index in range(done_chunks, len(chunks)):
            found = process_chunk(chunks[index], writers, row_begin, tick)
            for name, value in found.items():
                counters[name] = counters.get(name, 0) + value
            for writer in writers.values():
                writer.sync()
            write_json(progress_path, dict(key=key, chunk_plan=chunk_plan, chunks_done=index + 1,
                                           chunks=len(chunks), counters=counters))
        for name, writer in writers.items():
            writer.finish()
        writers = {}
        for path, _, _ in outputs.values():  # finished by an earlier run that stopped right after
            partial = partial_path(path)
            if partial.is_file() and not path.is_file():
                partial.replace(path)
            if not path.is_file():
                raise PhonormError(f"{path}: missing after extraction (was the store modified meanwhile?)")
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    result = dict(key=key, rows=row_end - row_begin, utterances=len(share), seconds=float(seconds.sum()),
                  counters=counters)
    write_json(done_path, result)
    progress_path.unlink(missing_ok=True)
    return result


def _load(utt) -> np.ndarray:
    from phonorm.corpus.audio import load_audio

    return load_audio(utt.audio_path)


def _rows_of(plan: Plan, utt) -> pd.DataFrame:
    return plan.selection.frames.iloc[int(utt.row_begin):int(utt.row_end)]


def _run_model(plan: Plan, spec: ModelSpec, share: pd.DataFrame, process_index: int, num_processes: int,
               device: Any, progress: bool) -> None:
    import torch

    from phonorm.models.backbone import load_backbone

    model = load_backbone(spec.source).to(device)
    out_dtype = torch.float16 if plan.settings.dtype == "float16" else torch.float32
    outputs = {name: (_layer_path(plan, spec.name, name, process_index, num_processes), spec.dim, plan.settings.dtype)
               for name in spec.layer_names}

    def process_chunk(chunk: pd.DataFrame, writers: dict[str, RowWriter], first_row: int, tick) -> dict:
        passes = 0
        for batch in plan_batches(chunk, spec.group_norm, plan.settings.batch_seconds):
            waves = [_load(utt) for utt in batch]
            for group in _equal_length_groups(batch, waves) if spec.group_norm else [list(range(len(batch)))]:
                hidden = _forward(model, spec, [waves[i] for i in group], device)  # (L, B, T, D) selected layers
                passes += 1
                for slot, i in enumerate(group):
                    utt = batch[i]
                    rows = _rows_of(plan, utt)
                    n_frames = spec.geometry.num_frames(len(waves[i]))
                    frame_index, row_of = pooling_index(rows, spec.geometry, n_frames, plan.settings.pool,
                                                        plan.settings.frames, what=f"{spec.name} {utt.utterance_id}")
                    values = _pool(hidden[:, slot], frame_index, row_of, len(rows), device).to(out_dtype).cpu().numpy()
                    for position, name in enumerate(spec.layer_names):
                        writers[name].write(int(utt.row_begin) - first_row, values[position])
            for utt in batch:
                tick(utt)
        return {"forward_passes": passes}

    try:
        _run_chunked(plan=plan, what=spec.name, key=spec.key, folder=plan.out / spec.name, share=share,
                     process_index=process_index, num_processes=num_processes, outputs=outputs,
                     progress=progress, process_chunk=process_chunk)
    finally:
        del model


def plan_batches(utterances: pd.DataFrame, group_norm: bool, batch_seconds: float) -> list[list]:
    """Batches of utterances (namedtuples) holding at most `batch_seconds` of (padded) audio each.

    Group-norm models: only utterances of equal sample count share a batch (padding would change
    their outputs). Layer-norm models: sorted by length so padding stays small. One utterance longer
    than `batch_seconds` forms its own batch.
    """
    items = list(utterances.itertuples(index=False))
    samples = [int(round(float(u.duration) * SAMPLE_RATE)) for u in items]
    limit = batch_seconds * SAMPLE_RATE
    order = sorted(range(len(items)), key=lambda i: (-samples[i], i))
    batches: list[list] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = samples[current[0]]
            fits = longest * (len(current) + 1) <= limit
            if group_norm:
                fits = fits and samples[i] == longest
            if not fits:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return [[items[i] for i in batch] for batch in batches]


def _equal_length_groups(batch: list, waves: list[np.ndarray]) -> list[list[int]]:
    """Indices of `batch` grouped by exact sample count (durations can round differently from the
    loaded audio; a group-norm batch must be of one length)."""
    groups: dict[int, list[int]] = {}
    for i, wave in enumerate(waves):
        groups.setdefault(len(wave), []).append(i)
    return list(groups.values())


def _forward(model, spec: ModelSpec, waves: list[np.ndarray], device: Any):
    """One forward pass; returns the selected layers stacked, (layers, batch, frames, dim) float32."""
    import torch

    from phonorm.models.backbone import all_layers, normalize_waveform

    lengths = [len(w) for w in waves]
    longest = max(lengths)
    batch = torch.zeros(len(waves), longest, dtype=torch.float32)
    for i, wave in enumerate(waves):
        signal = torch.from_numpy(wave)
        batch[i, : len(wave)] = normalize_waveform(signal) if spec.normalize else signal
    mask = None
    if not spec.group_norm and len(set(lengths)) > 1:
        mask = torch.zeros(len(waves), longest, dtype=torch.long)
        for i, length in enumerate(lengths):
            mask[i, :length] = 1
        mask = mask.to(device)
    with torch.inference_mode():
        hidden = all_layers(model, batch.to(device), attention_mask=mask)
    expected = spec.geometry.num_frames(longest)
    if hidden[0].shape[1] != expected:
        raise PhonormError(f"model {spec.name}: {hidden[0].shape[1]} frames for {longest} samples, but its conv "
                           f"geometry gives {expected}: unsupported frame geometry")
    return torch.stack([hidden[k] for k in spec.layers])


def _pool(hidden, frame_index: np.ndarray, row_of: np.ndarray, n_rows: int, device: Any):
    """Rows of one utterance from its (layers, frames, dim) states: frame picks, or means."""
    import torch

    index = torch.from_numpy(frame_index).to(device)
    picked = hidden.index_select(1, index)
    if len(frame_index) == n_rows and np.array_equal(row_of, np.arange(n_rows)):
        return picked
    rows = torch.from_numpy(row_of).to(device)
    sums = torch.zeros(hidden.shape[0], n_rows, hidden.shape[2], dtype=hidden.dtype, device=device)
    sums.index_add_(1, rows, picked)
    counts = torch.bincount(rows, minlength=n_rows).clamp_min(1).to(hidden.dtype)
    return sums / counts[None, :, None]


def _run_classic(plan: Plan, share: pd.DataFrame, process_index: int, num_processes: int, progress: bool) -> None:
    folder = plan.out / layout.CLASSIC_DIR / ".parts"
    outputs = {name: (_classic_part(folder, name, process_index, num_processes), dim, "float32")
               for name, dim in CLASSIC_DIMS.items()}

    def process_chunk(chunk: pd.DataFrame, writers: dict[str, RowWriter], first_row: int, tick) -> dict:
        for utt in chunk.itertuples(index=False):
            wave = _load(utt)
            rows = _rows_of(plan, utt)
            values = classic_features(wave, utt.sex, rows, plan.geometry, plan.geometry.num_frames(len(wave)),
                                      plan.settings.pool, plan.settings.frames, what=utt.utterance_id)
            for name, array in values.items():
                writers[name].write(int(utt.row_begin) - first_row, array)
            tick(utt)
        return {}

    _run_chunked(plan=plan, what="classic F0/MFCC", key=plan.key, folder=folder, share=share,
                 process_index=process_index, num_processes=num_processes, outputs=outputs,
                 progress=progress, process_chunk=process_chunk)


# =========================================================================== finishing (main process)
def finish_store(plan: Plan, num_processes: int) -> str:
    """Main process, after every share is done: mark models complete, assemble the classic
    baselines, clean up, and write manifest.json last. Returns the summary."""
    tag = f"-of-{num_processes}.json"
    run_counts: dict[str, dict] = {}
    for spec in plan.todo_models:
        folder = plan.out / spec.name
        records = [folder / f".done-{p}{tag}" for p in range(num_processes)]
        missing = [r.name for r in records if not r.is_file()]
        if missing:
            raise PhonormError(f"{folder}: process shares not finished ({', '.join(missing)}); run again to resume")
        done = [read_json(r) for r in records]
        rows = sum(d["rows"] for d in done)
        if rows != len(plan.selection.frames):
            raise PhonormError(f"{folder}: shares hold {rows} rows, frames.parquet {len(plan.selection.frames)}")
        run_counts[spec.name] = {"forward_passes": sum(d["counters"].get("forward_passes", 0) for d in done)}
        write_json(folder / ".complete.json", dict(key=spec.key, source=spec.source, parts=num_processes,
                                                   **run_counts[spec.name]))
        for leftover in folder.glob(".progress-*"):
            leftover.unlink()
        for leftover in folder.glob(".done-*"):
            leftover.unlink()
    if plan.todo_classic:
        _assemble_classic(plan, num_processes)
    manifest = build_manifest(plan, run_counts)
    write_json(plan.out / layout.MANIFEST_FILE, manifest)
    return f"{plan.out}: {summary_line(plan)}"


def _classic_part(folder: Path, name: str, process_index: int, num_processes: int) -> Path:
    return folder / f"{name}.part-{process_index:05d}-of-{num_processes}.npy"


def _assemble_classic(plan: Plan, num_processes: int) -> None:
    folder = plan.out / layout.CLASSIC_DIR
    parts = folder / ".parts"
    arrays = {}
    for name in CLASSIC_DIMS:
        pieces = [np.load(_classic_part(parts, name, p, num_processes)) for p in range(num_processes)]
        arrays[name] = np.concatenate(pieces, axis=0)
    z, counts = semitone_z(arrays["f0_hz"], plan.selection.frames["speaker"].to_numpy())
    arrays["f0_semitone_z"] = z
    for name, array in arrays.items():
        if array.shape[0] != len(plan.selection.frames):
            raise PhonormError(f"{folder}: {name} has {array.shape[0]} rows, frames.parquet {len(plan.selection.frames)}")
        writer = RowWriter(folder / f"{name}.npy", array.shape[0], array.shape[1], "float32")
        writer.write(0, array)
        writer.finish()
    write_json(folder / ".complete.json", dict(rows_key=plan.key, **counts))
    shutil.rmtree(parts, ignore_errors=True)


def build_manifest(plan: Plan, run_counts: dict[str, dict]) -> dict[str, Any]:
    from phonorm.models.backbone import LAYER_CONVENTION

    models = list(plan.kept_models)
    for spec in plan.models:
        entry = spec.describe()
        entry["dtype"] = plan.settings.dtype
        complete = read_json(plan.out / spec.name / ".complete.json")
        entry["parts"] = int(complete.get("parts", 1))
        entry["forward_passes"] = complete.get("forward_passes")
        models.append(entry)
    classic_names = []
    classic_counts = {}
    if (plan.out / layout.CLASSIC_DIR / ".complete.json").is_file():
        classic_names = ["f0_hz", "f0_semitone_z", "mfcc"]
        classic_counts = read_json(plan.out / layout.CLASSIC_DIR / ".complete.json")
        classic_counts.pop("rows_key", None)
    settings = asdict(plan.settings)
    return {
        "format": layout.STORE_FORMAT,
        "rows": int(len(plan.selection.frames)),
        "row_unit": "segment" if plan.settings.pool == "segment" else "frame",
        "models": models,
        "layer_convention": LAYER_CONVENTION,
        "classic": classic_names,
        "classic_counts": classic_counts,
        "geometry": _geometry_dict(plan.geometry),
        "corpus": str(plan.corpus.folder.resolve()),
        "rows_key": plan.key,
        "counts": plan.selection.counts,
        "settings": settings,
        "provenance": provenance(settings),
    }


def summary_line(plan: Plan) -> str:
    counts = plan.selection.counts
    unit = "segments" if plan.settings.pool == "segment" else "frames"
    models = "; ".join(f"{s.name} ({s.layer_names[0]}..{s.layer_names[-1]}, {len(s.layers)} layers, dim {s.dim})"
                       for s in plan.models)
    text = (f"{counts['rows']} {unit} of {counts['utterances_with_rows']} utterances (split {plan.settings.split}, "
            f"frames {plan.settings.frames}); models: {models}")
    if counts["rows_dropped_by_cap"]:
        text += f"; {counts['rows_dropped_by_cap']} rows dropped by --max-per-speaker-label"
    if counts["utterances_without_rows"]:
        text += f"; {counts['utterances_without_rows']} utterances had no selected frame (skipped)"
    if plan.settings.classic:
        text += "; classic F0/MFCC stored"
    return text


def _geometry_dict(geometry: FrameGeometry) -> dict[str, Any]:
    return dict(conv_kernel=list(geometry.conv_kernel), conv_stride=list(geometry.conv_stride),
                sample_rate=geometry.sample_rate, hop=geometry.hop, receptive_field=geometry.receptive_field)
