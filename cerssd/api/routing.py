"""The route type and the small HTTP helpers every handler module shares.

``app.py`` wires the one route table (router, credential check, OpenAPI document);
the handler modules (``app``, ``backups``, ``failover``) and ``openapi.py`` read these
from here, so none of them imports the module that wires them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from ..storage.names import validate_object_name
from . import models as m
from .context import ApiContext


class Api(Protocol):
    """What a handler is given besides the request: the daemon's parts."""

    @property
    def ctx(self) -> ApiContext: ...


A = TypeVar("A", bound=Api)
#: A handler: the API object and the request in, the response out.
Handler = Callable[[A, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route(Generic[A]):
    """One route: the router, the credential check and the OpenAPI document read it."""

    method: str
    path: str
    handler: Handler[A]
    summary: str
    mutating: bool = False
    #: The request body's model (``models.Request``), decoded by ``schema.read_body``.
    body: type[m.Request] | None = None
    #: The query parameters' model (``models.Query``), decoded by ``schema.parse_query``.
    query: type[m.Query] | None = None
    #: The success status and the model of its body (None: no body, e.g. 204).
    ok: int = 200
    returns: Any = None
    media: str = "application/json"
    #: Other statuses: a description (errors are problem documents), or for another
    #: success a (description, model) pair.
    responses: dict[int, str | tuple[str, Any]] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer (compact: ``json.dumps`` with its default separators)."""
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=None))


def relationship_name(request: web.Request) -> str:
    """The relationship named in the path, checked: a bad name is 400, not a lookup."""
    return validate_object_name(request.match_info["name"], "relationship")
