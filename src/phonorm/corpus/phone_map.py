"""`--phone-map FILE.tsv`: the user's own reading of labels, applied before the label scheme.

One row per label, tab-separated: `label<TAB>phone[<TAB>tone]` (`#` lines and a header row
`label<TAB>phone...` are skipped). With two columns the label is replaced by `phone`, which the
scheme then parses like any label (`AE1<TAB>a4`, or a silence label such as `sil` to drop the
interval). With a third column the phone and tone are given outright and the scheme is not asked:
tone 0 = no tone (an initial or any other segment), otherwise the interval is a tone bearer and the
tone must be one of the scheme's (1-5 for mandarin, the `--tones` for tonal; plain has none).
Labels are matched exactly as written in the alignment (after Kaldi's position suffix is removed
from CTM labels).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from phonorm.corpus.schemes import Phone, SchemeError
from phonorm.corpus.speakers import read_text
from phonorm.errors import InputError


def read_phone_map(path: str | Path, scheme) -> dict[str, str | Phone]:
    """label → replacement label (str) or fixed `Phone`; raises `InputError` naming the line."""
    path = Path(path)
    text = read_text(path, "phone map")
    mapping: dict[str, str | Phone] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [unicodedata.normalize("NFC", f.strip()) for f in line.rstrip("\r\n").split("\t")]
        if not mapping and [f.lower() for f in fields[:2]] == ["label", "phone"]:
            continue  # header
        if len(fields) not in (2, 3) or not fields[0]:
            raise InputError(path, f"expected 'label<TAB>phone[<TAB>tone]', got {len(fields)} tab-separated field(s)",
                             item=f"line {number}")
        label, phone = fields[0], fields[1]
        if label in mapping:
            raise InputError(path, f"label {label!r} is mapped twice", item=f"line {number}")
        if len(fields) == 2:
            mapping[label] = phone
            continue
        if not phone or any(c.isspace() for c in phone):
            raise InputError(path, f"phone {phone!r} is empty or contains white space", item=f"line {number}")
        try:
            tone = int(fields[2])
        except ValueError:
            raise InputError(path, f"tone {fields[2]!r} is not a whole number", item=f"line {number}") from None
        try:
            scheme.check_tone(tone)
        except SchemeError as err:
            raise InputError(path, str(err), item=f"line {number}") from None
        mapping[label] = Phone(phone, tone, tone > 0)
    if not mapping:
        raise InputError(path, "phone map has no rows")
    return mapping
