"""An operator's prune of a relationship, now: the plan for each place, then exactly it.

``POST /v1/relationships/{name}/prune`` asks ``plan_places`` what retention would
destroy on the master, each slave and each object store, and why; a dry run answers
that, a prune submits one activity per place with the very names and guids (or backup
guids) listed. A place where pruning may not run now (a stream reads from the master,
a slave's base is unknown, a listing failed) says so (``blocked``) and is left alone.
A tree is planned from one listing per server, member by member, like the cycle's
first (listed) pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...objectstore.layout import Manifest
from ...storage.errors import BackendError, NotFound
from ...storage.values import Snapshot
from ...transport.errors import LinkError
from ...volume_states import PRUNING, VolumeBusy, backup_prune_holds, prune_holds
from ..flows import bucket_prune, snapshot_prune
from ..logic.retention import owned, prune_plan
from .prune_plan import Place, TargetPlan, blocked_plan, grid_text
from .registry import TREE_BACKUP
from .runtime import Runtime
from .tree import master_doomed
from .tree_sync import KIND as SYNC_KIND
from .tree_sync import members_of, under
from .upkeep import Upkeep

#: A planned place and, for a store, the manifests it deletes.
Planned = tuple[TargetPlan, list[Manifest]]


def places_of(rt: Runtime) -> list[str]:
    """What ``only`` may name: "master", each slave's server, each store."""
    return ["master", *(s.server for s in rt.spec.slaves), *rt.spec.stores]


async def plan_places(upkeep: Upkeep, rt: Runtime, only: Sequence[str],
                      now: float) -> list[Planned]:
    planned: list[Planned] = []
    for place in only:
        if place == "master":
            planned.append((await _master(upkeep, rt, now), []))
        elif place in rt.slaves:
            plan = await (_tree_slave(upkeep, rt, place, now) if rt.tree is not None
                          else upkeep.slave_plan(rt, place, now))
            planned.append((plan, []))
        else:
            planned.append(await upkeep.store_plan(rt, place, now))
    return planned


def carry_out(upkeep: Upkeep, rt: Runtime, plan: TargetPlan,
              manifests: list[Manifest]) -> tuple[TargetPlan, str | None]:
    """Submit the prune of one planned place; the plan (blocked now, if it must be) and
    its activity id. Synchronous: nothing changes between the last check and submit."""
    if plan.blocked or not plan.verdicts:
        return plan, None
    engine = upkeep.engine
    try:
        if plan.place is Place.STORE:
            record = upkeep.volume_states.submit_holding(
                holds=backup_prune_holds(upkeep.servers.entries, plan.volume), busy=PRUNING,
                submit=lambda: bucket_prune.submit_backup_prune(
                    engine, plan.name, plan.volume, manifests, subtree=rt.tree is not None,
                    relationship=rt.name))
        else:
            if plan.place is Place.MASTER and (why := _master_blocker(upkeep, rt)):
                return _blocked(plan, why), None
            record = upkeep.volume_states.submit_holding(
                holds=prune_holds(plan.name, plan.volume), busy=PRUNING,
                submit=lambda: snapshot_prune.submit_prune(
                    engine, plan.name, plan.volume, plan.names, rt.name, plan.guids))
    except VolumeBusy as exc:
        return _blocked(plan, f"volume held: {exc}"), None
    return plan, record.id


def _blocked(plan: TargetPlan, why: str) -> TargetPlan:
    return blocked_plan(plan.place, plan.name, plan.volume, plan.grid, plan.keep_min, why)


def _master_blocker(upkeep: Upkeep, rt: Runtime) -> str | None:
    if rt.tree is None or rt.spec.snapshots is not None:
        return upkeep.master_blocker(rt)
    engine = upkeep.engine
    if engine.live(SYNC_KIND, rt.name) or engine.live(TREE_BACKUP, rt.name):
        return ("a stream reads from the master (zfs send -I needs the snapshots between "
                "its ends)")
    if any(p.record.params["server"] == rt.spec.master
           for p in engine.live(snapshot_prune.KIND, rt.name)):
        return "a prune of the master is under way"
    return None


async def _master(upkeep: Upkeep, rt: Runtime, now: float) -> TargetPlan:
    grid, keep = rt.spec.retention, rt.spec.keep_min
    volume = rt.spec.volume
    if (why := _master_blocker(upkeep, rt)) is not None:
        return blocked_plan(Place.MASTER, rt.spec.master, volume, grid, keep, why)
    try:
        master = await upkeep.servers.backend(rt.spec.master)
        if rt.tree is None:
            return upkeep.master_plan(rt, await master.snapshots(volume), now)
        sel = rt.spec.selection
        assert sel is not None
        listing = await master.tree(sel.root, selector=sel.by_property, snapshots=True)
    except (BackendError, LinkError) as exc:
        return blocked_plan(Place.MASTER, rt.spec.master, volume, grid, keep,
                            f"not listed: {exc}")
    members = members_of(rt, listing)
    verdicts = master_doomed(rt, members, listing, now)
    ours = sum(1 for m in members if (ds := listing.get(m.name)) is not None
               for s in ds.snapshots if owned(s.label, rt.spec.prefix))
    return TargetPlan(Place.MASTER, rt.spec.master, volume, grid_text(grid), keep,
                      tuple(verdicts), ours - len(verdicts))


async def _tree_slave(upkeep: Upkeep, rt: Runtime, server: str, now: float) -> TargetPlan:
    """A tree's slave, member by member from one listing of its target root; a member
    whose base there is not known keeps everything."""
    assert rt.tree is not None
    grid, keep = rt.spec.slave_retention, rt.spec.slave_keep_min
    root = rt.spec.slave(server).target_volume
    if any(a.record.params.get("destination") == server
           for a in upkeep.engine.live(SYNC_KIND, rt.name)):
        return blocked_plan(Place.SLAVE, server, root, grid, keep,
                            "a sync to it is under way")
    try:
        listing = await (await upkeep.servers.backend(server)).tree(root, snapshots=True)
    except NotFound:
        return TargetPlan(Place.SLAVE, server, root, grid_text(grid), keep)
    except (BackendError, LinkError) as exc:
        return blocked_plan(Place.SLAVE, server, root, grid, keep, f"not listed: {exc}")
    verdicts, ours = [], 0
    for entry in rt.tree.members.values():
        ds = listing.get(under(root, entry.relative))
        state = entry.slaves.get(server)
        if ds is None:
            continue
        snaps: list[Snapshot] = list(ds.snapshots)
        ours += sum(1 for s in snaps if owned(s.label, rt.spec.prefix))
        if state is None or state.guid is None:
            continue
        verdicts += prune_plan(snaps, grid, now=now, prefix=rt.spec.prefix,
                               protected={state.guid}, keep_min=keep)
    return TargetPlan(Place.SLAVE, server, root, grid_text(grid), keep, tuple(verdicts),
                      ours - len(verdicts))
