"""`phonorm info`: what a prepared corpus holds, including frame counts per label of each task.

Frames are counted on the default wav2vec 2.0 grid (`frames.FrameGeometry()`: 20 ms hop, 25 ms
window) with `frames.frame_labels`, i.e. exactly the frames fine-tuning will score.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from phonorm.corpus.split import split_problems
from phonorm.corpus.store import SPLITS, PreparedCorpus
from phonorm.frames import IGNORE_INDEX, TASKS, FrameGeometry, frame_labels

MATCH_WAYS = {"folder": "folder name", "prefix": "id prefix", "regex": "regex"}
"""How utterances found their speaker (`labels.json` speakers.matched), in words."""


def corpus_info(folder: str | Path) -> dict:
    """Summary of a prepared corpus as plain JSON-ready values:
    `utterances`, `speakers`, `hours`, `sex` (F/M → speakers), `splits` (split → utterances),
    `split_speakers` (split → speakers), `segments`, `labels` (task → {label → frames}),
    `frames` (total frames on the grid), `scheme`, `tone_mode`, `skipped` (rows of skipped.tsv),
    `split_by` (speaker, utterance or file), `speaker_disjoint` (no speaker in two splits),
    `split_problems` (sentences: a sex without dev/test speakers, speakers shared between splits),
    `speaker_match` ({"rule": the `--speaker-from` rule, "matched": {folder|prefix|regex: utterances}};
    None for a corpus prepared before it was recorded)."""
    corpus = PreparedCorpus(folder)
    utterances = corpus.all_utterances
    geometry = FrameGeometry()
    labels = corpus.labels
    label_maps = labels.tasks
    counts: dict[str, Counter[str]] = {task: Counter() for task in TASKS}
    total_frames = 0
    for row in utterances.itertuples(index=False):
        n_frames = geometry.frames_for_duration(row.duration)
        total_frames += n_frames
        grids = frame_labels(corpus.segments_of(row.utterance_id), row._asdict(), n_frames, label_maps, geometry,
                             tasks=TASKS)
        for task in TASKS:
            ids, n = np.unique(grids[task][grids[task] != IGNORE_INDEX], return_counts=True)
            counts[task].update({label_maps[task][int(i)]: int(c) for i, c in zip(ids, n)})
    speakers = utterances.drop_duplicates("speaker")
    skipped_file = Path(folder) / "skipped.tsv"
    skipped = max(0, len(skipped_file.read_text(encoding="utf-8").splitlines()) - 1) if skipped_file.is_file() else 0
    return {
        "corpus": str(Path(folder).resolve()),
        "utterances": int(len(utterances)),
        "speakers": int(len(speakers)),
        "hours": round(float(utterances["duration"].sum()) / 3600.0, 6),
        "sex": {sex: int((speakers["sex"] == sex).sum()) for sex in ("F", "M")},
        "splits": {split: int((utterances["split"] == split).sum()) for split in SPLITS},
        "split_speakers": {split: int(utterances.loc[utterances["split"] == split, "speaker"].nunique()) for split in SPLITS},
        "segments": int(len(corpus.segments)),
        "frames": int(total_frames),
        "labels": {task: {label: int(counts[task].get(label, 0)) for label in label_maps.get(task, [])} for task in TASKS},
        "scheme": labels.scheme,
        "tone_mode": labels.tone_mode,
        "skipped": skipped,
        "split_by": labels.split.by if labels.split else "speaker",
        "speaker_disjoint": bool((utterances.groupby("speaker")["split"].nunique() <= 1).all()),
        "split_problems": split_problems(utterances),
        "speaker_match": labels.speakers.model_dump() if labels.speakers else None,
    }


def format_info(info: dict) -> str:
    """The summary as a few readable lines."""
    lines = [
        f"corpus      {info['corpus']}",
        f"utterances  {info['utterances']}   hours {info['hours']:.3f}   segments {info['segments']}   frames {info['frames']} (20 ms)",
        f"speakers    {info['speakers']}   F {info['sex']['F']}   M {info['sex']['M']}",
        "splits      " + "   ".join(
            f"{s} {info['splits'][s]} utt / {info['split_speakers'][s]} spk" for s in info["splits"]
        ),
        f"scheme      {info['scheme']}   tone {info['tone_mode']}",
    ]
    match = info.get("speaker_match")
    if match:
        ways = ", ".join(f"{MATCH_WAYS.get(way, way)} {n} utterances" for way, n in match["matched"].items())
        lines.append(f"matched     speakers by {match['rule']} rule: {ways or 'none'}")
    lines += [f"note        {problem}" for problem in info.get("split_problems") or []]
    if info.get("skipped"):
        lines.append(f"skipped     {info['skipped']} (see skipped.tsv)")
    for task, labels in info["labels"].items():
        if not labels:
            lines.append(f"{task:<11} (no labels)")
            continue
        shown = "  ".join(f"{label}:{n}" for label, n in labels.items())
        lines.append(f"{task:<11} {len(labels)} labels, frames per label: {shown}")
    return "\n".join(lines)
