"""Speed and memory of `phonorm extract`. Prints one JSON object on its last line.

On one random model and one synthetic corpus (tests/fakes.py), in one run:
- `vs_plain_loop`: phonorm's extraction against the loop a user would write (one utterance at a
  time, `output_hidden_states=True`, every layer of every frame saved with `np.save`): wall ratio.
- `overhead_ratio`: phonorm's extraction against the bare forward passes alone (audio already in
  memory, nothing stored): the floor. Target ≤ 1.25.
- `peak_rss_mb`: peak resident memory of an extraction (in a fresh subprocess, ru_maxrss) at two
  corpus sizes ten times apart; it must not grow with the corpus beyond the row index.

Usage: .venv/bin/python bench/extract.py [--size small|base] [--utterances 10] [--repeats 3]
Timings take the best of `--repeats` runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # fakes.py: the synthetic corpus


# torch's oneDNN keeps compiled kernels per input shape (up to 1024 entries); every utterance length
# is a new shape, so that cache would grow with the number of distinct lengths. phonorm bounds it
# (models/upstream.py, 16 entries); the memory runs switch it off to measure phonorm's own memory.
MEMORY_ENV = {"OMP_NUM_THREADS": "2", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LRU_CACHE_CAPACITY": "1"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_model(size: str, folder: Path) -> str:
    import torch
    from transformers import Wav2Vec2Model

    from phonorm.models.backbone import make_config

    torch.manual_seed(0)
    Wav2Vec2Model(make_config(size)).save_pretrained(folder)
    return str(folder)


def make_corpus(folder: Path, utterances_per_speaker: int) -> Path:
    from fakes import make_prepared_corpus

    # Two speakers (F and M), both in the test split.
    return make_prepared_corpus(folder, n_speakers=2, n_utterances=utterances_per_speaker, seed=1)


def run_phonorm(corpus: Path, model: str, out: Path, **settings) -> float:
    from phonorm.features.extract import ExtractSettings, extract

    start = time.perf_counter()
    extract(corpus, models={"m": model}, out=out, settings=ExtractSettings(**settings))
    return time.perf_counter() - start


def run_plain_loop(corpus: Path, model_dir: str, out: Path) -> float:
    """What a user writes by hand: one utterance at a time, every layer of every frame, np.save."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    import torch
    from transformers import Wav2Vec2Model

    start = time.perf_counter()
    model = Wav2Vec2Model.from_pretrained(model_dir).eval()
    out.mkdir(parents=True)
    table = pd.read_parquet(corpus / "utterances.parquet")
    for row in table[table["split"] == "test"].itertuples():
        wave, _ = sf.read(row.audio_path, dtype="float32")
        x = torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7))[None]
        with torch.no_grad():
            hidden = model(x, output_hidden_states=True).hidden_states
        for k, layer in enumerate(hidden):
            np.save(out / f"{row.utterance_id}_L{k}.npy", layer[0].numpy())
    return time.perf_counter() - start


def run_floor(corpus: Path, model_dir: str) -> float:
    """The bare forward passes (same model, same utterances, one at a time; audio preloaded)."""
    import pandas as pd
    import torch

    from phonorm.corpus.audio import load_audio
    from phonorm.models.backbone import load_backbone, normalize_waveform

    model = load_backbone(model_dir)
    table = pd.read_parquet(corpus / "utterances.parquet")
    waves = [normalize_waveform(torch.from_numpy(load_audio(p)))[None]
             for p in table[table["split"] == "test"].sort_values("utterance_id")["audio_path"]]
    start = time.perf_counter()
    with torch.inference_mode():
        for wave in waves:
            model(wave, output_hidden_states=True)
    return time.perf_counter() - start


def child_floor_memory(corpus: str, model: str) -> None:
    """In a fresh process: the bare forward passes, one utterance loaded at a time (the floor's memory)."""
    import pandas as pd
    import torch

    from phonorm.corpus.audio import load_audio
    from phonorm.models.backbone import load_backbone, normalize_waveform

    torch.set_num_threads(2)
    reset = _reset_peak()
    network = load_backbone(model)
    table = pd.read_parquet(Path(corpus) / "utterances.parquet")
    with torch.inference_mode():
        for path in table[table["split"] == "test"]["audio_path"]:
            network(normalize_waveform(torch.from_numpy(load_audio(path)))[None], output_hidden_states=True)
    print(json.dumps({"peak_rss_mb": _peak_mb(), "reset": reset}))


def child_memory(corpus: str, model: str, out: str) -> None:
    """In a fresh process: extract (all frames, every layer) and report the peak resident memory."""
    import pandas as pd
    import torch
    import transformers  # noqa: F401  (imports are not the extraction's memory)

    from phonorm.features import extract  # noqa: F401

    torch.set_num_threads(2)
    reset = _reset_peak()
    run_phonorm(Path(corpus), model, Path(out), frames="all", classic=False)
    frames = pd.read_parquet(Path(out) / "frames.parquet")
    store_bytes = sum(p.stat().st_size for p in Path(out).rglob("*.npy"))
    print(json.dumps({
        "peak_rss_mb": _peak_mb(),
        "peak_measured_from": "extraction start (VmHWM reset)" if reset else "process start (ru_maxrss)",
        "rows": len(frames),
        "index_mb": frames.memory_usage(deep=True).sum() / 2**20,
        "store_mb": store_bytes / 2**20,
    }))


def _reset_peak() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux), so imports do not hide the peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(corpus: Path, model: str, out: Path | str) -> dict:
    """Peak memory of an extraction into `out` in a fresh process; `out == "-"`: of the floor."""
    result = subprocess.run([sys.executable, __file__, "--child-memory", str(corpus), model, str(out)],
                            capture_output=True, text=True, check=True, env={**os.environ, **MEMORY_ENV})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--utterances", type=int, default=10, help="per speaker (2 speakers) in the timed corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child-memory", nargs=3, metavar=("CORPUS", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        if args.child_memory[2] == "-":
            child_floor_memory(*args.child_memory[:2])
        else:
            child_memory(*args.child_memory)
        return

    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="phonorm-bench-") as tmp:
        tmp = Path(tmp)
        _log(f"making a random {args.size} model and corpora ...")
        model = make_model(args.size, tmp / "model")
        small = make_corpus(tmp / "small", args.utterances)
        large = make_corpus(tmp / "large", args.utterances * 10)
        import pandas as pd

        audio_s = float(pd.read_parquet(small / "utterances.parquet")["duration"].sum())
        times: dict[str, list[float]] = {"phonorm_all_frames": [], "plain_loop": [], "floor": [], "phonorm_default": []}
        for repeat in range(args.repeats):
            _log(f"timing, repeat {repeat + 1}/{args.repeats} ...")
            times["floor"].append(run_floor(small, model))
            times["phonorm_all_frames"].append(
                run_phonorm(small, model, tmp / f"F_all{repeat}", frames="all", classic=False))
            times["plain_loop"].append(run_plain_loop(small, model, tmp / f"plain{repeat}"))
            times["phonorm_default"].append(run_phonorm(small, model, tmp / f"F_default{repeat}"))
        best = {k: min(v) for k, v in times.items()}
        _log("peak memory at two corpus sizes (subprocesses) ...")
        memory_small = measure_memory(small, model, tmp / "mem_small")
        memory_large = measure_memory(large, model, tmp / "mem_large")
        floor_small = measure_memory(small, model, "-")["peak_rss_mb"]
        floor_large = measure_memory(large, model, "-")["peak_rss_mb"]
    result = {
        "bench": "extract",
        "model_size": args.size,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "audio_seconds_timed": round(audio_s, 1),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "seconds_all_repeats": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "vs_plain_loop": round(best["phonorm_all_frames"] / best["plain_loop"], 3),
        "overhead_ratio": round(best["phonorm_all_frames"] / best["floor"], 3),
        "overhead_target": 1.25,
        "overhead_ok": best["phonorm_all_frames"] / best["floor"] <= 1.25,
        "default_settings_ratio_to_floor": round(best["phonorm_default"] / best["floor"], 3),
        "memory": {"small": memory_small, "large": memory_large,
                   "rss_growth_mb": round(memory_large["peak_rss_mb"] - memory_small["peak_rss_mb"], 1),
                   "floor_peak_rss_mb": {"small": round(floor_small, 1), "large": round(floor_large, 1)},
                   "floor_rss_growth_mb": round(floor_large - floor_small, 1),
                   "growth_beyond_floor_mb": round(memory_large["peak_rss_mb"] - memory_small["peak_rss_mb"]
                                                   - (floor_large - floor_small), 1),
                   "index_growth_mb": round(memory_large["index_mb"] - memory_small["index_mb"], 1),
                   "store_growth_mb": round(memory_large["store_mb"] - memory_small["store_mb"], 1)},
        "notes": "phonorm_all_frames = frames all, float16, no classic (comparable with the plain loop, which "
                 "saves every frame in float32); phonorm_default = labelled frames + classic F0/MFCC. "
                 "Every timing includes model loading except the floor. Memory runs with oneDNN's per-shape "
                 "kernel cache off (MEMORY_ENV).",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
