"""The training loop shared by `pretrain` and `finetune`: Accelerate set-up, resume-or-refuse,
checkpoints, and a step loop with an evaluation hook.

A stage gives `Trainer` what must match for a run to resume (its `fingerprint`: settings, base
model, corpus, process count), its model, optimizer and scheduler, a `train_step(batch) -> row` and
an `evaluate(state, row)` hook; the trainer runs the steps, logs one row per step, evaluates every
`eval_every` steps and at the end, and checkpoints after each evaluation.

Checkpoints (`OUT/checkpoint/`, written to a temporary folder and swapped in whole, so a crash
leaves the previous one intact) hold nothing that needs unpickling: the model in safetensors, the
optimizer state as tensors (`torch.load(weights_only=True)`), the scheduler's state and every
process's random-number states in JSON / safetensors, and `trainer_state.json`. An interrupted run
started again with the same fingerprint continues at the checkpoint's step with the same batches,
crops, dropout masks and optimizer state, so its log equals an unbroken run's; another fingerprint
is refused.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from phonorm.artifacts import follow_umask, json_ready, read_json, write_json
from phonorm.errors import InputError, PhonormError
from phonorm.launch import check_launch
from phonorm.progress import progress

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """What a run has done so far (JSON-ready): `step` (optimizer steps taken), `log` (one row per
    step), `extra` (the stage's own bookkeeping, e.g. the best dev score)."""

    step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_from: Optional[int] = None


HELD_OUT_SEED = 1234


@contextmanager
def held_out_mode(model: torch.nn.Module, seed: int = HELD_OUT_SEED) -> Iterator[None]:
    """Eval mode, no gradients, and numpy's global generator (which draws masks) seeded with `seed`,
    so that held-out scores at different steps see the same masks; the model's mode and the
    generator's state (checkpointed by the trainer) are restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        np.random.set_state(state)
        model.train(was_training)


def swap_folder(new: Path, target: Path) -> None:
    """Replace `target` by the complete folder `new` (renames only: never half of each). Its files
    first get the mode new files get here: safetensors' `save_file` (weights, heads, random states)
    writes them 0600 through mkstemp, which would leave a model unreadable to the user's group."""
    follow_umask(*(path for path in new.rglob("*") if path.is_file()))
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_optimizer_state(path: Path, device: Any) -> dict[str, Any]:
    """The optimizer state saved in a checkpoint, loaded as tensors only (nothing is unpickled);
    InputError naming the file when it is damaged or holds anything but a plain state dict."""
    import pickle

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        raise InputError(path, f"not a plain optimizer state of tensors ({type(err).__name__}); phonorm never writes "
                               f"code into a checkpoint, so the file was replaced or damaged: delete {path.parent} "
                               "to train from the start") from None
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise InputError(path, f"not an optimizer state dict (no state and param_groups); delete {path.parent} to "
                               "train from the start")
    return state


class Trainer:
    """One training run into the folder `out` (see the module docstring).

    `mixed_precision`: "no", "bf16" or "fp16" (resolved by the caller). `find_unused_parameters`:
    LayerDrop, SpecAugment's mask embedding or a frozen quantizer can leave parameters without
    gradient in a step, which plain DDP treats as an error.
    """

    def __init__(self, out: Path, *, fingerprint: dict[str, Any], seed: int, mixed_precision: str = "no"):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.out = Path(out)
        self.checkpoint = self.out / "checkpoint"
        self.accelerator = Accelerator(mixed_precision=mixed_precision,
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        check_launch(self.accelerator)
        set_seed(seed, device_specific=False)
        self.fingerprint = {**fingerprint, "num_processes": self.accelerator.num_processes}
        self.model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Any:
        """Wrap model and optimizer for this launch (device, DDP, autocast); returns the model to call.
        The scheduler is stepped by hand once per optimizer step and not given to Accelerate, whose
        wrapper would step it once per process."""
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        return self.model

    # ------------------------------------------------------------------ checkpoints
    def resume(self) -> TrainState:
        """The state of an interrupted run with the same fingerprint (weights, optimizer, scheduler and
        random states restored), a fresh state when there is none; PhonormError for another run's."""
        state_file = self.checkpoint / STATE_FILE
        if not state_file.is_file():
            return TrainState()
        saved = read_json(state_file)
        if saved.get("fingerprint") != json_ready(self.fingerprint):
            raise PhonormError(f"{self.checkpoint}: an interrupted run with other settings, model, corpus or process "
                               "count; run it again with the same ones, or delete the folder")
        from safetensors.torch import load_file, load_model

        load_model(self.unwrapped, str(self.checkpoint / "model.safetensors"), device=str(self.device))
        self.optimizer.load_state_dict(load_optimizer_state(self.checkpoint / "optimizer.pt", self.device))
        self.scheduler.load_state_dict(saved["scheduler"])
        rank = self.accelerator.process_index
        rng = read_json(self.checkpoint / f"rng-{rank}.json")
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np.random.set_state((rng["numpy"][0], np.asarray(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:]))
        tensors = load_file(str(self.checkpoint / f"rng-{rank}.safetensors"))
        torch.set_rng_state(tensors["torch"])
        if "cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["cuda"])
        state = TrainState(**saved["state"])
        state.resumed_from = state.step
        return state

    def save_checkpoint(self, state: TrainState) -> None:
        from safetensors.torch import save_file, save_model

        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.tmp")
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        rank = self.accelerator.process_index
        python = random.getstate()
        numpy_state: Any = np.random.get_state()
        write_json(tmp / f"rng-{rank}.json", {
            "python": [python[0], list(python[1]), python[2]],
            "numpy": [numpy_state[0], np.asarray(numpy_state[1]).tolist(), *[_plain(v) for v in numpy_state[2:]]],
        })
        tensors = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
        if self.main:
            save_model(self.unwrapped, str(tmp / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            write_json(tmp / STATE_FILE, {"fingerprint": json_ready(self.fingerprint),
                                          "scheduler": json_ready(self.scheduler.state_dict()),
                                          "state": json_ready(asdict(state))})
        self.accelerator.wait_for_everyone()
        if self.main:
            swap_folder(tmp, self.checkpoint)
        self.accelerator.wait_for_everyone()

    def discard_checkpoint(self) -> None:
        if self.main:
            shutil.rmtree(self.checkpoint, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    def run(self, *, loader: Iterable[Any], sampler: Any, total_steps: int, state: TrainState,
            train_step: Callable[[Any], dict[str, Any]], evaluate: Callable[[TrainState, dict[str, Any]], None],
            eval_every: int, desc: str, keep_steps: Iterable[int] = (),
            keep: Optional[Callable[[TrainState], None]] = None) -> TrainState:
        """Optimizer steps from `state.step` to `total_steps`. `train_step(batch)` does one step
        (forward, backward, optimizer and scheduler) and returns its log row; `evaluate(state, row)`
        runs every `eval_every` steps, at each of `keep_steps` and at the last step, may add to the
        row and to `state.extra`, and is followed by a checkpoint; at `keep_steps`, `keep(state)`
        (e.g. save a snapshot of the model) runs after `evaluate` and before the checkpoint, so a
        resumed run never misses one. `sampler.set_epoch(epoch, skip=k)` makes a resumed run see
        the batches an unbroken one would."""
        keep_at = set(keep_steps)
        steps_per_epoch = len(sampler)
        bar = progress(total=total_steps, initial=state.step, desc=desc, unit="step",
                       enabled=self.accelerator.is_local_main_process)
        tic = time.perf_counter()
        while state.step < total_steps:
            sampler.set_epoch(state.step // steps_per_epoch, skip=state.step % steps_per_epoch)
            for batch in loader:
                row = train_step(batch)
                loss = row.get("loss")
                if loss is not None and not math.isfinite(loss):
                    raise PhonormError(f"{self.out}: {desc}: the loss is {loss} at step {state.step + 1}, not finite; "
                                       "stopped before saving anything of this step (the weights were finite when "
                                       "loaded: try a lower --lr)")
                state.step += 1
                row = {"step": state.step, **row, "step_seconds": time.perf_counter() - tic}
                bar.update(1)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
                if state.step % eval_every == 0 or state.step == total_steps or state.step in keep_at:
                    evaluate(state, row)
                    state.log.append(row)
                    if keep is not None and state.step in keep_at:
                        keep(state)
                    self.save_checkpoint(state)
                else:
                    state.log.append(row)
                tic = time.perf_counter()
                if state.step >= total_steps:
                    break
        bar.close()
        return state


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


