"""HTTP/1.1 exchanges for the bytes of parts: blocking sockets in worker threads.

Why not aiohttp, as for everything else (issue 13, measured in bench/RESULTS.md): on
the event loop every received chunk was copied twice in Python (the HTTP parser
slices each body chunk into a new ``bytes``, which was then copied into the part's
buffer) and every 256 KiB sent cost a loop turn and, when the socket was full, a copy
into the transport's buffer; the event loop of a restore spent ~1.5 CPU-s per GiB on
that. Here a body is sent with ``socket.send`` straight from the part's buffer and
received with ``recv_into`` straight into it, in a thread whose blocking calls drop
the GIL: the only copies are the kernel's, and Python runs a few times per part.

A connection is used by one thread at a time and kept open for the next request
(keep-alive) for up to ``KEEPALIVE`` seconds. A request that fails on a reused
connection before any answer came is sent once more on a new one: the store may have
closed it while it was idle. Timeouts are per socket call (``read_timeout`` without
progress is a stalled link), not per body, so a slow but live link is never cut.

Cancelling the coroutine shuts the connection's socket down, which ends the thread's
blocking call at once, and waits for the thread before the cancellation goes on:
a buffer is never given back while a thread still reads into it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

from yarl import URL

T = TypeVar("T")
#: Seconds an idle connection is kept for the next request (aiohttp's default).
KEEPALIVE = 15.0
#: An answer's body larger than this is not read (error documents are small): the
#: connection is closed instead of drained.
MAX_SMALL_BODY = 64 << 10
#: Bytes handed to one ``send``: the kernel takes what fits, the rest goes next call.
SEND_CHUNK = 4 << 20
#: Failures of a reused connection that mean "the store had closed it".
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
          http.client.RemoteDisconnected)


class Aborted(ConnectionError):
    """The exchange was stopped from outside (its coroutine was cancelled)."""


@dataclass(frozen=True)
class Answer:
    """The store's answer: status, headers (names lowercase) and a small body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Target:
    """Where requests go: the origin, and the HTTP proxy to reach it through, if any."""

    origin: URL
    proxy: URL | None = None


class Connection:
    """One keep-alive HTTP/1.1 connection, used by one thread at a time."""

    def __init__(self, target: Target, connect_timeout: float, read_timeout: float,
                 context: ssl.SSLContext | None) -> None:
        self.target = target
        self.read_timeout = read_timeout
        self.reused = False
        self.idle_since = 0.0
        self._aborted = threading.Event()
        origin, proxy = target.origin, target.proxy
        via = proxy if proxy is not None else origin
        assert via.host is not None and via.port is not None
        if proxy is not None and origin.scheme == "https":
            if proxy.scheme == "https":
                raise ValueError(f"an https proxy ({proxy.host}) for an https endpoint is not "
                                 "supported: use an http:// proxy URL")
            # The proxy sees only CONNECT; TLS runs end to end through the tunnel.
            assert origin.host is not None and origin.port is not None
            self.http: http.client.HTTPConnection = http.client.HTTPSConnection(
                via.host, via.port, timeout=connect_timeout, context=context)
            self.http.set_tunnel(origin.host, origin.port, headers=proxy_auth(proxy))
        elif via.scheme == "https":
            self.http = http.client.HTTPSConnection(via.host, via.port,
                                                    timeout=connect_timeout, context=context)
        else:
            self.http = http.client.HTTPConnection(via.host, via.port, timeout=connect_timeout)

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    @property
    def sock(self) -> socket.socket | None:
        """The socket, while the connection is open (http.client keeps it there)."""
        sock: socket.socket | None = self.http.sock
        return sock

    def open(self) -> socket.socket:
        sock = self.sock
        if sock is None:
            self.http.connect()
            sock = self.sock
            assert sock is not None
            # Headers and body go in separate sends: the body's tail must not wait for
            # the ACK of the headers (Nagle), as aiohttp also sees to.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.read_timeout)
        return sock

    def abort(self) -> None:
        """From any thread: end what this connection's thread is blocked in, now."""
        self._aborted.set()
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.http.close()


def proxy_auth(proxy: URL) -> dict[str, str]:
    if proxy.user is None:
        return {}
    pair = f"{unquote(proxy.raw_user or '')}:{unquote(proxy.raw_password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def send_all(sock: socket.socket, body: memoryview) -> None:
    """``sendall`` whose timeout is per call (3.11's ``sendall`` counts the whole body)."""
    sent = 0
    size = body.nbytes
    while sent < size:
        sent += sock.send(body[sent:sent + SEND_CHUNK])


def exchange(conn: Connection, method: str, path: str, headers: dict[str, str],
             body: memoryview | None, into: memoryview | None) -> Answer:
    """One request and its answer, blocking. With ``into``, a 200/206 answer whose length
    is exactly ``len(into)`` is read into it; any other body is read if small."""
    if conn.aborted:
        raise Aborted("cancelled")
    sock = conn.open()
    h = conn.http
    origin, proxy = conn.target.origin, conn.target.proxy
    # Through a plain proxy the request names the whole URL (absolute form).
    target = path if proxy is None or origin.scheme == "https" else \
        f"{origin.scheme}://{origin.raw_authority}{path}"
    h.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    extra = proxy_auth(proxy) if proxy is not None and origin.scheme != "https" else {}
    for name, value in {**headers, **extra}.items():
        h.putheader(name, value)
    h.endheaders()
    if body is not None:
        send_all(sock, body)
    response = h.getresponse()
    answer_headers = {k.lower(): v for k, v in response.getheaders()}
    if into is not None and response.status in (200, 206) and response.length == into.nbytes:
        got = 0
        while got < into.nbytes:
            n = response.readinto(into[got:])
            if not n:
                break
            got += n
        if got != into.nbytes:
            h.close()
            raise http.client.IncompleteRead(b"", into.nbytes - got)
        return Answer(response.status, response.reason, answer_headers)
    if response.length is None or response.length > MAX_SMALL_BODY:
        data = response.read(MAX_SMALL_BODY)
        h.close()  # not drained: this connection cannot carry another request
    else:
        data = response.read()
    if response.will_close:
        h.close()
    return Answer(response.status, response.reason, answer_headers, data)


class Connections:
    """Keep-alive connections to one store and the threads that use them."""

    def __init__(self, target: Target, *, connect_timeout: float, read_timeout: float,
                 threads: int, name: str) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._context = ssl.create_default_context() \
            if "https" in (target.origin.scheme, target.proxy and target.proxy.scheme) \
            else None
        self._idle: list[Connection] = []  # touched on the event loop only
        self._busy: set[Connection] = set()
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix=f"s3-{name}")

    def _take(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < KEEPALIVE and conn.sock is not None:
                return conn
            conn.close()
        return Connection(self.target, self.connect_timeout, self.read_timeout,
                          self._context)

    def _give(self, conn: Connection) -> None:
        if conn.sock is None or conn.aborted:
            conn.close()
            return
        conn.reused = True
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def request(self, method: str, path: str, headers: dict[str, str], *,
                      body: memoryview | None = None,
                      into: memoryview | None = None) -> Answer:
        """Send one request from a worker thread; see ``exchange``. Every idle connection
        may have been closed by the store meanwhile (it restarted): each stale one is
        dropped and the next tried, until a new connection answers or fails."""
        while True:
            conn = self._take()
            reused = conn.reused
            try:
                answer = await self._run(conn, lambda c=conn: exchange(  # type: ignore[misc]
                    c, method, path, headers, body, into))
            except _STALE:
                conn.close()
                if reused:
                    continue  # closed by the store while idle: once more, on a new one
                raise
            except http.client.HTTPException as exc:
                conn.close()
                raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            self._give(conn)
            return answer

    async def _run(self, conn: Connection, call: Callable[[], T]) -> T:
        """``call`` in a worker thread; cancelling aborts ``conn`` and waits for it."""
        self._busy.add(conn)
        future = asyncio.get_running_loop().run_in_executor(self._threads, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            conn.abort()
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            with contextlib.suppress(BaseException):
                future.result()
            raise
        finally:
            self._busy.discard(conn)

    async def close(self) -> None:
        for conn in list(self._busy):
            conn.abort()
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)
