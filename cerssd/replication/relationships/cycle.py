"""One relationship's life: a cycle per schedule tick, forever (progress 0 of 0).

A cycle takes a snapshot on the master and brings every slave up to it:

1. retention on the master first, while no stream reads from it, sparing every
   slave's newest common base (and skipped altogether while one is unknown);
2. the snapshot, named ``PREFIX + UTC time``; its name is journaled *before* it is
   made, so a daemon killed in between uses it on restart instead of making another;
3. one child ``replicate`` activity per slave that has no transfer under way (a
   slave that is still retrying is not given a second one: its transfer follows
   the newest snapshot, so after an outage it catches up in one ``-I`` incremental);
4. slaves that need the very same stream (same snapshot, base and stream options) are
   put in one fan-out group: one ``zfs send`` feeds them all.

The cycle does not wait for its transfers: a slave that is down must not hold the
others back. Each cycle (and the catch-up at start) first takes a turn at the daemon's
cycle gate (``cycle_gate``), so only ``max_concurrent_cycles`` run at once. What the
transfers achieve is recorded as they finish (``reactions.Reactions``).

If the master cannot be reached the relationship reports ``retrying`` with the
link's health, backs off, and tries again; it never fails on a lost link.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from functools import partial

from ...activity import ActivityRecord, DataRoute, LinkCondition, LinkHealth, State, StatusCode
from ...engine import Activity, ActivityContext, ActivityEngine, ActivityError
from ...hooks import SnapshotSkipped, around_snapshot
from ...objectstore.client import StoreError
from ...objectstore.stores import Stores
from ...servers import ServerRegistry, ServerUnavailable
from ...storage.errors import BackendError
from ...storage.interface import StorageBackend
from ...storage.values import Snapshot
from ...transport.errors import LinkError
from ...volume_states import (
    BACKING_UP,
    REPLICATING,
    VolumeStates,
    backup_holds,
    cycle_holds,
    replication_holds,
)
from ..flows.backup import BackupRequest, plan_backup, submit_backup
from ..flows.replicate import (
    ReplicationRequest,
    make_plan,
    relationship_fields,
    stream_options,
    transfer_route,
)
from ..flows.replicate import submit_replication as submit_transfer
from ..logic.plan import PlanMode, ReplicationConflict
from ..retry import RetryPolicy
from ..stream.fanout import FanoutGroup
from ..stream.groups import FanoutGroups, StreamKey
from .cycle_gate import CycleGate
from .fencing import Fencing
from .registry import OWN_UPLOADS, RelationshipRegistry
from .runtime import KIND, RelationshipError, Runtime, SnapshotOutcome
from .tree import PolicyLabels, TreeCycle, cycle_label, no_policy_labels
from .upkeep import Upkeep

#: Seconds a relationship that follows its snapshot policy waits for the policy's next
#: run before a cycle of its own (a slave left behind is caught up then at the latest).
FOLLOW_RECHECK = 3600.0


@dataclass(frozen=True)
class CycleDeps:
    """What a relationship's cycles act on and through, handed in by the daemon."""

    engine: ActivityEngine
    servers: ServerRegistry
    registry: RelationshipRegistry
    upkeep: Upkeep
    fencing: Fencing
    #: A stateful volume: one activity at a time.
    volume_states: VolumeStates
    groups: FanoutGroups
    #: None when no object store is configured (then no relationship names one).
    stores: Stores | None
    policy: RetryPolicy
    gate: CycleGate
    #: A snapshot policy's labels on its server (label -> creation), None while unknown:
    #: what a tree replicating the policy's snapshots syncs to.
    policy_labels: PolicyLabels = no_policy_labels


class RelationshipWork:
    def __init__(self, record: ActivityRecord, deps: CycleDeps) -> None:
        self.name: str = record.params["relationship"]
        self.engine = deps.engine
        self.servers = deps.servers
        self.registry = deps.registry
        self.upkeep = deps.upkeep
        self.fencing = deps.fencing
        self.volume_states = deps.volume_states
        self.groups = deps.groups
        self.stores = deps.stores
        self.policy = deps.policy
        self.gate = deps.gate
        self.tree = TreeCycle(deps.engine, deps.servers, deps.registry, deps.groups,
                              deps.policy.stall_timeout, deps.policy_labels)
        self.failures = 0
        #: This activity laid the shared facts of a previous leader over its runtime.
        self.took_over = False

    async def run(self, ctx: ActivityContext) -> None:
        rt = await self._lead(ctx)
        if rt is None:
            raise ActivityError(f"relationship {self.name} is no longer defined",
                                StatusCode.NOT_FOUND, "not-found")
        if rt.stopped:  # stopped by the manager that led it before (a shared fact)
            ctx.log.info("relationship stopped by its previous leader; not run",
                         relationship=self.name)
            return
        rt.activity_id = ctx.record.id
        await self._keep_pause(ctx, rt)
        async with self._turn(ctx, rt):
            await self.upkeep.refresh_all(rt)
        await ctx.checkpoint()  # paused: no catch-up transfer before it is resumed
        async with self._turn(ctx, rt):
            await self._catch_up(ctx, rt)
        while True:
            await ctx.checkpoint()
            if not ctx.params.get("cycle_snapshot"):
                await self._wait_for_tick(ctx, rt)
                await ctx.checkpoint()
                if rt.catch_up_due:  # woken for a slave left behind, not for a cycle
                    rt.catch_up_due = False
                    async with self._turn(ctx, rt):
                        await self._catch_up(ctx, rt)
                    continue
            try:
                async with self._turn(ctx, rt):
                    await self._cycle(ctx, rt)
            except (ServerUnavailable, LinkError, BackendError) as exc:
                await self._master_trouble(ctx, rt, exc)
            else:
                self.failures = 0

    async def _keep_pause(self, ctx: ActivityContext, rt: Runtime) -> None:
        """The remembered pause holds: a manager that takes over a paused relationship
        suspends its own activity (and one that took over a relationship resumed
        elsewhere runs it, whatever its own journal said of its activity)."""
        suspended = ctx.record.state == State.SUSPENDED
        if rt.paused and not suspended:
            ctx.log.info("relationship paused (a remembered fact); its cycles wait for "
                         "a resume", relationship=self.name)
            await self.engine.suspend(ctx.record.id)
        elif suspended and not rt.paused and self.took_over:
            await self.engine.resume(ctx.record.id)

    async def _lead(self, ctx: ActivityContext) -> Runtime | None:
        """The relationship once this daemon leads it (at once when it runs alone); in a
        cluster, with the facts its previous leader shared laid over it."""
        shared = await self.registry.leadership.lead(self.name)
        if shared is None:  # alone, or the first leader ever: this daemon's facts hold
            self.registry.stale.discard(self.name)
            return self.registry.runtimes.get(self.name)
        ctx.log.info("leading: taking over the shared state", relationship=self.name)
        self.took_over = True
        rt = self.registry.take_over(self.name, shared)
        if rt is not None and ctx.params.get("cycle_snapshot") != rt.pending_cycle:
            # The shared label is the truth: the last leader's unfinished cycle, or none
            # (a label this daemon journaled when it last led was finished by another).
            ctx.remember(cycle_snapshot=rt.pending_cycle)
        return rt

    def _turn(self, ctx: ActivityContext, rt: Runtime) -> AbstractAsyncContextManager[None]:
        """A turn at the daemon's cycle gate (``max_concurrent_cycles``); while the cycle
        waits for it, the relationship's status says since when."""
        def waiting(queued: bool) -> None:
            rt.cycle_waiting_since = time.time() if queued else None
            if queued:
                ctx.log.info("cycle waits for its turn", running=self.gate.running,
                             waiting=self.gate.waiting, limit=self.gate.limit)
        return self.gate.turn(waiting)

    async def _catch_up(self, ctx: ActivityContext, rt: Runtime) -> None:
        """On (re)start: slaves behind the newest snapshot and with no transfer get one now.

        After a cancelled relationship is resumed, or a transfer gave up while the
        daemon was down, waiting a whole interval would leave a standby stale for no
        reason; no new snapshot is needed for that.
        """
        if rt.newest is None or rt.spec.is_tree:
            return  # a tree's slaves catch up at its next cycle
        name, guid = rt.newest
        behind = {s for s, status in rt.slaves.items() if status.last_snapshot_guid != guid}
        behind |= {store for store, base in rt.store_bases.items() if base != guid}
        if not behind:
            return
        try:
            master = await self.servers.backend(rt.spec.master)
            await self._start_transfers(ctx, rt, master, name, only=behind)
        except (ServerUnavailable, LinkError, BackendError) as exc:
            ctx.log.info("catch-up skipped; the next cycle will do", error=str(exc))

    async def _wait_for_tick(self, ctx: ActivityContext, rt: Runtime) -> None:
        """Until the schedule's next tick, or sync-now (which wakes the activity). A new
        relationship starts at once: a standby that waits for the first cron slot is no
        standby. A reload that changed the schedule wakes it too (``rt.rescheduled``):
        the wait is computed again under the new schedule."""
        while True:
            now = time.time()
            if rt.schedule is None:  # follows its policy: woken by each of its runs
                rt.rescheduled = False
                rt.next_cycle_at = now if rt.last_cycle_at is None else None
                await ctx.sleep(0.0 if rt.last_cycle_at is None else FOLLOW_RECHECK)
                return
            rt.next_cycle_at = now if rt.last_cycle_at is None \
                else rt.schedule.next_after(rt.last_cycle_at, now)
            # Also at 0 s: a sync-now that came while the last cycle ran is used up here.
            await ctx.sleep(max(0.0, rt.next_cycle_at - now))
            if not rt.rescheduled or rt.catch_up_due:
                return
            rt.rescheduled = False  # woken by a reload's new schedule: wait for it instead

    async def _master_trouble(self, ctx: ActivityContext, rt: Runtime,
                              exc: Exception) -> None:
        """Report the master's problem and back off; the next try is a fresh cycle."""
        self.failures += 1
        permanent = getattr(exc, "permanent", False)
        rt.last_error = f"cycle failed on {rt.spec.master}: {exc}"
        delay = min(self.policy.max_interval, 2.0 ** min(self.failures, 10))
        ctx.log.warning("relationship cycle failed; retrying", error=str(exc),
                        attempt=self.failures, retry_in=delay, permanent=permanent)
        link = self.servers.links.get(rt.spec.master)
        if link is not None and not permanent:
            ctx.link_lost(LinkHealth(server=rt.spec.master, state=LinkCondition.RETRYING,
                                     since=link.since, attempt=self.failures,
                                     next_try_at=time.time() + delay, last_error=str(exc)))
        await ctx.sleep(delay)

    async def _cycle(self, ctx: ActivityContext, rt: Runtime) -> None:
        started = time.time()  # the schedule counts from a cycle's start
        self.fencing.fence_soon(rt)  # an old master that answers again stays read-only
        master = await self.servers.backend(rt.spec.master)
        if ctx.record.state == State.RETRYING:
            ctx.link_up(rt.spec.master)
        if rt.spec.is_tree:
            try:
                label = await self.tree.run(ctx, rt, master)
            except SnapshotSkipped as exc:
                self._skipped(ctx, rt, started, exc)
                return  # a tree's slaves catch up at its next cycle
            self._cycle_done(ctx, rt, started,
                             f"{rt.spec.volume}@{label}" if label else None)
            return
        existing = await master.snapshots(rt.spec.volume)
        if rt.spec.snapshots is not None:
            await self._follow_policy(ctx, rt, master, existing, started)
            return
        await self.upkeep.prune_master(rt, existing)
        try:
            snap = await self._snapshot(ctx, rt, master, existing)
        except SnapshotSkipped as exc:
            self._skipped(ctx, rt, started, exc)
            await self._catch_up(ctx, rt)  # slaves behind the previous snapshot still go
            return
        rt.newest = (snap.name, snap.guid)
        listed = existing if any(s.name == snap.name for s in existing) else [*existing, snap]
        await self._start_transfers(ctx, rt, master, snap.name, listed=listed)
        self._cycle_done(ctx, rt, started, snap.name)

    async def _follow_policy(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend,
                             existing: list[Snapshot], started: float) -> None:
        """A cycle of a relationship replicating a policy's snapshots: no snapshot and no
        master pruning (the policy's own); the slaves and stores not yet at the policy's
        newest snapshot get a transfer to it."""
        mine = [s for s in existing if s.label.startswith(rt.spec.prefix)]
        if not mine:
            ctx.log.info("no snapshot of the policy yet", policy=rt.spec.snapshots)
            self._cycle_done(ctx, rt, started, None)
            return
        snap = mine[-1]
        rt.newest = (snap.name, snap.guid)
        behind = {s for s, status in rt.slaves.items() if status.last_snapshot_guid != snap.guid}
        behind |= {store for store, base in rt.store_bases.items() if base != snap.guid}
        if behind:
            await self._start_transfers(ctx, rt, master, snap.name, only=behind,
                                        listed=existing)
        self._cycle_done(ctx, rt, started, snap.name)

    def _cycle_done(self, ctx: ActivityContext, rt: Runtime, started: float,
                    snapshot: str | None) -> None:
        rt.last_cycle_at, rt.last_error = started, None
        rt.pending_cycle = None
        rt.cycles += 1
        ctx.remember(cycle_snapshot=None, cycles=rt.cycles)
        self.registry.save(rt)
        ctx.log.info("relationship cycle started its transfers", snapshot=snapshot,
                     cycle=rt.cycles)

    def _skipped(self, ctx: ActivityContext, rt: Runtime, started: float,
                 exc: SnapshotSkipped) -> None:
        """The ``pre`` hook failed and the relationship skips: the cycle ends without a
        snapshot, counted and shown (``last_hooks``, ``skipped_cycles``, ``last_error``)
        rather than failed; the next tick comes as scheduled with a fresh label."""
        label = ctx.params.get("cycle_snapshot")
        hooks = rt.note_hooks(label if isinstance(label, str) else None,
                              SnapshotOutcome.SKIPPED, exc.runs)
        rt.last_cycle_at = started
        rt.pending_cycle = None
        rt.last_error = str(exc)
        ctx.remember(cycle_snapshot=None, last_hooks=hooks, skipped_cycles=rt.skipped_cycles)
        self.registry.save(rt)
        ctx.log.warning("relationship cycle skipped its snapshot", error=str(exc),
                        snapshot_label=label, skipped_cycles=rt.skipped_cycles)

    async def _claim_cycle(self, rt: Runtime, label: str) -> None:
        """Have the cycle's label accepted before its snapshot is made: in a cluster a
        manager that lost the lead (paused past its lease, cut off) is refused here and
        makes no snapshot; one that takes over finds the label and finishes this cycle."""
        rt.pending_cycle = label
        try:
            await self.registry.commit(rt)
        except RelationshipError as exc:
            raise ActivityError(str(exc), StatusCode.CONFLICT, "not-leader") from exc

    async def _snapshot(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend,
                        snapshots: list[Snapshot]) -> Snapshot:
        """The cycle's snapshot, with the relationship's hooks around it. Its label is
        journaled before the hooks run: a restart that finds the snapshot made uses it
        (and runs no hook again); one that does not runs ``pre`` again and makes it."""
        existing = {s.label: s for s in snapshots}
        label = ctx.params.get("cycle_snapshot")
        if isinstance(label, str) and label in existing:
            return existing[label]  # made before a restart: used, not made again
        if not isinstance(label, str):
            label = cycle_label(rt.spec.prefix, time.time(), existing)
            ctx.remember(cycle_snapshot=label)
            await self._claim_cycle(rt, label)
        snap, runs = await around_snapshot(
            rt.spec.hooks, volumes=[rt.spec.volume], label=label, server=rt.spec.master,
            take=partial(master.create_snapshot, rt.spec.volume, label))
        ctx.log.info("snapshot taken", snapshot=snap.name)
        if runs:
            ctx.remember(last_hooks=rt.note_hooks(label, SnapshotOutcome.TAKEN, runs))
        return snap

    async def _start_transfers(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend,
                               snapshot: str, only: set[str] | None = None,
                               listed: list[Snapshot] | None = None) -> None:
        """A transfer per slave and a backup per object store, none twice at once.
        ``listed``: the master's snapshots of the volume, when the cycle has them."""
        for old in rt.group_ids:  # the last cycle's groups: their members have joined
            self.groups.discard(old)
        busy = {**self.registry.transfers(rt.name), **self.registry.backups(rt.name)}
        wanted = [name for name in (*(s.server for s in rt.spec.slaves), *rt.spec.stores)
                  if name not in busy and (only is None or name in only)]
        states = self.volume_states  # a stateful volume: one activity at a time
        wanted = states.admit(wanted, partial(cycle_holds, rt.spec), rt.name, ctx.log)
        requests = [self._request(rt, s, snapshot) for s in wanted if s not in rt.spec.stores]
        backups = [self._backup(rt, s, snapshot, self._full_due(rt, s))
                   for s in wanted if s in rt.spec.stores]
        routes = {r.destination: transfer_route(self.servers, r.source, r.destination)
                  for r in requests}
        # Work a peer master's own cerssd does cannot share a send made here (docs/peers.md).
        peer_master = self.servers.delegates(rt.spec.master)
        groups = await self._groups(
            rt, master, [r for r in requests if routes[r.destination] != DataRoute.DELEGATED],
            [] if peer_master else backups, listed) if rt.spec.fanout else {}
        rt.group_ids = sorted(set(groups.values()))
        for req in requests:
            states.try_submit(replication_holds(req), REPLICATING, partial(
                submit_transfer, self.engine,
                replace(req, fanout_group=groups.get(req.destination)), parent=ctx.record.id,
                route=routes[req.destination]),
                ctx.log)
        for b in backups:
            try:
                assert self.stores is not None  # the spec names configured stores
                states.try_submit(backup_holds(b), BACKING_UP, partial(
                    submit_backup, self.engine, self.servers, self.stores,
                    replace(b, fanout_group=groups.get(b.store))), ctx.log)
            except ActivityError as exc:
                rt.last_error = f"backup to {b.store} not started: {exc.message}"
                ctx.log.warning("backup not started", store=b.store, error=exc.message)

    def _request(self, rt: Runtime, server: str, snapshot: str) -> ReplicationRequest:
        slave = rt.spec.slave(server)
        return ReplicationRequest(
            snapshot=snapshot, source=rt.spec.master, destination=server,
            target_volume=slave.target_volume, intermediates=True,
            bandwidth_limit=slave.bandwidth_limit, latest_prefix=rt.spec.prefix,
            retry_deadline=rt.spec.retry_deadline, relationship=rt.name, path=slave.path,
            **relationship_fields(rt.spec, server))

    @staticmethod
    def _backup(rt: Runtime, store: str, snapshot: str, full: bool = False) -> BackupRequest:
        return BackupRequest(snapshot=snapshot, server=rt.spec.master, store=store,
                             relationship=rt.name, latest_prefix=rt.spec.prefix,
                             intermediates=True, force_full=full)

    def _full_due(self, rt: Runtime, store: str) -> bool:
        """The store's ``full_every`` (``Runtime.full_backup_due``)."""
        if self.stores is None or store not in self.stores.stores:
            return False
        return rt.full_backup_due(store, self.stores.get(store).config.full_every)

    async def _groups(self, rt: Runtime, master: StorageBackend,
                      requests: list[ReplicationRequest],
                      backups: list[BackupRequest],
                      listed: list[Snapshot] | None = None) -> dict[str, str]:
        """Slaves and stores needing the same stream, grouped: member -> group id.
        Each slave's plan uses the cycle's listing of the master (``listed``) rather than
        one of its own: each listing costs ZFS a visit to every snapshot kept."""
        by_key: dict[StreamKey, list[str]] = {}
        bases: dict[StreamKey, str | None] = {}
        snapshot = requests[0].snapshot if requests else backups[0].snapshot if backups \
            else None
        planned = [(r.destination, await self._stream_key(master, r, listed))
                   for r in requests]
        planned += [(b.store, await self._backup_key(master, b)) for b in backups]
        for member, found in planned:
            if found is not None:
                key, bases[key] = found
                by_key.setdefault(key, []).append(member)
        members: dict[str, str] = {}
        for key, names in by_key.items():
            if len(names) < 2 or snapshot is None:
                continue
            group_id = uuid.uuid4().hex[:12]
            sender = master.send(snapshot, bases[key], intermediates=key.intermediates,
                                 options=key.options)
            self.groups.add(group_id, key, FanoutGroup(
                sender, names, buffer_limit=rt.spec.fanout_buffer,
                stall_timeout=self.policy.stall_timeout))
            members.update(dict.fromkeys(names, group_id))
        return members

    async def _backup_key(self, master: StorageBackend, req: BackupRequest,
                          ) -> tuple[StreamKey, str | None] | None:
        """The stream this store's backup needs now (and its base's name), or None."""
        stores = self.stores
        if stores is None:
            return None
        try:
            plan = await plan_backup(master, stores.get(req.store), req)
        except (StoreError, BackendError, LinkError):
            return None  # its backup plans (and reports) on its own
        if plan.done:
            return None
        return plan.key, plan.base.name if plan.base else None

    async def _stream_key(self, master: StorageBackend, req: ReplicationRequest,
                          listed: list[Snapshot] | None = None,
                          ) -> tuple[StreamKey, str | None] | None:
        """The stream this slave needs now (and its base's name), or None if unknown here."""
        try:
            dst = await self.servers.backend(req.destination)
            plan = await make_plan(req, master, dst, source_snaps=listed)
            options = await stream_options(master, dst, plan.snapshot.volume,
                                           properties=req.send_properties)
        except (ReplicationConflict, BackendError, LinkError):
            return None  # its transfer plans (and reports) on its own
        if plan.mode == PlanMode.UP_TO_DATE or plan.overwrite or plan.chain:
            return None  # a chain of -i steps is several streams: each slave sends its own
        key = StreamKey(plan.snapshot.guid, plan.base.guid if plan.base else None, options,
                        plan.intermediates)
        return key, plan.base.name if plan.base else None

    async def rollback(self, ctx: ActivityContext) -> None:
        """Cancelled by the operator: cancel (and so roll back) its running transfers,
        all at once (a tree has several per slave, each rollback a few seconds)."""
        if not ctx.cancel_requested:
            return  # failed or checkpointed at shutdown: transfers carry on / restart

        async def cancel(transfer: Activity) -> None:
            try:
                await self.engine.cancel(transfer.id)
            except Exception as exc:  # already finishing: nothing left to cancel
                ctx.log.info("transfer not cancelled", activity=transfer.id, error=str(exc))
            await transfer.done.wait()
        # a backup carries on (as before): its upload is its own
        await asyncio.gather(*(cancel(t) for t in self.registry.streams(self.name)
                               if t.record.kind not in OWN_UPLOADS))


def register(engine: ActivityEngine, deps: CycleDeps) -> None:
    engine.register(KIND, lambda r: RelationshipWork(r, deps))
