"""RFC 9457 problem documents, and the mapping from domain errors to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"


class ApiProblem(Exception):
    """Raised by handlers for a client error with a clear ``detail``."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(request: web.Request, status: int, title: str, detail: str,
                     **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": request.path, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_TYPE)


def bad_request(detail: str) -> ApiProblem:
    return ApiProblem(400, "Bad Request", detail)


def unprocessable(field: str, detail: str) -> ApiProblem:
    return ApiProblem(422, "Unprocessable Content", f"{field}: {detail}", field=field)
