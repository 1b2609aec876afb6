"""The generic path of ``snapshot_replicate``: files from a snapshot's view, then a snapshot.

Used where no native stream serves (different drivers, a base shared only as a copy,
or asked for: ``logic.plan.choose_path``). One attempt:

1. the destination volume: made empty for a full copy (``create_volume``, or its
   staging volume for an overwrite), else fenced off the read-only a replica keeps
   while the copy writes into it;
2. the source snapshot's read-only view (``snapshot_view``) and the volume's path (the
   two servers' preparations run at once); in an incremental, the files the base's
   second may have left ambiguous to rsync's quick check are marked to be compared
   (``transport.files.distrust_recent_mtimes``);
3. rsync (``stream.filesync``) with live n and, alongside, a dry run that makes m exact
   when it answers; suspend, and a lost link reported as ``Transient`` (the attempt is
   retried: what was copied stays, and rsync's quick check skips it);
4. the view released and, at the same time (they are on two servers), a snapshot of
   the same label that records the source snapshot's guid as its ``origin`` (what the
   next plan matches); then the read-only fence back.

A cancel (or a failure that ends the activity) rolls the destination back to the
snapshot it had (``rollback``): the files half-copied are gone, as a cut-off receive
leaves nothing. A volume the copy created and that holds no snapshot is removed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ...engine import ActivityContext, ActivityError
from ...servers import ServerRegistry
from ...storage.errors import NotFound
from ...storage.interface import StorageBackend
from ...transport.files import FileEnd, distrust_recent_mtimes, file_end, has_sparse_files
from ..logic.plan import Plan, PlanMode
from ..retry import Transient
from ..stream.filesync import SyncFailed, SyncStats, measure, sync


@dataclass(frozen=True)
class GenericCopy:
    """One generic copy of ``plan`` from ``source`` to ``destination`` (server names)."""

    plan: Plan
    source: str
    destination: str
    receive_into: str
    #: The server whose link the copy depends on (the remote end).
    remote: str
    limit: float | None = None
    #: Seconds without a byte either way after which rsync gives up (its ``--timeout``).
    stall_timeout: float | None = None
    #: The destination holds an earlier attempt's unfinished first copy to continue.
    resumed: bool = False


async def run_copy(ctx: ActivityContext, servers: ServerRegistry, copy: GenericCopy,
                   src: StorageBackend, dst: StorageBackend) -> int:
    """The copy up to the new destination snapshot; returns the file data it sent."""
    plan = copy.plan
    if plan.mode == PlanMode.INCREMENTAL and plan.target_base is not None:
        ctx.remember(generic_base=plan.target_base.name)
    # The two servers' preparations (a clone and its mount on one, the fence lifted on
    # the other: remounts on zfs-fuse) do not wait for each other.
    view_task = asyncio.ensure_future(
        src.snapshot_view(plan.snapshot.name, for_server=copy.destination))
    try:
        into = await _prepare_destination(dst, copy.receive_into)
        # What rsync's quick check could take for done: files written near the base
        # (an incremental), or an unfinished first copy's last, cut-off files.
        since = plan.base.creation if plan.mode == PlanMode.INCREMENTAL and plan.base \
            else plan.snapshot.creation if copy.resumed else None
        if since is not None:
            await distrust_recent_mtimes(servers.entry(copy.destination).transport, into,
                                         since)
        view = await view_task
    except BaseException:
        await _release_if_made(view_task, src, copy)
        raise

    async def release() -> None:
        await asyncio.shield(src.release_view(plan.snapshot.name,
                                              for_server=copy.destination))

    try:
        source_transport = servers.entry(copy.source).transport
        source = file_end(source_transport, view)
        target = file_end(servers.entry(copy.destination).transport, into)
        # Holes are kept by the destination itself (zero runs stored as holes) or by
        # rsync's slower --sparse, asked for only where the source has holes.
        sparse = not dst.capabilities.holes_from_zeros and \
            await has_sparse_files(source_transport, view)
        ctx.remember(generic_sparse=sparse)
        ctx.log.info("generic copy started", mode=plan.mode, view=view, into=into,
                     continued=copy.resumed, sparse=sparse)
        started = time.monotonic()
        try:
            stats = await _copy_measured(ctx, source, target, copy, sparse=sparse)
        except SyncFailed as exc:
            raise _failure(exc, copy) from exc
        ctx.log.info("rsync finished", seconds=round(time.monotonic() - started, 3),
                     sent=stats.sent, received=stats.received)
    except BaseException:
        await release()
        raise
    ctx.counters.sent(stats.wire)
    ctx.remember(generic_stats={"transferred_size": stats.transferred_size,
                                "literal": stats.literal, "sent": stats.sent,
                                "received": stats.received})
    # The source's view and the destination's snapshot are on two servers: neither
    # waits for the other (a clone destroyed on zfs-fuse, a snapshot on the other).
    released = asyncio.ensure_future(release())
    try:
        await dst.create_snapshot(copy.receive_into, plan.snapshot.label,
                                  origin=plan.snapshot.guid)
    finally:
        await released
    return stats.transferred_size


async def _prepare_destination(dst: StorageBackend, volume: str) -> str:
    """The volume to copy into, made or unfenced; returns its path."""
    if not await dst.exists(volume):
        await dst.create_volume(volume)
    elif await dst.is_readonly(volume):
        await dst.set_readonly(volume, False)
    return await dst.volume_path(volume)


async def _release_if_made(view_task: asyncio.Future[str], src: StorageBackend,
                           copy: GenericCopy) -> None:
    if not view_task.done():
        view_task.cancel()
        await asyncio.gather(view_task, return_exceptions=True)
    if view_task.cancelled() or view_task.exception() is not None:
        return
    await asyncio.shield(src.release_view(copy.plan.snapshot.name,
                                          for_server=copy.destination))


async def _copy_measured(ctx: ActivityContext, source: FileEnd, target: FileEnd,
                         copy: GenericCopy, *, sparse: bool) -> SyncStats:
    """rsync, with its dry run for m alongside: m is exact once the dry run answers
    (a walk of both trees' metadata, on the other CPU), and the copy does not wait."""
    ctx.set_progress(0, 0, estimated=True)
    ctx.counters.done = 0
    planning = asyncio.ensure_future(measure(source, target, stall=copy.stall_timeout))

    def planned(task: asyncio.Future[SyncStats]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # the copy's own outcome says what went wrong
        total = task.result().transferred_size
        ctx.set_progress(ctx.counters.done or 0, total, estimated=False)
        ctx.log.info("generic copy planned", bytes=total)

    planning.add_done_callback(planned)
    try:
        stats = await sync(source, target, counters=ctx.counters, gate=ctx.flow,
                           limit=copy.limit, sparse=sparse, stall=copy.stall_timeout)
    finally:
        if not planning.done():
            planning.cancel()  # the copy ended first: its own stats are m
        await asyncio.gather(planning, return_exceptions=True)
    ctx.counters.done = stats.transferred_size
    ctx.set_progress(stats.transferred_size, stats.transferred_size, estimated=False)
    return stats


def _failure(exc: SyncFailed, copy: GenericCopy) -> Exception:
    if exc.link_lost:
        return Transient(copy.remote, f"file copy interrupted: {exc}")
    return ActivityError(f"file copy (rsync) failed: {exc}", reason="transfer")


async def roll_back(ctx: ActivityContext, dst: StorageBackend, target_volume: str) -> None:
    """Undo a copy that did not finish: back to the snapshot the destination had."""
    base = ctx.record.params.get("generic_base")
    if not base:
        return
    try:
        await dst.rollback(base)
    except NotFound:
        return
    ctx.log.info("rolled the destination back to its last snapshot", snapshot=base)
    await dst.set_readonly(target_volume)
