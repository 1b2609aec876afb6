"""Many members' backups into one store inside one activity: what a tree's backup
(``relationships.tree_backup``) runs on a local master, and what a peer daemon runs for
a tree whose master it is (``flows.member_backups``).

The members' uploads run at most ``width`` at once through one pool of part buffers; a
member that fails is reported (``on_done`` with its error) and the others go on. Each
upload begun and segment completed is journaled (``uploads``, ``segments``): a
restarted run removes them before it begins again, and a cancel removes those under way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from ...activity import StatusCode
from ...engine import ActivityContext, ActivityError
from ...objectstore import catalog
from ...objectstore.buffers import BufferPool
from ...objectstore.client import ObjectMissing, ObjectStore, StoreError
from ...objectstore.layout import manifest_key
from ...objectstore.sse_check import check_sse
from ...objectstore.upload import SegmentedUpload
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...storage.values import Snapshot, StreamOptions
from ...transport.errors import LinkError
from ..stream.store_calls import StoreCalls
from .backup import backup_options, finish_backup, new_upload, remove_unfinished, send_into

#: What a member's backup may fail with, leaving the others to go on.
MEMBER_FAILURES = (ActivityError, BackendError, LinkError, StoreError)


@dataclass(frozen=True)
class Job:
    """One member's backup: ``snapshot`` full, or incremental from ``base``.
    ``key``: what the caller knows the member by (a tree's relative name)."""

    key: str
    snapshot: Snapshot
    base: Snapshot | None
    #: The base came from the relationship's memory: checked in the bucket first, and a
    #: failure plans the member from its own listings and tries once more. A remembered
    #: job without a base (new to the tree, or failing) is planned from them at once.
    remembered: bool = False
    #: The store's ``full_every`` is due: a full stream, whatever base there is.
    full: bool = False


#: Called when a member's upload starts, and when it stops (also when cancelled).
OnStart = Callable[[Job], None]
#: Called with a member's outcome: (job, snapshot backed up, kind made or None when
#: nothing was due, error or None).
OnDone = Callable[[Job, Snapshot, "str | None", "str | None"], None]


class MemberUploads:
    def __init__(self, store: ObjectStore, master: str) -> None:
        self.store = store
        #: The server named in each manifest as the one that sent it.
        self.master = master
        #: Uploads under way, by member: what a restart or a cancel must remove.
        self.uploads: dict[str, SegmentedUpload] = {}
        #: The root's stream options serve every member, as in a tree's replication:
        #: raw when the root is encrypted (its children are then encrypted too).
        self.options = StreamOptions()

    async def run(self, ctx: ActivityContext, src: StorageBackend, calls: StoreCalls,
                  jobs: list[Job], *, width: int, root: str, on_start: OnStart,
                  on_stop: OnStart, on_done: OnDone) -> list[str]:
        """Each job, ``width`` at once; returns the kinds (full, incremental) made."""
        ctx.set_progress(0, len(jobs), unit="members", estimated=False)
        if not jobs:
            return []
        store = self.store
        width = max(1, min(width, len(jobs)))
        cfg = store.config
        # A part being read per member and ``concurrency`` on the wire: the memory of one
        # backup (plus a part per further member), allocated once for all of them.
        pool = BufferPool(width + cfg.concurrency, cfg.part_size)
        limit = asyncio.Semaphore(width)
        made: list[str] = []
        done = [0]
        intermediates = src.capabilities.safe_send_holds
        self.options = await backup_options(src, root)
        await calls("check server-side encryption", lambda: check_sse(store))

        async def one(job: Job) -> None:
            async with limit:
                await ctx.checkpoint()
                on_start(job)
                try:
                    kind, snap = await self._member(ctx, src, calls, pool, job, intermediates)
                except MEMBER_FAILURES as exc:
                    error = getattr(exc, "message", None) or str(exc)
                    ctx.log.warning("member not backed up", member=job.snapshot.volume,
                                    store=store.name, error=error)
                    on_done(job, job.snapshot, None, error)
                else:
                    on_done(job, snap, kind, None)
                    if kind is not None:
                        made.append(kind)
                finally:
                    on_stop(job)
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

    async def _member(self, ctx: ActivityContext, src: StorageBackend, calls: StoreCalls,
                      pool: BufferPool, job: Job,
                      intermediates: bool) -> tuple[str | None, Snapshot]:
        """One member's backup; a remembered base that fails is planned again from the
        member's own listings, once. Returns the kind made (None: nothing was due) and
        the snapshot backed up."""
        if job.full:
            return await self._upload(ctx, src, calls, pool, job, intermediates), job.snapshot
        if job.remembered and job.base is not None:
            try:
                if not await self._base_missing(calls, job.base):
                    return await self._upload(ctx, src, calls, pool, job,
                                              intermediates), job.snapshot
            except (ActivityError, BackendError) as exc:
                if isinstance(exc, ActivityError) and exc.reason in ("store", "link"):
                    raise  # the store's trouble: another plan would not help
                ctx.log.info("member not backed up from its known base; planned again",
                             member=job.snapshot.volume, error=str(exc))
        job = await self._plan(src, calls, job)
        if job.base is not None and job.base.guid == job.snapshot.guid:
            return None, job.snapshot
        return await self._upload(ctx, src, calls, pool, job, intermediates), job.snapshot

    async def _base_missing(self, calls: StoreCalls, base: Snapshot) -> bool:
        """Whether the base's backup is gone from the bucket (deleted by someone)."""
        store = self.store
        key = manifest_key(store.config.prefix, base.volume, base.label, base.guid)
        try:
            await calls("check base", lambda: store.head(key))
        except ActivityError as exc:
            if isinstance(exc.__cause__, ObjectMissing):
                return True
            raise
        return False

    async def _plan(self, src: StorageBackend, calls: StoreCalls, job: Job) -> Job:
        """The member's base from its own listings, as a single volume's backup plans:
        its snapshots on the master and its backups in the bucket (keys only)."""
        name = job.snapshot.volume
        try:
            snaps = await src.snapshots(name)
        except NotFound:
            raise ActivityError(f"{name} no longer exists on the master",
                                StatusCode.NOT_FOUND, "not-found") from None
        snap = next((s for s in snaps if s.name == job.snapshot.name), None)
        if snap is None or snap.guid != job.snapshot.guid:
            raise ActivityError(f"{job.snapshot.name} no longer exists on the master",
                                StatusCode.NOT_FOUND, "not-found")
        store = self.store
        guids = await calls("list backups", lambda: catalog.backed_up_guids(store, name))
        if snap.guid in guids:
            return Job(job.key, snap, snap)
        return Job(job.key, snap, catalog.newest_backed_up(guids, snaps, snap.guid))

    async def _upload(self, ctx: ActivityContext, src: StorageBackend, calls: StoreCalls,
                      pool: BufferPool, job: Job, intermediates: bool) -> str:
        """Stream the member's snapshot into its backup directory, manifest last; an
        unfinished upload is removed before the failure is reported."""
        store = self.store
        snap, base = job.snapshot, job.base
        upload = self.uploads[job.key] = new_upload(
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
            self._forget(ctx, job.key, upload)
            raise
        # (cancelled: the upload stays listed, for the rollback to remove)
        self._forget(ctx, job.key, upload)
        return manifest.kind

    def _forget(self, ctx: ActivityContext, key: str, upload: SegmentedUpload) -> None:
        """The member's upload is complete (or removed): no longer the journal's."""
        if self.uploads.get(key) is upload:
            del self.uploads[key]
        if upload.unfinished or upload.completed:
            self._journal(ctx)

    def _journal(self, ctx: ActivityContext) -> None:
        """Every upload begun and segment completed of the members under way: a
        restarted run removes them before it begins again."""
        ctx.remember(uploads={k: v for u in self.uploads.values()
                              for k, v in u.unfinished.items()},
                     segments=[k for u in self.uploads.values() for k in u.completed])

    async def abort_earlier_run(self, ctx: ActivityContext, calls: StoreCalls) -> None:
        uploads: dict[str, str] = ctx.params.get("uploads") or {}
        segments: list[str] = ctx.params.get("segments") or []
        if uploads or segments:
            await remove_unfinished(self.store, uploads, segments, calls)
            ctx.log.info("removed the unfinished uploads of the earlier run",
                         uploads=len(uploads), segments=len(segments))
            ctx.remember(uploads={}, segments=[])

    async def rollback(self, ctx: ActivityContext) -> None:
        """The members' unfinished uploads are removed (without a manifest there is no
        backup); those done stay, complete."""
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
        directory = upload.key_for(0).rpartition("/")[0] + "/"
        for key, upload_id, _ in await self.store.multipart_uploads(directory):
            await self.store.abort(key, upload_id)
