"""Protocol problems as messages: the YAML path, the value found and what is allowed.

Turns pydantic validation errors, and problems found by the checks in
:mod:`ifval.protocol_checks`, into one-line messages.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    """One problem found by pydantic or a check, located in a configuration.

    ``loc`` is the path inside the configuration that was checked. ``about_key``
    marks a problem with a field's name (an unknown field), not with its value.
    """

    loc: tuple[str | int, ...]
    text: str
    about_key: bool = False



# ---------------------------------------------------------- pydantic error messages

PLUGIN_SPEC_TEXT = "a plugin name or a mapping with `name` and the plugin's settings"
_TRAILING_REASON = re.compile(r", (unable to|got) .*$")


def pydantic_problems(exc: ValidationError, schema: type[BaseModel],
                       prefix: tuple[str | int, ...] = (),
                       also_allowed: tuple[str, ...] = ()) -> list[Problem]:
    """Turn pydantic's errors into problems that show the found value and what is allowed.

    The errors of one union field (one per member type) become one problem.
    """
    grouped: dict[tuple[str | int, ...], list[Any]] = {}
    for error in exc.errors():
        grouped.setdefault(_clean_loc(schema, error["loc"]), []).append(error)

    problems = []
    for loc, errors in grouped.items():
        if len(errors) > 1:
            problems.append(Problem((*prefix, *loc), _union_text(errors)))
        else:
            problems.append(_error_problem(errors[0], schema, loc, prefix, also_allowed))
    return problems


def _error_problem(error: Any, schema: type[BaseModel], loc: tuple[str | int, ...],
                   prefix: tuple[str | int, ...], also_allowed: tuple[str, ...]) -> Problem:
    kind = error["type"]
    found = show_value(error["input"])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = [*also_allowed, *_allowed_fields(schema, loc[:-1])]
        text = f"unknown field (found {key!r}); allowed fields: {', '.join(allowed)}"
        return Problem((*prefix, *loc), text + did_you_mean(key, allowed), about_key=True)
    if kind == "missing":
        text = "missing item; the list is too short" if isinstance(loc[-1], int) else (
            "required field is missing")
        return Problem((*prefix, *loc), text)
    if kind == "invalid_key" or (loc and loc[-1] == "[key]"):
        parent = loc[:-2] if loc[-1] == "[key]" else loc[:-1]
        key = loc[-2] if loc[-1] == "[key]" else loc[-1]
        return Problem((*prefix, *parent), f"keys must be strings (found {key!r})")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        expected = PLUGIN_SPEC_TEXT if error.get("ctx", {}).get("class_name") == "PluginSpec" else (
            "a mapping")
        return Problem((*prefix, *loc), f"expected {expected} (found {found})")
    message = error["msg"][0].lower() + error["msg"][1:]
    text = f"{message} (found {found})"
    if kind == "int_type" and isinstance(error["input"], str) and error["input"].isdigit():
        text += "; a number in quotes is a string, so remove the quotes"
    return Problem((*prefix, *loc), text)


def _union_text(errors: list[Any]) -> str:
    expected = []
    for error in errors:
        message = _TRAILING_REASON.sub("", error["msg"])
        expected.append(message.removeprefix("Input should be "))
    return f"input should be {' or '.join(expected)} (found {show_value(errors[0]['input'])})"


def _clean_loc(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """Drop the member-type tags pydantic inserts into the location of a union field."""
    clean: list[str | int] = []
    annotation: Any = schema
    for part in loc:
        annotation = _unwrap(annotation)
        if _is_union(annotation):
            annotation = _union_member(annotation, part)
            continue
        clean.append(part)
        annotation = _child_annotation(annotation, part)
    return tuple(clean)


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and a ``| None`` around a single type."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if _is_union(annotation, count_none=True):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any, count_none: bool = False) -> bool:
    if get_origin(annotation) not in (Union, types.UnionType):
        return False
    members = [arg for arg in get_args(annotation) if count_none or arg is not type(None)]
    return len(members) > 1


def _union_member(annotation: Any, tag: Any) -> Any:
    for member in get_args(annotation):
        if isinstance(member, type) and member.__name__ == tag:
            return member
    return None


def _child_annotation(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[part] if isinstance(part, int) and part < len(args) else None
    return None


def _allowed_fields(schema: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    annotation: Any = schema
    for part in loc:
        annotation = _child_annotation(_unwrap(annotation), part)
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


# ------------------------------------------------------------------- rendering


def render(problem: Problem) -> str:
    return f"{render_loc(problem.loc)}: {problem.text}"


def render_loc(loc: tuple[str | int, ...]) -> str:
    return extend_location("", loc) or "top level"


def extend_location(location: str, parts: tuple[str | int, ...]) -> str:
    """Append location parts: ``[i]`` for a list index, ``.name`` for a field."""
    for part in parts:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    return location


def show_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f". Did you mean {close[0]!r}?" if close else ""


def unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))

