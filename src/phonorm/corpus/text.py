"""Decoding the small text files a user hands us (speakers tables, split files, phone maps, CTM,
TextGrids): UTF-8 (with or without BOM) or UTF-16 (with a BOM, or without one as Praat and
Windows tools sometimes write it).

UTF-16 without a byte-order mark is recognised by its zero bytes: every character of the ASCII
range (which every one of these formats starts with: `File type`, speaker ids, utterance ids)
is one zero byte and one non-zero byte, the zero byte at odd offsets for little-endian and at even
ones for big-endian. UTF-8 text never holds zero bytes.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from phonorm.errors import InputError

_SNIFF_BYTES = 512


def utf16_without_bom(data: bytes) -> str | None:
    """"utf-16-le" or "utf-16-be" when `data` looks like UTF-16 text without a byte-order mark, else None."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or len(data) < 2:
        return None
    head = data[: _SNIFF_BYTES - _SNIFF_BYTES % 2]
    pairs = len(head) // 2
    zero_odd = sum(1 for b in head[1::2] if b == 0)
    zero_even = sum(1 for b in head[0::2] if b == 0)
    if zero_odd >= 0.6 * pairs and zero_even == 0:
        return "utf-16-le"
    if zero_even >= 0.6 * pairs and zero_odd == 0:
        return "utf-16-be"
    return None


def decode_text(data: bytes, path: str | Path, what: str) -> str:
    """`data` as text: UTF-8 (BOM tolerated) or UTF-16 (with or without BOM); `what` names the
    file in the `InputError` raised for anything else."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = utf16_without_bom(data) or "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        name = "UTF-8" if encoding == "utf-8-sig" else encoding.upper()
        raise InputError(path, f"{what} is not valid {name} text (byte {err.start}); save it as UTF-8") from None


def read_text(path: str | Path, what: str) -> str:
    """The text of a small file (see `decode_text`); `what` names it in errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"unreadable {what} ({err.strerror or err})") from None
    return decode_text(data, path, what)
