"""Shared artifact plumbing: file modes follow the umask; one writer per folder."""

from __future__ import annotations

import errno
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


# --------------------------------------------------------------------------- a full disk
def _disk_full(*args, **kwargs):
    """A fault-injecting writer: what a write on a full disk raises."""
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_an_atomic_write_names_the_file_and_keeps_the_earlier_one(tmp_path):
    from phonorm.artifacts import atomic_path
    from phonorm.errors import WriteError

    target = tmp_path / "claims.json"
    target.write_text("earlier")
    with pytest.raises(WriteError, match=r"claims.json: cannot write: no space left on device; free some space"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            _disk_full()
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["claims.json"]


def test_a_full_disk_while_writing_a_layer_names_its_file(tmp_path):
    import numpy as np

    from phonorm.errors import WriteError
    from phonorm.features.writer import RowWriter

    writer = RowWriter(tmp_path / "L3.npy", rows=10, dim=4, dtype="float16")
    writer._file.write = _disk_full  # the sparse file meets the full disk on a row write
    with pytest.raises(WriteError, match=r"\.L3\.npy\.partial: cannot write: no space left on device"):
        writer.write(0, np.ones((2, 4)))


def _cli(args, monkeypatch, capsys):
    from phonorm.cli import main

    monkeypatch.setattr(sys, "argv", ["phonorm", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def test_a_full_disk_during_analyze_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from fake_store import make_feature_store

    store = make_feature_store(tmp_path / "F", models=("pretrained", "tone"), n_speakers=4, n_utterances=2,
                               n_frames=10, n_layers=1)
    monkeypatch.setattr(pd.DataFrame, "to_csv", _disk_full)
    status, err = _cli(["analyze", str(store), "--reference", "pretrained", "--out", str(tmp_path / "R"), "--no-umap",
                        "--folds", "2", "--no-figures"],
                       monkeypatch, capsys)
    assert status == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"phonorm: error: {tmp_path / 'R' / 'similarity.csv'}: cannot write: "
                                                   "no space left on device")


def test_a_library_write_on_a_full_disk_is_one_line_too(monkeypatch, capsys):
    """A write inside torch/transformers/safetensors raises a bare OSError: the command line still
    prints one line naming the file the library reported."""
    import phonorm.validate

    def library_write(folder):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/model.safetensors")

    monkeypatch.setattr(phonorm.validate, "validate_or_raise", library_write)
    status, err = _cli(["validate", "/out"], monkeypatch, capsys)
    assert status == 2 and err.strip() == ("phonorm: error: /out/model.safetensors: cannot write: no space left on "
                                           "device; free some space (or choose an output folder on another disk), "
                                           "then run the command again (files already finished are kept; an "
                                           "interrupted stage resumes)")


def test_a_swapped_in_folder_has_the_umask_modes(tmp_path):
    """safetensors writes 0600 (mkstemp); a model folder swapped in gets the modes of any new file."""
    import numpy as np
    from safetensors.numpy import save_file

    from phonorm.models.training import swap_folder

    new = tmp_path / ".m.tmp"
    new.mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(new / "model.safetensors"))
    assert (new / "model.safetensors").stat().st_mode & 0o777 == 0o600
    mask = os.umask(0o022)
    try:
        swap_folder(new, tmp_path / "m")
    finally:
        os.umask(mask)
    assert (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777 == 0o644


class _NotTensors:
    """Anything torch.save pickles that is not a tensor (a checkpoint file replaced by hand)."""


@pytest.mark.parametrize("content", ["object", "list", "cut"])
def test_an_optimizer_state_that_is_no_plain_state_dict_is_one_line(content, tmp_path):
    import torch

    from phonorm.errors import InputError
    from phonorm.models.training import load_optimizer_state

    path = tmp_path / "checkpoint" / "optimizer.pt"
    path.parent.mkdir()
    torch.save({"state": {}, "param_groups": [{"lr": torch.tensor(0.1)}]}, path)
    assert load_optimizer_state(path, "cpu")["param_groups"][0]["lr"] == pytest.approx(0.1)
    if content == "object":
        torch.save({"state": _NotTensors(), "param_groups": []}, path)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match=r"optimizer.pt: not .*optimizer state.*delete .*checkpoint to train from the start"):
        load_optimizer_state(path, "cpu")


@pytest.mark.parametrize("raised, errno_", [
    (OSError("83712 requested and 40896 written"), 28),  # numpy's short write on a full disk
    (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'), 28),
    (OSError(errno.EROFS, "Read-only file system"), 30),
    (OSError("some other failure"), None),
    (ValueError("not a write"), None),
])
def test_write_failures_are_recognised_as_the_libraries_report_them(raised, errno_, tmp_path):
    """numpy and safetensors report a full disk without an errno attribute; inside `writing` each is
    still one WriteError naming the file; anything else passes through unchanged."""
    from phonorm.artifacts import writing
    from phonorm.errors import WriteError, write_failure

    assert write_failure(raised) == errno_
    expected = WriteError if errno_ is not None else type(raised)
    with pytest.raises(expected) as caught:
        with writing(tmp_path / "layer.npy"):
            raise raised
    if errno_ is not None:
        assert str(caught.value).startswith(f"{tmp_path / 'layer.npy'}: cannot write")
