"""Progress bars for long work, and the package's logger.

Bars are drawn only on a terminal: when stderr goes to a file or a pipe (a log, CI), tqdm would
write a `\\r` frame per update and fill the log with them, so there the bar is off and the stages
log one line per milestone instead (`logger`).
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger("phonorm")


def progress(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (same keyword arguments) that draws only on a terminal and only when `enabled`."""
    return tqdm(disable=None if enabled else True, **kwargs)


def close_bars() -> None:
    """Close every progress bar still open. An error that unwinds through a stage leaves its bar
    drawn on the terminal's current line (the traceback keeps the bar alive); closing ends that
    line, so that the error printed next starts on a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):  # tqdm's registry of live bars (all classes share it)
        bar.close()
