"""A tree relationship's cycle: one listing, one atomic snapshot, one sync per slave.

A tree has hundreds of members, so everything that one command can serve for all of them
is asked once per cycle and server, never per member:

1. one recursive listing of the master's tree (datasets, guids, the selecting property
   and every snapshot) gives the members (``logic.members.select``) and what vanished;
2. retention of every member from that same listing, one ``prune`` activity for all;
3. one snapshot of every member, atomically (``snapshot_tree``), its label journaled
   before it is made so a restarted daemon uses it instead of making another;
4. per slave with no sync under way, one ``tree-sync`` activity (``tree_sync``) that
   brings each member up to date with bounded parallelism.

Like a single volume's cycle, it does not wait for the slaves: a slave that is down must
not hold back the others or the next cycle.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from ...engine import ActivityContext, ActivityEngine
from ...servers import ServerRegistry
from ...storage.errors import NotFound
from ...storage.interface import StorageBackend
from ...storage.values import TreeListing
from ..flows import snapshot_prune
from ..logic.members import Member, unmatched_patterns
from ..logic.retention import to_destroy
from ..logic.tree_status import TreeMember, TreeStatus
from .registry import RelationshipRegistry
from .runtime import Runtime
from .tree_sync import KIND as SYNC_KIND
from .tree_sync import listed, members_of, submit_sync


class TreeNotFound(NotFound):
    """The tree's root does not exist on the master."""


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
            entry.newest_guid, entry.newest_label = newest.guid, newest.label
            entry.newest_created = float(newest.creation)
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
                  now: float) -> list[str]:
    """Every member's snapshots its grid no longer keeps, sparing each slave's base."""
    assert rt.tree is not None
    doomed: list[str] = []
    for m in members:
        ds = listing.get(m.name)
        entry = rt.tree.members.get(m.relative)
        if ds is None or entry is None:
            continue
        protected = {s.guid for s in entry.slaves.values() if s.guid is not None}
        if len(entry.slaves) < len(rt.spec.slaves):
            continue  # a slave's base is unknown: keep everything for now
        doomed += [s.name for s in to_destroy(list(ds.snapshots), rt.spec.retention, now=now,
                                              prefix=rt.spec.prefix, protected=protected)]
    return doomed


class TreeCycle:
    """The steps of one cycle of a tree relationship."""

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 registry: RelationshipRegistry) -> None:
        self.engine = engine
        self.servers = servers
        self.registry = registry

    async def run(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend) -> str:
        """The cycle's steps; returns the snapshot label it took (or found made)."""
        sel = rt.spec.selection
        assert sel is not None and rt.tree is not None
        now = time.time()
        try:
            listing = await master.tree(sel.root, selector=sel.by_property)
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
        if not syncing:
            doomed = master_doomed(rt, members, listing, now)
            if doomed:
                snapshot_prune.submit_prune(self.engine, rt.spec.master, sel.root, doomed,
                                            rt.name)
        label = ctx.params.get("cycle_snapshot")
        if not isinstance(label, str):
            root_ds = listing.get(sel.root)
            taken = {s.label for s in root_ds.snapshots} if root_ds else set()
            label = cycle_label(rt.spec.prefix, now, taken)
            ctx.remember(cycle_snapshot=label)
        if members:
            await master.snapshot_tree(sel.root, label, [m.name for m in members])
            ctx.log.info("tree snapshot taken", label=label, members=len(members))
            for m in members:  # behind until a sync lists the new snapshot's guid
                entry = rt.tree.members[m.relative]
                entry.newest_label, entry.newest_guid = label, None
                entry.newest_created = now
        busy = {a.record.params.get("destination") for a in syncing}
        rt.tree.newest_label = label
        for slave in rt.spec.slaves:
            if not members:
                break
            if slave.server in busy:
                rt.tree.skipped.add(slave.server)  # its sync starts again when it ends
                continue
            submit_sync(self.engine, rt.name, rt.spec.master, slave.server,
                        slave.target_volume, label, parent=ctx.record.id)
        return label


def cycle_label(prefix: str, now: float, taken: Collection[str]) -> str:
    """A cycle's snapshot label: the prefix and the UTC time, with a counter should a
    label of that second be ``taken`` already."""
    base = prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    label, n = base, 1
    while label in taken:
        n += 1
        label = f"{base}-{n}"
    return label
