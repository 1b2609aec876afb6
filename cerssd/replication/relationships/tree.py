"""A tree relationship's cycle: one listing, one atomic snapshot, one sync per slave.

A tree has hundreds of members, so everything that one command can serve for all of them
is asked once per cycle and server, never per member:

1. one recursive listing of the master's tree (datasets, guids, the selecting property
   and every snapshot) gives the members (``logic.members.select``) and what vanished;
2. retention of every member from that same listing, one ``prune`` activity for all;
3. one snapshot of every member, atomically (``snapshot_tree``), its label journaled
   before it is made so a restarted daemon uses it instead of making another, and one
   ``zfs get`` of the new snapshots' guids;
4. per slave with no sync under way, one ``tree-sync`` activity (``tree_sync``) that
   brings each member up to date with bounded parallelism.

Only the first cycle after a start (or after something unexpected) lists snapshots: a
listing visits every snapshot of every member, which at 1,000 members with weeks of
history takes longer than a cycle may. The cycles after it list the datasets alone and
keep the tree's cycle labels themselves (``TreeStatus.master_labels``); retention then
drops a label from all members with one recursive destroy (``logic.tree_labels``).

Like a single volume's cycle, it does not wait for the slaves: a slave that is down must
not hold back the others or the next cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from functools import partial

from ...activity import DataRoute, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...hooks import around_snapshot
from ...servers import ServerRegistry
from ...storage.errors import NotFound
from ...storage.interface import StorageBackend
from ...storage.values import TreeListing
from ..flows import snapshot_prune
from ..flows.replicate import transfer_route
from ..logic.members import Member, unmatched_patterns
from ..logic.retention import Verdict, prune_plan
from ..logic.tree_backup_facts import base_labels, bases
from ..logic.tree_labels import labels_doomed, labels_of
from ..logic.tree_status import TreeMember, TreeStatus
from ..stream.groups import FanoutGroups
from .registry import RelationshipRegistry
from .runtime import RelationshipError, Runtime, SnapshotOutcome
from .tree_backup import KIND as BACKUP_KIND
from .tree_backup import start_tree_backups
from .tree_fanout_plan import plan_fanout
from .tree_steady import drop_labels
from .tree_sync import KIND as SYNC_KIND
from .tree_sync import listed, members_of, submit_sync


class TreeNotFound(NotFound):
    """The tree's root does not exist on the master."""


#: A snapshot policy's labels on its server (label -> creation), or None while unknown.
PolicyLabels = Callable[[str], Mapping[str, float] | None]


def no_policy_labels(name: str) -> Mapping[str, float] | None:
    """No policy known (the fast tests' daemon): a full listing tells the labels."""
    return None


def note_members(status: TreeStatus, members: tuple[Member, ...], listing: TreeListing,
                 prefix: str, now: float) -> list[str]:
    """Bring ``status`` in line with the master's listing; returns what changed, for the
    log: members new, gone (destroyed or out of the selection) and renamed (same guid)."""
    by_guid = {m.guid: rel for rel, m in status.members.items()}
    current = {m.relative for m in members}
    changes = []
    fresh: dict[str, TreeMember] = {}
    for m in members:
        old = status.members.get(m.relative)
        if old is None and (was := by_guid.get(m.guid)) is not None and was not in current:
            old = status.members[was]
            status.renamed[m.relative] = was
            changes.append(f"renamed {was} -> {m.relative}")
        elif old is None:
            changes.append(f"new {m.relative or '.'}")
        entry = old or TreeMember(m.relative, m.name, m.guid)
        entry.relative, entry.name, entry.guid = m.relative, m.name, m.guid
        newest = listing.newest(m.name, prefix)
        if newest is not None:
            entry.note_newest(newest)
        fresh[m.relative] = entry
        status.gone.pop(m.relative, None)
    renamed_from = set(status.renamed.values())
    for rel in status.members.keys() - fresh.keys():
        if rel not in renamed_from:
            status.gone[rel] = now
            changes.append(f"gone {rel or '.'}")
    status.members = fresh
    return changes


def master_doomed(rt: Runtime, members: tuple[Member, ...], listing: TreeListing,
                  now: float) -> list[Verdict]:
    """Every member's snapshots its grid no longer keeps (and why), sparing each slave's
    base and keeping ``keep_min`` of each member's own."""
    assert rt.tree is not None
    doomed: list[Verdict] = []
    for m in members:
        ds = listing.get(m.name)
        entry = rt.tree.members.get(m.relative)
        if ds is None or entry is None:
            continue
        protected = {s.guid for s in entry.slaves.values() if s.guid is not None}
        in_stores = bases(rt.tree.backups, rt.spec.stores, m.relative)
        if len(entry.slaves) < len(rt.spec.slaves) or in_stores is None:
            continue  # a slave's or store's base is unknown: keep everything for now
        protected |= in_stores
        doomed += prune_plan(list(ds.snapshots), rt.spec.retention, now=now,
                             prefix=rt.spec.prefix, protected=protected,
                             keep_min=rt.spec.keep_min)
    return doomed


class TreeCycle:
    """The steps of one cycle of a tree relationship."""

    async def _claim(self, rt: Runtime, label: str) -> None:
        """The cycle's label accepted before its snapshot (as ``cycle._claim_cycle``): in
        a cluster, a manager that lost the lead makes no snapshot of the tree."""
        rt.pending_cycle = label
        try:
            await self.registry.commit(rt)
        except RelationshipError as exc:
            raise ActivityError(str(exc), StatusCode.CONFLICT, "not-leader") from exc

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 registry: RelationshipRegistry, groups: FanoutGroups | None = None,
                 stall_timeout: float | None = None,
                 policy_labels: PolicyLabels = no_policy_labels) -> None:
        self.engine = engine
        self.servers = servers
        self.registry = registry
        self.groups = groups
        self.stall_timeout = stall_timeout
        self.policy_labels = policy_labels

    async def run(self, ctx: ActivityContext, rt: Runtime,
                  master: StorageBackend) -> str | None:
        """The cycle's steps; returns the snapshot label it took (or found made), or,
        replicating a policy's snapshots, the policy's newest (None: none yet)."""
        sel = rt.spec.selection
        assert sel is not None and rt.tree is not None
        now = time.time()
        whole = rt.tree.master_labels is None or rt.tree.relist
        try:
            listing = await master.tree(sel.root, selector=sel.by_property, snapshots=whole)
        except NotFound:
            raise TreeNotFound(f"{sel.root} does not exist on {rt.spec.master}") from None
        members = members_of(rt, listing)
        changes = note_members(rt.tree, members, listing, rt.spec.prefix, now)
        rt.tree.unmatched = unmatched_patterns(sel, listed(listing))
        if changes:
            ctx.log.info("tree members changed", changes=changes[:50], total=len(changes))
        if rt.tree.unmatched:
            ctx.log.warning("patterns match nothing in the tree", patterns=rt.tree.unmatched)
        syncing = self.engine.live(SYNC_KIND, rt.name)
        # no retention while a stream reads from the master (-I carries intermediates)
        streaming = bool(syncing or self.engine.live(BACKUP_KIND, rt.name))
        # A policy's snapshots are the policy's to prune (``policies.guard``).
        own = rt.spec.snapshots is None
        if whole:
            rt.tree.master_labels = {}
            for ds in listing.datasets:
                labels_of(ds.snapshots, rt.spec.prefix, rt.tree.master_labels)
            rt.tree.relist = False
            if not streaming and own:
                doomed = master_doomed(rt, members, listing, now)
                if doomed:
                    snapshot_prune.submit_prune(
                        self.engine, rt.spec.master, sel.root,
                        [v.snapshot.name for v in doomed], rt.name,
                        [v.snapshot.guid for v in doomed])
        elif not streaming and own:
            await self._drop_labels(ctx, rt, master, members, now)
        assert rt.tree.master_labels is not None
        if own:
            label = ctx.params.get("cycle_snapshot")
            if not isinstance(label, str):
                label = cycle_label(rt.spec.prefix, now, rt.tree.master_labels)
                ctx.remember(cycle_snapshot=label)
                await self._claim(rt, label)
        elif (label := self._policy_newest(rt)) is None:
            ctx.log.info("no snapshot of the policy yet", policy=rt.spec.snapshots)
            return None
        if members:
            if own:
                await self._snapshot(ctx, rt, master, members, label)
                rt.tree.master_labels.setdefault(label, now)
            await self._note_newest(rt, master, members, label)
        if members and self.groups is not None:  # a slave busy now is left out of it
            still = {a.record.params.get("destination")
                     for a in self.engine.live(SYNC_KIND, rt.name)}
            # A slave the master's peer daemon sends to cannot share a send made here.
            still |= {s.server for s in rt.spec.slaves
                      if self._route(rt, s.server) == DataRoute.DELEGATED}
            await plan_fanout(rt, self.groups, self.servers, master, label,
                              [s.server for s in rt.spec.slaves if s.server not in still],
                              stall_timeout=self.stall_timeout)
        # Asked again now, not before the snapshot: a sync that ended meanwhile found no
        # newer label to sync again, so its slave is not busy (no await from here on).
        busy = {a.record.params.get("destination")
                for a in self.engine.live(SYNC_KIND, rt.name)}
        rt.tree.newest_label = label
        for slave in rt.spec.slaves:
            if not members:
                break
            if slave.server in busy:
                rt.tree.skipped.add(slave.server)  # its sync starts again when it ends
                continue
            submit_sync(self.engine, rt.name, rt.spec.master, slave.server,
                        slave.target_volume, label, parent=ctx.record.id,
                        route=self._route(rt, slave.server))
        if members:
            start_tree_backups(self.engine, self.servers, rt, label, parent=ctx.record.id)
        return label


    def _route(self, rt: Runtime, slave: str) -> DataRoute:
        """How a slave's members move: delegated from a peer master (docs/peers.md)."""
        return transfer_route(self.servers, rt.spec.master, slave)

    def _policy_newest(self, rt: Runtime) -> str | None:
        """The newest label of the policy whose snapshots the tree replicates: from the
        policy's own record of its labels (no listing of the tree's snapshots), else from
        this cycle's full listing."""
        assert rt.tree is not None and rt.spec.snapshots is not None
        known = self.policy_labels(rt.spec.snapshots)
        if known is not None:
            rt.tree.master_labels = dict(known)  # bounded by the policy's grid
        labels = rt.tree.master_labels or {}
        if not labels:
            return None
        return max(labels.items(), key=lambda item: (item[1], item[0]))[0]

    @staticmethod
    async def _snapshot(ctx: ActivityContext, rt: Runtime, master: StorageBackend,
                        members: tuple[Member, ...], label: str) -> None:
        """Every member's snapshot, atomically, with the relationship's hooks around it.

        A label the master already has (a cycle resumed after a restart: the first cycle
        lists every snapshot) was made before: it is completed where members lack it,
        and no hook runs again. Raises ``SnapshotSkipped`` when ``pre`` fails."""
        assert rt.tree is not None and rt.tree.master_labels is not None
        sel = rt.spec.selection
        assert sel is not None
        names = [m.name for m in members]
        take = partial(master.snapshot_tree, sel.root, label, names)
        if label in rt.tree.master_labels:
            await take()
        else:
            _, runs = await around_snapshot(rt.spec.hooks, volumes=names, label=label,
                                            take=take, server=rt.spec.master)
            if runs:
                ctx.remember(last_hooks=rt.note_hooks(label, SnapshotOutcome.TAKEN, runs))
        ctx.log.info("tree snapshot taken", label=label, members=len(members))

    @staticmethod
    async def _note_newest(rt: Runtime, master: StorageBackend, members: tuple[Member, ...],
                           label: str) -> None:
        """Each member's newest snapshot is the one just taken: its guid from one
        ``zfs get`` of those names (a member without it, destroyed meanwhile, has none)."""
        assert rt.tree is not None
        facts = await master.snapshot_facts([f"{m.name}@{label}" for m in members])
        for m in members:
            entry = rt.tree.members[m.relative]
            snap = facts.get(f"{m.name}@{label}")
            if snap is not None:
                entry.note_newest(snap)
            else:
                entry.newest_guid = None

    async def _drop_labels(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend,
                           members: tuple[Member, ...], now: float) -> None:
        """Retention by label (``logic.tree_labels``): a label no slave still needs as
        a member's base goes from every member at once. Anything refused (someone
        else's hold) sends the next cycle back to a full listing, whose per-snapshot
        prune keeps what is held and says whose hold keeps it."""
        assert rt.tree is not None and rt.tree.master_labels is not None
        entries = [rt.tree.members[m.relative] for m in members]
        if any(len(e.slaves) < len(rt.spec.slaves) for e in entries):
            return  # a slave's base is unknown: keep everything for now
        protected = {s.label for e in entries for s in e.slaves.values() if s.label}
        in_stores = base_labels(rt.tree.backups, rt.spec.stores, (m.relative for m in members))
        if in_stores is None:
            return  # a store's base is unknown: keep everything for now
        protected |= in_stores
        doomed = labels_doomed(rt.tree.master_labels, rt.spec.retention, now=now,
                               prefix=rt.spec.prefix, protected=protected,
                               keep_min=rt.spec.keep_min)
        sel = rt.spec.selection
        if doomed and sel is not None:
            names = [m.name for m in members]
            await drop_labels(ctx, master, names, doomed, rt.tree.master_labels,
                              recursive_from=sel.root if sel.whole_subtree
                              and sel.root in names else None)
            if doomed[-1] in rt.tree.master_labels:
                rt.tree.relist = True


def cycle_label(prefix: str, now: float, taken: Collection[str]) -> str:
    """A cycle's snapshot label: the prefix and the UTC time, with a counter should a
    label of that second be ``taken`` already."""
    base = prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    label, n = base, 1
    while label in taken:
        n += 1
        label = f"{base}-{n}"
    return label
