"""The data path's two primitives: the gate that suspends a byte mover, and its counters.

Shared by the engine (one of each per activity: suspend closes the gate, the record's
progress and usage are read from the counters) and by every byte mover (the stream
pipeline, the object-store transfers), which close over them without knowing the
engine. Bytes are moved by threads, control happens on the event loop: hence an event
of each kind in the gate, and counters that are plain ints updated under the GIL.
"""

from __future__ import annotations

import asyncio
import threading
import time


class FlowGate:
    """Open while the activity may make progress; closed while suspended.

    Both an asyncio and a threading event, because bytes are moved by threads
    (blocking ``splice``) while control happens on the loop.
    """

    def __init__(self) -> None:
        self._async = asyncio.Event()
        self._thread = threading.Event()
        #: Set on every open and close (on the loop): for work that must pass a suspend
        #: on at once rather than block (a delegated activity tells its peer).
        self.changed = asyncio.Event()
        self.open()

    def open(self) -> None:
        self._async.set()
        self._thread.set()
        self.changed.set()

    def close(self) -> None:
        self._async.clear()
        self._thread.clear()
        self.changed.set()

    @property
    def is_open(self) -> bool:
        return self._thread.is_set()

    async def wait_async(self) -> None:
        await self._async.wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._thread.wait(timeout)


class Counters:
    """Byte counters updated from threads; plain ints are safe under the GIL."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_on_wire = 0
        self.retries = 0
        # Progress measured by a byte-moving thread; merged into the record on snapshot
        # so that threads never rewrite the record the loop owns.
        self.done: int | None = None
        self._rate_mark = (time.monotonic(), 0)
        self.rate = 0.0

    def moved(self, n: int) -> None:
        """``n`` bytes went from the source to the wire (and count as progress)."""
        self.read(n)
        self.bytes_on_wire += n

    def read(self, n: int) -> None:
        """``n`` bytes came from the source (progress); compression may send fewer."""
        self.bytes_read += n
        if self.done is not None:  # progress measured in bytes
            self.done += n

    def sent(self, n: int) -> None:
        self.bytes_on_wire += n

    def sample_rate(self) -> float:
        now = time.monotonic()
        then, seen = self._rate_mark
        if now - then >= 1.0:
            self.rate = (self.bytes_read - seen) / (now - then)
            self._rate_mark = (now, self.bytes_read)
        return self.rate
