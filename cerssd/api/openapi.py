"""The OpenAPI 3.1 document, generated from the route table and its typed models.

The router, the credential check and this document are built from the same table
(``app.ROUTES``), and the request and response schemas from the same models the
requests are decoded with (``models.py``), so the document cannot drift from the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import __version__
from .models import PATH_PARAMETERS, Problem
from .routing import Route

REF = "#/components/schemas/{name}"
PROBLEM_TYPE = "application/problem+json"


def openapi_path(path: str) -> str:
    """``/v1/activities/{id:[0-9a-f]+}`` → ``/v1/activities/{id}``."""
    return re.sub(r"\{([A-Za-z_]\w*):[^}]*\}", r"{\1}", path)


def _path_names(path: str) -> list[str]:
    return re.findall(r"\{([A-Za-z_]\w*)", path)


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(name="Problem")}}}}


class _Schemas:
    """Every model's schema, generated in one pass so shared models are components."""

    def __init__(self, routes: Sequence[Route[Any]]) -> None:
        self.types: list[Any] = [Problem, *PATH_PARAMETERS.values()]
        for route in routes:
            self.types += [t for t in (route.body, route.query, route.returns)
                           if t is not None]
            self.types += [r[1] for r in route.responses.values() if isinstance(r, tuple)]
        refs, self.components = msgspec.json.schema_components(self.types, ref_template=REF)
        self.by_type = dict(zip(map(id, self.types), refs, strict=True))

    def of(self, t: Any) -> dict[str, Any]:
        schema: dict[str, Any] = self.by_type[id(t)]
        return schema

    def inline(self, t: Any) -> dict[str, Any]:
        """A query model's own schema (its fields become parameters, not a component)."""
        name = self.of(t)["$ref"].rsplit("/", 1)[1]
        schema: dict[str, Any] = self.components[name]
        return schema


def _parameters(route: Route[Any], schemas: _Schemas) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": schemas.of(PATH_PARAMETERS[name])} for name in _path_names(route.path)]
    if route.query is not None:
        query = schemas.inline(route.query)
        for name, schema in query["properties"].items():
            params.append({"name": name, "in": "query",
                           "required": name in query.get("required", ()),
                           "description": schema.get("description", ""),
                           "schema": _not_null(schema)})
    return params


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter is absent, never null: drop the model's null arm."""
    arms = [a for a in schema.get("anyOf", ()) if a != {"type": "null"}]
    if "anyOf" not in schema or len(arms) == len(schema["anyOf"]):
        return schema
    out = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default"
                                                                      and v is None)}
    return {**out, **arms[0]} if len(arms) == 1 else {**out, "anyOf": arms}


def _operation(route: Route[Any], schemas: _Schemas) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": route.responses.get(route.ok, "OK")}
    if isinstance(ok["description"], tuple):
        ok["description"] = ok["description"][0]
    if route.returns is not None:
        ok["content"] = {route.media: {"schema": schemas.of(route.returns)}}
    elif route.media != "application/json":
        ok["content"] = {route.media: {"schema": {"type": "string"}}}
    responses[str(route.ok)] = ok
    for status, reply in route.responses.items():
        if status == route.ok:
            continue
        if isinstance(reply, tuple):
            text, model = reply
            responses[str(status)] = {"description": text, "content": {
                "application/json": {"schema": schemas.of(model)}}}
        elif status >= 400:
            responses[str(status)] = _problem(reply)
        else:
            responses[str(status)] = {"description": reply}
    if route.body is not None or route.query is not None or _path_names(route.path):
        responses.setdefault("400", _problem("a body that is not JSON, an invalid name or "
                                             "query parameter"))
    if route.body is not None:
        responses.setdefault("422", _problem("a body field of the wrong type or value "
                                             "(the problem names the field)"))
    if route.mutating:
        responses.setdefault("403", _problem("the caller may read but not change anything"))
    responses["default"] = _problem("an error (a problem document)")
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__,
                          "parameters": _parameters(route, schemas), "responses": responses}
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schemas.of(route.body)}}}
    if route.mutating:
        op["description"] = "Needs root or membership of daemon.control_group (SO_PEERCRED)."
    return op


def openapi_document(routes: Sequence[Route[Any]]) -> dict[str, Any]:
    schemas = _Schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(
            route, schemas)
    queries = {schemas.of(r.query)["$ref"].rsplit("/", 1)[1] for r in routes if r.query}
    components = {k: v for k, v in schemas.components.items() if k not in queries}
    return {
        "openapi": "3.1.0",
        "info": {"title": "cerssd control API", "version": __version__,
                 "description": "Served on the daemon's unix socket. Errors are RFC 9457 "
                 "problem documents (application/problem+json)."},
        "paths": paths,
        "components": {"schemas": components},
    }
