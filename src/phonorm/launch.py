"""How many processes a command was launched as (`accelerate launch`, `torchrun`), checked.

Shared by the stages that split work over processes (pretrain, finetune, extract). On CPU,
Accelerate joins the processes torchrun starts only when told to use the CPU
(`ACCELERATE_USE_CPU=1`); otherwise each process would believe it runs alone and all would write
the same files. `check_launch` refuses that case with the command that works.
"""

from __future__ import annotations

import os

from phonorm.errors import PhonormError


def check_launch(state) -> None:
    """Raise PhonormError when a launcher started several processes but `state` (an Accelerator
    or PartialState) sees one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and state.num_processes == 1:
        raise PhonormError(
            f"launched as {world} processes but Accelerate sees 1; on CPU run "
            "`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m phonorm.cli ...`, on GPUs `accelerate launch --multi_gpu ...`")


def process_state():
    """Accelerate's `PartialState` of this process (index, count, device), as `Accelerator` would
    make it (CPU processes join when ACCELERATE_USE_CPU is set), checked with `check_launch`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(state)
    return state
