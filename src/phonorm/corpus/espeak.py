"""eSpeak NG through ctypes: speech samples plus the synthesizer's own word and phoneme events.

The library and its data come from the PyPI package `espeakng-loader` (no system package). We
call its C API directly because we need its phoneme events with their exact sample positions
(they make the synthetic alignments exact), which the Python wrappers we know of (phonemizer,
py-espeak-ng) do not expose. eSpeak keeps global state, so there is one `Espeak` object per process.

API reference: espeak-ng's `speak_lib.h` (revision 12, eSpeak NG 1.5x).
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_char,
    c_char_p,
    c_int,
    c_long,
    c_short,
    c_size_t,
    c_uint,
    c_void_p,
)
from dataclasses import dataclass

import numpy as np

from phonorm.errors import PhonormError

# espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, espeak_PARAMETER and flag values from speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
CHARS_UTF8 = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
PARAM_RATE = 1
PARAM_PITCH = 3
PARAM_RANGE = 4
EE_OK = 0


class _EventId(Union):
    _fields_ = [("number", c_int), ("name", c_char_p), ("string", c_char * 8)]


class _Event(Structure):
    _fields_ = [
        ("type", c_int),
        ("unique_identifier", c_uint),
        ("text_position", c_int),  # 1-based character position in the input text
        ("length", c_int),  # word events: length of the word in characters
        ("audio_position", c_int),  # ms, rounded down: too coarse, we use `sample`
        ("sample", c_int),  # sample index from the start of the utterance
        ("user_data", c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))


@dataclass(frozen=True)
class SynthEvent:
    """One event of the synthesizer.

    kind: "word" or "phoneme"; text_position: 1-based character index of the word the event
    belongs to; sample: where it starts, in samples at `Espeak.sample_rate`; name: the phoneme
    mnemonic (eSpeak's own, e.g. `ts.`, `'ong`, `_|` for a pause) or the word number.
    """

    kind: str
    text_position: int
    sample: int
    name: str


class Espeak:
    """The eSpeak NG library, initialised for synchronous synthesis with phoneme events."""

    _instance: "Espeak | None" = None

    @classmethod
    def get(cls) -> "Espeak":
        """The process-wide instance (eSpeak's state is global: never make two)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        try:
            import espeakng_loader

            library_path = espeakng_loader.get_library_path()
            data_path = espeakng_loader.get_data_path()
            lib = ctypes.CDLL(library_path)
        except (ImportError, OSError, RuntimeError) as err:
            raise PhonormError(
                f"eSpeak NG is not available ({err}); install the Python package espeakng-loader"
            ) from None
        lib.espeak_Initialize.argtypes = [c_int, c_int, c_char_p, c_int]
        lib.espeak_Initialize.restype = c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [c_char_p]
        lib.espeak_SetVoiceByName.restype = c_int
        lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
        lib.espeak_SetParameter.restype = c_int
        lib.espeak_Synth.argtypes = [c_char_p, c_size_t, c_uint, c_int, c_uint, c_uint, c_void_p, c_void_p]
        lib.espeak_Synth.restype = c_int
        lib.espeak_ng_SetRandSeed.argtypes = [c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self._lib = lib
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 200, data_path.encode(), INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise PhonormError(f"eSpeak NG failed to initialise with its data at {data_path}")
        self._chunks: list[np.ndarray] = []
        self._events: list[SynthEvent] = []
        # Keep a reference to the ctypes callback: if it were garbage-collected, eSpeak would call freed memory.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == EVENT_PHONEME:
                self._events.append(SynthEvent("phoneme", event.text_position, event.sample, event.id.string.decode("ascii", "replace")))
            elif event.type == EVENT_WORD:
                self._events.append(SynthEvent("word", event.text_position, event.sample, str(event.id.number)))
            i += 1
        return 0  # 0 = continue synthesis

    def set_voice(self, name: str, pitch: int = 50, pitch_range: int = 50, rate: int = 175) -> None:
        """Select a voice (e.g. `cmn-latn-pinyin+f3`) and its base pitch and pitch range (0-100,
        eSpeak's relative units, 50 = the voice's own) and rate (words per minute, 80-450)."""
        status = self._lib.espeak_SetVoiceByName(name.encode())
        if status != EE_OK:
            raise PhonormError(f"eSpeak NG has no voice {name!r} (status {status})")
        for parameter, value in ((PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range), (PARAM_RATE, rate)):
            status = self._lib.espeak_SetParameter(parameter, int(value), 0)
            if status != EE_OK:
                raise PhonormError(f"eSpeak NG refused parameter {parameter}={value} (status {status})")

    def synthesize(self, text: str, seed: int = 0) -> tuple[np.ndarray, list[SynthEvent]]:
        """Speak `text` with the current voice.

        Returns (samples int16 of shape (n,) at `self.sample_rate` Hz, events in time order).
        `seed` seeds eSpeak's noise generator (breathy voices), so equal inputs give equal samples.
        """
        self._chunks, self._events = [], []
        self._lib.espeak_ng_SetRandSeed(int(seed))
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, CHARS_UTF8, None, None)
        if status != EE_OK:
            raise PhonormError(f"eSpeak NG failed to synthesise {text!r} (status {status})")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return samples.astype(np.int16, copy=False), list(self._events)
