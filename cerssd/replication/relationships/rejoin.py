"""Rejoining an old master that an unplanned failover fenced, as a slave again.

The old master may have taken writes the new master never saw: snapshots after
the newest one the two share (by guid), and changes since then. To follow the new
master it must be rolled back to that shared snapshot, which destroys them. So a
rejoin is first a *dry run* that says exactly what would be destroyed, and it is
carried out only when the operator says ``rollback: true``.

Carried out, it is an activity (kind ``rejoin``) like every other piece of backend
work, so that on a server without ``stateless_snapshots`` it holds the old master's
volume (``rejoining``) and a conflicting action gets 409 naming it, as the other
flows' holds do. The API waits for it and answers as before. The activity plans
again before it rolls back and refuses if the plan is not the one consented to (a
snapshot came or went in between). It is not self-restarting: a daemon stopped
mid-rejoin leaves the server fenced, and the operator asks again (every step is
safe to repeat).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from ...activity import ActivityRecord, Progress, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...servers import ServerRegistry
from ...storage.values import Snapshot
from ..logic.roles import with_slave
from ..logic.spec import SlaveSpec
from .registry import RelationshipRegistry
from .runtime import RelationshipError, Runtime, check_no_failover
from .tree_rejoin import plan_tree_rejoin
from .verbs import OperatorVerbs

log = structlog.get_logger("cerssd.rejoin")

KIND = "rejoin"


@dataclass(frozen=True)
class RejoinDeps:
    """What a rejoin acts on and through, handed in by the daemon."""

    servers: ServerRegistry
    registry: RelationshipRegistry
    #: A rejoin ends with a sync-now, refused like the operator's while paused.
    verbs: OperatorVerbs


@dataclass(frozen=True)
class RejoinPlan:
    server: str
    volume: str
    base: Snapshot
    #: Snapshots on the old master after the base, newest last: destroyed by a rejoin.
    destroys: tuple[Snapshot, ...]
    #: A tree: each member's base (``tree_rejoin``); each member is rolled back to its own.
    bases: tuple[Snapshot, ...] = ()

    @property
    def rollbacks(self) -> tuple[Snapshot, ...]:
        return self.bases or (self.base,)

    def to_json(self, *, done: bool) -> dict[str, Any]:
        what = (f"{len(self.bases)} member(s) of {self.volume}" if self.bases
                else self.volume)
        return {
            "server": self.server, "volume": self.volume, "rejoined": done,
            "base": self.base.name, "base_created": self.base.creation,
            "destroys_snapshots": [s.name for s in self.destroys],
            "discards_changes_after": min(b.creation for b in self.rollbacks),
            "summary": (f"rolls {what} on {self.server} back to {self.base.label}"
                        f"{' (or the newest snapshot each shares)' if self.bases else ''}: "
                        f"{len(self.destroys)} later snapshot(s) and every change made "
                        "after it are destroyed"),
            **({"members": len(self.bases)} if self.bases else {}),
        }


async def plan_rejoin(servers: ServerRegistry, rt: Runtime, server: str) -> RejoinPlan:
    fenced = rt.failover.fenced.get(server)
    if fenced is None:
        raise RelationshipError(f"{server} is not a fenced old master of {rt.name} "
                                f"(fenced: {', '.join(rt.failover.fenced) or 'none'})")
    if rt.spec.is_tree:
        bases, destroys = await plan_tree_rejoin(servers, rt, fenced)
        root = next((b for b in bases if b.volume == fenced.volume), bases[0])
        return RejoinPlan(server, fenced.volume, root, destroys, bases)
    master = await servers.backend(rt.spec.master)
    old = await servers.backend(server)
    ours = {i for s in await master.snapshots(rt.spec.volume) for i in s.identities}
    theirs = await old.snapshots(fenced.volume)
    shared = [i for i, s in enumerate(theirs) if s.identities & ours]
    if not shared:
        raise RelationshipError(f"{server}:{fenced.volume} shares no snapshot with the "
                                f"master {rt.spec.master}; it cannot follow incrementally. "
                                "Rename or destroy it and add the server as a new slave")
    last = shared[-1]
    return RejoinPlan(server, fenced.volume, theirs[last], tuple(theirs[last + 1:]))


async def rejoin(deps: RejoinDeps, rt: Runtime, plan: RejoinPlan) -> None:
    """Roll the old master back to the shared base and make it a slave (read-only)."""
    check_no_failover(rt)
    backend = await deps.servers.backend(plan.server)
    problems = await backend.set_readonly_many([b.volume for b in plan.rollbacks])
    if problems:
        raise RelationshipError(f"{plan.server}: not made read-only: {problems}")
    owners = {rt.spec.master, plan.server, *rt.slaves}
    held = [snap.name for snap in plan.destroys if snap.userrefs]
    for owner in owners:  # our own holds would make the rollback fail
        await backend.unpin_many(held, owner)
    for base in plan.rollbacks:
        await backend.rollback(base.name)  # changes after the base go too, always
    del rt.failover.fenced[plan.server]
    deps.registry.set_roles(rt, with_slave(rt.spec, SlaveSpec(plan.server, plan.volume,
                                                               receive=rt.spec.receive)))
    log.warning("old master rolled back and rejoined as a slave", relationship=rt.name,
                server=plan.server, base=plan.base.name,
                destroyed=[s.name for s in plan.destroys], at=time.time())
    if deps.registry.activity_of(rt) is not None:
        deps.verbs.sync_now(rt.name)


def submit_rejoin(engine: ActivityEngine, rt: Runtime, plan: RejoinPlan) -> ActivityRecord:
    """The consented rejoin of ``plan`` as an activity (the API holds its volume)."""
    return engine.submit(
        KIND, volume=plan.volume, source=rt.spec.master, target=f"{plan.server}:{plan.volume}",
        params={"relationship": rt.name, "server": plan.server, "volume": plan.volume,
                "base": plan.base.name, "base_guid": plan.base.guid,
                "bases": [b.guid for b in plan.bases],
                "destroys": [s.name for s in plan.destroys]},
        progress=Progress(0, 1, unit="rollbacks"))


class RejoinWork:
    def __init__(self, record: ActivityRecord, deps: RejoinDeps) -> None:
        self.deps = deps
        self.params = record.params

    async def run(self, ctx: ActivityContext) -> None:
        p = self.params
        try:
            rt = self.deps.registry.get(p["relationship"])
            plan = await plan_rejoin(self.deps.servers, rt, p["server"])
            if (plan.base.guid, [s.name for s in plan.destroys],
                    [b.guid for b in plan.bases]) != (p["base_guid"], p["destroys"],
                                                      p.get("bases", [])):
                raise RelationshipError(
                    f"{p['server']}:{p['volume']} changed since the rollback was consented "
                    "to; run the dry run again and review what it destroys now")
            await rejoin(self.deps, rt, plan)
        except (KeyError, RelationshipError) as exc:
            raise ActivityError(str(exc), StatusCode.CONFLICT, "conflict") from exc
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        """A rollback that happened cannot be undone; one that did not changed nothing."""
        return None


def register(engine: ActivityEngine, deps: RejoinDeps) -> None:
    engine.register(KIND, lambda r: RejoinWork(r, deps))
