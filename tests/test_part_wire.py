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
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


# -- TLS and proxies: the paths an AWS endpoint or a corporate proxy takes -----------------
@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1, trusted by the
    client the way an operator would (``SSL_CERT_FILE``, read by OpenSSL's defaults)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server


def echo_over_tls(context: ssl.SSLContext, seen: list[bytes]) -> Callable[[socket.socket, int],
                                                                         None]:
    """A handler that takes a PUT's body and answers a GET with it, over TLS."""
    def handle(conn: socket.socket, index: int) -> None:
        try:
            tconn = context.wrap_socket(conn, server_side=True)
        except ssl.SSLError:
            return  # the client refused the certificate (the test of that expects it)
        with tconn:
            while True:
                head = read_request(tconn)
                if not head:
                    return
                seen.append(head.split(b"\r\n", 1)[0])
                if head.startswith(b"PUT"):
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = head.split(b"\r\n\r\n", 1)[1]
                    while len(body) < length:
                        body += tconn.recv(65536)
                    seen.append(body)
                    tconn.sendall(b"HTTP/1.1 200 OK\r\nETag: \"t\"\r\nContent-Length: 0\r\n\r\n")
                else:
                    tconn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(seen[1]), seen[1]))
    return handle


async def test_parts_go_up_and_come_back_over_verified_tls(tls: ssl.SSLContext) -> None:
    seen: list[bytes] = []
    payload = bytes(range(256)) * 4096  # 1 MiB
    with scripted(echo_over_tls(tls, seen)) as server:
        wire = Connections(Target(URL(f"https://127.0.0.1:{server.port}")), connect_timeout=2,
                           read_timeout=10, threads=2, name="tls")
        put = await wire.request("PUT", "/b/k", {"Host": "x",
                                                 "Content-Length": str(len(payload))},
                                 body=memoryview(payload))
        into = bytearray(len(payload))
        got = await wire.request("GET", "/b/k", {"Host": "x"}, into=memoryview(into))
        await wire.close()
    assert (put.status, got.status) == (200, 206)
    assert seen[0] == b"PUT /b/k HTTP/1.1" and seen[1] == payload
    assert bytes(into) == payload


async def test_an_untrusted_certificate_is_refused(tls: ssl.SSLContext,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")  # the system's CAs do not know this certificate
    with scripted(echo_over_tls(tls, [])) as server:
        wire = Connections(Target(URL(f"https://127.0.0.1:{server.port}")), connect_timeout=2,
                           read_timeout=10, threads=2, name="tls")
        with pytest.raises(ssl.SSLCertVerificationError):
            await wire.request("GET", "/b/k", {"Host": "x"}, into=memoryview(bytearray(4)))
        await wire.close()


def connect_proxy(log: list[bytes]) -> Callable[[socket.socket, int], None]:
    """An HTTP proxy that serves CONNECT only: it logs the request and pipes both ways."""
    def handle(conn: socket.socket, index: int) -> None:
        head = read_request(conn)
        log.append(head.split(b"\r\n", 1)[0])
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        with socket.create_connection((host, int(port))) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

            def pump(a: socket.socket, b: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while data := a.recv(65536):
                        b.sendall(data)
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)
            back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
            back.start()
            pump(conn, upstream)
            back.join(LIMIT)
    return handle


async def test_an_https_store_is_reached_through_a_connect_tunnel(tls: ssl.SSLContext) -> None:
    seen: list[bytes] = []
    log: list[bytes] = []
    payload = b"through the tunnel" * 1000
    with scripted(echo_over_tls(tls, seen)) as store, scripted(connect_proxy(log)) as proxy:
        wire = Connections(Target(URL(f"https://127.0.0.1:{store.port}"),
                                  URL(f"http://127.0.0.1:{proxy.port}")),
                           connect_timeout=2, read_timeout=10, threads=2, name="proxied")
        put = await wire.request("PUT", "/b/k", {"Host": "x",
                                                 "Content-Length": str(len(payload))},
                                 body=memoryview(payload))
        await wire.close()
    assert put.status == 200 and seen[1] == payload
    assert [line.rpartition(b" ")[0] for line in log] == [
        f"CONNECT 127.0.0.1:{store.port}".encode()]


async def test_a_plain_http_store_through_a_proxy_names_the_whole_url() -> None:
    lines: list[bytes] = []

    def handle(conn: socket.socket, index: int) -> None:
        head = read_request(conn)
        lines.append(head.split(b"\r\n", 1)[0])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with scripted(handle) as proxy:
        wire = Connections(Target(URL("http://store.example:8333"),
                                  URL(f"http://u:p@127.0.0.1:{proxy.port}")),
                           connect_timeout=2, read_timeout=10, threads=2, name="proxied")
        answer = await wire.request("GET", "/b/k", {"Host": "store.example:8333"},
                                    into=memoryview(bytearray(0)))
        await wire.close()
    assert answer.status == 200
    assert lines == [b"GET http://store.example:8333/b/k HTTP/1.1"]
