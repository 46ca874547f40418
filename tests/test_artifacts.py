"""Shared artifact plumbing: file modes follow the umask; one writer per folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from phonorm.artifacts import write_json
from phonorm.errors import PhonormError
from phonorm.lock import folder_lock


def test_atomic_writes_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from phonorm.lock import folder_lock
        with folder_lock({str(tmp_path)!r}, "phonorm extract"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PhonormError, match=rf"already being written by phonorm extract \(process {holder.pid}, started"):
            with folder_lock(tmp_path, "phonorm extract"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, "phonorm extract"):  # the killed holder's lock is gone with it
        assert str(os.getpid()) in (tmp_path / ".phonorm.lock").read_text()
