"""`ReportSettings`: the settings of `phonorm report` and of `phonorm run`'s report stage (the CLI
options and the YAML `report:` section are built from it, as for every other stage).

The page's size budget is declared here once: the explorer fits its frames and its audio into it
(utterances beyond the audio budget are left out and the page says how many), and the report refuses
to write a page over `max_mb`."""

from __future__ import annotations

from pydantic import Field, model_validator

from phonorm.settings.base import StageSettings


class ReportSettings(StageSettings):
    """`phonorm report`: the page, its interactive explorer and the explorer's audio."""

    static: bool = Field(False, description="Static figures only: no interactive explorer, no JavaScript "
                                            "(the smallest page; for print).")
    audio: bool = Field(True, description="Embed each sampled utterance's audio (Ogg Opus) so that a click on a "
                                          "frame plays its syllable; --no-audio for a smaller page.")
    max_mb: float = Field(25.0, gt=1, description="Size budget of the whole page in MB (10^6 bytes): the explorer "
                                                   "samples frames to fit it; a page over it is refused.")
    audio_mb: float = Field(10.0, ge=0, description="Part of the budget for audio in MB: utterances are sampled "
                                                     "(balanced over speakers) beyond it.")
    points: int = Field(5000, ge=10, description="Most frames the explorer shows (the same frames in every model, "
                                                 "layer and map).")
    audio_kbps: int = Field(24, ge=6, le=128, description="Opus bit rate of the embedded audio, kbit/s.")
    seed: int = Field(0, description="Seed of the explorer's sampling of utterances and frames.")

    @model_validator(mode="after")
    def _audio_within_budget(self) -> "ReportSettings":
        if self.audio_mb >= self.max_mb:
            raise ValueError(f"audio_mb ({self.audio_mb}) must be below max_mb ({self.max_mb}): the page needs room "
                             "for its script and figures")
        return self
