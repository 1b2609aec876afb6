"""A TCP proxy in front of the test's SeaweedFS that cuts a bucket listing halfway.

The daemon talks to the proxy as its S3 endpoint (requests are signed for the proxy's
address and passed on unchanged, so SeaweedFS accepts them). Armed, the proxy lets
everything through until the next manifest PUT (a backup finishing), and from then on
closes every connection that asks for a listing's second or later page (a request with
a ``continuation-token``): a listing that fails halfway, as when the store goes away
mid-listing, while every other call, the first page included, works. ``disarm()``
ends it. A real network fault on real HTTP, only aimed.
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 1 << 16


class ListingCutter:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.armed = False
        self.tripped = False
        #: Listing pages refused since tripped.
        self.cut = 0
        self._lock = threading.Lock()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self) -> None:
        with self._lock:
            self.armed, self.tripped, self.cut = True, False, 0

    def disarm(self) -> None:
        with self._lock:
            self.armed = self.tripped = False

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _start(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._start(self._pump, client, server, True)
            self._start(self._pump, server, client, False)

    def _verdict(self, data: bytes) -> bool:
        """Whether the request (client → server bytes) passes."""
        with self._lock:
            if not self.armed:
                return True
            if self.tripped and b"continuation-token" in data:
                self.cut += 1
                return False
            if data.startswith(b"PUT ") and b"manifest.json" in data.split(b"\r\n", 1)[0]:
                self.tripped = True
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                if inspect and not self._verdict(data):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
