"""Fuzz the control API against its own OpenAPI document (schemathesis), on a real daemon.

Every operation the daemon documents gets generated requests, valid and invalid, sent
over the daemon's unix socket. Each answer must not be a 5xx, must have a documented
status and content type, and its body must match the documented schema. The run is
bounded in wall time (FUZZ_SECONDS, about two minutes in all).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import urllib3
from hypothesis import HealthCheck, Phase
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from .conftest import DaemonProcess, raw_request, zfs

FUZZ_SECONDS = 110.0
BASE = "http://cerssd"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


class _Enough(Exception):
    """An operation's share of the time is spent."""


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, int | float) else 60)
        sock.connect(self.socket_path)
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixAdapter(HTTPAdapter):
    """requests over the daemon's unix socket (requests itself speaks only TCP)."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        self.pool = _UnixPool("localhost", socket_path=str(socket_path), maxsize=1)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        return self.pool

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


@pytest.fixture
def session(daemon: DaemonProcess) -> Any:
    s = requests.Session()
    s.mount(BASE, UnixAdapter(daemon.socket_path))
    yield s
    s.close()


def _fuzz(operation: Any, mode: GenerationMode, seconds: float, session: requests.Session,
          sent: dict[str, int], failures: list[str]) -> None:
    """Send generated requests for ``operation`` for about ``seconds`` (at least one)."""
    stop_at = time.monotonic() + seconds

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=100, deadline=None, database=None,
                         report_multiple_bugs=False, print_blob=False,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        if time.monotonic() > stop_at and operation.label in sent:
            raise _Enough  # hypothesis has no time budget: end this run here
        response = case.call(base_url=BASE, session=session, timeout=180)
        sent[operation.label] = sent.get(operation.label, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:  # every failure is reported, not only the first
            failures.append(f"{operation.label} {mode.value}: {exc}"[:2000])

    try:
        run()
    except _Enough:
        pass
    except hypothesis.errors.Unsatisfiable:
        # an operation without parameters or body has no invalid request
        assert mode == GenerationMode.NEGATIVE, operation.label


def test_fuzz_every_operation_against_its_schema(daemon: DaemonProcess,
                                                 session: requests.Session) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    zfs("snapshot", f"{pool}/vol@fuzz-base")
    doc = raw_request(daemon.socket_path, "GET", "/v1/openapi.json").body
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in doc["paths"].values())

    # The checks bite: an answer that does not match its schema is a failure.
    status = next(o for o in operations if o.label == "GET /v1/status")
    case = status.Case()
    right = case.call(base_url=BASE, session=session)
    case.validate_response(right, checks=CHECKS)
    wrong = schemathesis.Response(
        status_code=200, headers=right.headers, content=json.dumps({"version": 5}).encode(),
        request=right.request, elapsed=right.elapsed, verify=False)
    with pytest.raises(FailureGroup, match="distinct failure"):
        case.validate_response(wrong, checks=[response_schema_conformance])

    per_operation = FUZZ_SECONDS / (2 * len(operations))
    failures: list[str] = []
    sent: dict[str, int] = {}
    timings: dict[str, float] = {}
    began = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            start = time.monotonic()
            _fuzz(operation, mode, per_operation, session, sent, failures)
            timings[f"{operation.label} {mode.value}"] = round(time.monotonic() - start, 1)

    # The run reached every operation and sent real requests, and the daemon is healthy.
    assert len(sent) == len(operations), sorted({o.label for o in operations} - set(sent))
    assert sum(sent.values()) >= 2 * len(operations)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:10])
    assert raw_request(daemon.socket_path, "GET", "/v1/status").status == 200
    assert "api request failed" not in daemon.log()
    print(json.dumps({"requests": sum(sent.values()), "operations": len(sent),
                      "seconds": round(time.monotonic() - began, 1), "sent": sent,
                      "slowest": sorted(timings.items(), key=lambda kv: -kv[1])[:5]}))
