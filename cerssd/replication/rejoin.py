"""Rejoining an old master that an unplanned failover fenced, as a slave again.

The old master may have taken writes the new master never saw: snapshots after
the newest one the two share (by guid), and changes since then. To follow the new
master it must be rolled back to that shared snapshot, which destroys them. So a
rejoin is first a *dry run* that says exactly what would be destroyed, and it is
carried out only when the operator says ``rollback: true``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from ..backends.base import Snapshot
from .relationship import SlaveSpec
from .relationships import RelationshipError, Relationships, Runtime
from .roles import with_slave

log = structlog.get_logger("cerssd.rejoin")


@dataclass(frozen=True)
class RejoinPlan:
    server: str
    volume: str
    base: Snapshot
    #: Snapshots on the old master after the base, newest last: destroyed by a rejoin.
    destroys: tuple[Snapshot, ...]

    def to_json(self, *, done: bool) -> dict[str, Any]:
        return {
            "server": self.server, "volume": self.volume, "rejoined": done,
            "base": self.base.name, "base_created": self.base.creation,
            "destroys_snapshots": [s.name for s in self.destroys],
            "discards_changes_after": self.base.creation,
            "summary": (f"rolls {self.volume} on {self.server} back to {self.base.label}: "
                        f"{len(self.destroys)} later snapshot(s) and every change made "
                        "after it are destroyed"),
        }


async def plan_rejoin(manager: Relationships, rt: Runtime, server: str) -> RejoinPlan:
    fenced = rt.failover.fenced.get(server)
    if fenced is None:
        raise RelationshipError(f"{server} is not a fenced old master of {rt.name} "
                                f"(fenced: {', '.join(rt.failover.fenced) or 'none'})")
    master = await manager.servers.backend(rt.spec.master)
    old = await manager.servers.backend(server)
    ours = {s.guid for s in await master.snapshots(rt.spec.volume)}
    theirs = await old.snapshots(fenced.volume)
    shared = [i for i, s in enumerate(theirs) if s.guid in ours]
    if not shared:
        raise RelationshipError(f"{server}:{fenced.volume} shares no snapshot with the "
                                f"master {rt.spec.master}; it cannot follow incrementally. "
                                "Rename or destroy it and add the server as a new slave")
    last = shared[-1]
    return RejoinPlan(server, fenced.volume, theirs[last], tuple(theirs[last + 1:]))


async def rejoin(manager: Relationships, rt: Runtime, plan: RejoinPlan) -> None:
    """Roll the old master back to the shared base and make it a slave (read-only)."""
    manager.check_no_failover(rt)
    backend = await manager.servers.backend(plan.server)
    await backend.set_readonly(plan.volume, True)
    owners = {rt.spec.master, plan.server, *rt.slaves}
    for snap in plan.destroys:  # our own holds would make the rollback fail
        if snap.userrefs:
            for owner in owners:
                await backend.release(f"cerssd:{owner}", snap.name)
    await backend.rollback(plan.base.name)  # changes after the base go too, always
    del rt.failover.fenced[plan.server]
    manager.set_roles(rt, with_slave(rt.spec, SlaveSpec(plan.server, plan.volume)))
    log.warning("old master rolled back and rejoined as a slave", relationship=rt.name,
                server=plan.server, base=plan.base.name,
                destroyed=[s.name for s in plan.destroys], at=time.time())
    if manager.activity_of(rt) is not None:
        manager.sync_now(rt.name)
