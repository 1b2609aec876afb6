"""The control API of a peer daemon, reached through the SSH connection already held.

A server marked ``daemon = true`` runs cerssd itself. Its control socket is reached by
a stream-local channel (``direct-streamlocal@openssh.com``: asyncssh's
``open_unix_connection``) on the SSH connection this daemon already holds to that
server: no new port is opened on any node, the SSH key and known_hosts checks are the
server's, and the peer sees the SSH user as the socket's peer (SO_PEERCRED), so its
own credential rules (``api/peercred.py``) decide what we may do.

Each request is one channel carrying one HTTP/1.1 request with ``Connection: close``:
requests are few (a create, a poll every second, a verb) and a channel costs no
handshake. Answers are JSON with a Content-Length (aiohttp's ``json_response``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import structlog

from .. import __version__
from ..transport.errors import LinkError, LinkLost
from ..transport.ssh import LinkDown, SshRunner

log = structlog.get_logger("cerssd.peers")

#: A peer's answer is small JSON; anything slower than this is a hung peer.
REQUEST_TIMEOUT = 30.0
MAX_ANSWER = 4 << 20


class PeerError(LinkError):
    """The peer daemon could not be asked (transient unless ``permanent``)."""


class PeerUnavailable(PeerError, LinkLost):
    """The peer's socket did not answer (its daemon is down or restarting): retried."""


class PeerVersionMismatch(PeerError):
    """The peer runs another cerssd version (``theirs``): refused."""

    permanent = True

    def __init__(self, message: str, theirs: str) -> None:
        super().__init__(message)
        self.theirs = theirs


class PeerRefused(PeerError):
    """The peer's socket or its credential check refused our SSH user."""

    permanent = True


class PeerAnswer:
    """One HTTP answer: status and parsed JSON body (None if there was none)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    def problem(self) -> str:
        """The problem document's detail (or the body) for a message."""
        if isinstance(self.body, dict):
            return str(self.body.get("detail") or self.body.get("title") or self.body)
        return str(self.body)


class PeerClient:
    """Requests to the cerssd on ``runner``'s server, at ``socket_path`` there."""

    def __init__(self, runner: SshRunner, socket_path: Path) -> None:
        self.runner = runner
        self.server = runner.server
        self.socket_path = socket_path
        self.version: str | None = None  # the peer's, once checked

    @property
    def user(self) -> str:
        return self.runner.cfg.user

    async def request(self, method: str, path: str, body: Any = None) -> PeerAnswer:
        """One request; a 403 is ``PeerRefused`` (our SSH user may not do that there), a
        503 ``PeerUnavailable`` (the peer is stopping, or cannot reach a server now)."""
        try:
            answer = await asyncio.wait_for(self._request(method, path, body),
                                            REQUEST_TIMEOUT)
        except TimeoutError:
            raise PeerUnavailable(f"peer daemon on {self.server} did not answer {method} "
                                  f"{path} within {REQUEST_TIMEOUT:g} s") from None
        if answer.status == 503:  # shutting down, or its own link away: worth a retry
            raise PeerUnavailable(f"peer daemon on {self.server} cannot answer {method} "
                                  f"{path} now: {answer.problem()}")
        if answer.status == 403:
            raise PeerRefused(
                f"peer daemon on {self.server} refused SSH user {self.user!r} for {method} "
                f"{path}: {answer.problem()} (give that user the peer's control_group, or "
                "connect as root; docs/peers.md)")
        return answer

    async def _request(self, method: str, path: str, body: Any) -> PeerAnswer:
        import asyncssh

        conn = await self.runner.connection()
        try:
            reader, writer = await conn.open_unix_connection(str(self.socket_path))
        except asyncssh.ChannelOpenError as exc:
            raise await self._open_failed(exc) from exc
        except (OSError, asyncssh.Error) as exc:
            raise LinkDown(f"lost the connection to {self.runner.address}: {exc}",
                           self.server) from exc
        try:
            data = json.dumps(body).encode() if body is not None else b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: cerssd\r\nConnection: close\r\n"
                    f"Accept: application/json\r\nContent-Length: {len(data)}\r\n")
            if body is not None:
                head += "Content-Type: application/json\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            return await _read_answer(reader)
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as exc:
            raise PeerUnavailable(f"peer daemon on {self.server} broke off {method} {path}: "
                                  f"{exc or type(exc).__name__}") from exc
        finally:
            writer.close()

    async def _open_failed(self, exc: Exception) -> PeerError:
        """sshd could not connect to the socket. It says only "open failed", whether the
        socket is missing, nobody listens (the daemon is down: transient) or our user
        may not connect to it (permanent): one ``test`` on the server tells which."""
        where = f"peer daemon socket {self.socket_path} on {self.server}"
        path = str(self.socket_path)
        try:
            exists = (await self.runner.run(["test", "-S", path], check=False)).returncode == 0
            allowed = (await self.runner.run(["test", "-w", path], check=False)).returncode == 0
        except LinkError as err:
            return PeerUnavailable(f"{where} does not answer ({exc}), and {err}")
        if exists and not allowed:
            return PeerRefused(f"{where} refused SSH user {self.user!r}: it may not connect "
                               "to the socket (give that user the peer's control_group, or "
                               "connect as root; docs/peers.md)")
        state = "nobody listens on it" if exists else "it does not exist"
        return PeerUnavailable(f"{where} does not answer ({exc}): {state}; is cerssd running "
                               "there?")

    async def check_version(self) -> str:
        """The peer's cerssd version, which must be this daemon's: a delegated activity's
        parameters are read by both, and nothing here translates between versions."""
        answer = await self.request("GET", "/v1/status")
        theirs = answer.body.get("version") if isinstance(answer.body, dict) else None
        if answer.status != 200 or not isinstance(theirs, str):
            raise PeerUnavailable(f"peer daemon on {self.server} answered /v1/status with "
                                  f"{answer.status}: {answer.problem()}")
        if theirs != __version__:
            raise PeerVersionMismatch(
                f"peer daemon on {self.server} runs cerssd {theirs}; this daemon runs "
                f"cerssd {__version__}: refused (upgrade both to the same version)", theirs)
        if self.version is None:
            log.info("peer daemon answered", server=self.server, version=theirs)
        self.version = theirs
        return theirs


async def _read_answer(reader: Any) -> PeerAnswer:
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise PeerError(f"not an HTTP answer: {status_line[:100]!r}")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if not 0 <= length <= MAX_ANSWER:
        raise PeerError(f"answer of {length} bytes is too large")
    raw = await reader.readexactly(length) if length else b""
    body: Any = None
    if raw and "json" in headers.get("content-type", ""):
        body = json.loads(raw)
    elif raw:
        body = raw.decode(errors="replace")
    return PeerAnswer(int(parts[1]), body)
