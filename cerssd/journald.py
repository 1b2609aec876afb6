"""journald's native protocol: one entry, its fields as journal fields, in one datagram.

Written here rather than taken from PyPI: ``systemd-python`` has no wheels (it needs
libsystemd's headers and a compiler where cerssd is installed) and ``cysystemd``'s wheels
carry their own copies of libsystemd, libgcrypt and others, which a Debian package may
not ship (``dh_shlibdeps`` cannot resolve them; lintian flags embedded libraries). The
protocol is small and documented (systemd's "Native Journal Protocol"):

- a datagram to ``/run/systemd/journal/socket``, one field after another;
- a field is ``NAME=value\\n``, or, when the value holds a newline,
  ``NAME\\n`` + the value's length as a little-endian 64-bit number + the value + ``\\n``;
- an entry too large for a datagram is written to a sealed memfd whose descriptor is sent
  instead (``SCM_RIGHTS``), with an empty datagram.

Field names are the caller's business (``cerssd.logs.journal_field`` makes valid ones).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Mapping

SOCKET = "/run/systemd/journal/socket"
#: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL: journald takes a memfd only
#: once nobody can change it any more.
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def encode(fields: Mapping[str, object]) -> bytes:
    """The datagram of one entry."""
    parts = []
    for name, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        key = name.encode("ascii")
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


class Journal:
    """A connection-less sender of entries to journald (one socket, reused)."""

    def __init__(self, path: str = SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, fields: Mapping[str, object]) -> None:
        """Send one entry; raises OSError if journald does not take it."""
        data = encode(fields)
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too large for a datagram
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("cerssd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            # (socket.send_fds drops its address argument before Python 3.12)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     struct.pack("i", fd))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
