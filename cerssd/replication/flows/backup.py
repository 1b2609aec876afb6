"""Backup: ``zfs send`` streamed straight into an object store, manifest written last.

    zfs send ─pipe─▶ [zstd|lz4] ─pipe─▶ MultipartWriter ─▶ S3 (one object, N parts)

The storage node does this itself (capability ``direct_copy``): the bytes never pass
a controller and never touch a staging file. A backup is incremental from the newest
snapshot already in the bucket that the source still has (matched by guid), unless
``force_full``.

After a daemon restart the backup starts its stream again from the beginning: the
unfinished multipart upload of the earlier run is aborted first. (``zfs send`` output
is not guaranteed to be byte-identical between runs, so parts already uploaded
cannot be trusted to line up with a new stream.) An object-store outage *within* a
run costs nothing: the parts in flight are retried from memory while the link is
reported lost, and reading waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from ...activity import ActivityRecord, DataRoute, Progress, StatusCode
from ...engine import Activity, ActivityContext, ActivityEngine, ActivityError
from ...flow_control import Counters, FlowGate
from ...objectstore import catalog
from ...objectstore.buffers import BufferPool
from ...objectstore.client import ObjectStore
from ...objectstore.config import StoreConfig
from ...objectstore.layout import Manifest, manifest_key, now_iso, segment_key
from ...objectstore.sse_check import check_sse
from ...objectstore.stores import Stores
from ...objectstore.upload import Retrier, SegmentedUpload, UploadResult
from ...peers.delegate import ChildRequest, DelegatedWork
from ...servers import ServerRegistry
from ...storage.errors import NotFound
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot
from ...storage.values import Snapshot, StreamOptions
from ...transport.process import stop_process
from ...transport.stream import local_command
from ..logic.retention import owned
from ..retry import RetryPolicy
from ..stream.fanout import FanoutGroup, FanoutMissed, SplitOff
from ..stream.filters import backup_filters, spawn_chain
from ..stream.groups import FanoutGroups, StreamKey
from ..stream.relay import Relay
from ..stream.store_calls import StoreCalls
from ..stream.transfer import STREAM_PIPE, FdSet, TransferStalled, first_failure
from .replicate import estimate_stream

KIND = "backup"
#: Why a backup left its cycle's shared send (the ``fanout`` it remembers).
_LEFT: dict[type[Exception], str] = {SplitOff: "split-off", FanoutMissed: "missed",
                                     TransferStalled: "stalled"}


@dataclass(frozen=True)
class BackupRequest:
    snapshot: str
    server: str
    store: str
    force_full: bool = False
    relationship: str | None = None
    #: Set by a relationship: back up its newest snapshot (``-I`` from the last backed-up
    #: one), and join the cycle's fan-out group so the slaves' send feeds the bucket too.
    latest_prefix: str | None = None
    intermediates: bool = False
    fanout_group: str | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> BackupRequest:
        return cls(snapshot=p["snapshot"], server=p["server"], store=p["store"],
                   force_full=bool(p.get("force_full")), relationship=p.get("relationship"),
                   latest_prefix=p.get("latest_prefix"),
                   intermediates=bool(p.get("intermediates")),
                   fanout_group=p.get("fanout_group"))


@dataclass(frozen=True)
class BackupPlan:
    """What a backup sends: ``snapshot``, incremental from ``base`` (a source snapshot
    whose backup the store has) or full; ``done`` if the store has this one already."""

    snapshot: Snapshot
    base: Snapshot | None
    intermediates: bool
    done: bool = False
    #: Raw (``-w``) for an encrypted dataset where the source can: it stays encrypted in
    #: the bucket without its key, and is restored encrypted.
    options: StreamOptions = StreamOptions()

    @property
    def key(self) -> StreamKey:
        """The stream, as fan-out groups compare them (``-I`` means nothing without a
        base: a full stream is the same stream either way)."""
        return StreamKey(self.snapshot.guid, self.base.guid if self.base else None,
                         self.options,
                         self.intermediates and self.base is not None)


def pick_snapshot(source: list[Snapshot], req: BackupRequest) -> Snapshot:
    """The snapshot asked for, or for a relationship its newest one (``latest_prefix``)."""
    asked = next((s for s in source if s.name == req.snapshot), None)
    if asked is None:
        raise NotFound(f"snapshot {req.snapshot} does not exist on {req.server}")
    if req.latest_prefix is not None:
        ours = [s for s in source if owned(s.label, req.latest_prefix)]
        if ours:
            return ours[-1]
    return asked


async def plan_backup(src: StorageBackend, store: ObjectStore, req: BackupRequest) -> BackupPlan:
    """The source's snapshots are listed once, the store's backups once (keys only)."""
    source = await src.snapshots(validate_snapshot(req.snapshot).volume)
    snap = pick_snapshot(source, req)
    guids = await catalog.backed_up_guids(store, snap.volume)
    base = None if req.force_full else catalog.newest_backed_up(guids, source, snap.guid)
    # Where a killed send with intermediates pins its range for ever (no
    # ``safe_send_holds``: zfs-fuse), a backup sends the snapshot alone: the store gets
    # it, not the ones between (a restore of it is the same).
    intermediates = req.intermediates and src.capabilities.safe_send_holds
    return BackupPlan(snap, base, intermediates, done=snap.guid in guids,
                      options=await backup_options(src, snap.volume))


async def backup_options(src: StorageBackend, volume: str) -> StreamOptions:
    """Raw for an encrypted dataset where the source can send raw (probed: zfs-fuse has
    no native encryption, OpenZFS does); otherwise a plain stream any ZFS receives
    (compressed blocks, ``-c``, would tie a restore to a pool with the same features)."""
    if src.capabilities.raw_send and await src.encrypted(volume):
        return StreamOptions(raw=True)
    return StreamOptions()


class BackupWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry, stores: Stores,
                 policy: RetryPolicy, groups: FanoutGroups | None = None) -> None:
        self.req = BackupRequest.from_params(record.params)
        self.params = record.params
        self.servers = servers
        self.store: ObjectStore = stores.get(self.req.store)
        self.policy = policy
        self.upload: SegmentedUpload | None = None  # until the manifest is written
        # Only a first run joins its group: after a daemon restart the group is gone.
        self.group = groups.get(self.req.fanout_group) if groups and self.req.fanout_group \
            and not record.restarts else None

    async def run(self, ctx: ActivityContext) -> None:
        try:
            await self._run(ctx)
        finally:
            self._leave_group()

    async def _run(self, ctx: ActivityContext) -> None:
        calls = StoreCalls(ctx, self.store, self.policy)
        await self._abort_earlier_run(ctx, calls)
        src = await self.servers.backend(self.req.server)
        try:
            plan = await calls("plan", lambda: plan_backup(src, self.store, self.req))
        except NotFound as exc:
            raise ActivityError(str(exc), StatusCode.ERROR, "not-found") from None
        self._follow(ctx, plan.snapshot)
        if plan.done:
            ctx.set_progress(0, 0)
            ctx.log.info("snapshot already backed up", snapshot=plan.snapshot.name,
                         store=self.store.name)
            return
        group = self._member_of(plan)
        try:
            await self._backup(ctx, calls, src, plan, group)
        except (SplitOff, FanoutMissed, TransferStalled) as exc:
            # The shared send went on without the bucket (it was slower, came late, or
            # took nothing for the stall timeout because the store was away and its
            # calls were being retried): what was uploaded is thrown away and the backup
            # sends on its own, whose store calls retry as long as the policy allows.
            ctx.log.info("left the fan-out; sending on its own", why=str(exc))
            ctx.remember(fanout=_LEFT.get(type(exc), "missed"))
            await self._discard(ctx, calls)  # the store may still be away: retried
            await self._backup(ctx, calls, src, plan, None)

    def _member_of(self, plan: BackupPlan) -> FanoutGroup | None:
        """The cycle's shared send, if it is exactly the stream this backup needs."""
        entry = self.group
        if entry is None:
            return None
        if entry.key != plan.key:
            self._leave_group()
            return None
        self.group = None  # attaching now: no withdraw afterwards
        return entry.group

    def _leave_group(self) -> None:
        """A member that will not attach must say so, or the send waits for it."""
        if self.group is not None:
            self.group.group.withdraw(self.req.store)
            self.group = None

    async def _backup(self, ctx: ActivityContext, calls: StoreCalls, src: StorageBackend,
                      plan: BackupPlan, group: FanoutGroup | None) -> None:
        cfg = self.store.config
        snap, base = plan.snapshot, plan.base
        base_name = base.name if base else None
        exact = await src.estimate(snap.name, base_name, intermediates=plan.intermediates,
                                   options=plan.options)
        size = exact if exact is not None else estimate_stream(snap, base)
        ctx.set_progress(0, size, unit="bytes", estimated=exact is None)
        ctx.counters.done = 0
        ctx.remember(base_guid=base.guid if base else None, raw=plan.options.raw,
                     encryption="age" if cfg.privacy.encrypted else "none")
        ctx.log.info("backup planned", snapshot=snap.name, base=base_name, store=cfg.name,
                     compression=cfg.compression, estimate=size, shared_send=group is not None,
                     options=str(plan.options), age=cfg.privacy.encrypted)
        await calls("check server-side encryption", lambda: check_sse(self.store))
        self.upload = new_upload(self.store, snap, calls, checkpoint=ctx.checkpoint,
                                 started=lambda: self._started(ctx))
        if group is None:
            self.upload.on_sent = ctx.counters.sent
            raw_size, result = await self._stream(ctx, src, plan, self.upload)
        else:  # the fan-out counts the bytes it hands over, as read and as sent
            raw_size, result = await self._shared(ctx, group, self.upload)
            ctx.remember(fanout="shared")
        mkey, manifest = await finish_backup(self.store, calls, snap, base, raw_size, result,
                                             self.req.server, ctx.log, options=plan.options)
        self.upload = None
        ctx.counters.done = raw_size
        ctx.set_progress(raw_size, raw_size, estimated=False)
        ctx.remember(manifest_key=mkey, stream_size=result.size, raw_size=raw_size,
                     parts=len(result.parts), kind=manifest.kind, uploads={}, segments=[])
        ctx.log.info("backup complete", snapshot=snap.name, manifest=mkey, kind=manifest.kind,
                     raw_bytes=raw_size, stored_bytes=result.size, parts=len(result.parts))

    async def _shared(self, ctx: ActivityContext, group: FanoutGroup,
                      writer: SegmentedUpload) -> tuple[int, UploadResult]:
        """Take the stream from the group's send: lane → [compressor] [age] (or cat) →
        uploader; the lane's receiver is the first filter, the others follow it."""
        argvs = [argv for _, argv in backup_filters(self.store.config)] or [["cat"]]
        fds = FdSet()
        out_r, out_w = fds.channel()
        procs: list[asyncio.subprocess.Process] = []
        first_out = out_w
        if len(argvs) > 1:
            mid_r, first_out = fds.pipe(STREAM_PIPE)
            procs = await spawn_chain(argvs[1:], mid_r, out_w, fds)
        attach = asyncio.ensure_future(group.attach(
            self.req.store, local_command(argvs[0]),
            counters=ctx.counters, gate=ctx.flow, stdout=first_out,
            spawned=lambda: fds.close(first_out)))
        upload = asyncio.ensure_future(writer.run(out_r))
        try:
            await asyncio.wait({attach, upload}, return_when=asyncio.FIRST_EXCEPTION)
            for task in (upload, attach):  # the uploader's own failure is the real one
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            got = await attach, await upload
            names = [name for name, _ in backup_filters(self.store.config)][1:]
            if problem := await first_failure(zip(names, procs, strict=True)):
                raise ActivityError(problem, StatusCode.ERROR, "backend")
            return got
        finally:
            for task in (attach, upload):
                task.cancel()
            await asyncio.gather(attach, upload, return_exceptions=True)
            for proc in procs:
                await asyncio.shield(stop_process(proc))
            fds.close_all()

    async def _discard(self, ctx: ActivityContext, calls: StoreCalls | None = None) -> None:
        """Throw away an upload that will not be completed (before sending again, with
        ``calls`` retrying while the store is away; in a rollback, without)."""
        if self.upload is None:
            return
        await self._remove(dict(self.upload.unfinished), list(self.upload.completed), calls)
        self.upload = None
        ctx.remember(uploads={}, segments=[])

    async def _remove(self, uploads: Mapping[str, str], segments: Iterable[str],
                      calls: StoreCalls | None = None) -> None:
        await remove_unfinished(self.store, uploads, segments, calls)

    def _started(self, ctx: ActivityContext) -> None:
        """Journal every upload and finished segment: a restart must clean them up."""
        assert self.upload is not None
        ctx.remember(uploads=dict(self.upload.unfinished),
                     segments=list(self.upload.completed))

    async def _abort_earlier_run(self, ctx: ActivityContext, calls: StoreCalls) -> None:
        """A restarted backup begins again: the earlier run's objects are removed."""
        uploads: dict[str, str] = self.params.get("uploads") or {}
        segments: list[str] = self.params.get("segments") or []
        await self._remove(uploads, segments, calls)
        if uploads or segments:
            ctx.log.info("removed the unfinished upload of the earlier run",
                         uploads=len(uploads), segments=len(segments))
            ctx.remember(uploads={}, segments=[])

    def _follow(self, ctx: ActivityContext, snap: Snapshot) -> None:
        """Journal the snapshot this backup sends; one replaced under its name is refused."""
        if snap.name != self.req.snapshot:  # a relationship's newer snapshot
            self.req = replace(self.req, snapshot=snap.name)
            ctx.remember(snapshot=snap.name, guid=snap.guid)
        known = self.params.get("guid")
        if known is not None and known != snap.guid and self.req.latest_prefix is None:
            raise ActivityError(f"{snap.name} was replaced by another snapshot of that name "
                                "since the backup began", StatusCode.ERROR, "conflict")
        if known is None:
            ctx.remember(guid=snap.guid)

    async def _stream(self, ctx: ActivityContext, src: StorageBackend, plan: BackupPlan,
                      writer: SegmentedUpload) -> tuple[int, UploadResult]:
        return await send_into(src, self.store.config, plan.snapshot.name,
                               plan.base.name if plan.base else None, writer, ctx.counters,
                               ctx.flow, intermediates=plan.intermediates,
                               options=plan.options)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Abort unfinished uploads and delete segments: without a manifest, no backup."""
        if self.upload is not None:
            ctx.log.info("removing the unfinished backup",
                         uploads=len(self.upload.unfinished),
                         segments=len(self.upload.completed))
        await self._discard(ctx)



# -- one backup's stream, upload and manifest: used by ``BackupWork`` and by a tree's
# -- backup (``relationships.tree_backup``), which runs many of them in one activity.

def new_upload(store: ObjectStore, snap: Snapshot, calls: Retrier, *,
               checkpoint: Callable[[], Awaitable[None]],
               started: Callable[[], None], pool: BufferPool | None = None,
               ) -> SegmentedUpload:
    """The segmented upload of ``snap``'s stream into its backup directory; ``started``
    is called on every upload begun (the caller journals what a restart must remove);
    ``pool``: part buffers shared with other uploads of the same activity."""
    cfg = store.config
    extra = {"StorageClass": cfg.storage_class} if cfg.storage_class else {}
    return SegmentedUpload(
        store, lambda i: segment_key(cfg.prefix, snap.volume, snap.label, snap.guid,
                                     cfg.compression, i, encrypted=cfg.privacy.encrypted),
        part_size=cfg.part_size, concurrency=cfg.concurrency, retry=calls,
        checkpoint=checkpoint, started=lambda key, upload_id: started(),
        extra={**extra, **cfg.privacy.sse_args()}, pool=pool)


async def finish_backup(store: ObjectStore, calls: Retrier, snap: Snapshot,
                        base: Snapshot | None, raw_size: int, result: UploadResult,
                        server: str, log: Any, *, options: StreamOptions = StreamOptions(),
                        ) -> tuple[str, Manifest]:
    """Check every segment's stored size, then write the manifest (last: only now is it
    a backup) and abort any upload the store still lists under its directory."""
    for seg in result.segments:
        stored = await calls("check size", partial(store.head, seg.key))
        if stored.size != seg.size:
            raise ActivityError(f"the store holds {stored.size} bytes of {seg.key}, "
                                f"{seg.size} were uploaded", StatusCode.ERROR, "store")
    manifest = Manifest(
        volume=snap.volume, snapshot=snap.name, guid=snap.guid,
        snapshot_created=snap.creation, parent_guid=base.guid if base else None,
        parent_snapshot=base.name if base else None, segments=result.segments,
        stream_size=result.size, raw_size=raw_size, compression=store.config.compression,
        parts=result.parts, source_server=server,
        snapshot_txg=snap.createtxg, created_at=now_iso(),
        raw=options.raw, **encryption_fields(store.config))
    mkey = manifest_key(store.config.prefix, snap.volume, snap.label, snap.guid)
    await calls("write manifest", lambda: store.put_bytes(
        mkey, manifest.encode(), "application/json"))
    await _sweep_leftovers(store, calls, mkey.rpartition("/")[0] + "/", log)
    return mkey, manifest


def encryption_fields(cfg: StoreConfig) -> dict[str, Any]:
    """What a manifest says of the stream's age encryption (docs/backups.md)."""
    privacy = cfg.privacy
    if not privacy.encrypted:
        return {"encryption": "none", "age_recipients": ()}
    return {"encryption": "age", "age_recipients": privacy.recipients()}


async def _sweep_leftovers(store: ObjectStore, calls: Retrier, prefix: str,
                           log: Any) -> None:
    """Abort any upload still listed under this backup's directory once it is complete.

    Seen on SeaweedFS after the store was killed and restarted mid-upload: a completed
    upload was still listed. Aborting it frees what it holds; the completed objects
    are not uploads and stay (on AWS a completed id is simply unknown: nothing to do).
    """
    leftovers = await calls("list leftovers", partial(store.multipart_uploads, prefix))
    for key, upload_id, _ in leftovers:
        await calls("abort leftover", partial(store.abort, key, upload_id))
        log.info("aborted a leftover upload of a completed backup", key=key,
                 upload_id=upload_id)


async def remove_unfinished(store: ObjectStore, uploads: Mapping[str, str],
                            segments: Iterable[str], calls: Retrier | None = None) -> None:
    """Abort ``uploads`` and delete ``segments``: what an unfinished backup left.

    With ``calls`` each request is retried while the store is away (a run starting
    over); without, a failure propagates (a rollback reports it)."""
    async def once(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()

    run = calls or once
    for key, upload_id in uploads.items():
        await run("abort upload", partial(store.abort, key, upload_id))
    for key in segments:
        await run("delete segment", partial(store.delete, key))


async def send_into(src: StorageBackend, cfg: StoreConfig, snapshot: str, base: str | None,
                    writer: SegmentedUpload, counters: Counters, gate: FlowGate, *,
                    intermediates: bool, options: StreamOptions = StreamOptions(),
                    ) -> tuple[int, UploadResult]:
    """Run send (and its filters: compressor, age) into the writer; returns (raw bytes,
    upload result)."""
    filters = backup_filters(cfg)
    fds = FdSet()
    procs: list[asyncio.subprocess.Process] = []
    relay: Relay | None = None
    closer: asyncio.Future[None] | None = None
    try:
        # The relay splices (a pipe); the uploader reads itself (a socket pair).
        send_r, send_w = fds.pipe(STREAM_PIPE) if filters else fds.channel()
        send = await src.send(snapshot, base, intermediates=intermediates,
                              options=options).spawn(stdin=None, stdout=send_w)
        procs.append(send)
        fds.close(send_w)
        read_fd = send_r
        if not filters:
            writer.on_read = counters.read
        else:
            raw_r, raw_w = fds.pipe(STREAM_PIPE)
            out_r, out_w = fds.channel()
            procs += await spawn_chain([argv for _, argv in filters], raw_r, out_w, fds)
            relay = Relay(send_r, raw_w, counters=counters, gate=gate, count=counters.read)
            relay.start()
            # The first filter sees EOF only once the relay has closed its input.
            closer = asyncio.ensure_future(_close_after(relay, fds, raw_w))
            read_fd = out_r
        result = await writer.run(read_fd)
        if closer is not None:
            await closer
        raw = relay.result.bytes if relay is not None else result.size
        names = ["zfs send", *(name for name, _ in filters)]
        problem = await first_failure(zip(names, procs, strict=True))
        if problem is not None:
            raise ActivityError(problem, StatusCode.ERROR, "backend")
        return raw, result
    finally:
        if relay is not None:
            relay.stop.set()
        for proc in procs:
            await asyncio.shield(stop_process(proc))
        if relay is not None:
            await asyncio.to_thread(relay.join)
        if closer is not None:
            await asyncio.gather(closer, return_exceptions=True)
        fds.close_all()


async def _close_after(relay: Relay, fds: FdSet, fd: int) -> None:
    await asyncio.to_thread(relay.finished.wait)
    fds.close(fd)

def submit_backup(engine: ActivityEngine, servers: ServerRegistry, stores: Stores,
                  req: BackupRequest) -> ActivityRecord:
    snap = validate_snapshot(req.snapshot)
    stores.get(req.store)
    entry = servers.entry(req.server)
    if servers.delegates(req.server):  # its own cerssd streams it: docs/peers.md
        return engine.submit(KIND, volume=snap.volume, source=req.server, target=req.store,
                             params=req.params(), self_restarting=True,
                             progress=Progress(0, 0, unit="bytes"), node=req.server,
                             route=DataRoute.DELEGATED)
    if not entry.capabilities.direct_copy:
        raise ActivityError(
            f"server {req.server} cannot copy directly to an object store (direct_copy): "
            "its stream would pass through this daemon; run cerssd on that server "
            f"({servers.why_not_delegated(req.server)})",
            StatusCode.ERROR, "capability")
    return engine.submit(KIND, volume=snap.volume, source=req.server, target=req.store,
                         params=req.params(), self_restarting=True,
                         progress=Progress(0, 0, unit="bytes"))


def delegated_backup(record: ActivityRecord, servers: ServerRegistry,
                     policy: RetryPolicy) -> DelegatedWork:
    """The parent of a backup that the peer daemon on the snapshot's server runs: the
    peer names its own storage ``daemon_server`` and the store as this config does."""
    req = BackupRequest.from_params(record.params)
    cfg = servers.entry(req.server).config
    body = {"snapshot": req.snapshot, "server": cfg.daemon_server, "store": req.store,
            "force_full": req.force_full, "intermediates": req.intermediates}
    # What a relationship's bookkeeping reads of a finished backup (its store's new base,
    # whether it was full) is taken over from the child as the parent's own.
    return DelegatedWork(servers.peer(req.server), servers.links, policy,
                         ChildRequest("/v1/backups", body,
                                      adopt=("snapshot", "guid", "base_guid")))


def delegated_uploads(live: Iterable[Activity]) -> list[str]:
    """Where in a store the live delegated backups' peers upload (``volume/label.``): a
    restarted daemon's orphan clean-up must not abort them (``Stores.abort_orphans``)."""
    live = [a for a in live if a.record.route == DataRoute.DELEGATED]
    # a tree's delegated backup lists its members' (``relationships.tree_backup``)
    batches = [str(p) for a in live for p in a.record.params.get("peer_uploads") or ()]
    return [*(f"{s.volume}/{s.snapshot}." for s in
              (validate_snapshot(a.record.params["snapshot"]) for a in live
               if a.record.kind == KIND)), *batches]


def register(engine: ActivityEngine, servers: ServerRegistry, stores: Stores,
             policy: RetryPolicy, groups: FanoutGroups | None = None) -> None:
    def work(r: ActivityRecord) -> BackupWork | DelegatedWork:
        if r.route == DataRoute.DELEGATED:
            return delegated_backup(r, servers, policy)
        return BackupWork(r, servers, stores, policy, groups)

    engine.register(KIND, work)
