"""An unexpected failure in a handler is a 500 problem document and one log line, and a
logged exception never carries the frames' local variables (fast, in-process)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from cerssd.api.app import build_app
from cerssd.api.context import ApiContext
from cerssd.logs import configure_logging

SECRET = "AKIA-not-for-the-log-0123456789"


class _BrokenEngine:
    """An engine whose listing fails with a defect, holding a secret in a local."""

    def counts(self) -> dict[Any, int]:
        secret_access_key = SECRET
        raise RuntimeError(f"defect while listing ({len(secret_access_key)} chars)")


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", out)  # the daemon's configuration, into a buffer
    yield out
    structlog.reset_defaults()


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


async def test_unexpected_failure_is_a_problem_document_and_one_log_line(
        logged: io.StringIO) -> None:
    ctx = ApiContext(engine=_BrokenEngine(), servers=None, metrics=None,  # type: ignore[arg-type]
                     config=lambda: None, relationships=None,  # type: ignore[arg-type,return-value]
                     volume_states=None)  # type: ignore[arg-type]
    async with TestClient(TestServer(build_app(ctx, check_credentials=False))) as client:
        r = await client.get("/v1/status")
        assert r.status == 500
        assert r.content_type == "application/problem+json"
        problem = await r.json(content_type=None)
        assert problem["status"] == 500 and problem["title"] == "Internal Server Error"
        assert "RuntimeError" in problem["detail"] and problem["instance"] == "/v1/status"
        assert SECRET not in json.dumps(problem)
        # the API still answers
        assert (await client.get("/v1/nowhere")).status == 404
    lines = [x for x in _lines(logged) if x.get("level") == "error"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["event"] == "api request failed" and line["path"] == "/v1/status"
    frames = line["exception"][0]["frames"]
    assert any(f["name"] == "counts" for f in frames)
    assert SECRET not in json.dumps(line) and all("locals" not in f for f in frames)


def test_logged_exceptions_carry_no_local_values(logged: io.StringIO) -> None:
    def fail() -> None:
        secret_access_key = SECRET
        raise ValueError(f"refused ({len(secret_access_key)})")

    try:
        fail()
    except ValueError:
        structlog.get_logger("t").exception("store call failed")
    (line,) = _lines(logged)
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert line["exception"][0]["frames"][-1]["name"] == "fail"
    assert SECRET not in json.dumps(line)
