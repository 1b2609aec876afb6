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
  known to have (``tree_backups.steady_steps``; one ``HEAD`` of that base's manifest
  first, so a chain is never continued from a backup someone deleted). A member new to
  the tree, failing, or whose stream fails, is planned from listings of its own (its
  snapshots on the master and its directory in the bucket), as a single volume's
  backup is.

A member that fails is recorded with its reason and the others go on; the next cycle
tries it again. Like a single volume's backup it is the master's own upload: pausing
the relationship does not pause it (``registry.OWN_UPLOADS``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from ...activity import ActivityRecord, Progress, StatusCode
from ...config import streams_directly
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...objectstore import catalog
from ...objectstore.buffers import BufferPool
from ...objectstore.client import ObjectMissing, ObjectStore, StoreError
from ...objectstore.layout import manifest_key
from ...objectstore.sse_check import check_sse
from ...objectstore.stores import Stores, UnknownStore
from ...objectstore.upload import SegmentedUpload
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot_label
from ...storage.values import Snapshot, StreamOptions
from ...transport.errors import LinkError
from ..flows.backup import (
    backup_options,
    finish_backup,
    new_upload,
    remove_unfinished,
    send_into,
)
from ..logic.tree_backups import MemberBackup, Step, StoreBackups, steady_steps
from ..logic.tree_status import TreeMember
from ..retry import RetryPolicy
from ..stream.store_calls import StoreCalls
from .registry import TREE_BACKUP, RelationshipRegistry
from .runtime import Runtime
from .tree_sync import members_of, tree_runtime

KIND = TREE_BACKUP
#: What a member's backup may fail with, leaving the others to go on.
MEMBER_FAILURES = (ActivityError, BackendError, LinkError, StoreError)


@dataclass(frozen=True)
class Job:
    """One member's backup: ``snapshot`` full, or incremental from ``base``."""

    entry: TreeMember
    snapshot: Snapshot
    base: Snapshot | None
    #: The base came from the relationship's memory: checked in the bucket first, and a
    #: failure plans the member from its own listings and tries once more. A remembered
    #: job without a base (new to the tree, or failing) is planned from them at once.
    remembered: bool = False
    #: The store's ``full_every`` is due: a full stream, whatever base there is.
    full: bool = False


def submit_tree_backup(engine: ActivityEngine, rt: Runtime, store: str, label: str, *,
                       parent: str) -> ActivityRecord:
    validate_snapshot_label(label)
    return engine.submit(KIND, volume=rt.spec.volume, source=rt.spec.master, target=store,
                         params={"relationship": rt.name, "store": store, "label": label,
                                 "parent": parent},
                         self_restarting=True, progress=Progress(0, 0, unit="members"))


def start_tree_backups(engine: ActivityEngine, servers: ServerRegistry, rt: Runtime,
                       label: str, *, parent: str) -> None:
    """The cycle's hook: a backup of the tree per store, unless one still runs (that
    store then backs up ``label`` as soon as it ends)."""
    assert rt.tree is not None
    if not rt.spec.stores:
        return
    if not streams_directly(servers.entry(rt.spec.master).config):
        rt.last_error = (f"backups not started: {rt.spec.master} cannot copy directly to "
                         "an object store (direct_copy)")
        return
    running = {a.record.params.get("store") for a in engine.live(KIND, rt.name)}
    for store in rt.spec.stores:
        if store in running:
            rt.tree.backups.setdefault(store, StoreBackups()).skipped = True
            continue
        submit_tree_backup(engine, rt, store, label, parent=parent)


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
        #: Uploads under way, by member: what a restart or a cancel must remove.
        self.uploads: dict[str, SegmentedUpload] = {}
        self.store: ObjectStore | None = None
        self.master = "local"
        #: The root's stream options serve every member, as in a tree's replication:
        #: raw when the root is encrypted (its children are then encrypted too).
        self.options = StreamOptions()

    async def run(self, ctx: ActivityContext) -> None:
        rt = tree_runtime(self.registry, self.params["relationship"])
        assert rt.tree is not None  # tree_runtime says so
        name = self.params["store"]
        try:
            if self.stores is None:
                raise UnknownStore(name)
            store = self.store = self.stores.get(name)
        except UnknownStore:
            raise ActivityError(f"object store {name} is no longer configured",
                                StatusCode.NOT_FOUND, "not-found") from None
        self.master = rt.spec.master
        calls = StoreCalls(ctx, store, self.policy)
        await self._abort_earlier_run(ctx, store, calls)
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
            jobs = [Job(j.entry, j.snapshot, None, full=True) for j in jobs]
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
            jobs.append(Job(entry, snap, base))
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
            jobs.append(Job(entry, snap, _base(step, snap), remembered=True))
        ctx.log.info("tree backup planned", store=store.name, members=len(rt.tree.members),
                     to_back_up=len(jobs), listed=False)
        return jobs

    async def _run_jobs(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                        store: ObjectStore, calls: StoreCalls, facts: StoreBackups,
                        jobs: list[Job]) -> list[str]:
        """Each member's backup, ``max_parallel`` at once, through one pool of part
        buffers; returns the kinds (full, incremental) of those made."""
        ctx.set_progress(0, len(jobs), unit="members", estimated=False)
        if not jobs:
            return []
        width = min(rt.spec.max_parallel, len(jobs))
        cfg = store.config
        # A part being read per member and ``concurrency`` on the wire: the memory of one
        # backup (plus a part per further member), allocated once for all of them.
        pool = BufferPool(width + cfg.concurrency, cfg.part_size)
        limit = asyncio.Semaphore(width)
        made: list[str] = []
        done = [0]
        intermediates = src.capabilities.safe_send_holds
        assert rt.spec.selection is not None
        self.options = await backup_options(src, rt.spec.selection.root)
        await calls("check server-side encryption", lambda: check_sse(store))

        async def one(job: Job) -> None:
            f = facts.members.get(job.entry.relative)
            if f is None or f.dataset_guid != job.entry.guid:  # new, or made again
                f = facts.members[job.entry.relative] = MemberBackup(job.entry.guid)
            async with limit:
                await ctx.checkpoint()
                f.sending = True
                try:
                    kind = await self._member(ctx, src, store, calls, pool, job,
                                              intermediates)
                except MEMBER_FAILURES as exc:
                    f.error = getattr(exc, "message", None) or str(exc)
                    ctx.log.warning("member not backed up", member=job.entry.name,
                                    store=store.name, error=f.error)
                else:
                    f.backed_up(job.snapshot.guid, job.snapshot.label,
                                float(job.snapshot.creation))
                    if kind is not None:
                        made.append(kind)
                finally:
                    f.sending = False
            done[0] += 1
            ctx.set_progress(done[0])

        tasks = [asyncio.ensure_future(one(j)) for j in jobs]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # cancelled, or a bug: no member's upload may go on behind the activity's back
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return made

    async def _member(self, ctx: ActivityContext, src: StorageBackend, store: ObjectStore,
                      calls: StoreCalls, pool: BufferPool, job: Job,
                      intermediates: bool) -> str | None:
        """One member's backup; a remembered base that fails is planned again from the
        member's own listings, once. Returns the kind made (None: nothing was due)."""
        if job.full:
            return await self._upload(ctx, src, store, calls, pool, job, intermediates)
        if job.remembered and job.base is not None:
            try:
                if not await self._base_missing(store, calls, job.base):
                    return await self._upload(ctx, src, store, calls, pool, job,
                                              intermediates)
            except (ActivityError, BackendError) as exc:
                if isinstance(exc, ActivityError) and exc.reason in ("store", "link"):
                    raise  # the store's trouble: another plan would not help
                ctx.log.info("member not backed up from its known base; planned again",
                             member=job.entry.name, error=str(exc))
        job = await self._plan(src, store, calls, job)
        if job.base is not None and job.base.guid == job.snapshot.guid:
            return None
        return await self._upload(ctx, src, store, calls, pool, job, intermediates)

    @staticmethod
    async def _base_missing(store: ObjectStore, calls: StoreCalls, base: Snapshot) -> bool:
        """Whether the base's backup is gone from the bucket (deleted by someone)."""
        key = manifest_key(store.config.prefix, base.volume, base.label, base.guid)
        try:
            await calls("check base", lambda: store.head(key))
        except ActivityError as exc:
            if isinstance(exc.__cause__, ObjectMissing):
                return True
            raise
        return False

    @staticmethod
    async def _plan(src: StorageBackend, store: ObjectStore, calls: StoreCalls,
                    job: Job) -> Job:
        """The member's base from its own listings, as a single volume's backup plans:
        its snapshots on the master and its backups in the bucket (keys only)."""
        name = job.entry.name
        try:
            snaps = await src.snapshots(name)
        except NotFound:
            raise ActivityError(f"{name} no longer exists on the master",
                                StatusCode.NOT_FOUND, "not-found") from None
        snap = next((s for s in snaps if s.name == job.snapshot.name), None)
        if snap is None or snap.guid != job.snapshot.guid:
            raise ActivityError(f"{job.snapshot.name} no longer exists on the master",
                                StatusCode.NOT_FOUND, "not-found")
        guids = await calls("list backups", lambda: catalog.backed_up_guids(store, name))
        if snap.guid in guids:
            return Job(job.entry, snap, snap)
        return Job(job.entry, snap, catalog.newest_backed_up(guids, snaps, snap.guid))

    async def _upload(self, ctx: ActivityContext, src: StorageBackend, store: ObjectStore,
                      calls: StoreCalls, pool: BufferPool, job: Job,
                      intermediates: bool) -> str:
        """Stream the member's snapshot into its backup directory, manifest last; an
        unfinished upload is removed before the failure is reported."""
        rel = job.entry.relative
        snap, base = job.snapshot, job.base
        upload = self.uploads[rel] = new_upload(
            store, snap, calls, checkpoint=ctx.checkpoint,
            started=lambda: self._journal(ctx), pool=pool)
        upload.on_sent = ctx.counters.sent
        try:
            raw, result = await send_into(src, store.config, snap.name,
                                          base.name if base else None, upload, ctx.counters,
                                          ctx.flow, intermediates=intermediates and base
                                          is not None, options=self.options)
            _, manifest = await finish_backup(store, calls, snap, base, raw, result,
                                              self.master, ctx.log, options=self.options)
        except MEMBER_FAILURES:
            with contextlib.suppress(StoreError, OSError):
                await remove_unfinished(store, dict(upload.unfinished), list(upload.completed))
            self._forget(ctx, rel, upload)
            raise
        # (cancelled: the upload stays listed, for the rollback to remove)
        self._forget(ctx, rel, upload)
        return manifest.kind

    def _forget(self, ctx: ActivityContext, rel: str, upload: SegmentedUpload) -> None:
        """The member's upload is complete (or removed): no longer the journal's."""
        if self.uploads.get(rel) is upload:
            del self.uploads[rel]
        if upload.unfinished or upload.completed:
            self._journal(ctx)

    def _journal(self, ctx: ActivityContext) -> None:
        """Every upload begun and segment completed of the members under way: a
        restarted run removes them before it begins again."""
        ctx.remember(uploads={k: v for u in self.uploads.values()
                              for k, v in u.unfinished.items()},
                     segments=[k for u in self.uploads.values() for k in u.completed])

    async def _abort_earlier_run(self, ctx: ActivityContext, store: ObjectStore,
                                 calls: StoreCalls) -> None:
        uploads: dict[str, str] = self.params.get("uploads") or {}
        segments: list[str] = self.params.get("segments") or []
        if uploads or segments:
            await remove_unfinished(store, uploads, segments, calls)
            ctx.log.info("removed the unfinished uploads of the earlier run",
                         uploads=len(uploads), segments=len(segments))
            ctx.remember(uploads={}, segments=[])

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
                                        parent=self.params.get("parent", ctx.record.id))
            ctx.log.info("a cycle came meanwhile: backed up again", label=newest,
                         activity=record.id)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Cancelled or failed: the members' unfinished uploads are removed (without a
        manifest there is no backup); those done stay, complete."""
        if self.store is None:
            return
        for upload in list(self.uploads.values()):
            try:
                await remove_unfinished(self.store, dict(upload.unfinished),
                                        list(upload.completed))
                await self._abort_unrecorded(upload)
            except StoreError as exc:  # aborted at the next start (``abort_orphans``)
                ctx.log.warning("unfinished upload not removed", error=str(exc))
        self.uploads.clear()
        ctx.remember(uploads={}, segments=[])


    async def _abort_unrecorded(self, upload: SegmentedUpload) -> None:
        """An upload the store began while its creation was being cancelled has an id
        that was never read: the snapshot's backup directory (this backup's alone) is
        asked for the uploads still open in it."""
        assert self.store is not None
        directory = upload.key_for(0).rpartition("/")[0] + "/"
        for key, upload_id, _ in await self.store.multipart_uploads(directory):
            await self.store.abort(key, upload_id)


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


