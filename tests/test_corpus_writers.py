"""The corpus stages as writers: one writer per output folder (`prepare`, `synth`), an output path
that is a file, and errors that start on their own line after a progress bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

from corpus_inputs import make_corpus
from phonorm.corpus.prepare import prepare_corpus
from phonorm.corpus.store import PreparedCorpus
from phonorm.corpus.synth import synthesize_corpus
from phonorm.errors import PhonormError
from phonorm.lock import LOCK_FILE, folder_lock


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), {"F01": "F", "M01": "M"}, n_utts=2)


def _prepare(out, corpus, **options):
    return prepare_corpus(out, audio_dir=corpus["audio"], alignments=corpus["alignments"],
                          speakers_file=corpus["speakers"], split_by="utterance", **options)


def test_prepare_refuses_a_second_writer(corpus, tmp_path):
    # flock locks of two open() calls conflict even in one process: the held lock stands for another run
    with folder_lock(tmp_path / "p", "phonorm prepare"):
        with pytest.raises(PhonormError, match=rf"already being written by phonorm prepare \(process {os.getpid()}"):
            _prepare(tmp_path / "p", corpus)
    assert not (tmp_path / "p" / "labels.json").exists()
    _prepare(tmp_path / "p", corpus)  # free again: the lock file left behind is no obstacle
    assert len(PreparedCorpus(tmp_path / "p").all_utterances) == 4


def test_synth_refuses_a_second_writer_and_ignores_the_lock_file(tmp_path):
    with folder_lock(tmp_path / "s", "phonorm synth"):
        with pytest.raises(PhonormError, match="already being written by phonorm synth"):
            synthesize_corpus(tmp_path / "s", n_speakers=2, n_utterances=1)
    assert not (tmp_path / "s").exists()  # the lock made the folder, nothing was written: no trace is left
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK_FILE).write_text("")
    # a folder holding only a lock file is empty for synth (other content is still refused)
    assert "Wrote 2 Mandarin utterances" in synthesize_corpus(tmp_path / "s", n_speakers=2, n_utterances=1)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(PhonormError, match="not empty"):
        synthesize_corpus(tmp_path / "t", n_speakers=2, n_utterances=1)


def test_out_an_existing_file_is_one_line_error(corpus, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PhonormError, match="afile: exists and is not a folder"):
        _prepare(tmp_path / "afile", corpus)
    with pytest.raises(PhonormError, match="cannot create the folder"):
        _prepare(tmp_path / "afile" / "p", corpus)  # a parent is a file
    result = subprocess.run(
        [sys.executable, "-m", "phonorm.cli", "prepare", str(tmp_path / "afile"), "--audio", str(corpus["audio"]),
         "--alignments", str(corpus["alignments"]), "--speakers", str(corpus["speakers"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"phonorm: error: {tmp_path / 'afile'}: exists and is not a folder; give a folder (new or existing) to write to"]


def _on_a_terminal(code: str) -> str:
    """What a terminal (100 columns) shows of `python -c code`."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return out.decode("utf-8", "replace")


def test_an_error_starts_on_its_own_line_after_a_progress_bar():
    # a stage that fails while its bar is drawn (the traceback keeps the bar open)
    shown = _on_a_terminal(textwrap.dedent("""
        import phonorm.cli as cli
        from phonorm.errors import PhonormError
        from phonorm.progress import progress

        def failing_stage():
            bar = progress(total=10, desc="stage", unit="step", mininterval=0)
            bar.update(3)
            raise PhonormError("x.wav: unreadable audio")

        cli.app = failing_stage
        cli.main()
    """))
    assert "stage:  30%" in shown  # the bar was drawn
    before, sep, _ = shown.partition("phonorm: error: x.wav: unreadable audio")
    assert sep and before.endswith("\n"), repr(shown)
