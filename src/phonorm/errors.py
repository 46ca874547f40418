"""The one exception type a user sees: it names the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional


class PhonormError(Exception):
    """A problem with the user's input or settings, reported without a traceback by the CLI.

    Every subclass crosses process boundaries whole (a worker's error reaches the main process with
    its message and fields): pickling rebuilds it from its message and attributes, not by calling
    `__init__` again, whose arguments differ by subclass. Without this a worker's error cannot be
    unpickled, and multiprocessing's pool waits forever for a result that never comes."""

    def __reduce__(self) -> tuple:
        return _rebuild_error, (type(self), str(self), dict(self.__dict__))


def _rebuild_error(cls: type[PhonormError], message: str, state: dict) -> PhonormError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


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


# errno values of a write the user can fix (space, quota, a read-only or foreign folder), with their words.
WRITE_FAILURES = {28: "no space left on device", 122: "disk quota exceeded", 30: "read-only file system",
                  13: "permission denied", 1: "operation not permitted", 27: "file larger than this process may write"}


class WriteError(PhonormError):
    """A file could not be written for a reason the user can fix (full disk, quota, read-only folder,
    permissions): names the file, the reason and what to do, instead of a traceback from deep inside
    numpy, pandas or torch."""

    def __init__(self, path: str | Path | None, errno: int | None):
        self.path = str(path) if path is not None else None
        reason = WRITE_FAILURES.get(errno or 0, "cannot write")
        advice = ("choose an output folder you can write to" if errno in (13, 1, 30) else
                  "raise the file-size limit (ulimit -f)" if errno == 27 else
                  "free some space (or choose an output folder on another disk)")
        super().__init__(f"{self.path or 'an output file'}: cannot write: {reason}; {advice}, then run the command "
                         "again (files already finished are kept; an interrupted stage resumes)")


_RUST_IO_CODE = re.compile(r"Os \{ code: (\d+)")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def write_failure(err: BaseException) -> Optional[int]:
    """The errno of a write failure the user can fix (errors.WRITE_FAILURES), as the libraries report it:
    an OSError's errno; safetensors' SafetensorError ("IoError(Os { code: 28, ... })"); numpy's short
    write to a full disk ("83712 requested and 40896 written", no errno: counted as a full disk)."""
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        return int(err.errno)
    text = str(err)
    code = _RUST_IO_CODE.search(text)
    if code and int(code.group(1)) in WRITE_FAILURES:
        return int(code.group(1))
    if isinstance(err, OSError) and err.errno is None and _SHORT_WRITE.search(text):
        return 28
    return None
