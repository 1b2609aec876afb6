"""Planning the rejoin of a tree's old master: every member back to what it shares.

After an unplanned failover of a tree, the old master (fenced) may have taken writes on
any member the new master never saw. To follow the new master as a slave, each member
there is rolled back to the newest snapshot it shares (by guid) with the new master's
copy; that destroys its later snapshots and changes. The plan is made from one listing
of each tree, never one command per member, and lists every snapshot it would destroy,
so the operator's consent covers exactly that. A dataset of the old tree that the new
master has no copy of is left alone (the new master never had it: it is not in the
relationship there), and said so.
"""

from __future__ import annotations

from ...servers import ServerRegistry
from ...storage.values import Snapshot, TreeListing
from ..logic.roles import Fenced
from ..logic.tree_point import shown
from .runtime import RelationshipError, Runtime
from .tree_sync import members_of, under


async def plan_tree_rejoin(servers: ServerRegistry, rt: Runtime, fenced: Fenced,
                           ) -> tuple[tuple[Snapshot, ...], tuple[Snapshot, ...]]:
    """Per member the base to roll back to, and every snapshot that rolling back
    destroys (oldest first per member)."""
    sel = rt.spec.selection
    assert sel is not None
    master = await servers.backend(rt.spec.master)
    old = await servers.backend(fenced.server)
    ours = await master.tree(sel.root, selector=sel.by_property)
    theirs = await old.tree(fenced.volume)
    bases: list[Snapshot] = []
    destroys: list[Snapshot] = []
    unrelated: list[str] = []
    for m in members_of(rt, ours):
        listed = theirs.get(under(fenced.volume, m.relative))
        if listed is None:
            continue  # never there, or destroyed: the next sync sends it in full
        shared_base = _newest_shared(listed.snapshots, _guids(ours, m.name))
        if shared_base is None:
            unrelated.append(listed.name)
            continue
        bases.append(listed.snapshots[shared_base])
        destroys += listed.snapshots[shared_base + 1:]
    if unrelated:
        raise RelationshipError(
            f"{len(unrelated)} member(s) on {fenced.server} share no snapshot with the "
            f"master {rt.spec.master}: {shown(unrelated)}; they cannot follow "
            "incrementally. Rename or destroy them there, then rejoin")
    if not bases:
        raise RelationshipError(f"{fenced.server}:{fenced.volume} has no copy of any member "
                                f"of {rt.name}; add the server as a new slave instead")
    return tuple(bases), tuple(destroys)


def _guids(listing: TreeListing, name: str) -> set[str]:
    ds = listing.get(name)
    return {s.guid for s in ds.snapshots} if ds is not None else set()


def _newest_shared(snapshots: tuple[Snapshot, ...], guids: set[str]) -> int | None:
    shared = [i for i, s in enumerate(snapshots) if s.guid in guids]
    return shared[-1] if shared else None
