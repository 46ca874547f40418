"""Speed and memory of our streamed SVCCA/CKA against an in-memory NumPy baseline (google/svcca's recipe).

    .venv/bin/python bench/similarity.py [--rows 200000] [--dim 768] [--big-rows 2000000] [--threads 2]

1. Writes two related layers X, Y (rows, dim) as float16 .npy files (the feature store's format)
   to a temporary folder: Y = X·A + noise.
2. Baseline, in a child process: load both into float64 memory, then google/svcca's recipe:
   centre, SVD of the data, keep the top directions explaining 99% of variance (by s²), `np.cov`
   of the kept coordinates, `pinv` + `eigh` inverse square roots, SVD → canonical correlations,
   mean; CKA as Kornblith et al.'s feature-space formula on the centred arrays.
3. Ours, in a child process: stream the memory-mapped files in blocks into `PairSums` (float64
   d×d sums) and read SVCCA and CKA from them.
4. Ours on `--big-rows` memory-mapped rows (0 to skip).
Each child reports wall time and peak memory: VmHWM (peak resident set, including file pages of
the memory map that were resident) and the peak of anonymous memory (RssAnon, sampled every 20 ms:
the memory the process really owns). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- memory probes
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """Samples RssAnon in a thread; `.peak` in bytes."""

    def __init__(self, every: float = 0.02):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


# ----------------------------------------------------------------------------- data
def make_data(folder: Path, rows: int, dim: int, seed: int = 0, chunk: int = 100_000) -> tuple[Path, Path]:
    """Two related float16 layers in .npy files: X ~ correlated Gaussian, Y = X·A + noise."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    mix *= np.linspace(3, 0.05, dim, dtype=np.float32)[None, :]  # a decaying spectrum, like real layers
    a = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    paths = folder / f"x_{rows}.npy", folder / f"y_{rows}.npy"
    x_out = np.lib.format.open_memmap(paths[0], mode="w+", dtype=np.float16, shape=(rows, dim))
    y_out = np.lib.format.open_memmap(paths[1], mode="w+", dtype=np.float16, shape=(rows, dim))
    for begin in range(0, rows, chunk):
        n = min(chunk, rows - begin)
        x = rng.standard_normal((n, dim), dtype=np.float32) @ mix + 1.5
        x_out[begin:begin + n] = x
        y_out[begin:begin + n] = x @ a + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x_out.flush()
    y_out.flush()
    del x_out, y_out
    return paths


# ----------------------------------------------------------------------------- baseline
def baseline_svcca_cka(x_path: Path, y_path: Path, keep: float = 0.99, epsilon: float = 1e-10) -> dict:
    """google/svcca's recipe, in memory and float64 (acts as (neurons, datapoints), as their code)."""
    x = np.load(x_path).astype(np.float64).T
    y = np.load(y_path).astype(np.float64).T

    def svd_reduce(acts):
        acts = acts - acts.mean(axis=1, keepdims=True)
        u, s, vt = np.linalg.svd(acts, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep - 1e-12) + 1)
        return s[:k, None] * vt[:k]  # google: np.dot(s[:k]*np.eye(k), V[:k])

    def inv_sqrt(c):  # google's positivedef_matrix_sqrt via eigh, then pinv
        c = c + epsilon * np.linalg.eigvalsh(c).max() * np.eye(len(c))
        w, v = np.linalg.eigh(c)
        return np.linalg.pinv(v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T)

    start = time.perf_counter()
    rx, ry = svd_reduce(x), svd_reduce(y)
    sigma = np.cov(rx, ry)
    kx = len(rx)
    sxx, sxy, syy = sigma[:kx, :kx], sigma[:kx, kx:], sigma[kx:, kx:]
    rho = np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)
    svcca = float(np.mean(np.clip(rho, 0, 1)))
    svcca_s = time.perf_counter() - start

    start = time.perf_counter()
    xc = (x - x.mean(axis=1, keepdims=True)).T
    yc = (y - y.mean(axis=1, keepdims=True)).T
    cka = float(np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    cka_s = time.perf_counter() - start
    return dict(svcca=svcca, cka=cka, svcca_s=svcca_s, cka_s=cka_s)


# ----------------------------------------------------------------------------- ours
def ours_svcca_cka(x_path: Path, y_path: Path, block: int = 16384) -> dict:
    from phonorm.analysis.measures import PairSums

    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path, mmap_mode="r")
    start = time.perf_counter()
    pair = PairSums.empty(x.shape[1], y.shape[1], np.asarray(x[:block], np.float64).mean(0),
                          np.asarray(y[:block], np.float64).mean(0))
    for begin in range(0, x.shape[0], block):
        pair.update(x[begin:begin + block], y[begin:begin + block])
        _release(x, begin, block)
        _release(y, begin, block)
    sums_s = time.perf_counter() - start
    start = time.perf_counter()
    svcca = pair.svcca()
    svcca_s = time.perf_counter() - start
    start = time.perf_counter()
    cka = pair.cka()
    cka_s = time.perf_counter() - start
    return dict(svcca=svcca, cka=cka, sums_s=sums_s, svcca_s=svcca_s, cka_s=cka_s,
                total_s=sums_s + svcca_s + cka_s)


def _release(array: np.memmap, begin: int, block: int) -> None:
    """Drop the mapped pages of rows already summed from this process's resident set (they stay
    in the page cache); keeps the resident set bounded by the block, not the file."""
    handle = getattr(array, "_mmap", None)
    if handle is None:
        return
    row = array.strides[0]
    offset = array.offset + begin * row
    first = offset // mmap.PAGESIZE * mmap.PAGESIZE
    end = offset + block * row
    handle.madvise(mmap.MADV_DONTNEED, first, max(0, min(end, len(handle)) - first))


# ----------------------------------------------------------------------------- driver
def child(kind: str, x_path: str, y_path: str) -> None:
    with AnonPeak() as peak:
        result = baseline_svcca_cka(Path(x_path), Path(y_path)) if kind == "baseline" else \
            ours_svcca_cka(Path(x_path), Path(y_path))
    result.update(peak_rss_mb=_status("VmHWM") / 2 ** 20, peak_anon_mb=peak.peak / 2 ** 20)
    print(json.dumps(result))


def run_child(kind: str, paths, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(paths[0]), str(paths[1])],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": done.stderr[-2000:], "returncode": done.returncode}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s_with_load"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--big-rows", type=int, default=2_000_000)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads per child (1: fair on a shared machine; raise on a quiet one)")
    parser.add_argument("--tmp", default=None, help="folder for the data files (default: a temp folder)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        paths = make_data(folder, args.rows, args.dim)
        report = {"rows": args.rows, "dim": args.dim, "threads": args.threads, "cpus": os.cpu_count(),
                  "data_s": time.perf_counter() - t}
        report["baseline"] = run_child("baseline", paths, args.threads)
        report["ours"] = run_child("ours", paths, args.threads)
        base, ours = report["baseline"], report["ours"]
        if "error" not in base and "error" not in ours:
            report["svcca_abs_diff"] = abs(base["svcca"] - ours["svcca"])
            report["cka_abs_diff"] = abs(base["cka"] - ours["cka"])
            report["agree_1e-6"] = report["svcca_abs_diff"] < 1e-6 and report["cka_abs_diff"] < 1e-6
            report["speedup_svcca_plus_cka"] = (base["svcca_s"] + base["cka_s"]) / ours["total_s"]
        for p in paths:
            p.unlink()
        if args.big_rows:
            t = time.perf_counter()
            big = make_data(folder, args.big_rows, args.dim, seed=1)
            report["big"] = {"rows": args.big_rows, "data_s": time.perf_counter() - t,
                             "file_mb_each": big[0].stat().st_size / 2 ** 20, **run_child("ours", big, args.threads)}
            report["big"]["under_1.5GB"] = report["big"].get("peak_rss_mb", 1e9) < 1536
    print(json.dumps(report))


if __name__ == "__main__":
    main()
