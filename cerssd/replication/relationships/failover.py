"""Failover and failback of a relationship to one of its slaves, as an activity.

Planned (the master answers), in steps, each journaled before the next:

1. ``halt``: the relationship's cycles stop and its transfers roll back;
2. ``fence``: the master's volume is made read-only, so no new write lands there;
3. ``snapshot``: a final snapshot, taken after the fence, holds every write;
4. ``sync``: it is replicated to the chosen slave (a child ``replicate`` activity)
   and its guid checked there: zero data loss;
5. ``promote``: the slave's volume is made writable;
6. ``reverse``: the slave is the master now; the old master (still read-only)
   and the other slaves follow it, and the relationship runs again.

Unplanned (the master does not answer; only with ``force``): no fence and no final
snapshot; the slave is promoted at the newest snapshot it has, the window of
writes that may be lost is recorded, and the old master is *fenced*: kept out of
the relationship and set read-only whenever it answers again, until an operator
rejoins it (``rejoin.py``), which rolls back what it wrote alone only with consent.

Never two writable masters: the slave is promoted only after the master is fenced
(planned) or found unreachable (unplanned, and then fenced on return). A daemon
killed mid-failover restarts the activity, which carries on from its journaled
step; every step is idempotent. A failure before ``promote`` rolls back (the master
is made writable again if it was, the relationship resumes, the status is
``failover-error``); from ``promote`` on the failover only goes forward, because
the new master may already have taken writes.

In a cluster the decision is committed to etcd (under the leader's term) before the
activity takes its first step: a leader that lost the lead meanwhile, or cannot reach
etcd until its lease runs out, has its failover cancelled having done nothing (it
neither halted the relationship nor fenced the master). A failover whose daemon stopped
before its decision was committed is not carried on after the restart.

A tree relationship fails over the same way, every member together from one snapshot
of the whole tree (``tree_failover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ...activity import ActivityRecord, Progress, State, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...servers import ServerRegistry, ServerUnavailable
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...transport.errors import LinkError
from ...volume_states import VolumeState, VolumeStates
from ..flows.replicate import (
    ReplicationRequest,
    relationship_fields,
    submit_replication,
    transfer_route,
)
from ..logic.roles import DataLoss, FailoverStatus, Fenced, promoted
from .fencing import Fencing
from .registry import RelationshipRegistry
from .runtime import RelationshipError, Runtime, check_no_failover
from .tree_failover import TreeFailover

KIND = "failover"
STEPS = ("halt", "fence", "snapshot", "sync", "promote", "reverse")
UNREACHABLE = (ServerUnavailable, LinkError)


@dataclass(frozen=True)
class FailoverRequest:
    relationship: str
    to: str
    #: Allow an unplanned failover when the master does not answer.
    force: bool = False
    #: A tree's unplanned failover: the label to promote every copy at, where the
    #: copies disagree (``logic.tree_point``).
    at: str | None = None


@dataclass(frozen=True)
class FailoverDeps:
    """What a failover acts on and through, handed in by the daemon (and the API)."""

    engine: ActivityEngine
    servers: ServerRegistry
    registry: RelationshipRegistry
    fencing: Fencing
    #: On a stateful server the failover holds both volumes.
    volume_states: VolumeStates
    #: Failovers submitted whose decision is being committed (in a cluster, etcd may
    #: take seconds, or refuse): each one's work waits on its event before any step.
    undecided: dict[str, asyncio.Event] = field(default_factory=dict)


async def master_answers(servers: ServerRegistry, rt: Runtime) -> str | None:
    """None if the master answers for its volume, else why not."""
    try:
        master = await servers.backend(rt.spec.master)
        await master.is_readonly(rt.spec.volume)
    except UNREACHABLE as exc:
        return str(exc)
    return None


async def submit_failover(deps: FailoverDeps, req: FailoverRequest) -> ActivityRecord:
    """Check the request, then start the failover (HTTP 409 on a refusal).

    Without ``force`` the master must answer: a planned failover loses nothing,
    an unplanned one loses the writes after the slave's last snapshot, and that
    is for an operator to accept, not for a typo.
    """
    rt = deps.registry.get(req.relationship)
    check_no_failover(rt)
    deps.registry.leadership.check(rt.name)  # in a cluster, only its leader decides
    if req.at is not None and not (rt.spec.is_tree and req.force):
        raise RelationshipError("at names the point of a tree's unplanned failover: it "
                                "needs a tree relationship and force=true")
    if req.to == rt.spec.master:
        raise RelationshipError(f"{req.to} is already the master of {rt.name}")
    if req.to in rt.failover.fenced:
        raise RelationshipError(f"{req.to} was fenced by an unplanned failover; rejoin it "
                                "as a slave first (POST .../rejoin)")
    if req.to not in rt.slaves:
        raise RelationshipError(f"{req.to} is not a slave of {rt.name} (slaves: "
                                f"{', '.join(rt.slaves) or 'none'})")
    problem = await master_answers(deps.servers, rt)
    if problem is not None and not req.force:
        status = rt.slaves[req.to]
        raise RelationshipError(
            f"the master {rt.spec.master} does not answer ({problem}); an unplanned "
            f"failover promotes {req.to} at its last snapshot "
            f"({status.last_snapshot or 'unknown'}) and loses the writes made after it. "
            "Pass force=true to do that")
    check_no_failover(rt)  # the check above awaited: look again
    target = rt.spec.slave(req.to).target_volume
    failback = req.to == rt.home
    status_name = FailoverStatus.FAILING_BACK if failback else FailoverStatus.FAILING_OVER
    # On a stateful server the failover holds both volumes (409 while another activity
    # does); it takes over its own relationship's transfers' holds, since it halts them.
    record = deps.volume_states.submit_holding(
        holds=[(rt.spec.master, rt.spec.volume), (req.to, target)], busy=VolumeState.FAILING_OVER,
        preempt=[a.id for a in deps.registry.transfers(rt.name).values()],
        submit=lambda: deps.engine.submit(
            KIND, volume=rt.spec.volume, source=rt.spec.master, target=f"{req.to}:{target}",
            params={"relationship": rt.name, "to": req.to, "force": req.force,
                    "master": rt.spec.master, "volume": rt.spec.volume,
                    "target_volume": target, "was_running": not rt.stopped,
                    "failback": failback, "step": 0, "tree": rt.spec.is_tree,
                    "decided": False,
                    **({"at": req.at} if req.at is not None else {})},
            self_restarting=True, progress=Progress(0, len(STEPS), unit="steps")))
    decided = deps.undecided[record.id] = asyncio.Event()  # before its work starts
    rt.failover.status, rt.failover.activity, rt.failover.error = \
        status_name, record.id, None
    try:  # in a cluster: accepted by etcd only while this daemon leads (decided once)
        await deps.registry.commit(rt)
    except RelationshipError:
        rt.failover.status = rt.failover.activity = None
        with contextlib.suppress(Exception):
            await deps.engine.cancel(record.id)  # still waiting: it did nothing
        raise
    finally:
        deps.undecided.pop(record.id, None)
    deps.engine.remember(record.id, decided=True)
    decided.set()
    return record


class FailoverWork:
    def __init__(self, record: ActivityRecord, deps: FailoverDeps) -> None:
        self.engine = deps.engine
        self.servers = deps.servers
        self.registry = deps.registry
        self.fencing = deps.fencing
        self.undecided = deps.undecided
        self.relationship: str = record.params["relationship"]
        self.tree = TreeFailover(deps.engine, deps.servers) if record.params.get("tree") \
            else None

    def _runtime(self) -> Runtime:
        try:
            return self.registry.get(self.relationship)
        except KeyError:
            raise ActivityError(f"relationship {self.relationship} is no longer "
                                "defined", StatusCode.NOT_FOUND, "not-found") from None

    async def run(self, ctx: ActivityContext) -> None:
        rt = self._runtime()
        await self._decided(ctx)
        steps = {"halt": self._halt, "fence": self._fence, "snapshot": self._snapshot,
                 "sync": self._sync, "promote": self._promote, "reverse": self._reverse}
        ctx.set_progress(ctx.params["step"])
        for i, name in enumerate(STEPS):
            if i < ctx.params["step"]:
                continue
            await ctx.checkpoint()
            ctx.remember(current_step=name)
            await steps[name](ctx, rt)
            ctx.remember(step=i + 1)
            ctx.set_progress(i + 1)
        ctx.log.info("failover complete", relationship=rt.name, master=rt.spec.master,
                     planned=ctx.params.get("planned"))

    async def _decided(self, ctx: ActivityContext) -> None:
        """Wait until the failover's decision is committed (``submit_failover``)."""
        if ctx.params.get("decided", True):  # or journaled before this was recorded
            return
        decided = self.undecided.get(ctx.record.id)
        if decided is None:
            raise ActivityError("the daemon stopped before this failover's decision was "
                                "committed; nothing was done: ask again",
                                StatusCode.CONFLICT, "not-decided")
        await decided.wait()

    async def _halt(self, ctx: ActivityContext, rt: Runtime) -> None:
        await self.registry.halt(rt)

    async def _fence(self, ctx: ActivityContext, rt: Runtime) -> None:
        p = ctx.params
        try:
            master = await self.servers.backend(p["master"])
            if self.tree is not None:
                await self.tree.fence(ctx, rt, master)
            else:
                if "master_was_readonly" not in p:  # not again after a restart: ours now
                    ctx.remember(master_was_readonly=await master.is_readonly(p["volume"]))
                await master.set_readonly(p["volume"], True)
        except UNREACHABLE as exc:
            if p.get("planned"):  # fenced before a restart, unreachable now: wait for it
                raise ActivityError(f"the master {p['master']} stopped answering during a "
                                    f"planned failover: {exc}", StatusCode.LINK,
                                    "link-lost") from exc
            if not p["force"]:
                raise ActivityError(f"the master {p['master']} does not answer ({exc}); an "
                                    "unplanned failover needs force", StatusCode.CONFLICT,
                                    "master-unreachable") from exc
            ctx.remember(planned=False, master_error=str(exc))
            ctx.log.warning("master unreachable: unplanned failover", master=p["master"],
                            error=str(exc))
            return
        ctx.remember(planned=True, fenced=True)
        ctx.log.info("master fenced (read-only)", master=p["master"], volume=p["volume"])

    async def _snapshot(self, ctx: ActivityContext, rt: Runtime) -> None:
        p = ctx.params
        if self.tree is not None:
            if p["planned"]:
                await self.tree.snapshot(ctx, rt, await self.servers.backend(p["master"]))
            else:
                await self.tree.unplanned_point(ctx, rt)
            return
        if not p["planned"]:
            slave = await self.servers.backend(p["to"])
            snaps = await slave.snapshots(p["target_volume"])
            if not snaps:
                raise ActivityError(f"{p['to']} has no snapshot of {p['target_volume']}; "
                                    "there is nothing to promote", StatusCode.CONFLICT,
                                    "no-snapshot")
            ctx.remember(final_snapshot=snaps[-1].name, final_guid=snaps[-1].guid,
                         final_created=float(snaps[-1].creation))
            return
        master = await self.servers.backend(p["master"])
        existing = {s.label: s for s in await master.snapshots(p["volume"])}
        label = p.get("final_label")
        if not isinstance(label, str):
            label = f"{rt.spec.prefix}failover-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            ctx.remember(final_label=label)  # journaled first: made once, even over a crash
        snap = existing.get(label) or await master.create_snapshot(p["volume"], label)
        ctx.remember(final_snapshot=snap.name, final_guid=snap.guid,
                     final_created=float(snap.creation))

    async def _sync(self, ctx: ActivityContext, rt: Runtime) -> None:
        p = ctx.params
        if self.tree is not None:
            if p["planned"]:  # unplanned: a tree's streams leave no partial receive
                await self.tree.sync(ctx, rt)
            return
        if not p["planned"]:
            slave = await self.servers.backend(p["to"])
            with contextlib.suppress(BackendError, NotFound):
                await slave.abort_receive(p["target_volume"])  # a cut-off resumable receive
            return
        # The child retries a lost link (and is cancelled with this activity); its
        # success, remembered over a restart, is checked against the slave below.
        child = self._live_child(p)
        if child is None:
            req = ReplicationRequest(
                snapshot=p["final_snapshot"], source=p["master"], destination=p["to"],
                target_volume=p["target_volume"], intermediates=True,
                bandwidth_limit=rt.spec.slave(p["to"]).bandwidth_limit,
                retry_deadline=rt.spec.retry_deadline, path=rt.spec.slave(p["to"]).path,
                **relationship_fields(rt.spec, p["to"]))
            record = submit_replication(self.engine, req, parent=ctx.record.id,
                                        failover=ctx.record.id, route=transfer_route(
                                            self.servers, req.source, req.destination))
            ctx.remember(sync_activity=record.id)
            child_record = await self.engine.wait(record.id)
        else:
            child_record = await self.engine.wait(child)
        if child_record.state != State.SUCCEEDED:
            why = child_record.status.message if child_record.status else "did not finish"
            raise ActivityError(f"the final snapshot did not reach {p['to']}: {why}",
                                StatusCode.ERROR, "sync-failed")
        if not await self._has_final(await self.servers.backend(p["to"]), p):
            raise ActivityError(f"{p['to']} does not hold the final snapshot "
                                f"{p['final_snapshot']} (guid {p['final_guid']})",
                                StatusCode.CONFLICT, "sync-unverified")

    @staticmethod
    async def _has_final(slave: StorageBackend, p: dict[str, Any]) -> bool:
        with contextlib.suppress(NotFound):
            snaps = await slave.snapshots(p["target_volume"])
            return any(p["final_guid"] in s.identities for s in snaps)
        return False

    def _live_child(self, p: dict[str, Any]) -> str | None:
        """The final sync's activity, if it is still running or has succeeded."""
        child = p.get("sync_activity")
        if not isinstance(child, str):
            return None
        with contextlib.suppress(KeyError):
            activity = self.engine.get(child)
            if not activity.record.state.terminal or activity.record.state == State.SUCCEEDED:
                return child
        return None

    async def _promote(self, ctx: ActivityContext, rt: Runtime) -> None:
        p = ctx.params
        ctx.remember(promoted=True)  # from here on the failover only goes forward
        if self.tree is not None:
            await self.tree.promote(ctx, rt)
        else:
            slave = await self.servers.backend(p["to"])
            await slave.set_readonly(p["target_volume"], False)
            # Received unmounted (the default ``mount = false``): the new master is
            # mounted now. ``zfs mount`` mounts a ``canmount=noauto`` copy too; one that
            # cannot mount (``canmount=off``, ``mountpoint=none``) is writable all the
            # same, and the outcome says why it is not mounted.
            problems = await slave.mount_many([p["target_volume"]])
            if problems:
                ctx.log.warning("promoted copy not mounted", volume=p["target_volume"],
                                why=problems[p["target_volume"]])
                ctx.remember(not_mounted=problems[p["target_volume"]])
        ctx.log.warning("slave promoted: it is the writable master now", server=p["to"],
                        volume=p["target_volume"], snapshot=p["final_snapshot"])

    async def _reverse(self, ctx: ActivityContext, rt: Runtime) -> None:
        p = ctx.params
        now = time.time()
        if rt.spec.master != p["to"]:  # not done before a restart
            rt.failover.last_failover_at = now
            # The window of the last unplanned failover, or none: a planned one loses nothing.
            rt.failover.data_loss = None
            if not p["planned"]:
                rt.failover.fenced[p["master"]] = Fenced(p["master"], p["volume"], since=now)
                rt.failover.data_loss = DataLoss(p["final_snapshot"], p.get("final_created"),
                                                 failed_over_at=now)
            self.registry.set_roles(rt, promoted(rt.spec, p["to"],
                                                 keep_old_master=p["planned"]))
        rt.failover.status = rt.failover.error = None
        self.registry.save(rt)
        ctx.remember(result={
            "master": rt.spec.master, "volume": rt.spec.volume,
            "slaves": [s.server for s in rt.spec.slaves],
            "fenced": sorted(rt.failover.fenced), "promoted_at": p["final_snapshot"],
            "data_loss": rt.failover.data_loss.to_json() if rt.failover.data_loss else None,
            **({"not_mounted": p["not_mounted"]} if "not_mounted" in p else {}),
            **({"tree": p["tree_outcome"]} if "tree_outcome" in p else {})})
        await self._release_stale_holds(ctx, rt)
        if p["was_running"] and self.registry.activity_of(rt) is None:
            self.registry.start_again(rt)
        self.fencing.fence_soon(rt)

    async def _release_stale_holds(self, ctx: ActivityContext, rt: Runtime) -> None:
        """Holds for streams that no longer run this way would pin snapshots forever:
        ``cerssd:<new master>`` (it was a destination) on both sides, and on the old
        master every other destination's tag. Best effort: a held snapshot is only kept."""
        p = ctx.params
        places = [(p["to"], p["target_volume"], {p["to"]})]
        if p["planned"]:
            places.append((p["master"], p["volume"],
                           {p["to"], *(s for s in rt.slaves if s != p["master"])}))
        if self.tree is not None:
            await self.tree.release_stale_holds(ctx, places)
            return
        for server, volume, owners in places:
            try:
                backend = await self.servers.backend(server)
                for snap in await backend.snapshots(volume):
                    if snap.userrefs:
                        for owner in owners:
                            await backend.unpin(snap.name, owner)
            except (BackendError, LinkError) as exc:
                ctx.log.info("stale holds not released", server=server, error=str(exc))

    async def rollback(self, ctx: ActivityContext) -> None:
        """Before promotion: undo the fence and carry on as before. After: finish."""
        p = ctx.params
        rt = self._runtime()
        if not p.get("decided", True):  # it took no step: nothing to undo, nothing to start
            if not ctx.cancel_requested:  # restarted undecided (``_decided``)
                rt.failover.status = FailoverStatus.FAILOVER_ERROR
                rt.failover.error = "failover not carried on: the daemon stopped before " \
                    "its decision was committed; roles unchanged"
                self.registry.save(rt)
            return
        if p.get("promoted"):
            ctx.log.warning("failover past its point of no return: completing it")
            await self._promote(ctx, rt)
            await self._reverse(ctx, rt)
            return
        child = self._live_child(p)
        if child is not None and not self.engine.get(child).record.state.terminal:
            with contextlib.suppress(Exception):
                await self.engine.cancel(child)
            await self.engine.wait(child)
        if p.get("fenced") and self.tree is not None:
            await self.tree.lift_fence(ctx, await self.servers.backend(p["master"]))
            ctx.log.info("fence lifted: the master takes writes again", master=p["master"])
        elif p.get("fenced") and not p.get("master_was_readonly"):
            master = await self.servers.backend(p["master"])
            await master.set_readonly(p["volume"], False)
            ctx.log.info("fence lifted: the master takes writes again", master=p["master"])
        failed = not ctx.cancel_requested
        rt.failover.status = FailoverStatus.FAILOVER_ERROR if failed else None
        rt.failover.error = (f"failover failed at step {p.get('current_step', '?')}; rolled "
                             "back, roles unchanged") if failed else None
        self.registry.save(rt)
        if p["was_running"] and self.registry.activity_of(rt) is None:
            self.registry.start_again(rt)


def register(engine: ActivityEngine, deps: FailoverDeps) -> None:
    engine.register(KIND, lambda r: FailoverWork(r, deps))

