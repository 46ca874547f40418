"""Fuzzing the alignment readers: whatever the file holds, they return an alignment or raise our
`InputError` naming the file, never any other exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus_inputs import utterance_plan, write_textgrid
from phonorm.corpus.alignment import Alignment, is_silence
from phonorm.corpus.ctm import read_ctm
from phonorm.corpus.labelling import label_alignment
from phonorm.corpus.schemes import (
    MandarinScheme,
    Phone,
    PlainScheme,
    SchemeError,
    TonalScheme,
)
from phonorm.corpus.textgrid import read_textgrid
from phonorm.errors import InputError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="phonorm-fuzz-"))


def _valid_textgrid_text() -> str:
    words, phones, end = utterance_plan(3)
    return write_textgrid(_DIR / "valid.TextGrid", words, phones, end).read_text()


VALID_TEXTGRID = _valid_textgrid_text()
VALID_SHORT = (  # praatio's short format of the same kind of file
    'File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n1\n<exists>\n1\n"IntervalTier"\n"phones"\n0\n1\n2\n'
    '0\n0.5\n"zh"\n0.5\n1\n"ong1"\n'
)


def _read_textgrid_bytes(data: bytes) -> None:
    path = _DIR / "fuzz.TextGrid"
    path.write_bytes(data)
    try:
        alignment = read_textgrid(path)
    except InputError as err:
        assert err.path == str(path) and err.problem
        return
    assert isinstance(alignment, Alignment)
    assert all(iv.end > iv.start >= 0 for iv in alignment.phones)


def _mutations(text: str):
    """Valid files with a few characters replaced, deleted or repeated: they reach praatio's parser
    much further than random bytes do."""
    return st.lists(
        st.tuples(st.integers(0, len(text) - 1), st.sampled_from(["replace", "delete", "dup"]),
                  st.sampled_from(list('0123456789.-"\n =<>[]xyzé˥') + ["", "1e309", "nan", "intervals", "phones"])),
        min_size=1, max_size=4,
    ).map(lambda edits: _apply(text, edits))


def _apply(text: str, edits) -> str:
    for position, action, token in edits:
        position = min(position, len(text) - 1)
        if action == "replace":
            text = text[:position] + token + text[position + 1:]
        elif action == "delete":
            text = text[:position] + text[position + 8:]
        else:
            text = text[:position] + text[position:position + 20] + text[position:]
    return text


@FUZZ
@given(st.binary(max_size=400))
def test_textgrid_reader_on_random_bytes(data):
    _read_textgrid_bytes(data)


@FUZZ
@given(st.one_of(_mutations(VALID_TEXTGRID), _mutations(VALID_SHORT)))
def test_textgrid_reader_on_damaged_textgrids(text):
    _read_textgrid_bytes(text.encode("utf-8"))


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_ctm_reader_on_random_input(data):
    path = _DIR / "fuzz.ctm"
    path.write_bytes(data)
    try:
        alignments = read_ctm(path)
    except InputError as err:
        assert err.path == str(path) and err.problem
        return
    assert alignments and all(a.phones for a in alignments.values())


_FIELD = st.one_of(st.sampled_from(["utt1", "utt2", "1", "A", "0.0", "0.05", "-1", "nan", "inf", "1e400", "zh_B", "ong1_E", "sil", ""]),
                   st.floats(allow_nan=True).map(repr), st.text(min_size=1, max_size=5))


@FUZZ
@given(st.lists(st.lists(_FIELD, min_size=0, max_size=7).map(" ".join), max_size=12))
def test_ctm_reader_on_ctm_like_lines(lines):
    path = _DIR / "fuzz_lines.ctm"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        alignments = read_ctm(path)
    except InputError as err:
        assert err.path == str(path)
        return
    for alignment in alignments.values():
        assert all(iv.end > iv.start >= 0 for iv in alignment.phones)
        assert not any(iv.label.endswith(("_B", "_I", "_E", "_S")) for iv in alignment.phones)


@FUZZ
@given(st.text(max_size=8))
def test_schemes_parse_or_raise_scheme_error(label):
    for scheme in (MandarinScheme(), PlainScheme(), TonalScheme(), TonalScheme([1, 2, 3])):
        try:
            parsed = scheme.parse(label)
        except SchemeError:
            continue
        top = 5 if isinstance(scheme, MandarinScheme) else 9
        assert isinstance(parsed, Phone) and parsed.phone and 0 <= parsed.tone <= top
        assert parsed.is_final == (parsed.tone > 0) or isinstance(scheme, PlainScheme)
        if isinstance(scheme, TonalScheme) and scheme.given:
            assert parsed.tone in (0, *scheme.given)
    assert isinstance(is_silence(label), bool)


@FUZZ
@given(st.binary(max_size=200))
def test_labelling_a_fuzzed_but_readable_textgrid_raises_only_scheme_errors(data):
    path = _DIR / "label.TextGrid"
    path.write_bytes(VALID_TEXTGRID.replace('"ong1"', '"' + data.decode("utf-8", "ignore").replace('"', "") + '"').encode())
    try:
        alignment = read_textgrid(path)
    except InputError:
        return
    try:
        label_alignment(alignment, MandarinScheme(), "surface")
    except SchemeError:
        pass
