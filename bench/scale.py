"""The study at its real size: time `phonorm analyze` on a store shaped like wav2vec 2.0 base on AISHELL-1.

    .venv/bin/python bench/scale.py [--rows 300000] [--store DIR] [--keep-store] [--extract] [--check-products]

`--src OLD/src` times another checkout's analysis on the same store (before/after figures).

1. Builds (or reuses, `--store DIR`) a feature store of the study's shape: 5 models (pre, tone, phone,
   sex, tone_sex) × 13 layers (L0-L12) × 768 dims, float16, `--rows` rows (default 300,000) from 20
   speakers (10 F, 10 M: AISHELL-1's test set has 20 speakers and 7,176 utterances) in utterances of
   ~42 rows, with the classic baselines. Rows have planted structure: speaker sex, tone (1-5, 0 on
   initials), 61 phones and speaker identity mapped into each layer by a layer-specific random
   matrix, plus noise with a decaying spectrum that drifts slowly from layer to layer (adjacent layers
   alike, as in real models); the fine-tuned models leave layers L0-L8 as the reference and change
   L9-L12 (task factors amplified, the irrelevant ones removed), the study's expected picture.
2. Runs `phonorm analyze STORE --reference pre` with every default (in a child process, as a user
   would), sampling the resident anonymous memory (RssAnon) of the child and its children every
   0.1 s; reads the analysis's own per-part timings (`settings.json` → `seconds`).
3. `--check-products`: analyses the store again with float64 products (`FLOAT64_CHECK`) and prints the
   largest difference of any similarity number between the two (`products_max_difference`).
4. `--extract`: also times extraction (bench/scale_extract.py).

Last line: one JSON object {"rows", "store_seconds", "analyze": {"wall_s", "peak_anon_mb", "parts": {...}}, ...}.
Speed depends on the machine: compare figures measured side by side in one run, and say where.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODELS = ("pre", "tone", "phone", "sex", "tone_sex")
N_LAYERS, DIM, SPEAKERS, PHONES = 13, 768, 20, 61
CHANGED_FROM = 9  # fine-tuned models differ from the reference from this layer up
ROWS_PER_UTTERANCE = 42
FACTOR_DIMS, NOISE = 128, 4.0
BLOCK = 10_000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the store
def _frames(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    speaker = np.sort(rng.integers(0, SPEAKERS, rows))
    utterance = np.empty(rows, dtype=np.int64)
    for s in range(SPEAKERS):  # consecutive utterances of ~42 rows within each speaker
        idx = np.flatnonzero(speaker == s)
        utterance[idx] = s * 100_000 + np.arange(len(idx)) // ROWS_PER_UTTERANCE
    phone = rng.integers(0, PHONES, rows)
    tone = np.where(phone < 21, 0, rng.integers(1, 6, rows))  # 21 "initials" carry no tone
    names = np.array([f"{'F' if s % 2 == 0 else 'M'}{s:02d}" for s in range(SPEAKERS)])
    frames = pd.DataFrame({
        "row": np.arange(rows), "utterance_id": pd.Series(utterance).map(lambda u: f"U{u:07d}").to_numpy(),
        "speaker": names[speaker], "sex": np.where(speaker % 2 == 0, "F", "M"), "split": "test",
        "time": (np.arange(rows) % ROWS_PER_UTTERANCE) * 0.02 + 0.0125, "frame": np.arange(rows) % ROWS_PER_UTTERANCE,
        "n_frames": 1, "segment_id": np.arange(rows) // 3, "start": np.nan, "end": np.nan,
        "phone": np.array([f"p{p:02d}" for p in range(PHONES)])[phone], "tone": tone.astype(np.int64),
    })
    frames["syllable"] = np.where(tone > 0, frames["phone"] + tone.astype(str), "")
    return frames


def _amplitudes(model: str, layer: int) -> dict[str, float]:
    """Factor amplitudes per model and layer: sex and speaker fade upwards in the reference, phone and
    tone peak in the middle; fine-tuned models amplify their tasks and drop the rest from CHANGED_FROM."""
    depth = layer / (N_LAYERS - 1)
    amp = {"sex": 1.3 - 0.6 * depth, "spk": 1.0 - 0.4 * depth, "tone": 0.8 + 0.6 * np.sin(np.pi * depth),
           "phone": 1.0 + 0.8 * np.sin(np.pi * depth)}
    if model == "pre" or layer < CHANGED_FROM:
        return amp
    tasks = set(model.split("_"))
    for task in tasks:
        amp[task] = 3.0
    if "sex" not in tasks:
        amp["sex"], amp["spk"] = 0.0, 0.1
    if "tone" not in tasks and "phone" not in tasks:
        amp["tone"] = amp["phone"] = 0.2
    return amp


def build_store(folder: Path, rows: int, seed: int = 0) -> float:
    """Write the store (see the module docstring); returns seconds taken."""
    from phonorm.features.manifest import StoreManifest, StoreModel
    from phonorm.features.writer import RowWriter

    start = time.time()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    frames = _frames(rows, rng)
    frames.to_parquet(folder / "frames.parquet", index=False)
    sex = np.where(frames["sex"].to_numpy() == "F", 1.0, -1.0).astype(np.float32)
    spk = pd.Categorical(frames["speaker"]).codes
    phone = pd.Categorical(frames["phone"]).codes
    tone = frames["tone"].to_numpy()
    # Factor codes: random vectors of norm ~1 per class in the FACTOR_DIMS highest-variance dims (a
    # layer-specific rotation there), under noise with a decaying spectrum NOISE/sqrt(1 + i). The
    # levels are set so that probes are neither trivial nor hopeless (held-out accuracy on 6,000 rows:
    # sex 0.97, tone 0.58, phone 0.34, speaker 0.23 at amplitude 1).
    embed = {"sex": rng.normal(size=(1, FACTOR_DIMS)), "spk": rng.normal(size=(SPEAKERS, FACTOR_DIMS)),
             "tone": rng.normal(size=(6, FACTOR_DIMS)), "phone": rng.normal(size=(PHONES, FACTOR_DIMS))}
    embed["tone"][0] = 0
    maps = []
    for _ in range(N_LAYERS):
        rotation = np.linalg.qr(rng.normal(size=(FACTOR_DIMS, FACTOR_DIMS)))[0]
        maps.append({f: np.pad(e @ rotation / np.sqrt(FACTOR_DIMS), ((0, 0), (0, DIM - FACTOR_DIMS))).astype(np.float32)
                     for f, e in embed.items()})
    spectrum = (NOISE / np.sqrt(1 + np.arange(DIM))).astype(np.float32)
    writers = {(m, k): RowWriter(folder / m / f"L{k}.npy", rows, DIM, "float16") for m in MODELS for k in range(N_LAYERS)}
    drift = 0.9  # noise at layer k = drift * noise at k-1 + fresh: adjacent layers alike
    for begin in range(0, rows, BLOCK):
        end = min(rows, begin + BLOCK)
        n = end - begin
        noise = {m: rng.standard_normal((n, DIM), dtype=np.float32) for m in ("shared",)}
        for k in range(N_LAYERS):
            fresh = rng.standard_normal((n, DIM), dtype=np.float32)
            noise["shared"] = drift * noise["shared"] + np.sqrt(1 - drift**2) * fresh
            factors = {"sex": sex[begin:end, None] * maps[k]["sex"][0], "spk": maps[k]["spk"][spk[begin:end]],
                       "tone": maps[k]["tone"][tone[begin:end]], "phone": maps[k]["phone"][phone[begin:end]]}
            for m in MODELS:
                amp = _amplitudes(m, k)
                if m != "pre" and k >= CHANGED_FROM:
                    own = noise.setdefault(m, noise["shared"].copy())
                    noise[m] = drift * own + np.sqrt(1 - drift**2) * rng.standard_normal((n, DIM), dtype=np.float32)
                    base = noise[m]
                else:
                    base = noise["shared"]
                x = base * spectrum + sum(amp[f] * factors[f] for f in factors) + 2.0
                writers[(m, k)].write(begin, x)
        _log(f"store: {end}/{rows} rows")
    for w in writers.values():
        w.finish()
    (folder / "classic").mkdir(exist_ok=True)
    f0 = np.where(sex > 0, 220.0, 120.0) * 2 ** ((tone - 3) * 1.5 / 12) * np.exp(rng.normal(0, 0.05, rows))
    f0[tone == 0] = np.nan
    st = 12 * np.log2(f0 / 100)
    z = np.full(rows, np.nan)
    for s in range(SPEAKERS):
        m = (spk == s) & np.isfinite(st)
        z[m] = (st[m] - st[m].mean()) / st[m].std()
    np.save(folder / "classic" / "f0_hz.npy", f0[:, None].astype(np.float32))
    np.save(folder / "classic" / "f0_semitone_z.npy", z[:, None].astype(np.float32))
    mfcc = maps[0]["phone"][phone][:, :13] * 10 + rng.normal(size=(rows, 13)).astype(np.float32)
    np.save(folder / "classic" / "mfcc.npy", mfcc.astype(np.float32))
    entries = [StoreModel(name=m, source=f"bench/{m}", model_type="wav2vec2", n_layers=N_LAYERS - 1, dim=DIM,
                          layers=[f"L{k}" for k in range(N_LAYERS)], dtype="float16",
                          layer_convention="L0 = input to the first Transformer layer", group_norm=True,
                          normalize_waveform=True, geometry={}, kind="pretrained" if m == "pre" else "finetuned",
                          tasks=[] if m == "pre" else m.split("_")) for m in MODELS]
    StoreManifest(format="phonorm-feature-store/1", rows=rows, row_unit="frame", models=entries,
                  layer_convention="L0 = input to the first Transformer layer", classic=["f0_hz", "f0_semitone_z", "mfcc"],
                  geometry={}, corpus="bench/scale", rows_key=f"bench-scale-{seed}-{rows}", counts={},
                  settings={"bench": "scale", "rows": rows, "seed": seed}, provenance={}).save(folder)
    return time.time() - start


# ----------------------------------------------------------------------------- memory of a process tree
def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def _anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `command`; wall seconds, CPU seconds (user + system of the child and its threads and
    children) and the peak of RssAnon summed over its process tree (MB)."""
    import resource

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    child = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], sum(_anon(p) for p in _tree(child.pid)))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output = child.communicate()[0]
    thread.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{output[-4000:]}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu.ru_utime - cpu_before.ru_utime) + (cpu.ru_stime - cpu_before.ru_stime)
    return {"wall_s": round(time.time() - start, 1), "cpu_s": round(cpu_s, 1), "peak_anon_mb": round(peak[0] / 2**20),
            "output": output}


def bench_analyze(store: Path, out: Path, extra: list[str], src: Path = ROOT / "src") -> dict:
    command = [sys.executable, "-m", "phonorm.cli", "analyze", str(store), "--reference", "pre", "--out", str(out),
               *extra]
    load_before = os.getloadavg()[0]
    result = run_measured(command, env={"PYTHONPATH": str(src)})
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    settings = json.loads((out / "settings.json").read_text())
    result["parts"] = settings.get("seconds", {})
    result["summary"] = result.pop("output").strip().splitlines()[-1]
    return result


#: The analysis that `--check-products` runs with float64 products, beside the timed one: every
#: similarity number (the similarity table, the layer matrices, the normalization shares) is computed;
#: the probes do not depend on the products' precision, so one cheap label keeps the run short.
FLOAT64_CHECK = ["--products", "float64", "--labels", "sex", "--no-umap", "--no-erasure", "--no-figures"]


def products_difference(timed: Path, exact: Path) -> dict:
    """Largest absolute difference between the numbers of two analyses of one store (`timed`: as
    run, float32 products by default; `exact`: float64 products), per file and over all: every
    numeric column of similarity.csv, normalization.csv and layer_matrix/*.csv (NaN on both sides
    counts as equal)."""
    def numbers(path: Path) -> pd.DataFrame:
        return pd.read_csv(path).select_dtypes("number")

    files = ["similarity.csv", "normalization.csv"] + sorted(
        f"layer_matrix/{p.name}" for p in (exact / "layer_matrix").glob("*.csv"))
    worst: dict[str, float] = {}
    for name in files:
        a, b = numbers(timed / name), numbers(exact / name)
        if a.shape != b.shape or list(a.columns) != list(b.columns):
            raise SystemExit(f"{name}: the two analyses' tables differ in shape ({a.shape} vs {b.shape})")
        diff = (a.to_numpy(float) - b.to_numpy(float))
        both_nan = np.isnan(a.to_numpy(float)) & np.isnan(b.to_numpy(float))
        worst[name] = float(np.nanmax(np.where(both_nan, 0.0, np.abs(diff)), initial=0.0))
    largest = max(worst, key=lambda k: worst[k])
    return {"max": worst[largest], "where": largest, "per_file": {k: v for k, v in worst.items()
                                                                  if not k.startswith("layer_matrix/")},
            "layer_matrix_max": max([v for k, v in worst.items() if k.startswith("layer_matrix/")], default=0.0)}


def seconds_from_parts(results: Path) -> dict:
    """Seconds per part summed over the per-layer results saved so far (R/.parts/*.json): the
    breakdown of an analysis stopped before its end, with the layers done."""
    total: dict[str, float] = {}
    layers = 0
    for path in sorted((results / ".parts").glob("*.json")):
        saved = json.loads(path.read_text())["result"].get("seconds", {})
        layers += 1
        for part, value in saved.items():
            total[part] = round(total.get(part, 0.0) + value, 1)
    return {"layers_done": layers, "seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--store", type=Path, help="build the store here, or reuse it if it is there")
    parser.add_argument("--keep-store", action="store_true", help="keep a temporary store")
    parser.add_argument("--extract", action="store_true", help="also time extraction (bench/scale_extract.py)")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the phonorm source tree whose `analyze` is timed (e.g. an older checkout's src/)")
    parser.add_argument("--parts", type=Path, help="only sum the per-part seconds of a results folder's saved "
                        "layers (an analysis stopped early), then exit")
    parser.add_argument("--out", type=Path, help="results folder (default: a temporary one, removed)")
    parser.add_argument("--check-products", action="store_true",
                        help="then analyse again with float64 products (untimed for the target) and print the "
                        "largest difference of any similarity number (products_max_difference)")
    parser.add_argument("analyze_args", nargs="*", help="extra `phonorm analyze` options, after --")
    args = parser.parse_args()
    if args.parts:
        print(json.dumps(seconds_from_parts(args.parts)))
        return

    store = args.store or Path(tempfile.mkdtemp(prefix="phonorm-scale-")) / "store"
    store_seconds = None
    if (store / "manifest.json").is_file():
        manifest = json.loads((store / "manifest.json").read_text())
        if manifest.get("rows") != args.rows:
            raise SystemExit(f"{store} holds {manifest.get('rows')} rows, not --rows {args.rows}; use another --store")
        _log(f"reusing the store in {store}")
    else:
        store_seconds = round(build_store(store, args.rows), 1)
        _log(f"store built in {store_seconds} s")
    out = args.out or Path(tempfile.mkdtemp(prefix="phonorm-scale-results-"))
    try:
        result = {"rows": args.rows, "models": len(MODELS), "layers": N_LAYERS, "dim": DIM,
                  "store_seconds": store_seconds, "machine": f"{platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores", "analyze_args": args.analyze_args,
                  "src": str(args.src), "analyze": bench_analyze(store, out, args.analyze_args, args.src)}
        if args.check_products:
            exact = out.parent / f"{out.name}-float64"
            _log(f"the same analysis with float64 products in {exact}")
            result["float64_check"] = bench_analyze(store, exact, [*args.analyze_args, *FLOAT64_CHECK], args.src)
            result["products_max_difference"] = products_difference(out, exact)
            if args.out is None:
                shutil.rmtree(exact, ignore_errors=True)
        if args.extract:
            from scale_extract import bench_extraction  # bench/ is on sys.path when run as a script

            result["extract"] = bench_extraction()
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        if args.store is None and not args.keep_store:
            shutil.rmtree(store.parent, ignore_errors=True)
    for part, seconds in sorted(result["analyze"]["parts"].items(), key=lambda kv: -kv[1]):
        _log(f"  {part:<22} {seconds:9.1f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
