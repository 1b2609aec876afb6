"""The control socket's client for every cerssctl command: one request, one document.

HTTP over the daemon's unix socket; a problem document becomes a ``CliError`` (one line,
exit 1), and a daemon that does not answer an ``Unreachable``, which the loops that
follow the daemon (``watch``) ride out instead of exiting.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any


class CliError(Exception):
    """Printed as one line; exits 1."""


class Unreachable(CliError):
    """The daemon did not answer (not running, restarting, shutting down): a loop that
    follows it (``show --follow``, ``--wait``) waits for it to come back instead of
    exiting."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()  # a watch that retries every interval must not leak one per try
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> Any:
        conn = UnixHTTPConnection(self.socket_path, timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unreachable(f"cannot reach cerssd at {self.socket_path}: {exc.strerror} "
                              "(is the daemon running?)") from None
        except PermissionError:
            raise CliError(f"permission denied on {self.socket_path} "
                           "(run as root or a member of the control group)") from None
        except OSError as exc:  # reset, closed mid-answer, timed out
            raise Unreachable(f"cannot talk to cerssd at {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        if response.status >= 400:
            try:
                problem = json.loads(data)
            except json.JSONDecodeError:
                raise CliError(f"HTTP {response.status}: {data.decode(errors='replace')}") \
                    from None
            message = f"{problem.get('title', response.reason)}: {problem.get('detail', '')}"
            if (response.status, problem.get("title")) == (503, "Shutting Down"):
                raise Unreachable(message)  # going away: it will be back
            raise CliError(message)
        if not data:  # 204 No Content
            return None
        if response.getheader("Content-Type", "").startswith("text/plain"):
            return data.decode()
        return json.loads(data)


def quote(path: str) -> str:
    """A name for a URL path: ``/`` and ``@`` kept (volumes, snapshots), the rest quoted."""
    return urllib.parse.quote(path, safe="/@")
