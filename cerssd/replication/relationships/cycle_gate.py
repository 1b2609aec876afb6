"""At most ``daemon.max_concurrent_cycles`` relationship cycles at once; the rest queue.

A cycle's own work is a burst on the master and the slaves: list the snapshots, apply
retention, take the snapshot, plan each slave's stream, start the transfers. Fifty
relationships doing that in the same second make a storage node stutter, so cycles
take a turn here first. The schedule spreads them over their interval
(``schedule.spread_offset``); the gate is the backstop for what still lines up: the
catch-up of every relationship after a daemon restart, many ``sync-now`` at once, or
many cron schedules on the same minute.

What is capped is the cycle, not its transfers: a cycle ends once its transfers are
started, and they run as their own activities. Holding a turn for a transfer's whole
life would let one slow or unreachable slave (retrying for hours) starve every other
relationship of its cycles.

Turns are given in arrival order (FIFO), so no relationship waits behind later ones.
The limit can be changed while cycles wait (a config reload): a larger one lets
waiting cycles in at once, a smaller one takes effect as running cycles end.
A waiting cycle that is cancelled (the relationship stopped or removed) leaves the
queue; one cancelled just after it was given its turn gives the turn back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class CycleGate:
    """A FIFO counting gate whose limit may change at any time."""

    def __init__(self, limit: int) -> None:
        self._limit = 1
        self._running = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("the limit must be at least 1")
        self._limit = value
        self._admit()

    @property
    def running(self) -> int:
        """Cycles that hold a turn now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Cycles waiting for a turn."""
        return sum(not f.done() for f in self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, waiting: Callable[[bool], None] | None = None,
                   ) -> AsyncIterator[None]:
        """Hold a turn for the body. ``waiting(True)`` is called if the cycle has to
        queue and ``waiting(False)`` once it is let in (so its status can say so)."""
        if self._running < self._limit and not self._waiting:
            self._running += 1
        else:
            ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(ticket)
            if waiting is not None:
                waiting(True)
            try:
                await ticket
            except asyncio.CancelledError:
                if ticket.done() and not ticket.cancelled():
                    self._release()  # let in at the moment it was cancelled: hand it on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(ticket)
                raise
            finally:
                if waiting is not None:
                    waiting(False)
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiting and self._running < self._limit:
            ticket = self._waiting.popleft()
            if not ticket.done():
                self._running += 1
                ticket.set_result(None)
