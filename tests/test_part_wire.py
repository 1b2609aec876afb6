"""The part path's HTTP connections (cerssd/objectstore/wire.py) where a real store cannot
be made to misbehave on cue: a body that stops arriving, a keep-alive connection the
server closed while it was idle, an answer of the wrong length.

The server here is a plain socket server in a thread that answers exactly as each test
scripts it; SeaweedFS itself is exercised by test_seaweed.py and test_backups.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from yarl import URL

from cerssd.objectstore.wire import Connection, Connections, Target, exchange

#: How long a test waits for something that should take milliseconds.
LIMIT = 5.0


class ScriptedServer:
    """Accepts connections on 127.0.0.1; ``handle(conn, index)`` serves each one."""

    def __init__(self, handle: Callable[[socket.socket, int], None]) -> None:
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed = threading.Event()  # a handler saw the client hang up
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            index = self.accepted
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn, index), daemon=True).start()

    def _one(self, conn: socket.socket, index: int) -> None:
        with conn:
            self.handle(conn, index)

    def close(self) -> None:
        self.listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


@contextlib.contextmanager
def scripted(handle: Callable[[socket.socket, int], None]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(handle)
    try:
        yield server
    finally:
        server.close()


def connections(port: int, read_timeout: float = 10.0) -> Connections:
    return Connections(Target(URL(f"http://127.0.0.1:{port}")), connect_timeout=2,
                       read_timeout=read_timeout, threads=4, name="test")


async def test_cancelling_a_get_ends_its_thread_at_once_and_leaves_the_buffer_alone() -> None:
    """A GET whose body stalls is cancelled (the activity was paused or stopped): the
    cancellation must finish in well under the read timeout, and only after the thread
    has let go of the buffer, which goes back to the pool for the next part."""
    sent = threading.Event()

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000000\r\n\r\n"
                     + b"a" * 1000)
        sent.set()
        while conn.recv(65536):  # the body stops here; wait for the client to hang up
            pass

    with scripted(handle) as server:
        wire = connections(server.port)
        into = bytearray(1000000)
        task = asyncio.ensure_future(wire.request("GET", "/b/k", {"Host": "x"},
                                                  into=memoryview(into)))
        assert await asyncio.to_thread(sent.wait, LIMIT)
        deadline = time.monotonic() + LIMIT
        while into[999] != ord("a"):  # the first bytes landed: it waits for the rest
            assert time.monotonic() < deadline, "the first bytes never arrived"
            await asyncio.sleep(0.01)  # a poll of the buffer: no event tells
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - began < LIMIT / 2  # the read timeout is 10 s
        snapshot = bytes(into)
        await asyncio.sleep(0.2)
        assert bytes(into) == snapshot  # nothing writes into it any more
        await wire.close()


async def test_a_keepalive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    """Stores close idle keep-alive connections; the next request on one must go out on a
    new connection instead of failing the part (which would report the link lost)."""

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nETag: \"e%d\"\r\nContent-Length: 0\r\n\r\n" % index)
        # ... and then the server closes the connection it said it would keep.

    with scripted(handle) as server:
        wire = connections(server.port)
        first = await wire.request("PUT", "/b/k", {"Host": "x", "Content-Length": "3"},
                                   body=memoryview(b"abc"))
        await asyncio.sleep(0.2)  # the close reaches the client's idle socket
        second = await wire.request("PUT", "/b/k", {"Host": "x", "Content-Length": "3"},
                                    body=memoryview(b"abc"))
        assert (first.status, first.headers["etag"]) == (200, '"e0"')
        assert (second.status, second.headers["etag"]) == (200, '"e1"')
        assert server.accepted == 2
        await wire.close()


async def test_an_answer_of_another_length_is_not_read_into_the_buffer() -> None:
    """A ranged GET must fill its slice exactly: a store that answers with a different
    length (a proxy's error page, a short object) leaves the buffer untouched, and a
    small answer is returned for the caller to report."""

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nshort")

    with scripted(handle) as server:
        wire = connections(server.port)
        into = bytearray(b"\0" * 100)
        answer = await wire.request("GET", "/b/k", {"Host": "x"}, into=memoryview(into))
        assert answer.status == 200 and answer.body == b"short"
        assert into == bytearray(100)
        await wire.close()


async def test_a_body_that_ends_early_is_a_connection_error() -> None:
    """The store hangs up half way through a part: the caller gets a ConnectionError (a
    transient failure, retried), never a part with a hole in it."""

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n"
                     + b"x" * 40)

    with scripted(handle) as server:
        wire = connections(server.port)
        with pytest.raises(ConnectionError):
            await wire.request("GET", "/b/k", {"Host": "x"}, into=memoryview(bytearray(100)))
        await wire.close()


def test_a_stalled_store_times_out_per_call_not_per_body() -> None:
    """The read timeout is the time without progress: a slow but live body is read to
    its end even when the whole takes longer than the timeout."""

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            time.sleep(0.15)
            conn.sendall(b"y")

    with scripted(handle) as server:
        conn = Connection(Target(URL(f"http://127.0.0.1:{server.port}")), 2, 0.5, None)
        into = bytearray(10)
        began = time.monotonic()
        answer = exchange(conn, "GET", "/b/k", {"Host": "x"}, None, memoryview(into))
        assert answer.status == 206 and into == b"y" * 10
        assert time.monotonic() - began > 1.0  # longer than the 0.5 s timeout in all
        conn.close()
