"""The OpenAPI 3 document, generated from the route table the router is built from."""

from __future__ import annotations

import re
from typing import Any

from .. import __version__
from .app import Route

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def openapi_path(path: str) -> str:
    """``/v1/activities/{id:[0-9a-f]+}`` → ``/v1/activities/{id}``."""
    return re.sub(r"\{([A-Za-z_]\w*):[^}]*\}", r"{\1}", path)


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{([A-Za-z_]\w*)", route.path)]
    params += [{"name": name, "in": "query", "required": False, "description": f.doc,
                "schema": f.schema()} for name, f in route.query.items()]
    ok = next((status for status in route.responses if 200 <= status < 300), 200)
    responses: dict[str, Any] = {str(ok): {"description": route.responses.get(ok, "OK")}}
    for status, text in route.responses.items():
        if status >= 400:
            responses[str(status)] = {"description": text, "content": {
                "application/problem+json": {"schema": PROBLEM}}}
    responses["default"] = {"description": "error",
                            "content": {"application/problem+json": {"schema": PROBLEM}}}
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__,
                          "parameters": params, "responses": responses}
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": route.body.schema()}}}
    if route.mutating:
        op["description"] = "Needs root or membership of daemon.control_group (SO_PEERCRED)."
    return op


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "cerssd control API", "version": __version__,
                 "description": "Served on the daemon's unix socket."},
        "paths": paths,
        "components": {"schemas": {"Problem": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"},
                           "instance": {"type": "string"}},
        }}},
    }
