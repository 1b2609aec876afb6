"""The steps of a tree relationship's failover: every member together, from one snapshot.

``failover.FailoverWork`` runs the same six steps for a tree as for one volume (halt,
fence, snapshot, sync, promote, reverse); this module does the tree's part of each, for
all members at once, never a command per member where one serves many:

* **fence**: the master's tree is listed once (datasets only) and its members are made
  read-only with one ``zfs set`` naming them all (``set_readonly_many``). The members
  are journaled, so a restarted failover fences, syncs and promotes the same set.
* **snapshot**: one atomic snapshot of every member (``snapshot_tree``), taken after the
  fence: one instant of the whole tree, holding every write.
* **sync**: a child ``tree-sync`` of that label to the chosen slave, then one ``zfs get``
  on each side: every member's copy must have the final snapshot with the master's guid
  (zero data loss), else the failover rolls back, naming the members that lack it.
* **promote**: every copy made writable (one ``zfs set``), given the selecting property
  where the tree is selected by one (streams do not carry it), and mounted.

Unplanned (the master does not answer, ``force``): there is no final snapshot. The
copies are promoted at the newest label they all share as their newest
(``logic.tree_point``); where they disagree (the master died mid-sync), the failover
fails before changing anything and says what each choice means, and the operator names
the label (``at``): copies ahead of it are rolled back to it, copies without it are left
read-only. The outcome per member is in the activity's result.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ...activity import State, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...transport.errors import LinkError
from ..flows.replicate import transfer_route
from ..logic.members import relative_name, select
from ..logic.tree_point import TreeDisagrees, consistent_point, shown
from .runtime import Runtime
from .tree_sync import listed, members_of, submit_sync, under


class TreeFailover:
    """The tree's part of each failover step (``failover.FailoverWork`` drives them)."""

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry) -> None:
        self.engine = engine
        self.servers = servers

    @staticmethod
    def members(p: dict[str, Any], root_key: str = "volume") -> list[str]:
        """The journaled members' names under the master's root (``volume``) or the
        slave's (``target_volume``)."""
        return [under(p[root_key], rel) for rel in p["members"]]

    async def fence(self, ctx: ActivityContext, rt: Runtime, master: StorageBackend) -> None:
        """Every member of the master's tree read-only; which ones were already is
        remembered, so a rollback lifts only the fence it set."""
        p = ctx.params
        if "members" not in p:  # not again after a restart: the set is fixed now
            sel = rt.spec.selection
            assert sel is not None
            listing = await master.tree(sel.root, selector=sel.by_property, snapshots=False)
            members = members_of(rt, listing)
            if not members:
                raise ActivityError(f"the tree {sel.root} has no members on {p['master']}: "
                                    "nothing to fail over", StatusCode.CONFLICT, "no-members")
            readonly = {v.name for v in (await master.volumes([sel.root])).items
                        if v.readonly}
            ctx.remember(members=[m.relative for m in members],
                         members_readonly=[m.relative for m in members
                                           if m.name in readonly])
        ctx.remember(fenced=True)  # a fence half set is lifted by the rollback too
        p = ctx.params  # remembering makes a new dict
        problems = await master.set_readonly_many(self.members(p), True)
        if problems:
            raise ActivityError(f"{len(problems)} member(s) of {p['volume']} could not be "
                                f"made read-only: {_first(problems)}", StatusCode.CONFLICT,
                                "fence-failed")

    async def lift_fence(self, ctx: ActivityContext, master: StorageBackend) -> None:
        """Writable again, the members that were writable before the fence."""
        p = ctx.params
        keep = set(p.get("members_readonly", ()))
        names = [under(p["volume"], rel) for rel in p.get("members", ()) if rel not in keep]
        problems = await master.set_readonly_many(names, False)
        if problems:
            ctx.log.warning("fence not lifted on every member", problems=_first(problems))

    async def snapshot(self, ctx: ActivityContext, rt: Runtime,
                       master: StorageBackend) -> None:
        """Planned: one snapshot of every member, at one instant, after the fence."""
        p = ctx.params
        label = p.get("final_label")
        if not isinstance(label, str):
            label = f"{rt.spec.prefix}failover-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            ctx.remember(final_label=label)  # journaled first: made once, even over a crash
        names = self.members(p)
        await master.snapshot_tree(p["volume"], label, names)
        facts = await master.snapshot_facts([f"{n}@{label}" for n in names])
        missing = [n for n in names if f"{n}@{label}" not in facts]
        if missing:
            raise ActivityError(f"the final snapshot {label} is missing on "
                                f"{len(missing)} member(s): {shown(missing)}",
                                StatusCode.CONFLICT, "snapshot-missing")
        created = min(s.creation for s in facts.values())
        ctx.remember(final_snapshot=f"{p['volume']}@{label}", final_created=float(created))
        if rt.tree is not None:  # the sync streams this label: the members' newest now
            for rel, name in zip(p["members"], names, strict=True):
                entry = rt.tree.members.get(rel)
                if entry is not None:
                    entry.note_newest(facts[f"{name}@{label}"])
            if rt.tree.master_labels is not None:
                rt.tree.master_labels.setdefault(label, float(created))
            rt.tree.newest_label = label

    async def sync(self, ctx: ActivityContext, rt: Runtime) -> None:
        """A child ``tree-sync`` of the final label, then every member verified by guid."""
        p = ctx.params
        label = p["final_label"]
        child = p.get("sync_activity")
        if rt.tree is not None and set(p["members"]) != set(rt.tree.members):
            rt.tree.known.discard(p["to"])  # members the cycles never saw: list both trees
        if not isinstance(child, str) or self._failed(child):
            record = submit_sync(self.engine, rt.name, p["master"], p["to"],
                                 p["target_volume"], label, parent=ctx.record.id,
                                 route=transfer_route(self.servers, p["master"], p["to"]))
            ctx.remember(sync_activity=record.id)
            child = record.id
        final = await self.engine.wait(child)
        if final.state != State.SUCCEEDED:
            why = final.status.message if final.status else "did not finish"
            raise ActivityError(f"the tree's final snapshot did not reach {p['to']}: {why}",
                                StatusCode.ERROR, "sync-failed")
        master = await self.servers.backend(p["master"])
        slave = await self.servers.backend(p["to"])
        theirs = await master.snapshot_facts([f"{n}@{label}" for n in self.members(p)])
        ours = await slave.snapshot_facts(
            [f"{n}@{label}" for n in self.members(p, "target_volume")])
        wrong = [rel or "." for rel in p["members"]
                 if (s := ours.get(f"{under(p['target_volume'], rel)}@{label}")) is None
                 or s.guid != theirs[f"{under(p['volume'], rel)}@{label}"].guid]
        if wrong:
            raise ActivityError(f"{len(wrong)} member(s) lack the final snapshot {label} on "
                                f"{p['to']}: {shown(wrong)}", StatusCode.CONFLICT,
                                "sync-unverified")

    def _failed(self, child: str) -> bool:
        try:
            return self.engine.get(child).record.state in (State.FAILED, State.CANCELLED)
        except KeyError:
            return True

    async def unplanned_point(self, ctx: ActivityContext, rt: Runtime) -> None:
        """Unplanned: the label to promote at, from one listing of the slave's copies.
        Fails (changing nothing) where the copies disagree and no ``at`` was given."""
        p = ctx.params
        slave = await self.servers.backend(p["to"])
        try:
            copies = await slave.tree(p["target_volume"])
        except NotFound:
            raise ActivityError(f"{p['to']} has no copy of the tree at {p['target_volume']}",
                                StatusCode.CONFLICT, "no-snapshot") from None
        prefix = rt.spec.prefix
        labels = {
            rel: [s.label for s in ds.snapshots if s.label.startswith(prefix)]
            for ds in copies.datasets
            if (rel := relative_name(p["target_volume"], ds.name)) is not None}
        if rt.tree is not None and rt.tree.members:  # the members as the cycles knew them
            labels = {rel: labels.get(rel, []) for rel in rt.tree.members}
        elif rt.spec.selection is not None and rt.spec.selection.by_property is None:
            sel = replace(rt.spec.selection, root=p["target_volume"])
            chosen = {m.relative for m in select(sel, rt.name, listed(copies))}
            labels = {rel: ls for rel, ls in labels.items() if rel in chosen}
        try:
            point = consistent_point(labels, p.get("at"))
        except TreeDisagrees as exc:
            raise ActivityError(str(exc), StatusCode.CONFLICT, "tree-disagrees") from None
        snaps = {f"{under(p['target_volume'], rel)}@{point.label}": rel
                 for rel in (*point.at, *point.ahead)}
        facts = await slave.snapshot_facts(list(snaps))
        created = min((s.creation for s in facts.values()), default=None)
        later = {rel: [s.name for s in ds.snapshots[i + 1:]]
                 for ds in copies.datasets
                 if (rel := relative_name(p["target_volume"], ds.name)) in point.ahead
                 for i, s in enumerate(ds.snapshots) if s.label == point.label}
        ctx.remember(members=[*point.at, *point.ahead], ahead=list(point.ahead),
                     rolled_back_snapshots=[n for names in later.values() for n in names],
                     lacking=list(point.lacking), final_label=point.label,
                     final_snapshot=f"{p['target_volume']}@{point.label}",
                     final_created=float(created) if created is not None else None)
        ctx.log.warning("unplanned tree failover: promoting the copies at one label",
                        label=point.label, members=len(point.at) + len(point.ahead),
                        rolled_back=len(point.ahead), left_read_only=len(point.lacking))

    async def promote(self, ctx: ActivityContext, rt: Runtime) -> None:
        """Every copy writable (the ahead ones rolled back first), the selecting property
        set on it, and mounted; the outcome per member is remembered."""
        p = ctx.params
        slave = await self.servers.backend(p["to"])
        names = self.members(p, "target_volume")
        if p.get("ahead"):  # consented to by naming ``at``; our pins would refuse it
            doomed = p.get("rolled_back_snapshots", [])
            for owner in {p["master"], p["to"], *rt.slaves}:
                await slave.unpin_many(doomed, owner)
        for rel in p.get("ahead", ()):
            await slave.rollback(f"{under(p['target_volume'], rel)}@{p['final_label']}")
        problems = await slave.set_readonly_many(names, False)
        if problems:  # past the point of no return: retried with the activity
            raise ActivityError(f"{len(problems)} copy(ies) on {p['to']} not made "
                                f"writable: {_first(problems)}", StatusCode.ERROR,
                                "promote-failed")
        sel = rt.spec.selection
        if sel is not None and sel.by_property is not None:
            await slave.set_user_property_many(names, sel.by_property, rt.name)
        unmounted = await slave.mount_many(names)
        if unmounted:
            ctx.log.warning("promoted copies not mounted", problems=_first(unmounted))
        ctx.remember(tree_outcome={
            "members": len(names), "promoted": len(names),
            "rolled_back": list(p.get("ahead", ()))[:100],
            "not_promoted": [{"member": rel or ".", "reason": "its copy lacks "
                              f"{p['final_label']}; left read-only"}
                             for rel in p.get("lacking", ())][:100],
            "not_mounted": [{"member": n, "reason": why}
                            for n, why in list(unmounted.items())[:100]]})

    async def release_stale_holds(self, ctx: ActivityContext,
                                  places: list[tuple[str, str, set[str]]]) -> None:
        """The pins of streams that no longer run this way, for a whole tree: one listing
        per server, then a few commands per owner (``unpin_many``). Best effort."""
        for server, root, owners in places:
            try:
                backend = await self.servers.backend(server)
                held = [s.name for ds in (await backend.tree(root)).datasets
                        for s in ds.snapshots if s.userrefs]
                for owner in owners:
                    await backend.unpin_many(held, owner)
            except (BackendError, LinkError) as exc:
                ctx.log.info("stale holds not released", server=server, error=str(exc))


async def fence_tree(rt: Runtime, backend: StorageBackend, root: str) -> None:
    """A fenced old master's tree: every member under ``root`` read-only again."""
    sel = rt.spec.selection
    assert sel is not None
    old = replace(sel, root=root)
    listing = await backend.tree(root, selector=sel.by_property, snapshots=False)
    names = [m.name for m in select(old, rt.name, listed(listing))] or [root]
    problems = await backend.set_readonly_many(names, True)
    if problems:
        raise BackendError(f"fence not in force: {_first(problems)}")


def _first(problems: dict[str, str]) -> str:
    items = list(problems.items())
    text = "; ".join(f"{n}: {why}" for n, why in items[:3])
    return text + (f" and {len(items) - 3} more" if len(items) > 3 else "")
