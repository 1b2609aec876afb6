"""Request bodies and query parameters, declared once for validation *and* OpenAPI.

Declaring each field here and deriving both the checks and the OpenAPI schema
from the declaration keeps the served document true to what the daemon accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .problems import bad_request, unprocessable

_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", list: "array", dict: "object"}


def _json_type(t: type | tuple[type, ...]) -> str | list[str]:
    """One JSON type, or several (OpenAPI 3.1 type arrays) for e.g. a duration."""
    if isinstance(t, tuple):
        return [_JSON_TYPES[x] for x in t]
    return _JSON_TYPES[t]


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    doc: str
    required: bool = False
    default: Any = None
    minimum: int | None = None

    def schema(self) -> dict[str, Any]:
        kinds = _json_type(self.type)
        s: dict[str, Any] = ({"oneOf": [{"type": k} for k in kinds]} if isinstance(kinds, list)
                             else {"type": kinds})
        s["description"] = self.doc
        if kinds == "array":
            s["items"] = {}
        if self.default is not None:
            s["default"] = self.default
        if self.minimum is not None:
            s["minimum"] = self.minimum
        return s


@dataclass(frozen=True)
class Body:
    fields: Mapping[str, Field] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: f.schema() for k, f in self.fields.items()},
            "required": [k for k, f in self.fields.items() if f.required],
        }

    def parse(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise bad_request("the request body must be a JSON object")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise unprocessable(unknown[0], f"unknown field (accepted: {', '.join(self.fields)})")
        return {name: check(name, f, data.get(name)) for name, f in self.fields.items()}


def check(name: str, f: Field, value: Any) -> Any:
    if value is None:
        if f.required:
            raise unprocessable(name, "is required")
        return f.default
    if f.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise unprocessable(name, "must be an integer")
    if not isinstance(value, f.type) or (isinstance(value, bool) and f.type is not bool):
        kinds = _json_type(f.type)
        wanted = " or ".join(kinds) if isinstance(kinds, list) else kinds
        raise unprocessable(name, f"must be a {wanted}")
    if f.minimum is not None and isinstance(value, int) and value < f.minimum:
        raise unprocessable(name, f"must be at least {f.minimum}")
    return value


def parse_query(query: Mapping[str, str], fields: Mapping[str, Field]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in fields.items():
        raw = query.get(name)
        if raw is None:
            out[name] = f.default
            continue
        if f.type is int:
            try:
                value: Any = int(raw)
            except ValueError:
                raise bad_request(f"query parameter {name} must be an integer") from None
            if f.minimum is not None and value < f.minimum:
                raise bad_request(f"query parameter {name} must be at least {f.minimum}")
        elif f.type is bool:
            value = raw.lower() in ("1", "true", "yes")
        else:
            value = raw
        out[name] = value
    return out
