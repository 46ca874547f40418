"""One writer per output folder: an advisory lock every writing stage takes on its folder.

`folder_lock(folder, what)` holds `fcntl.flock` on `folder/.phonorm.lock` (created if needed) for
the duration of the work and writes the holder's process id, start time and command into it. A
second writer (another `phonorm extract` into the same store, another `phonorm run` of the same
experiment) is refused at once with a message naming the holder, instead of both writing the same
files. The operating system releases the lock when the holder's process ends, however it ends, so
a lock left by a killed process is taken over without any clean-up. Processes of one
`accelerate launch` share the lock: only the main process (rank 0) takes it.

Advisory locks need a file system that supports them (local disks, NFSv4); where `flock` is not
available the work goes on unlocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from phonorm.errors import PhonormError

LOCK_FILE = ".phonorm.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the write lock of `folder` (created with its parents) while the block runs."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PhonormError(f"{folder}: exists and is not a folder; give a folder (new or existing) to write to")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent is a file, no permission, read-only file system
        raise PhonormError(f"{folder}: cannot create the folder ({err.strerror or err})") from None
    path = folder / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise PhonormError(f"{folder}: cannot write into the folder ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            raise PhonormError(f"{folder}: already being written by {holder}; wait for it to finish, or use "
                               "another output folder") from None
        except OSError:  # no lock support on this file system
            yield
            return
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what,
                                 "command": " ".join(sys.argv)}))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # nothing was written: leave no trace
            path.unlink(missing_ok=True)
            folder.rmdir()


def _describe(text: str) -> str:
    try:
        record = json.loads(text)
        return f"{record.get('what', 'phonorm')} (process {record.get('pid')}, started {record.get('started')})"
    except (ValueError, AttributeError):
        return "another phonorm process"
