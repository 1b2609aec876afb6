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
3. rsync (``stream.filesync``) with live n and m worked out alongside: a first copy's
   from the walk of the source's view that also says whether it has holes to keep
   (``transport.files.survey_tree``), an incremental's from a dry run that starts once
   the copy has run a second; suspend, and a lost link reported as ``Transient`` (the
   attempt is retried: what was copied stays, and rsync's quick check skips it);
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...engine import ActivityContext, ActivityError
from ...servers import ServerRegistry
from ...storage.errors import NotFound
from ...storage.interface import StorageBackend
from ...transport.files import (
    FileEnd,
    TreeSurvey,
    distrust_recent_mtimes,
    file_end,
    survey_tree,
)
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
        # A first copy goes into an empty volume: the source's walk says how much it
        # sends. Holes are kept by the destination itself (zero runs stored as holes)
        # or by rsync's slower --sparse, asked for only where the source has holes.
        first = plan.mode == PlanMode.FULL and not copy.resumed
        needs_sparse_answer = not dst.capabilities.holes_from_zeros
        survey = asyncio.ensure_future(survey_tree(source_transport, view)) \
            if first or needs_sparse_answer else None
        try:
            sparse = needs_sparse_answer and survey is not None and (await survey).sparse
            ctx.remember(generic_sparse=sparse)
            ctx.log.info("generic copy started", mode=plan.mode, view=view, into=into,
                         continued=copy.resumed, sparse=sparse)
            if first and survey is not None:
                planning = _planned_by_survey(survey, source, target, copy)
            else:
                planning = _planned_by_dry_run(source, target, copy)
            started = time.monotonic()
            try:
                stats = await _copy_measured(ctx, source, target, copy, sparse=sparse,
                                             planning=planning)
            except SyncFailed as exc:
                raise _failure(exc, copy) from exc
        finally:
            if survey is not None and not survey.done():
                survey.cancel()
                await asyncio.gather(survey, return_exceptions=True)
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


#: Seconds an incremental copy runs before its dry run for m starts: a copy of a few
#: changed files is over by then, and does not share the CPUs with a second walk of
#: both trees and a second session to the other end.
DRY_RUN_AFTER = 1.0


def _planned_by_dry_run(source: FileEnd, target: FileEnd,
                        copy: GenericCopy) -> Callable[[], Awaitable[int]]:
    """m of an incremental (or a continued first copy): rsync's dry run, which compares
    both trees as the copy will, once the copy has run ``DRY_RUN_AFTER`` seconds."""
    async def plan() -> int:
        await asyncio.sleep(DRY_RUN_AFTER)
        return (await measure(source, target, stall=copy.stall_timeout)).transferred_size
    return plan


def _planned_by_survey(survey: asyncio.Future[TreeSurvey], source: FileEnd,
                       target: FileEnd, copy: GenericCopy) -> Callable[[], Awaitable[int]]:
    """m of a first copy: everything the source's walk found, or the dry run's answer
    if that walk failed."""
    async def plan() -> int:
        size = (await survey).size
        if size is None:
            return await _planned_by_dry_run(source, target, copy)()
        return size
    return plan


async def _copy_measured(ctx: ActivityContext, source: FileEnd, target: FileEnd,
                         copy: GenericCopy, *, sparse: bool,
                         planning: Callable[[], Awaitable[int]]) -> SyncStats:
    """rsync, with m worked out alongside (``planning``): m is exact once that answers
    and the copy does not wait for it."""
    ctx.set_progress(0, 0, estimated=True)
    ctx.counters.done = 0
    planned_task = asyncio.ensure_future(planning())

    def planned(task: asyncio.Future[int]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # the copy's own outcome says what went wrong
        total = task.result()
        ctx.set_progress(ctx.counters.done or 0, total, estimated=False)
        ctx.log.info("generic copy planned", bytes=total)

    planned_task.add_done_callback(planned)
    try:
        stats = await sync(source, target, counters=ctx.counters, gate=ctx.flow,
                           limit=copy.limit, sparse=sparse, stall=copy.stall_timeout)
    finally:
        if not planned_task.done():
            planned_task.cancel()  # the copy ended first: its own stats are m
        await asyncio.gather(planned_task, return_exceptions=True)
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
