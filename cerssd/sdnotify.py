"""The systemd notify protocol (READY=1, STATUS=, WATCHDOG=1), spoken without libsystemd.

A no-op when ``NOTIFY_SOCKET`` is unset, so the daemon runs the same in a shell.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    def notify(self, **fields: str | int) -> bool:
        if self.address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message, self.address)
            except OSError:
                return False
        return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, in seconds (or None)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
