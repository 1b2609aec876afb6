"""Each server's pool space, measured now and then and kept: what a scheduler reads.

Measuring costs commands on the server (ZFS: a ``zpool list`` and one listing of its
filesystems and volumes, which grows with them), so it is not done per request or per
scrape. A measurement is kept for ``max_age`` seconds (30 by default): API reads and
scrapes within that window cost nothing; one past it measures again, at most one
measurement per server at a time (concurrent readers share it). A volume operation
marks its server's figures stale (``invalidate``), so the next read after a create or
delete sees it.

An API read waits for a fresh measurement at most ``wait`` seconds (20: a server behind
a lost link must not hold it up): past that it gets the last figures, and the
measurement finishes in the background. A scrape waits only for a server never measured
(at most 5 s) and otherwise takes the last figures while the next are measured. An
unavailable server is not measured; its last figures stay with the error that stopped
the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from .activity import ActivityRecord
from .engine import Activity, ActivityEngine
from .servers import ServerRegistry
from .storage.errors import BackendError
from .storage.names import pool_of
from .storage.values import PoolCapacity
from .transport.errors import LinkError

log = structlog.get_logger("cerssd.capacity")

#: The activity kinds that change a server's space as they end (``cerssd.volumes``).
VOLUME_KINDS = "volume-"
#: Seconds a measurement is served before the next read measures again.
MAX_AGE = 30.0
#: Seconds a scrape waits for a measurement before taking the last figures: a server
#: behind a lost link must not hold up the scrape (Prometheus' default timeout is 10 s).
WAIT = 5.0
#: Seconds an API read waits: it asked for the figures, and a zfs-fuse host with hundreds
#: of pools takes seconds to list them (well within cerssctl's 30 s).
API_WAIT = 20.0


@dataclass(frozen=True)
class Measured:
    """One server's figures: its pools, when they were measured, and the last error."""

    pools: tuple[PoolCapacity, ...] = ()
    measured_at: float | None = None
    error: str | None = None
    #: Monotonic time of the measurement (or the failed try): what ``max_age`` counts from.
    at: float = field(default=float("-inf"), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"pools": [p.to_json() for p in self.pools], "measured_at": self.measured_at,
                "error": self.error}


class CapacityCache:
    def __init__(self, servers: ServerRegistry, engine: ActivityEngine | None = None, *,
                 max_age: float = MAX_AGE, wait: float = WAIT,
                 served: Callable[[str], tuple[str, ...] | None] | None = None) -> None:
        """``served`` names the pools the daemon serves on a server (``volume_roots``:
        its ``pools`` key, else its relationships' pools; None for every pool): only
        those are shown, as ``GET /v1/volumes`` lists only them."""
        self.servers = servers
        self.served = served
        self.max_age = max_age
        self.wait = wait
        self._facts: dict[str, Measured] = {}
        self._running: dict[str, asyncio.Task[Measured]] = {}
        #: Measurements taken (tests and the docs' claim: not one per read).
        self.measurements = 0
        if engine is not None:
            engine.add_listener(self._on_change)

    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        """A volume operation ended: its server's space changed."""
        if record.state.terminal and record.kind.startswith(VOLUME_KINDS):
            self.invalidate(str(record.params.get("server")))

    def cached(self) -> dict[str, Measured]:
        """The figures as they are, of the configured servers and the pools the daemon
        serves there (no command runs)."""
        return {name: self._served(name, self._facts.get(name, Measured()))
                for name in self.servers.entries}

    def _served(self, server: str, facts: Measured) -> Measured:
        roots = self.served(server) if self.served is not None else None
        if roots is None:
            return facts
        pools = {pool_of(root) for root in roots}
        return replace(facts, pools=tuple(p for p in facts.pools if p.pool in pools))

    def invalidate(self, server: str) -> None:
        """The server's space changed (a volume operation): the next read measures."""
        if server in self._facts:
            self._facts[server] = Measured(self._facts[server].pools,
                                           self._facts[server].measured_at,
                                           self._facts[server].error)

    async def current(self, wait: float | None = None, *,
                      fresh: bool = True) -> dict[str, Measured]:
        """Every probed server's figures, measured again where older than ``max_age``
        (waiting at most ``wait`` seconds for them: the cache's own by default).

        With ``fresh`` false (a scrape) the reader waits only for servers never measured:
        one with figures gets them as they are while the next measurement runs in the
        background. A scrape that landed on an expired entry used to wait for the
        commands on every server (0.3-0.7 s at the demo's three servers: the scrape's
        p99, issue 13), and a scrape every 15 s reads figures at most 30 s old anyway."""
        now = time.monotonic()
        stale = [name for name, entry in self.servers.entries.items()
                 if entry.probed and now - self._facts.get(name, Measured()).at > self.max_age]
        tasks = {name: self._measure(name) for name in stale}  # all measured again
        waited = [task for name, task in tasks.items() if fresh or name not in self._facts]
        if waited:
            await asyncio.wait(waited, timeout=self.wait if wait is None else wait)
        return self.cached()

    def start(self) -> None:
        """Measure every probed server now, in the background (at start-up: the first
        scrape then finds figures instead of waiting for them)."""
        for name, entry in self.servers.entries.items():
            if entry.probed:
                self._measure(name)

    def _measure(self, server: str) -> asyncio.Task[Measured]:
        task = self._running.get(server)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read(server),
                                                          name=f"capacity-{server}")
            self._running[server] = task
            task.add_done_callback(functools.partial(self._ended, server))
        return task

    def _ended(self, server: str, task: asyncio.Task[Measured]) -> None:
        self._running.pop(server, None)

    async def _read(self, server: str) -> Measured:
        old = self._facts.get(server, Measured())
        try:
            backend = await self.servers.backend(server)
            pools = tuple(await backend.capacity())
        except (BackendError, LinkError, OSError) as exc:
            facts = Measured(old.pools, old.measured_at, str(exc), time.monotonic())
            log.warning("capacity not measured", server=server, error=str(exc))
        else:
            self.measurements += 1
            facts = Measured(pools, time.time(), None, time.monotonic())
        if server in self.servers.entries:  # not removed by a reload meanwhile
            self._facts[server] = facts
        return facts

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
