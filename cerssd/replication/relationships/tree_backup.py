"""Backing up a tree to one object store, as one activity (kind ``tree-backup``).

After each cycle's atomic snapshot, one ``tree-backup`` per store backs up every member
that the store does not have at that snapshot: one chain per member in the bucket, under
the member's own volume name (docs/backups.md), so a member is listed and restored
exactly as a single volume is. A tree has hundreds of members, so it is one activity,
not one per member (which would flood the activity list and the journal): progress is
members done of members to back up, the members' uploads run inside it at most
``max_parallel`` at once (through one pool of part buffers), and suspending or
cancelling it acts on them (cancel removes their unfinished uploads).

What each member sends:

* the first backup to a store in the daemon's life lists the master's tree once (with
  snapshots) and the bucket once under the root's prefix (keys only, the guid is in every
  manifest's key: ``catalog.newest_in_tree``); each member is then incremental from its
  newest snapshot with a complete backup that the master still has, or full;
* the backups after it list nothing: each member goes on from the base the store is
  known to have (``logic.tree_backup_facts.steady_steps``; one ``HEAD`` of that base's manifest
  first, so a chain is never continued from a backup someone deleted). A member new to
  the tree, failing, or whose stream fails, is planned from listings of its own (its
  snapshots on the master and its directory in the bucket), as a single volume's
  backup is.

A member that fails is recorded with its reason and the others go on; the next cycle
tries it again. Like a single volume's backup it is the master's own upload: pausing
the relationship does not pause it (``registry.OWN_UPLOADS``).
"""

from __future__ import annotations

from typing import Any

from ...activity import ActivityRecord, DataRoute, Progress, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...objectstore import catalog
from ...objectstore.client import ObjectStore
from ...objectstore.stores import Stores, UnknownStore
from ...peers.delegate import ChildRequest, DelegatedWork
from ...servers import ServerRegistry
from ...storage.errors import BackendError
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot_label
from ...storage.values import Snapshot
from ...transport.errors import LinkError
from ..flows.member_backups import MemberBackupItem
from ..flows.member_uploads import Job, MemberUploads, OnDone, OnStart
from ..logic.tree_backup_facts import MemberBackup, Step, StoreBackups, steady_steps
from ..logic.tree_status import TreeMember
from ..retry import RetryPolicy
from ..stream.store_calls import StoreCalls
from .registry import TREE_BACKUP, RelationshipRegistry
from .runtime import Runtime
from .tree_sync import members_of, tree_runtime

KIND = TREE_BACKUP


def submit_tree_backup(engine: ActivityEngine, rt: Runtime, store: str, label: str, *,
                       parent: str, delegated: bool = False) -> ActivityRecord:
    """``delegated``: the master's peer daemon streams the members to the bucket
    (``flows.member_backups``); this activity plans and is its parent."""
    validate_snapshot_label(label)
    route = DataRoute.DELEGATED if delegated else DataRoute.LOCAL
    return engine.submit(KIND, volume=rt.spec.volume, source=rt.spec.master, target=store,
                         params={"relationship": rt.name, "store": store, "label": label,
                                 "parent": parent},
                         self_restarting=True, progress=Progress(0, 0, unit="members"),
                         route=route, node=rt.spec.master if delegated else None)


def start_tree_backups(engine: ActivityEngine, servers: ServerRegistry, rt: Runtime,
                       label: str, *, parent: str) -> None:
    """The cycle's hook: a backup of the tree per store, unless one still runs (that
    store then backs up ``label`` as soon as it ends)."""
    assert rt.tree is not None
    if not rt.spec.stores:
        return
    direct = servers.entry(rt.spec.master).capabilities.direct_copy
    delegated = servers.delegates(rt.spec.master)
    if not direct and not delegated:
        rt.last_error = (f"backups not started: {rt.spec.master} cannot copy directly to "
                         "an object store (direct_copy)")
        return
    running = {a.record.params.get("store") for a in engine.live(KIND, rt.name)}
    for store in rt.spec.stores:
        if store in running:
            rt.tree.backups.setdefault(store, StoreBackups()).skipped = True
            continue
        submit_tree_backup(engine, rt, store, label, parent=parent, delegated=delegated)


class TreeBackupWork:
    def __init__(self, record: ActivityRecord, engine: ActivityEngine,
                 servers: ServerRegistry, stores: Stores | None,
                 registry: RelationshipRegistry, policy: RetryPolicy) -> None:
        self.params = record.params
        self.engine = engine
        self.servers = servers
        self.stores = stores
        self.registry = registry
        self.policy = policy
        self.delegated_route = record.route == DataRoute.DELEGATED
        #: The members' uploads here (a local master).
        self.uploader: MemberUploads | None = None
        #: The peer's batch (a master that runs cerssd).
        self.delegated: DelegatedWork | None = None

    async def run(self, ctx: ActivityContext) -> None:
        rt = tree_runtime(self.registry, self.params["relationship"])
        assert rt.tree is not None  # tree_runtime says so
        name = self.params["store"]
        try:
            if self.stores is None:
                raise UnknownStore(name)
            store = self.stores.get(name)
        except UnknownStore:
            raise ActivityError(f"object store {name} is no longer configured",
                                StatusCode.NOT_FOUND, "not-found") from None
        calls = StoreCalls(ctx, store, self.policy)
        if not self.delegated_route:
            self.uploader = MemberUploads(store, rt.spec.master)
            await self.uploader.abort_earlier_run(ctx, calls)
        label = self.params["label"]
        facts = rt.tree.backups.setdefault(name, StoreBackups())
        try:
            src = await self.servers.backend(rt.spec.master)
            if facts.known:
                jobs = await self._steady(ctx, rt, src, store, calls, facts, label)
            else:
                jobs = await self._listed(ctx, rt, src, store, calls, facts, label)
        except (BackendError, LinkError) as exc:
            code = StatusCode.LINK if isinstance(exc, LinkError) else StatusCode.ERROR
            raise ActivityError(f"tree not backed up: {exc}", code) from exc
        if rt.full_backup_due(name, store.config.full_every):  # a new chain per member
            jobs = [Job(j.key, j.snapshot, None, full=True) for j in jobs]
            ctx.remember(full_every_due=True)
        kinds = await self._run_jobs(ctx, rt, src, store, calls, facts, jobs)
        facts.forget_others(rt.tree.members)
        failing = sum(1 for e in rt.tree.members.values()
                      if (f := facts.facts(e)) is not None and f.error is not None)
        ctx.remember(members=len(rt.tree.members), to_back_up=len(jobs), failing=failing,
                     full=kinds.count("full"), incremental=kinds.count("incremental"))
        ctx.log.info("tree backup done", store=name, backed_up=len(kinds),
                     failing=failing, full=kinds.count("full"))
        self._again_if_a_cycle_came(ctx, rt, facts, label)

    async def _listed(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                      store: ObjectStore, calls: StoreCalls, facts: StoreBackups,
                      label: str) -> list[Job]:
        """The first backup to this store in the daemon's life: one listing of the
        master's tree and one of the bucket under its root serve every member."""
        assert rt.tree is not None and rt.spec.selection is not None
        root = rt.spec.selection.root
        listing = await src.tree(root, selector=rt.spec.selection.by_property)
        members = members_of(rt, listing)
        positions = {}
        for m in members:
            ds = listing.get(m.name)
            if ds is not None:
                positions[m.name] = {s.guid: i for i, s in enumerate(ds.snapshots)}
        newest = await calls("list backups", lambda: catalog.newest_in_tree(
            store, root, positions))
        jobs = []
        for m in members:
            ds = listing.get(m.name)
            snaps = list(ds.snapshots) if ds is not None else []
            entry = rt.tree.members.setdefault(m.relative, TreeMember(m.relative, m.name,
                                                                      m.guid))
            base = next((s for s in snaps if s.guid == newest.get(m.name)), None)
            f = facts.members[m.relative] = MemberBackup(m.guid)
            if base is not None:
                f.backed_up(base.guid, base.label, float(base.creation))
            snap = next((s for s in snaps if s.label == label), None)
            if snap is None:
                continue  # made after the cycle's snapshot: the next cycle backs it up
            if entry.newest_label is None:
                entry.note_newest(snap)  # a restarted daemon: the cycle has not run yet
            if base is not None and base.guid == snap.guid:
                continue
            if base is not None and positions[m.name][base.guid] > positions[m.name][snap.guid]:
                continue  # a newer snapshot is backed up already
            jobs.append(Job(entry.relative, snap, base))
        facts.known = True
        ctx.log.info("tree backup planned", store=store.name, members=len(members),
                     to_back_up=len(jobs), listed=True)
        return jobs

    async def _steady(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                      store: ObjectStore, calls: StoreCalls, facts: StoreBackups,
                      label: str) -> list[Job]:
        """From what the relationship knows: one ``zfs get`` of the cycle's snapshots of
        the members to back up, no listing of the tree or of the bucket."""
        assert rt.tree is not None
        steps = steady_steps(facts, rt.tree.members.values(), label)
        if not steps:
            return []
        found = await src.snapshot_facts([f"{s.member.name}@{label}" for s in steps])
        jobs = []
        for step in steps:
            snap = found.get(f"{step.member.name}@{label}")
            if snap is None:
                continue  # destroyed since the cycle's snapshot: reported by the next
            entry = rt.tree.members[step.member.relative]
            jobs.append(Job(entry.relative, snap, _base(step, snap), remembered=True))
        ctx.log.info("tree backup planned", store=store.name, members=len(rt.tree.members),
                     to_back_up=len(jobs), listed=False)
        return jobs

    async def _run_jobs(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                        store: ObjectStore, calls: StoreCalls, facts: StoreBackups,
                        jobs: list[Job]) -> list[str]:
        """Each member's backup, ``max_parallel`` at once (here, or on the master's peer
        daemon); returns the kinds (full, incremental) of those made."""
        assert rt.tree is not None and rt.spec.selection is not None
        entries = rt.tree.members

        def facts_of(job: Job) -> MemberBackup:
            entry = entries[job.key]
            f = facts.members.get(job.key)
            if f is None or f.dataset_guid != entry.guid:  # new, or made again
                f = facts.members[job.key] = MemberBackup(entry.guid)
            return f

        for job in jobs:  # known to the status from now on, as members to back up
            facts_of(job)

        def started(job: Job) -> None:
            facts_of(job).sending = True

        def stopped(job: Job) -> None:
            facts_of(job).sending = False

        def done(job: Job, snap: Snapshot, kind: str | None, error: str | None) -> None:
            f = facts_of(job)
            if error is not None:
                f.error = error
            else:
                f.backed_up(snap.guid, snap.label, float(snap.creation))

        if self.uploader is not None:
            return await self.uploader.run(ctx, src, calls, jobs, width=rt.spec.max_parallel,
                                           root=rt.spec.selection.root, on_start=started,
                                           on_stop=stopped, on_done=done)
        return await self._delegate(ctx, rt, store, jobs, started, stopped, done)

    async def _delegate(self, ctx: ActivityContext, rt: Runtime, store: ObjectStore,
                        jobs: list[Job], started: OnStart, stopped: OnStart,
                        done: OnDone) -> list[str]:
        """The jobs as one batch on the master's peer daemon (``flows.member_backups``),
        this activity its parent: progress and usage mirror the batch's, suspend, resume
        and cancel pass through, and a restart reattaches by the journaled id."""
        assert rt.spec.selection is not None
        if not jobs:
            ctx.set_progress(0, 0, unit="members", estimated=False)
            return []
        by_name = {j.snapshot.name: j for j in jobs}
        # a restarted managing daemon's clean-up spares these uploads (docs/peers.md)
        ctx.remember(peer_uploads=[f"{j.snapshot.volume}/{j.snapshot.label}." for j in jobs])
        body = {"server": self.servers.entry(rt.spec.master).config.daemon_server,
                "store": store.name, "root": rt.spec.selection.root,
                "max_parallel": rt.spec.max_parallel,
                "items": [MemberBackupItem.of(j).to_json() for j in jobs]}
        self.delegated = DelegatedWork(self.servers.peer(rt.spec.master), self.servers.links,
                                       self.policy, ChildRequest("/v1/member-backups", body,
                                                                 adopt=("results",)))
        for job in jobs:
            started(job)
        try:
            await self.delegated.run(ctx)
        finally:
            for job in jobs:
                stopped(job)
        # the batch succeeded: its results per member (a member the peer did not name,
        # the plan of a restart that differs from the batch's, is backed up next cycle)
        results: dict[str, Any] = ctx.params.get("results") or {}
        kinds = []
        for name, job in by_name.items():
            r = results.get(name)
            if not isinstance(r, dict):
                continue
            if r.get("error") is not None:
                done(job, job.snapshot, None, str(r["error"]))
                continue
            snap = Snapshot(name=name, volume=job.snapshot.volume, label=str(r["label"]),
                            guid=str(r["guid"]), creation=int(r["creation"]), used=0,
                            referenced=0, userrefs=0)
            done(job, snap, r.get("kind"), None)
            if r.get("kind") is not None:
                kinds.append(str(r["kind"]))
        return kinds

    def _again_if_a_cycle_came(self, ctx: ActivityContext, rt: Runtime, facts: StoreBackups,
                               label: str) -> None:
        """A cycle that came while this backup ran skipped the store: its snapshot is
        backed up now rather than at the next cycle."""
        assert rt.tree is not None
        newest = rt.tree.newest_label
        again = facts.skipped and newest is not None and newest != label
        facts.skipped = False
        if again and newest is not None:
            record = submit_tree_backup(self.engine, rt, self.params["store"], newest,
                                        parent=self.params.get("parent", ctx.record.id),
                                        delegated=self.delegated_route)
            ctx.log.info("a cycle came meanwhile: backed up again", label=newest,
                         activity=record.id)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Cancelled or failed: the members' unfinished uploads are removed (without a
        manifest there is no backup); those done stay, complete. Delegated: a cancel
        cancels the peer's batch, which removes its own."""
        if self.delegated is not None:
            await self.delegated.rollback(ctx)
        if self.uploader is not None:
            await self.uploader.rollback(ctx)


def _base(step: Step, snap: Snapshot) -> Snapshot | None:
    """The remembered base as a snapshot value (what the manifest names as parent)."""
    if step.base_label is None or step.base_guid is None:
        return None
    return Snapshot(name=f"{snap.volume}@{step.base_label}", volume=snap.volume,
                    label=step.base_label, guid=step.base_guid, creation=0, used=0,
                    referenced=0, userrefs=0)


def register(engine: ActivityEngine, servers: ServerRegistry, stores: Stores | None,
             registry: RelationshipRegistry, policy: RetryPolicy | None = None) -> None:
    engine.register(KIND, lambda r: TreeBackupWork(r, engine, servers, stores, registry,
                                                   policy or RetryPolicy()))


