"""`StageSettings`, the base of every stage's settings, and helpers the stage modules share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from phonorm.errors import PhonormError


class StageSettings(BaseModel):
    """Base of every stage's settings: unknown fields are errors; values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def as_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (what artifacts record and resume checks compare)."""
        return self.model_dump(mode="json")

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Any:
        """`cls(**values)` (None values left to the defaults), or one PhonormError naming each
        rejected setting as its command-line option (`--batch-seconds: got -1; ...`)."""
        given = {name: value for name, value in values.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as err:
            lines = []
            for error in err.errors():
                loc = error.get("loc", ())
                message = error.get("msg", "").removeprefix("Value error, ")
                if not loc:  # a rule across fields: its message starts with the field it is about
                    field, sep, rest = message.partition(": ")
                    lines.append(f"--{field.replace('_', '-')}: {rest}" if sep and field in cls.model_fields else message)
                    continue
                lines.append(f"--{str(loc[0]).replace('_', '-')}: got {given.get(str(loc[0]))!r}; {message}")
            raise PhonormError("; ".join(lines)) from None


def comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


REPEATABLE: dict[str, Any] = {"cli": "repeat"}
"""Marks a list field whose command-line option is given once per value (`--silence a --silence b`)."""
