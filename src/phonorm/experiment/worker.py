"""`python -m phonorm.experiment.worker FILE KEY [--force]`: run one stage of an experiment file in a
process of its own (experiment/schedule.py starts it). It plans the experiment again, finds the
stage whose key is KEY and runs it through `cache.execute`, which writes the stage's marker last;
the parent reads the marker. Errors print as one line (exit 2), as the CLI prints them."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import logging

    import torch

    from phonorm.errors import PhonormError
    from phonorm.experiment.cache import execute
    from phonorm.experiment.load import load_experiment
    from phonorm.experiment.plan import plan_stages

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    threads = int(os.environ.get("PHONORM_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    file, key = Path(argv[0]), argv[1]
    try:
        experiment, _ = load_experiment(file)
        plan = plan_stages(experiment, file.resolve())
        stage = next((s for s in plan.stages if s.key == key), None)
        if stage is None:
            raise PhonormError(f"{file}: no stage with key {key[:12]} (the experiment file changed since the run began)")
        execute(stage, force="--force" in argv[2:])
    except PhonormError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
