"""Keeping fenced old masters read-only.

An unplanned failover promotes a slave while the master does not answer; that old
master is *fenced*: whenever it answers again its volume is set read-only (again, in
case someone made it writable), until an operator rejoins it as a slave
(``rejoin.py``). So there are never two writable masters. Fencing runs at start-up,
after a failover, and at every cycle of the relationship; while a fenced server has
not been reached it keeps trying, backing off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import structlog

from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...transport.errors import LinkError
from .background import BackgroundTasks
from .registry import RelationshipRegistry
from .runtime import Runtime
from .tree_failover import fence_tree

log = structlog.get_logger("cerssd.relationships")

#: The longest wait between attempts to fence an old master that does not answer.
FENCE_RETRY_CAP = 10.0


class Fencing:
    def __init__(self, servers: ServerRegistry, registry: RelationshipRegistry) -> None:
        self.servers = servers
        self.registry = registry
        self._tasks = BackgroundTasks()

    async def enforce(self, rt: Runtime) -> None:
        """Keep every fenced old master read-only: set again whenever it answers, so a
        master that comes back (or that someone made writable) never takes writes."""
        for fenced in list(rt.failover.fenced.values()):
            try:
                backend = await self.servers.backend(fenced.server)
                if rt.spec.is_tree:  # every member of the old master's tree
                    await fence_tree(rt, backend, fenced.volume)
                else:
                    await backend.set_readonly(fenced.volume, True)
            except NotFound:
                pass  # the volume is gone: nothing there can take writes
            except (BackendError, LinkError) as exc:
                log.debug("fenced server not reached", relationship=rt.name,
                          server=fenced.server, error=str(exc))
                continue
            if fenced.applied_at is None:
                log.warning("old master reachable again: fenced (read-only) until it "
                            "rejoins", relationship=rt.name, server=fenced.server,
                            volume=fenced.volume)
            if fenced.server in rt.failover.fenced:
                rt.failover.fenced[fenced.server] = replace(fenced,
                                                            applied_at=time.time())
                self.registry.save(rt)

    def fence_soon(self, rt: Runtime) -> None:
        """Fence now, and keep trying while an old master has not been reached."""
        if rt.failover.fenced and not rt.fencing:
            self._tasks.spawn_quietly(self._until_reached(rt))

    def fence_all(self) -> None:
        """At start-up: every relationship's fenced old masters."""
        for rt in self.registry.all():
            self.fence_soon(rt)

    async def _until_reached(self, rt: Runtime) -> None:
        rt.fencing = True
        try:
            delay = 1.0
            while True:
                await self.enforce(rt)
                if all(f.applied_at for f in rt.failover.fenced.values()):
                    return
                await asyncio.sleep(delay)  # an unreachable server: try again, backing off
                delay = min(delay * 2, FENCE_RETRY_CAP)
        finally:
            rt.fencing = False
