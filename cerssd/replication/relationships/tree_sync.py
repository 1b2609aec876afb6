"""Bringing one slave's copy of a tree up to date, as an activity (kind ``tree-sync``).

The first sync to a slave (after a start, or after something unexpected) lists each
side's tree once and decides, per member, whether the slave already has the cycle's
snapshot; each member that does not gets its own ``replicate`` activity (so a member's
transfer has the whole single-volume contract: verification, holds, resume, link-loss
retries, cancel with rollback), at most ``max_parallel`` at once, parents before children
(a receive creates the last component of a name only). The syncs after it list nothing
and stream each member on from its known base (``tree_steady``); a member new, failing
or refused by ZFS gets its own transfer as in a first sync. A member that
fails is recorded with its reason and the others go on: the relationship is then
``degraded`` and names it; the next cycle tries it again. Progress is members done of
members to send.

A master that runs cerssd itself (``daemon = true``) sends to a remote slave from its own
node (docs/peers.md), in the same two shapes a local master's sync has: a member that
needs a transfer of its own gets a delegated ``replicate`` (one activity per member, as
here for any master); the members streamed on go to the peer as **one** delegated
``member-streams`` request per sync (``flows.member_streams``), not an activity each, so
a cycle of hundreds of members costs one create and one poll a second on the peer, not
hundreds. Both together stay within ``max_parallel`` (``split_slots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ...activity import ActivityRecord, DataRoute, Progress, State, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot_label, validate_volume
from ...storage.values import Snapshot, TreeListing
from ...transport.errors import LinkError
from ..flows import member_streams, replicate, snapshot_prune
from ..flows.member_streams import MemberStream, MemberStreamsRequest, submit_member_streams
from ..flows.replicate import ReplicationRequest, relationship_fields, transfer_route
from ..flows.replicate import submit_replication as submit_transfer
from ..logic.members import ListedDataset, Member, select
from ..logic.plan import PlanMode, ReplicationConflict, plan_replication
from ..logic.retention import to_destroy
from ..logic.tree_labels import labels_of
from ..logic.tree_status import MemberSlave, TreeMember
from ..retry import RetryPolicy
from ..stream.groups import FanoutGroups
from .registry import TREE_SYNC, RelationshipRegistry
from .runtime import Runtime, UnknownRelationship
from .tree_fanout import withdraw_all
from .tree_steady import SteadySync, Step, steady_steps

KIND = TREE_SYNC


def listed(listing: TreeListing) -> list[ListedDataset]:
    return [ListedDataset(d.name, d.guid, d.selector) for d in listing.datasets]


def members_of(rt: Runtime, listing: TreeListing) -> tuple[Member, ...]:
    """The relationship's members among the master's ``listing``."""
    assert rt.spec.selection is not None
    return select(rt.spec.selection, rt.spec.selecting_name, listed(listing))


def tree_runtime(registry: RelationshipRegistry, name: str) -> Runtime:
    """A tree activity's relationship, or why it can no longer run (its activity fails)."""
    try:
        rt = registry.get(name)
    except UnknownRelationship:
        raise ActivityError("its relationship is no longer defined") from None
    if rt.tree is None or rt.spec.selection is None:
        raise ActivityError(f"relationship {rt.name} is not a tree relationship")
    return rt


def submit_sync(engine: ActivityEngine, relationship: str, master: str, slave: str,
                target_root: str, label: str, *, parent: str,
                route: DataRoute = DataRoute.LOCAL) -> ActivityRecord:
    """``route``: how the members' bytes move (``transfer_route``); delegated, the
    master's peer daemon sends them and ``node`` names the master."""
    validate_volume(target_root)
    validate_snapshot_label(label)
    return engine.submit(KIND, volume=target_root, source=master,
                         target=f"{slave}:{target_root}",
                         params={"relationship": relationship, "destination": slave,
                                 "target_volume": target_root, "label": label,
                                 "parent": parent},
                         self_restarting=True, progress=Progress(0, 0, unit="members"),
                         route=route, node=master if route == DataRoute.DELEGATED else None)


def split_slots(max_parallel: int, own: int) -> tuple[int, int]:
    """(slots for the members' own transfers, the width of the delegated batch), which
    run at once and together take at most ``max_parallel``: the own transfers (often a
    new member's big first copy) at most half of them, the batch the rest. With one slot
    and both to do, (1, 0): the batch waits for the own transfers."""
    if not own:
        return 0, max_parallel
    mine = min(own, max(1, max_parallel // 2))
    return mine, max_parallel - mine


class TreeSyncWork:
    def __init__(self, record: ActivityRecord, engine: ActivityEngine,
                 servers: ServerRegistry, registry: RelationshipRegistry,
                 policy: RetryPolicy, groups: FanoutGroups | None = None) -> None:
        self.params = record.params
        self.policy = policy
        self.groups = groups
        self.engine = engine
        self.servers = servers
        self.registry = registry
        self.running: set[str] = set()
        self.member_targets: set[str] = set()

    async def run(self, ctx: ActivityContext) -> None:
        rt = tree_runtime(self.registry, self.params["relationship"])
        assert rt.tree is not None  # tree_runtime says so
        server = self.params["destination"]
        target_root = self.params["target_volume"]
        try:
            src = await self.servers.backend(rt.spec.master)
            dst = await self.servers.backend(server)
            if server in rt.tree.known:
                sent = await self._steady(ctx, rt, src, dst, server, target_root)
            else:
                sent = await self._full(ctx, rt, src, dst, server, target_root)
        except (BackendError, LinkError) as exc:
            code = StatusCode.LINK if isinstance(exc, LinkError) else StatusCode.ERROR
            raise ActivityError(f"tree not synced: {exc}", code) from exc
        finally:
            if self.groups is not None:  # the other slaves' streams need not wait for us
                withdraw_all(rt, self.groups, server)
        failing = [m.name for m in rt.tree.members.values()
                   if (s := m.slaves.get(server)) and s.error]
        ctx.remember(members=len(rt.tree.members), sent=sent, failing=len(failing))
        ctx.log.info("tree sync done", slave=server, sent=sent, failing=len(failing))
        self._again_if_a_cycle_came(ctx, rt, server, target_root)

    async def _full(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                    dst: StorageBackend, server: str, target_root: str) -> int:
        """A sync from one listing of each side's tree (the first after a start, or after
        something unexpected): it learns every member's state on this slave."""
        assert rt.tree is not None and rt.spec.selection is not None
        await self._batches_ended(rt, server)
        src_tree = await src.tree(rt.spec.selection.root,
                                  selector=rt.spec.selection.by_property)
        dst_tree = await _tree_or_empty(dst, target_root)
        members = members_of(rt, src_tree)
        if await self._follow_renames(ctx, rt, dst, dst_tree, target_root):
            dst_tree = await _tree_or_empty(dst, target_root)
        todo = self._plan(rt, server, members, src_tree, dst_tree, target_root,
                          marks=src.capabilities.bookmarks)
        self.member_targets = {m.target(target_root) for m in members}
        ctx.set_progress(0, len(todo), unit="members", estimated=False)
        ctx.log.info("tree sync planned", members=len(members), to_send=len(todo),
                     slave=server, listed=True)
        existing = {d.name for d in dst_tree.datasets}
        await self._own_transfers(ctx, rt, dst, server, [(m, s.name) for m, s in todo],
                                  target_root, existing, [0])
        if await self._prune_slave(ctx, rt, dst, server, target_root):
            rt.tree.known.add(server)
        return len(todo)

    async def _steady(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                      dst: StorageBackend, server: str, target_root: str) -> int:
        """A sync from what the relationship knows (``tree_steady``): no listings."""
        assert rt.tree is not None
        label = self.params["label"]
        if rt.tree.renamed:
            await self._follow_renames(ctx, rt, dst, await _tree_or_empty(
                dst, target_root, snapshots=False), target_root)
        live = {a.record.params.get("member") for a in self.engine.live(replicate.KIND, rt.name)
                if a.record.params.get("destination") == server}
        steps, own = steady_steps(rt, server, label, target_root,
                                  {m for m in live if isinstance(m, str)})
        members = [Member(e.name, e.relative, e.guid) for e in rt.tree.members.values()]
        self.member_targets = {m.target(target_root) for m in members}
        ctx.set_progress(0, len(steps) + len(own), unit="members", estimated=False)
        ctx.log.info("tree sync planned", members=len(members), to_send=len(steps) + len(own),
                     streamed_on=len(steps), own_transfers=len(own), slave=server,
                     listed=False)
        steady = SteadySync(ctx, rt, src, dst, server, target_root, self.policy,
                            self.groups)
        progress = [0]
        existing = {under(target_root, e.relative) for e in rt.tree.members.values()
                    if (s := e.slaves.get(server)) is not None and s.label is not None}
        # The members that need a transfer of their own (a new member's first full copy:
        # often the cycle's biggest stream) start first and alongside the streams, within
        # the same max_parallel: queued behind every other member's stream, a new 1 GiB
        # member waited seconds for them (bench/RESULTS.md, "big member in a tree").
        delegated = self._route(rt, server) == DataRoute.DELEGATED
        own_slots, width = split_slots(rt.spec.max_parallel, len(own)) if delegated \
            else (rt.spec.max_parallel, rt.spec.max_parallel)
        limit = asyncio.Semaphore(own_slots if delegated else rt.spec.max_parallel)
        own_run = asyncio.ensure_future(self._own_transfers(
            ctx, rt, dst, server, [(Member(e.name, e.relative, e.guid), f"{e.name}@{label}")
                                   for e in own], target_root, existing, progress, limit))
        await asyncio.sleep(0)  # it queues its transfers for the slots before the streams
        try:
            if delegated:
                if width < 1:  # one slot: the batch after the own transfers
                    await asyncio.shield(own_run)
                moved, failed = await self._delegated_streams(
                    ctx, rt, server, steps, label, progress, max(1, width))
            else:
                moved, failed = await steady.stream_all(steps, label, progress, limit)
            wrong = await steady.settle(moved, label)
        except BaseException as exc:  # the transfers end before the sync does
            if isinstance(exc, asyncio.CancelledError):
                own_run.cancel()
            await asyncio.gather(own_run, return_exceptions=True)
            raise
        await own_run
        if failed or wrong:
            rt.tree.known.discard(server)  # the next sync lists both trees again
        await self._own_transfers(ctx, rt, dst, server,
                                  [(s.member, f"{s.member.name}@{label}") for s in failed],
                                  target_root, existing, progress)
        await steady.prune(label)
        return len(steps) + len(own)

    def _route(self, rt: Runtime, server: str) -> DataRoute:
        return transfer_route(self.servers, rt.spec.master, server)

    async def _delegated_streams(self, ctx: ActivityContext, rt: Runtime, server: str,
                                 steps: list[Step], label: str, progress: list[int],
                                 width: int) -> tuple[list[Step], list[Step]]:
        """The steps streamed on by the master's peer daemon, as one delegated
        ``member-streams`` activity (this sync its parent); returns (moved, failed) as
        ``SteadySync.stream_all`` does. A batch that failed as a whole (the peer away
        past the retry deadline, refused) fails every step: each then gets its own
        transfer, which reports why."""
        if not steps:
            return [], []
        assert rt.tree is not None and rt.spec.selection is not None
        slave = rt.spec.slave(server)
        req = MemberStreamsRequest(
            source=rt.spec.master, destination=server, root=rt.spec.selection.root,
            items=tuple(MemberStream(f"{s.member.name}@{label}", s.base, s.target)
                        for s in steps),
            max_parallel=width, unmounted=not slave.receive.mount,
            send_properties=rt.spec.send_properties,
            receive_exclude=slave.receive.properties.exclude,
            receive_set=slave.receive.properties.override,
            bandwidth_limit=slave.bandwidth_limit)
        await ctx.checkpoint()
        record = submit_member_streams(self.engine, req, route=DataRoute.DELEGATED,
                                       parent=ctx.record.id, relationship=rt.name)
        ctx.log.info("members' streams delegated", node=rt.spec.master, slave=server,
                     members=len(steps), activity=record.id)
        states = [rt.tree.members[s.member.relative].slaves[server] for s in steps]
        for state in states:
            state.sending = True
        self.running.add(record.id)
        try:
            final = await self.engine.wait(record.id)
        finally:
            self.running.discard(record.id)
            for state in states:
                state.sending = False
        results = final.params.get("results")
        if final.state != State.SUCCEEDED or not isinstance(results, dict):
            why = final.status.message if final.status else str(final.state)
            ctx.log.warning("members' streams not delegated; each gets its own transfer",
                            node=rt.spec.master, error=why)
            return [], list(steps)
        moved = [s for s in steps if s.target in results and results[s.target] is None]
        failed = [s for s in steps if s not in moved]
        for step in failed:
            ctx.log.info("member not streamed on from its base; it gets a transfer of its "
                         "own", member=step.member.name, error=results.get(step.target))
        progress[0] += len(moved)
        ctx.set_progress(progress[0])
        return moved, failed

    async def _batches_ended(self, rt: Runtime, server: str) -> None:
        """A batch of streams to this slave still under way (restarted with this daemon)
        ends before the slave's tree is listed: its receives would look like conflicts."""
        for activity in self.engine.live(member_streams.KIND, rt.name):
            if activity.record.params.get("destination") == server:
                await activity.done.wait()

    async def _own_transfers(self, ctx: ActivityContext, rt: Runtime, dst: StorageBackend,
                             server: str, todo: list[tuple[Member, str]], target_root: str,
                             existing: set[str], progress: list[int],
                             limit: asyncio.Semaphore | None = None) -> None:
        """Each member of ``todo`` (with the snapshot to send) by its own ``replicate``
        activity, ``max_parallel`` at once (or within ``limit``, shared with other
        streams). A receive creates the last component of a name only: a member new on
        the slave waits for its nearest ancestor's transfer when that creates the
        ancestor too. Members the slave has go in any order."""
        limit = limit or asyncio.Semaphore(rt.spec.max_parallel)
        finished = {m.relative: asyncio.Event() for m, _ in todo}
        created = {m.relative for m, _ in todo if m.target(target_root) not in existing}

        async def one(m: Member, snapshot: str) -> None:
            try:
                parent = _nearest_ancestor(m.relative, created)
                if m.relative in created and parent is not None:
                    await finished[parent].wait()
                async with limit:
                    await ctx.checkpoint()
                    await self._member(ctx, rt, dst, server, m, snapshot, target_root,
                                       existing)
            finally:
                finished[m.relative].set()
            progress[0] += 1
            ctx.set_progress(progress[0])
        await asyncio.gather(*(one(m, snap) for m, snap in todo))

    def _again_if_a_cycle_came(self, ctx: ActivityContext, rt: Runtime, server: str,
                               target_root: str) -> None:
        """A cycle that ran while this sync did skipped this slave: its snapshot is
        synced now rather than at the next cycle (an interval later)."""
        assert rt.tree is not None
        label = rt.tree.newest_label
        if server not in rt.tree.skipped or label is None or label == self.params["label"]:
            rt.tree.skipped.discard(server)
            return
        rt.tree.skipped.discard(server)
        record = submit_sync(self.engine, rt.name, rt.spec.master, server, target_root,
                             label, parent=self.params.get("parent", ctx.record.id),
                             route=self._route(rt, server))
        ctx.log.info("a cycle came meanwhile: synced again", label=label,
                     activity=record.id)

    async def _follow_renames(self, ctx: ActivityContext, rt: Runtime, dst: StorageBackend,
                              dst_tree: TreeListing, target_root: str) -> bool:
        """A member renamed on the master is renamed on the slave too, not sent again.
        Returns whether any was."""
        assert rt.tree is not None
        names = {d.name for d in dst_tree.datasets}
        moved = False
        for new, old in list(rt.tree.renamed.items()):
            src_name = under(target_root, old)
            dst_name = under(target_root, new)
            if src_name in names and dst_name not in names:
                try:
                    await dst.create_parents(dst_name)
                    await dst.rename(src_name, dst_name)
                    ctx.log.info("renamed a member's replica as on the master",
                                 old=src_name, new=dst_name)
                except (BackendError, LinkError) as exc:
                    ctx.log.warning("replica not renamed; it will be sent in full",
                                    old=src_name, new=dst_name, error=str(exc))
                    continue
                moved = True
        rt.tree.renamed.clear()
        return moved

    def _plan(self, rt: Runtime, server: str, members: tuple[Member, ...],
              src_tree: TreeListing, dst_tree: TreeListing, target_root: str, *,
              marks: bool = False) -> list[tuple[Member, Snapshot]]:
        """The members this slave lacks the newest snapshot of (with that snapshot).
        With ``marks`` (the source keeps bookmarks, which the tree listing leaves out) a
        member for which the listings show no common snapshot is left to its own
        transfer's plan, which also looks at the bookmarks."""
        assert rt.tree is not None
        todo = []
        for m in members:
            entry = rt.tree.members.setdefault(m.relative, TreeMember(m.relative, m.name, m.guid))
            state = entry.slaves.setdefault(server, MemberSlave())
            ds = src_tree.get(m.name)
            snaps = list(ds.snapshots) if ds else []
            newest = src_tree.newest(m.name, rt.spec.prefix)
            if newest is None:
                continue
            entry.note_newest(newest)
            target = m.target(target_root)
            tds = dst_tree.get(target)
            if self._live_transfer(rt.name, server, m.relative) is not None:
                # restarted with its daemon: it cleans up what its cut-off run left on
                # the slave (which the listing would take for a conflict); followed
                todo.append((m, newest))
                continue
            try:
                plan = plan_replication(
                    snapshot_name=newest.name, source_snapshots=snaps, target_volume=target,
                    target_exists=tds is not None,
                    target_snapshots=list(tds.snapshots) if tds else [], intermediates=True)
            except ReplicationConflict as exc:
                if not marks:
                    state.error = str(exc)
                    continue
                # The listing has no bookmarks: the member's own transfer plans with
                # them (a base whose snapshot was destroyed) and reports a real conflict.
                plan = None
            if plan is None:
                todo.append((m, newest))
                continue
            if plan.mode == PlanMode.UP_TO_DATE:
                state.shares(newest)
                continue
            todo.append((m, newest))
        return todo

    async def _member(self, ctx: ActivityContext, rt: Runtime, dst: StorageBackend,
                      server: str, m: Member, snapshot: str, target_root: str,
                      existing: set[str]) -> None:
        assert rt.tree is not None
        state = rt.tree.members[m.relative].slaves[server]
        target = m.target(target_root)
        parent = target.rpartition("/")[0]
        try:
            # Parents that are no members are made as plain filesystems; a parent that is
            # a member comes only from its own transfer (were it made empty here, its
            # first full copy would find a volume in its way).
            if parent and parent not in existing and "/" in parent \
                    and parent not in self.member_targets:
                await dst.create_parents(target)
        except (BackendError, LinkError) as exc:
            state.error = f"parents of {target} not created: {exc}"
            return
        req = ReplicationRequest(
            snapshot=snapshot, source=rt.spec.master, destination=server,
            target_volume=target, intermediates=True, latest_prefix=rt.spec.prefix,
            retry_deadline=rt.spec.retry_deadline, relationship=rt.name,
            bandwidth_limit=rt.spec.slave(server).bandwidth_limit,
            **relationship_fields(rt.spec, server))
        live = self._live_transfer(rt.name, server, m.relative)
        record = live if live is not None else submit_transfer(
            self.engine, req, member=m.relative, parent=ctx.record.id,
            route=transfer_route(self.servers, req.source, req.destination))
        self.running.add(record.id)
        state.sending = True
        try:
            final = await self.engine.wait(record.id)
        finally:
            self.running.discard(record.id)
            state.sending = False
        if final.state == State.SUCCEEDED:
            existing.add(target)
            received = final.params.get("received")
            if isinstance(received, dict):
                state.guid, state.label = received["guid"], received["label"]
                state.created = float(received["creation"])
            state.error = None
        else:
            state.error = final.status.message if final.status else str(final.state)

    def _live_transfer(self, relationship: str, server: str,
                       member: str) -> ActivityRecord | None:
        """A transfer of this member to this slave still under way: one a daemon killed
        mid-sync restarted by itself. It is followed, not doubled (two receives into one
        target would fail each other)."""
        for activity in self.engine.live(replicate.KIND, relationship):
            p = activity.record.params
            if p.get("member") == member and p.get("destination") == server:
                return activity.snapshot()
        return None

    async def _prune_slave(self, ctx: ActivityContext, rt: Runtime, dst: StorageBackend,
                           server: str, target_root: str) -> bool:
        """The slave's retention for every member, from one more listing, as one prune.
        The listing also tells the cycle labels the slave has (for the steady syncs
        that follow); returns whether it could be made."""
        try:
            tree = await _tree_or_empty(dst, target_root)
        except (BackendError, LinkError) as exc:
            ctx.log.info("slave retention skipped", slave=server, error=str(exc))
            return False
        assert rt.tree is not None
        labels: dict[str, float] = {}
        copies = {under(target_root, rel) for rel in rt.tree.members}
        foreign = False
        for listed_ds in tree.datasets:
            labels_of(listed_ds.snapshots, rt.spec.prefix, labels)
            foreign |= listed_ds.name not in copies and any(
                s.label.startswith(rt.spec.prefix) for s in listed_ds.snapshots)
        if foreign:
            rt.tree.slave_foreign.add(server)
        else:
            rt.tree.slave_foreign.discard(server)
        now = time.time()
        doomed: list[Snapshot] = []
        for entry in rt.tree.members.values():
            ds = tree.get(under(target_root, entry.relative))
            state = entry.slaves.get(server)
            if ds is None or state is None or state.guid is None:
                continue
            doomed += to_destroy(list(ds.snapshots), rt.spec.slave_retention, now=now,
                                 prefix=rt.spec.prefix, protected={state.guid},
                                 keep_min=rt.spec.slave_keep_min)
        if doomed:
            snapshot_prune.submit_prune(self.engine, server, target_root,
                                        [s.name for s in doomed], rt.name,
                                        [s.guid for s in doomed])
            going = {s.name for s in doomed}
            gone = {name.partition("@")[2] for name in going}
            kept = {s.label for d in tree.datasets for s in d.snapshots
                    if s.name not in going}
            labels = {k: v for k, v in labels.items() if k not in gone - kept}
        rt.tree.slave_labels[server] = labels
        return True

    async def rollback(self, ctx: ActivityContext) -> None:
        """Cancelled: cancel (and so roll back) the member transfers under way."""
        for activity_id in list(self.running):
            with contextlib.suppress(Exception):  # already finishing
                await self.engine.cancel(activity_id)


def _nearest_ancestor(relative: str, among: set[str]) -> str | None:
    """The deepest of ``among`` that ``relative`` is below ("" is the root), or None."""
    if not relative:
        return None
    parts = relative.split("/")
    for depth in range(len(parts) - 1, -1, -1):
        candidate = "/".join(parts[:depth])
        if candidate in among:
            return candidate
    return None


def under(root: str, relative: str) -> str:
    return f"{root}/{relative}" if relative else root


async def _tree_or_empty(backend: StorageBackend, root: str, *,
                         snapshots: bool = True) -> TreeListing:
    try:
        return await backend.tree(root, snapshots=snapshots)
    except NotFound:
        return TreeListing(root, ())


def register(engine: ActivityEngine, servers: ServerRegistry,
             registry: RelationshipRegistry, policy: RetryPolicy | None = None,
             groups: FanoutGroups | None = None) -> None:
    engine.register(KIND, lambda r: TreeSyncWork(r, engine, servers, registry,
                                                 policy or RetryPolicy(), groups))
