"""Command-line options made from a stage's settings class (`phonorm.settings`), so that an option's
name, default, help and constraint are declared once, on the field.

`@with_settings(FinetuneSettings)` adds one `--option` per field to a typer command (the field
`batch_seconds` becomes `--batch-seconds`); the command receives `settings=FinetuneSettings(...)`
built from the options given. A value the settings class rejects becomes a one-line error naming
the option (`PhonormError`, exit status 2), not a traceback.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import typer
from pydantic import BaseModel

SETTINGS: Any = None
"""Placeholder default of a command's `settings` parameter (filled in by `with_settings`)."""


def _cli_type(annotation: Any, repeatable: bool = False) -> Any:
    """The type typer parses for a field: numbers, booleans and text as they are; choices, lists and
    mappings as text that the settings class parses and checks (e.g. `tone,sex`, `tone=1,sex=0.5`)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _cli_type(inner[0], repeatable) if repeatable else Optional[_cli_type(inner[0])]
        return Optional[str]
    if annotation in (bool, int, float, str):
        return annotation
    if repeatable:
        return list[str]
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return Path
    return str


def _help(name: str, field: Any) -> str:
    text = field.description or name.replace("_", " ")
    annotation = field.annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    choices = [str(c) for c in typing.get_args(annotation)] if typing.get_origin(annotation) is Literal else []
    if choices and not all(c in text for c in choices):
        text += f" One of: {', '.join(choices)}."
    return text


def _cli_default(field: Any) -> Any:
    if field.is_required():
        return ...
    if field.default_factory is not None:
        return None  # e.g. loss_weights: empty unless given
    default = field.default
    if isinstance(default, (list, dict)):
        return ",".join(map(str, default)) if isinstance(default, list) else None
    return default


def settings_parameters(model: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of `model`."""
    parameters = []
    for name, field in model.model_fields.items():
        repeatable = (field.json_schema_extra or {}).get("cli") == "repeat"  # type: ignore[union-attr]  # json_schema_extra may be a callable; ours are dicts
        annotation = _cli_type(field.annotation, repeatable)
        default = [] if repeatable else _cli_default(field)
        if default is None and typing.get_origin(annotation) is not Union and not repeatable:
            annotation = Optional[annotation]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = ["--" + str(extra["cli_name"]).replace("_", "-")] if extra.get("cli_name") else []
        option = typer.Option(default, *flags, help=_help(name, field), show_default=default not in (None, ..., []),
                              metavar=name.upper().rstrip("S") if repeatable else None)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=annotation))
    return parameters


def settings_from_options(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """`model(**values)` (options not given are left to the class's defaults), or a PhonormError
    naming each rejected option (`StageSettings.parse`)."""
    return model.parse(values)  # type: ignore[attr-defined]  # every settings class is a StageSettings


def with_settings(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a typer command with a `settings` parameter: adds the options of `model`."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        fields = list(model.model_fields)

        def command(**kwargs: Any) -> Any:
            settings = settings_from_options(model, {name: kwargs.pop(name) for name in fields})
            return func(**kwargs, settings=settings)

        command.__name__, command.__doc__ = func.__name__, func.__doc__
        command.__signature__ = signature.replace(parameters=own + settings_parameters(model))  # type: ignore[attr-defined]  # typer reads __signature__
        return command

    return wrap
