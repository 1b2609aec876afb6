"""Decoding requests into the typed models of ``models.py``, with problem documents.

Whatever a client sends, the answer is a problem document naming what is wrong:
a body that is not JSON (not UTF-8, truncated, nested too deeply) is 400; a body of
the wrong shape is 422 naming the field; a name that fails its grammar is 400
"Invalid Name" naming the field; a bad query parameter is 400 naming it.
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec
from aiohttp import web

from ..storage.names import InvalidName
from .models import Check, Query, Request
from .problems import ApiProblem, bad_request

R = TypeVar("R", bound=Request)
Q = TypeVar("Q", bound=Query)

#: aiohttp's default cap on a request body (client_max_size) is 1 MiB; bodies here are
#: small. A larger one is refused by aiohttp with 413, which the API's middleware turns
#: into a problem document.
_AT = re.compile(r"(?P<text>.*?) - at `\$(?P<path>[^`]*)`", re.S)
_JSON_WORDS = {"str": "a string", "int": "an integer", "float": "a number",
               "bool": "true or false", "array": "an array", "object": "an object",
               "null": "null"}


async def read_body(request: web.Request, model: type[R]) -> R:
    """The request's JSON body as ``model``; an absent body is an empty object."""
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        raw = b"{}"
    try:
        value = msgspec.json.decode(raw, type=model)
    except msgspec.ValidationError as exc:
        raise _invalid_body(str(exc), model) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"the body is not valid JSON (UTF-8): {exc}") from None
    except RecursionError:
        raise bad_request("the body is not valid JSON: nested too deeply") from None
    check_names(value)
    return value


def parse_query(query: Mapping[str, str], model: type[Q]) -> Q:
    """Query parameters as ``model`` (strings converted to the declared types)."""
    try:
        value = msgspec.convert({k: query[k] for k in query}, model, strict=False)
    except msgspec.ValidationError as exc:
        path, text = _split(str(exc))
        name = path.lstrip(".") or "?"
        hint = _hints(model).get(name)
        choices = _enum_of(hint) if hint is not None else None
        if choices is not None:
            text = f"must be one of {', '.join(str(c.value) for c in choices)}"
        raise bad_request(f"query parameter {name} {text}") from None
    check_names(value, query=True)
    return value


def check_names(value: msgspec.Struct, *, query: bool = False) -> None:
    """Run each name field's validator (``models.Check``): 400 naming the field."""
    for name, hint in _hints(type(value)).items():
        _walk(getattr(value, name), hint, name, query)


def _walk(value: Any, hint: Any, where: str, query: bool) -> None:
    if value is None:
        return
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extras = get_args(hint)
        for extra in extras:
            if isinstance(extra, Check):
                try:
                    extra.validate(value)
                except InvalidName as exc:
                    label = f"query parameter {where}" if query else where
                    raise ApiProblem(400, "Invalid Name", f"{label}: {exc}",
                                     field=where) from None
        _walk(value, base, where, query)
    elif origin in (Union, types.UnionType):
        for arm in get_args(hint):
            if _fits(value, arm):
                _walk(value, arm, where, query)
                return
    elif origin is list:
        (item,) = get_args(hint)
        for i, element in enumerate(value):
            _walk(element, item, f"{where}[{i}]", query)
    elif isinstance(value, msgspec.Struct):
        for name, field_hint in _hints(type(value)).items():
            _walk(getattr(value, name), field_hint, f"{where}.{name}", query)


def _fits(value: Any, hint: Any) -> bool:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    cls = get_origin(hint) or hint
    return isinstance(cls, type) and isinstance(value, cls)


@functools.cache
def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    for arm in (get_args(hint) if get_origin(hint) in (Union, types.UnionType, Annotated)
                else (hint,)):
        inner = _enum_of(arm) if get_origin(arm) is not None else arm
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            return inner
    return None


def _split(message: str) -> tuple[str, str]:
    """msgspec's "text - at `$.path`" → (".path", plain words for the text)."""
    m = _AT.fullmatch(message)
    path, text = (m["path"], m["text"]) if m else ("", message)
    return path, _words(text)


def _words(text: str) -> str:
    if m := re.fullmatch(r"Expected `([^`]*)`, got `[^`]*`", text):
        kinds = [_JSON_WORDS.get(k.strip(), k.strip()) for k in m[1].split("|")]
        return "must be " + " or ".join(kinds)
    if m := re.fullmatch(r"Expected `[^`]*` (>=|<=|>|<) (-?[\d.]+)", text):
        bound = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
        return f"must be {bound[m[1]]} {m[2]}"
    if m := re.fullmatch(r"Expected `array` of length >= (\d+)", text):
        return f"must have at least {m[1]} item(s)"
    if text.startswith("Invalid enum value"):
        return "is not one of the accepted values"
    return text


def _invalid_body(message: str, model: type[Request]) -> ApiProblem:
    path, text = _split(message)
    field = path.lstrip(".")
    if m := re.fullmatch(r"Object missing required field `([^`]*)`", text):
        field = f"{field}.{m[1]}" if field else m[1]
        return _unprocessable(field, "is required")
    if m := re.fullmatch(r"Object contains unknown field `([^`]*)`", text):
        accepted = "" if field else f" (accepted: {', '.join(model.__struct_fields__)})"
        field = f"{field}.{m[1]}" if field else m[1]
        return _unprocessable(field, f"unknown field{accepted}")
    if not field:
        return bad_request("the request body must be a JSON object")
    return _unprocessable(field, text)


def _unprocessable(field: str, detail: str) -> ApiProblem:
    return ApiProblem(422, "Unprocessable Content", f"{field}: {detail}", field=field)
