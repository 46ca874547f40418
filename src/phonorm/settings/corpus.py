"""Settings of the corpus stages: `synth`, `prepare`, `prepare-aishell`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import AliasChoices, Field, field_validator, model_validator

from phonorm.settings.base import REPEATABLE, StageSettings, comma_list
from phonorm.settings.vocabulary import AlignmentFormat, LabelScheme, ToneMode


class SynthSettings(StageSettings):
    """`phonorm synth`: an offline Mandarin or Cantonese corpus (eSpeak NG) with exact alignments."""

    speakers: int = Field(24, ge=2, le=10_000, description="Number of speakers (half F, half M).")
    utterances: int = Field(40, ge=1, le=10_000, description="Utterances per speaker.")
    seed: int = Field(0, description="Random seed; the corpus is deterministic for a seed.")
    variation: Literal["none", "wide"] = Field(
        "none", description="none, or wide: speakers differ in F0 by sex, formants (vocal-tract length), rate, "
                            "voice quality, channel and noise (for pre-training).")
    language: Literal["cmn", "yue"] = Field(
        "cmn", description="cmn: Mandarin (pinyin, tones 1-5; prepared with the mandarin scheme) or yue: Cantonese "
                           "(Jyutping, tones 1-6; prepared with --scheme tonal --tones 1,2,3,4,5,6).")


SPEAKER_RULES = ("auto", "folder", "prefix")
"""`PrepareSettings.speaker_from` rules besides `regex:PATTERN` (`corpus/speakers.py` applies them)."""


class LabelSettings(StageSettings):
    """How alignment labels are read (shared by `prepare` and `prepare-aishell`)."""

    format: AlignmentFormat = Field("textgrid", validation_alias=AliasChoices("format", "fmt"),
                                    description="Alignment format: textgrid or ctm.")
    tone: ToneMode = Field("surface", validation_alias=AliasChoices("tone", "tone_mode"),
                           description="For Chinese-character words: surface (third-tone sandhi) or citation tone.")
    skip_bad: bool = Field(False, description="Skip bad utterances (listed in OUT/skipped.tsv) instead of stopping.")
    silence: list[str] = Field(default_factory=list, json_schema_extra=REPEATABLE,
                               description="A further silence/non-speech label (repeatable), e.g. --silence breath.")
    phone_map: Optional[Path] = Field(None, description="TSV label<TAB>phone[<TAB>tone], applied before the scheme.")

    @field_validator("silence", mode="before")
    @classmethod
    def _silence_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else list(value or [])


class PrepareSettings(LabelSettings):
    """`phonorm prepare`: any aligned corpus → the prepared corpus every later stage reads."""

    scheme: LabelScheme = Field("mandarin", description="Label scheme: mandarin (phone + tone), tonal (any tone "
                                "language: segment + tone digit, e.g. Jyutping wong4) or plain (phones as given).")
    split_file: Optional[Path] = Field(None, description="utterance<TAB>split (train/dev/test) instead of the "
                                                         "speaker-disjoint default.")
    seed: int = Field(0, description="Seed of the default split.")
    dev: float = Field(0.1, ge=0, lt=1, description="Share of each sex's speakers in dev (default split).")
    test: float = Field(0.1, ge=0, lt=1, description="Share of each sex's speakers in test (default split).")
    tones: Optional[list[int]] = Field(None, description="Tonal scheme: the tone digits, e.g. 1,2,3,4,5,6 "
                                                         "(default: those seen).")
    split_by: Literal["speaker", "utterance"] = Field(
        "speaker", description="speaker (speaker-disjoint, default) or utterance (each speaker's utterances split; "
                               "for corpora with fewer than three speakers of a sex).")
    speaker_from: str = Field(
        "auto", description="How an utterance finds its speaker in the table: auto (the audio's folder when it is a "
                            "speaker id, else the speaker id that starts the utterance id followed by _ - or .), "
                            "folder, prefix (the one speaker id the utterance id starts with) or regex:PATTERN "
                            "(PATTERN's first group, matched at the start of the utterance id).")

    @field_validator("speaker_from")
    @classmethod
    def _speaker_rule(cls, value: str) -> str:
        if value in SPEAKER_RULES:
            return value
        if not value.startswith("regex:"):
            raise ValueError(f"one of {', '.join(SPEAKER_RULES)} or regex:PATTERN")
        try:
            pattern = re.compile(value[len("regex:"):])
        except re.error as err:
            raise ValueError(f"a valid regular expression after regex: ({err})") from None
        if pattern.groups < 1:
            raise ValueError(r"a regular expression with a group for the speaker id, e.g. regex:([A-Z]+\d+)_")
        return value

    @field_validator("tones", mode="before")
    @classmethod
    def _tones_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = comma_list(value)
            if not all(p.isdigit() for p in parts):
                raise ValueError("expected tone digits separated by commas, e.g. 1,2,3,4,5,6")
            return [int(p) for p in parts]
        return value

    @model_validator(mode="after")
    def _split(self) -> "PrepareSettings":
        if self.dev + self.test >= 1:
            raise ValueError(f"dev: dev + test must be below 1 (got {self.dev} + {self.test})")
        if self.split_file is not None and self.split_by != "speaker":
            raise ValueError("split_file: give either a split file or --split-by utterance, not both")
        return self


class AishellSettings(LabelSettings):
    """`phonorm prepare-aishell`: AISHELL-1 with its own split and speaker sex (mandarin scheme)."""
