"""The one exception type a user sees: it names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PhonormError(Exception):
    """A problem with the user's input or settings, reported without a traceback by the CLI."""


class InputError(PhonormError):
    """Bad input in one file.

    `path` is the file, `problem` says what is wrong with it in words a user can act on;
    `item` optionally names the utterance or line inside the file.
    """

    def __init__(self, path: str | Path | None, problem: str, item: str | None = None):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.item = item
        where = self.path or "<input>"
        if item:
            where = f"{where} [{item}]"
        super().__init__(f"{where}: {problem}")
