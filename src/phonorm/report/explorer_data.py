"""What the report's explorer shows, gathered from the artifacts and fitted into the page's budget.

The explorer maps the analysis's sampled frames (projections/<model>__<layer>.parquet: PCA for every
layer, UMAP where the analysis made one) in every model × layer × map *state*, the same frames in
each state so that a point can be followed. Each frame carries what a phonetician asks of it (store
frames.parquet: utterance, speaker, sex, tone, phone, syllable, time) and its syllable's span in the
utterance (corpus segments.parquet, `PreparedCorpus.syllable_spans`), so that a click plays exactly
that syllable from the utterance's clip (one Ogg Opus clip per utterance, the design of Renumics
Spotlight: one clip plus each point's start and end).

Budget (settings_report.ReportSettings): utterances are taken round-robin over speakers (seeded)
until the audio budget is spent; frames are then sampled from those utterances up to `points` and
to what the rest of the page's budget holds. Everything left out is counted (`ExplorerData.notes`).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from phonorm.corpus.store import PreparedCorpus
from phonorm.errors import InputError
from phonorm.frames import SAMPLE_RATE
from phonorm.layers import layer_index
from phonorm.settings.report import ReportSettings

#: The frame facts the explorer shows on hover and in its table (store frames.parquet columns).
FRAME_FACTS = ("utterance_id", "speaker", "sex", "tone", "phone", "syllable", "time")
#: Labels a map can be coloured by.
COLOUR_BY = ("tone", "sex", "phone", "speaker")
#: Bytes one frame costs the page besides its coordinates (its facts and colours as JSON; measured on
#: the demo's page: about 150).
FRAME_BYTES = 200
#: Bytes per coordinate in the page: float32 arrays, base64 (4/3).
COORDINATE_BYTES = 4 * 4 / 3
MAPS = ("umap", "pca")


@dataclass
class ExplorerData:
    """The explorer's content. `frames`: one row per shown frame (FRAME_FACTS, `syllable_start`,
    `syllable_end` in s, `has_audio`); `states`: "model|layer|map" → (x, y), float32 arrays of
    len(frames), only for the maps the analysis made; `clips`: utterance id → Ogg Opus bytes."""

    frames: pd.DataFrame
    models: list[str]
    layers: dict[str, list[str]]
    states: dict[str, tuple[np.ndarray, np.ndarray]]
    clips: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def maps(self) -> list[str]:
        """The maps some state has; the first is shown first: UMAP when every layer has one, else PCA
        (by default the analysis maps only the first, middle and last layers with UMAP)."""
        present = [m for m in MAPS if any(k.endswith("|" + m) for k in self.states)]
        everywhere = sum(k.endswith("|umap") for k in self.states) == sum(k.endswith("|pca") for k in self.states)
        return present if everywhere else sorted(present, key=lambda m: m != "pca")

    def audio_bytes(self) -> int:
        return sum(len(c) for c in self.clips.values())

    def clip_uris(self) -> dict[str, str]:
        return {u: "data:audio/ogg;base64," + base64.b64encode(c).decode("ascii") for u, c in self.clips.items()}


def state_key(model: str, layer: str, map_name: str) -> str:
    return f"{model}|{layer}|{map_name}"


def gather(results: Path, *, features: Optional[Path], corpus: Optional[Path], models: list[str],
           settings: ReportSettings, budget_bytes: int) -> ExplorerData | str:
    """The explorer's data for the results folder `results`, within `budget_bytes` of page, or a
    sentence saying why there is none (no projections, no store frames)."""
    tables = _projection_tables(results / "projections", models)
    if not tables:
        return "no projections in the results (the analysis writes projections/<model>__<layer>.parquet)"
    if features is None or not (features / "frames.parquet").is_file():
        return "the feature store's frames.parquet was not found: the explorer needs each frame's utterance and time"
    rows = tables[0][2].row.to_numpy()
    notes: list[str] = []
    prepared = None
    try:
        prepared = PreparedCorpus(corpus) if corpus is not None else None
    except InputError as err:
        notes.append(f"the corpus was not found ({err}): syllables span their phone segment, and there is no audio")
    frames = _frame_facts(features / "frames.parquet", rows, prepared)
    rng = np.random.default_rng(settings.seed)
    clips: dict[str, bytes] = {}
    if settings.audio and prepared is not None:
        clips, audio_notes = _clips(frames, prepared, settings, rng)
        notes += audio_notes
        keep = frames.utterance_id.isin(list(clips))
        if keep.any():
            if not keep.all():
                notes.append(f"{int((~keep).sum())} of {len(frames)} sampled frames are not shown: their utterances "
                             f"did not fit the audio budget ({settings.audio_mb:g} MB)")
            frames = frames[keep]
    elif not settings.audio:
        notes.append("no audio (report --no-audio)")
    elif corpus is None:
        notes.append("no audio: no corpus is named by the run or the store (its audio files are listed in "
                     "utterances.parquet)")
    audio = sum(len(c) for c in clips.values()) * 4 / 3
    states = _states(tables)
    per_frame = FRAME_BYTES + 2 * COORDINATE_BYTES * len(states)
    limit = max(0, min(settings.points, int((budget_bytes - audio) // per_frame)))
    if len(frames) > limit:
        notes.append(f"{limit} of {len(frames)} frames shown (at most --points {settings.points}"
                     + ("" if limit == settings.points else f"; the page's budget of {settings.max_mb:g} MB holds {limit}")
                     + "), sampled at random")
        frames = frames.iloc[np.sort(rng.choice(len(frames), size=limit, replace=False))]
    clips = {u: c for u, c in clips.items() if u in set(frames.utterance_id)}
    frames = frames.assign(has_audio=frames.utterance_id.isin(list(clips)))
    keep = frames.index.to_numpy()
    layers: dict[str, list[str]] = {}
    for model, layer, _ in tables:
        layers.setdefault(model, []).append(layer)
    return ExplorerData(frames=frames.reset_index(drop=True), models=list(layers), layers=layers,
                        states={k: (x[keep], y[keep]) for k, (x, y) in states.items()}, clips=clips, notes=notes,
                        counts={"sampled_frames": len(rows), "frames": len(frames),
                                "utterances": int(frames.utterance_id.nunique()), "clips": len(clips)})


# ---------------------------------------------------------------- reading
def _projection_tables(folder: Path, models: list[str]) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, layer, table) for every projection file of `models` (in that order, then by layer);
    every table indexed by its store `row`, all on the first table's rows."""
    found = []
    for path in folder.glob("*__*.parquet") if folder.is_dir() else []:
        model, _, layer = path.stem.partition("__")
        if model in models:
            found.append((models.index(model), layer_index(layer), model, layer, path))
    tables: list[tuple[str, str, pd.DataFrame]] = []
    for _, _, model, layer, path in sorted(found):
        table = pd.read_parquet(path)
        if tables and not np.array_equal(table.row.to_numpy(), tables[0][2].row.to_numpy()):
            raise InputError(path, f"holds other frames than the projections of {tables[0][0]} {tables[0][1]}: "
                                   "the analysis folder is inconsistent (run phonorm analyze again)")
        tables.append((model, layer, table))
    return tables


def _frame_facts(frames_file: Path, rows: np.ndarray, corpus: Optional[PreparedCorpus]) -> pd.DataFrame:
    """FRAME_FACTS of the store rows `rows` (in that order, index = position in `rows`) with the span of
    each frame's syllable (from the corpus; else its phone segment, as the store records it)."""
    table = pd.read_parquet(frames_file).set_index("row").loc[rows].reset_index()
    facts = table[list(FRAME_FACTS)].copy()
    facts["syllable_start"], facts["syllable_end"] = table.start.to_numpy(), table.end.to_numpy()
    if corpus is not None and "segment_id" in table:
        spans = corpus.syllable_spans.set_index("segment_id")
        known = table.segment_id.isin(spans.index).to_numpy()
        picked = spans.reindex(table.segment_id[known])
        facts.loc[known, "syllable_start"] = picked.syllable_start.to_numpy()
        facts.loc[known, "syllable_end"] = picked.syllable_end.to_numpy()
    facts["tone"] = facts.tone.astype(str)
    return facts


def _clips(frames: pd.DataFrame, corpus: PreparedCorpus, settings: ReportSettings,
           rng: np.random.Generator) -> tuple[dict[str, bytes], list[str]]:
    """Ogg Opus clips of the frames' utterances, taken round-robin over speakers in a seeded order
    until the audio budget (base64 in the page: 4/3 of the bytes) is spent. Encoded a batch at a
    time on two threads (libsndfile releases the GIL; Opus at 16 kHz takes about 20 ms a second of audio)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = corpus.all_utterances.set_index("utterance_id").audio_path
    per_speaker = {s: list(rng.permutation(sorted(set(u)))) for s, u in frames.groupby("speaker").utterance_id}
    order = [u for batch in _round_robin(list(per_speaker.values())) for u in batch]
    clips: dict[str, bytes] = {}
    spent, budget, unreadable, full = 0.0, settings.audio_mb * 1e6, 0, False
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(order), CLIP_BATCH):
            batch = order[start:start + CLIP_BATCH]
            for utterance, clip in zip(batch, pool.map(lambda u: _clip(paths, u, settings.audio_kbps), batch)):
                if clip is None:
                    unreadable += 1
                elif spent + len(clip) * 4 / 3 > budget:
                    full = True
                    break
                else:
                    clips[utterance] = clip
                    spent += len(clip) * 4 / 3
            if full:
                break
    notes = []
    if unreadable:
        notes.append(f"{unreadable} utterances without audio: their files are missing or unreadable")
    if full:
        notes.append(f"{len(order) - len(clips) - unreadable} of {len(order)} utterances left out: the audio budget "
                     f"({settings.audio_mb:g} MB) holds {len(clips)}")
    return clips, notes


#: Utterances encoded at a time before the budget is checked again.
CLIP_BATCH = 32


def _clip(paths: pd.Series, utterance: str, kbps: int) -> Optional[bytes]:
    """The utterance's audio as Ogg Opus, or None when its file is missing or unreadable (counted)."""
    from phonorm.corpus.audio import load_audio

    if utterance not in paths.index:
        return None
    try:
        return encode_clip(load_audio(paths[utterance]), kbps)
    except InputError:
        return None


def _round_robin(lists: list[list[str]]) -> list[list[str]]:
    """[[first of each list], [second of each], ...]: utterances balanced over speakers."""
    longest = max((len(x) for x in lists), default=0)
    return [[x[i] for x in lists if i < len(x)] for i in range(longest)]


def encode_clip(samples: np.ndarray, kbps: int) -> bytes:
    """`samples` (float32, 16 kHz mono) as Ogg Opus at about `kbps` kbit/s. libsndfile sets Opus's bit
    rate from its compression level, linearly from 256 kbit/s (level 0) to 6 kbit/s (level 1) at 16 kHz
    (measured: level 0.9 gives 34 kbit/s, 1.0 gives 10)."""
    import soundfile as sf

    level = float(np.clip((256 - kbps) / 250, 0.0, 1.0))
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, format="OGG", subtype="OPUS",
             compression_level=level)
    return buffer.getvalue()


# ---------------------------------------------------------------- coordinates
def _states(tables: list[tuple[str, str, pd.DataFrame]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every state's coordinates (float32) on all sampled frames; a UMAP state only where the
    analysis made that map. PCA's axes have no sign of their own: each layer's are flipped to agree
    with the model's previous layer, so that the points do not jump to the mirror image when the
    slider moves (a display choice; the analysis's files keep their signs)."""
    states: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    previous: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for model, layer, table in tables:
        pca = [table[c].to_numpy(np.float32) for c in ("pc1", "pc2")]
        if model in previous:
            pca = [a if np.nansum(a * b) >= 0 else -a for a, b in zip(pca, previous[model])]
        previous[model] = (pca[0], pca[1])
        states[state_key(model, layer, "pca")] = (pca[0], pca[1])
        if "umap1" in table and table.umap1.notna().any():
            states[state_key(model, layer, "umap")] = (table.umap1.to_numpy(np.float32),
                                                       table.umap2.to_numpy(np.float32))
    return states
