"""Running independent stages side by side (`phonorm run --jobs N`).

The four fine-tunes of the study (and their evaluations, and independent pre-trainings) do not
depend on one another. Their small models use two cores poorly: on the 2-core machines here one
demo fine-tune takes 54 s on two threads and 60 s on one, so two at once on one thread each finish
four in about two thirds of the time. `execute_parallel` starts a stage of a `PARALLEL_KINDS` kind
in a worker process (`python -m phonorm.experiment.worker FILE KEY`: it plans the experiment again,
finds its stage by key and runs it through the same `cache.execute`, marker and all) as soon as the
stages it takes inputs from are done, at most `jobs` at a time, each with cores / jobs threads;
every other stage runs in this process once everything before it is done, as before. A worker's
output goes to WORKDIR/.logs/<stage>-<name>-<key12>.log; a failed worker stops the run with the
error line it printed and the log's path, after the workers still running have finished their
stages (their work is kept: a re-run resumes it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from phonorm.errors import PhonormError
from phonorm.experiment.cache import MARKER, Stage, execute
from phonorm.progress import logger

#: Stage kinds that may run in a worker beside others: independent model trainings and evaluations.
PARALLEL_KINDS = frozenset({"pretrain", "finetune", "evaluate"})

Spawn = Callable[[Stage, int], subprocess.Popen]


def default_jobs() -> int:
    """Two stages at a time on a CPU machine with at least two cores; one where a GPU is seen (the
    trainings share it poorly) or on one core."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) not in ("", "-1") and _cuda_available():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def worker_spawner(experiment_file: Path, force: bool) -> Spawn:
    """Start a worker process for a stage of the experiment file, with `threads` threads."""
    def spawn(stage: Stage, threads: int) -> subprocess.Popen:
        log = log_path(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PHONORM_THREADS": str(threads)}
        command = [sys.executable, "-m", "phonorm.experiment.worker", str(experiment_file), stage.key]
        with open(log, "w", encoding="utf-8") as out:
            return subprocess.Popen(command + (["--force"] if force else []), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
    return spawn


def log_path(stage: Stage) -> Path:
    return stage.workdir / ".logs" / f"{stage.kind}-{stage.name}-{stage.key[:12]}.log"


def execute_parallel(stages: list[Stage], *, jobs: int, spawn: Spawn, force: bool = False,
                     run_here: Callable[[Stage], None] = lambda s: execute(s)) -> None:
    """Run `stages` (in plan order) with up to `jobs` workers for the PARALLEL_KINDS stages; the
    others run here (`run_here`) when everything before them is done."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(stages)
    running: dict[int, tuple[Stage, subprocess.Popen, bool]] = {}
    failed: Optional[str] = None
    keys = {s.key: i for i, s in enumerate(stages)}
    finished: set[int] = set()
    try:
        while pending or running:
            started = False
            for stage in list(pending):
                if failed is not None:
                    break
                if not _ready(stage, stages, keys, finished):
                    if stage.kind not in PARALLEL_KINDS:
                        break  # the stages after a barrier wait for it
                    continue
                if stage.kind in PARALLEL_KINDS and stage.external is None and (force or not stage.done()):
                    if len(running) >= jobs:
                        continue
                    resuming = stage.folder.exists() and not force
                    logger.info(f"phonorm run: {stage.title}: {'resuming' if resuming else 'running'} in a worker "
                                f"({threads} thread{'s' * (threads > 1)}) → {stage.folder} (log {log_path(stage)})")
                    running[id(stage)] = (stage, spawn(stage, threads), resuming)
                else:  # a barrier with everything before it done, or a stage with nothing to do
                    run_here(stage)
                    finished.add(keys[stage.key])
                pending.remove(stage)
                started = True
            if failed is not None and not running:
                raise PhonormError(failed)
            if not started:
                if not running:
                    raise RuntimeError(f"no stage can start: {[s.title for s in pending]}")  # a planning bug
                failed = _wait_one(running, finished, keys) or failed
    finally:
        for _, process, _ in running.values():
            process.terminate()
            process.wait()


def _ready(stage: Stage, stages: list[Stage], keys: dict[str, int], finished: set[int]) -> bool:
    """Whether every stage `stage` depends on is done: the stages whose keys are among its inputs, and
    every earlier stage of a kind that does not run in workers (those act as barriers); a stage that
    runs here depends on every earlier stage."""
    position = keys[stage.key]
    if stage.kind not in PARALLEL_KINDS:
        return all(i in finished for i in range(position))
    needs = {keys[k] for k in stage.inputs.values() if k in keys}
    needs |= {i for i in range(position) if stages[i].kind not in PARALLEL_KINDS}
    return needs <= finished


def _wait_one(running: dict[int, tuple[Stage, subprocess.Popen, bool]], finished: set[int],
              keys: dict[str, int]) -> Optional[str]:
    """Wait until a worker ends; record its stage as done, or return the error it ended with."""
    while True:
        for ident, (stage, process, resuming) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[ident]
            if code == 0 and (stage.folder / MARKER).is_file():
                stage.read_marker()
                stage.status = "resumed" if resuming else "ran"
                finished.add(keys[stage.key])
                logger.info(f"phonorm run: {stage.title}: done in {stage.seconds:.1f} s in a worker")
                return None
            return f"{stage.title} failed in its worker (exit {code}): {_last_error(log_path(stage))} (log: {log_path(stage)})"
        time.sleep(0.2)


def _last_error(log: Path) -> str:
    """The worker's last non-empty line (phonorm prints one line per error)."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
