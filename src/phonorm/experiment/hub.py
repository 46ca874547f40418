"""Hub ids of an experiment checked before any stage runs: a misspelt or unreachable model is named
at once, not after the synth and corpus stages ran and the download was retried.

A hub id is accepted when the local Hugging Face cache holds its config.json (what an offline run
loads). Otherwise, offline (HF_HUB_OFFLINE) it is refused; online the hub is asked once whether the
model exists: "no such model" is refused, any other answer (gated, hub unreachable) is left to the
stage that loads it, which says what it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from phonorm.errors import InputError
from phonorm.experiment.config import Experiment

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_ids(experiment: Experiment) -> dict[str, str]:
    """YAML field → hub id, for every model the experiment names by hub id (not a folder, not one of its own)."""
    own = {*experiment.models, *(p.name for p in experiment.pretrain), *(f.name for f in experiment.finetune)}
    ids = {f"models.{name}": source for name, source in experiment.models.items() if not Path(source).is_dir()}
    for i, entry in enumerate(experiment.finetune):
        if entry.base not in own and not Path(entry.base).is_dir():
            ids[f"finetune[{i}].base"] = entry.base
    return ids


def offline() -> bool:
    """Whether Hugging Face downloads are switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_model_problem(repo_id: str) -> Optional[str]:
    """None when the model `repo_id` can be loaded as far as can be told up front; else the problem in words."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=constants.HF_HUB_CACHE), str):
        return None
    if offline():
        return (f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and downloads are off (HF_HUB_OFFLINE); "
                f"download it first (hf download {repo_id}) or give a model folder")
    return _ask_hub(repo_id)


def _ask_hub(repo_id: str) -> Optional[str]:
    """One question to the hub (no retries): does the model exist?"""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=15)
    except GatedRepoError:
        return None  # it exists; loading it says what access it needs
    except RepositoryNotFoundError:
        return ("no such model on the Hugging Face hub (check the spelling; a private model needs "
                "`hf auth login`)")
    except Exception:  # the hub unreachable: not a reason to refuse here; the stage that loads it will say
        return None
    return None


def check_hub_models(experiment: Experiment, path: Path) -> None:
    """InputError naming the experiment file, each field and hub id that cannot be loaded, and what to do."""
    problems = [f"{field}: {repo_id!r}: {problem}" for field, repo_id in hub_ids(experiment).items()
                if (problem := hub_model_problem(repo_id)) is not None]
    if problems:
        raise InputError(path, "; ".join(problems))
