"""The operator's verbs on a relationship: create, remove, pause, resume, sync-now.

Each checks that the verb makes sense now (409 ``RelationshipError`` with the reason
if not: a failover in progress, stopped, already paused, defined in the config file)
and then acts through the registry and the engine. Failover and rejoin are activities
of their own (``failover.py``, ``rejoin.py``).
"""

from __future__ import annotations

import structlog

from ...activity import ActivityRecord, State
from ...engine import Activity, ActivityEngine
from ..logic.spec import RelationshipSpec, overlapping
from .registry import RelationshipRegistry
from .runtime import RelationshipError, Runtime, check_no_failover

log = structlog.get_logger("cerssd.relationships")


class OperatorVerbs:
    def __init__(self, engine: ActivityEngine, registry: RelationshipRegistry) -> None:
        self.engine = engine
        self.registry = registry

    def create(self, spec: RelationshipSpec) -> Runtime:
        other = overlapping(spec, [r.spec for r in self.registry.all()])
        if other is not None:
            raise RelationshipError(f"relationship {spec.name}'s datasets overlap those of "
                                    f"relationship {other} (same master, same slave server)")
        rt = self.registry.add(spec)
        self.registry.launch(rt)
        log.info("relationship created", relationship=spec.name, volume=spec.volume,
                 slaves=[s.server for s in spec.slaves])
        return rt

    async def remove(self, name: str) -> None:
        rt = self.registry.get(name)
        check_no_failover(rt)
        if rt.spec.origin == "config":
            raise RelationshipError(f"relationship {name} is defined in the config file; "
                                    "remove it there and reload cerssd")
        await self.registry.stop(rt)
        self.registry.remove(name)
        log.info("relationship removed; its snapshots were left in place", relationship=name)

    async def pause(self, name: str) -> ActivityRecord:
        """Suspend the relationship's cycles and transfers. The pause is committed first
        (in a cluster: to etcd, under this leader's term), so that whichever manager
        leads next keeps it paused; a manager that lost the lead meanwhile gets a 409."""
        activity = self._running(name, stopped="is stopped", paused="is already paused")
        await self._commit_pause(self.registry.get(name), paused=True)
        return await self.engine.suspend(activity.id)

    async def resume(self, name: str) -> ActivityRecord:
        """Resume a paused relationship, or start a stopped one again."""
        rt = self.registry.get(name)
        check_no_failover(rt)
        self.registry.leadership.check(name)
        activity = self.registry.activity_of(rt)
        if activity is None:
            return self.registry.start_again(rt)
        if activity.record.state == State.SUSPENDED:
            await self._commit_pause(rt, paused=False)
        return await self.engine.resume(activity.id)

    async def _commit_pause(self, rt: Runtime, *, paused: bool) -> None:
        was, rt.paused = rt.paused, paused
        try:
            await self.registry.commit(rt)
        except RelationshipError:
            rt.paused = was
            raise

    def sync_now(self, name: str) -> None:
        """Start a cycle at once, and cut the back-off of its retrying transfers."""
        activity = self._running(name, stopped="is stopped; resume it first",
                                 paused="is paused; resume it first")
        self.engine.wake(activity.id)  # its wait for the next tick ends now
        for transfer in self.registry.streams(name):
            self.engine.wake(transfer.id)

    def _running(self, name: str, *, stopped: str, paused: str) -> Activity:
        """The relationship's activity if it runs (not stopped, not paused, no failover
        under way); otherwise a 409 saying which, in the verb's own words."""
        rt = self.registry.get(name)
        check_no_failover(rt)
        self.registry.leadership.check(name)  # in a cluster, only its leader acts
        activity = self.registry.activity_of(rt)
        if activity is None:
            raise RelationshipError(f"relationship {name} {stopped}")
        if activity.record.state == State.SUSPENDED:
            raise RelationshipError(f"relationship {name} {paused}")
        return activity
