"""Which eraser brings sex to chance on planted speakers (issue 30): LEACE of the sex labels against
LEACE of the speaker identities, through phonorm's own `erasure_probes` (three speaker-disjoint roles,
intervals clustered by fold).

    python bench/erasure.py [--reps 12] [--speakers 8 12 20] [--dim 16] [--offset 0.5]

The planted rows (`planted`): speaker s (half F, half M) has 150 rows; x = tone direction · 1.5 +
sign(sex) · d + o_s + noise, with d one sex direction shared by every speaker (norm 2), o_s the
speaker's own offset (each coordinate normal, sd `--offset`) and unit normal noise, in `--dim`
dimensions; with `--offset` 0 the speakers differ by sex alone. A third scenario, "own direction", gives every speaker a sex direction of its own
(d_s, no shared part): nothing linear and shared is there to erase, and sex is not decodable on
held-out speakers before erasure either.

Printed per scenario, speaker count and eraser: the share of runs in which sex was clearly above
chance before erasure (balanced accuracy's 95% CI lower bound > 0.5 + 0.05), at chance after (TOST,
90% CI within ±0.05), the mean balanced sex accuracy after, and the mean tone change with the share
of runs whose change interval lies above −0.02 (tone kept).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from phonorm.analysis.erasure import SEX_ERASERS, erasure_probes
from phonorm.analyze import TorchKernels

ROWS = 150
CLEAR = 0.05  # "clearly above chance": claims' CHANGE margin


def planted(speakers: int, dim: int, offset: float, own: bool, seed: int):
    """(x, tone, sex, speaker) of the module docstring's scenario."""
    rng = np.random.default_rng(seed)
    names = np.repeat([f"S{i:02d}" for i in range(speakers)], ROWS)
    sign = np.repeat(np.where(np.arange(speakers) % 2 == 0, 1.0, -1.0), ROWS)
    tone = rng.integers(1, 5, len(names))
    if own:
        direction = rng.normal(size=(speakers, dim))
        direction *= 2 / np.linalg.norm(direction, axis=1, keepdims=True)
        sex_part = sign[:, None] * np.repeat(direction, ROWS, axis=0)
    else:
        shared = rng.normal(size=dim)
        sex_part = sign[:, None] * (2 * shared / np.linalg.norm(shared))
    x = (rng.normal(size=(5, dim))[tone] * 1.5 + sex_part
         + np.repeat(rng.normal(size=(speakers, dim)) * offset, ROWS, axis=0) + rng.normal(size=(len(names), dim)))
    return x, tone, np.where(sign > 0, "F", "M"), names


def run(speakers: int, dim: int, offset: float, own: bool, eraser: str, reps: int) -> dict:
    clear = at_chance = kept = 0
    after, change = [], []
    for rep in range(reps):
        x, tone, sex, names = planted(speakers, dim, offset, own, seed=1000 * speakers + rep)
        rows = {(r["erased"], r["probed"]): r for r in erasure_probes(x, tone, sex, names, kernels=TorchKernels("cpu"), folds=4, seed=rep,
                                                                      sex_eraser=eraser)}
        before, gone, tone_row = rows["none", "sex"], rows["sex", "sex"], rows["sex", "tone"]
        clear += (before["balanced_ci_low"] or 0) > before["balanced_chance"] + CLEAR
        at_chance += gone["at_chance"] is True
        after.append(gone["balanced_accuracy"])
        change.append(tone_row["change"])
        kept += (tone_row["change_ci_low"] or -1) > -0.02
    return dict(clear_before=clear / reps, at_chance_after=at_chance / reps, sex_after=float(np.mean(after)),
                tone_change=float(np.mean(change)), tone_kept=kept / reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--speakers", type=int, nargs="+", default=[8, 12, 20])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--offset", type=float, default=0.5)
    args = parser.parse_args()
    start = time.time()
    print("| scenario | speakers | eraser | sex clearly above chance before | at chance after (TOST) | "
          "balanced sex after | tone change | tone kept (CI > -0.02) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for own, offset in ((False, 0.0), (False, args.offset), (True, args.offset)):
        scenario = "own direction per speaker" if own else f"shared direction + offsets sd {offset}"
        for g in args.speakers:
            for eraser in SEX_ERASERS:
                r = run(g, args.dim, offset, own, eraser, args.reps)
                print(f"| {scenario} | {g} | {eraser} | {r['clear_before']:.2f} | {r['at_chance_after']:.2f} | "
                      f"{r['sex_after']:.3f} | {r['tone_change']:+.4f} | {r['tone_kept']:.2f} |", flush=True)
    print(f"\n{args.reps} runs per row, {args.dim} dimensions, {ROWS} rows per speaker; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
