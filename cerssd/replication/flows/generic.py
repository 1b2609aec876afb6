"""The generic path of ``snapshot_replicate``: files from a snapshot's view, then a snapshot.

Used where no native stream serves (different drivers, a base shared only as a copy,
or asked for: ``logic.plan.choose_path``). One attempt:

1. the destination volume: made empty for a full copy (``create_volume``, or its
   staging volume for an overwrite), else fenced off the read-only a replica keeps
   while the copy writes into it;
2. the source snapshot's read-only view (``snapshot_view``) and the volume's path;
3. a dry run for m, then rsync (``stream.filesync``) with live n, suspend and a lost
   link reported as ``Transient`` (the attempt is retried: what was copied stays, and
   rsync's quick check skips it);
4. the view released, then a snapshot of the same label that records the source
   snapshot's guid as its ``origin`` (what the next plan matches), and the read-only
   fence back.

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
from ...transport.files import file_end
from ..logic.plan import Plan, PlanMode
from ..retry import Transient
from ..stream.filesync import SyncFailed, measure, sync


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


async def run_copy(ctx: ActivityContext, servers: ServerRegistry, copy: GenericCopy,
                   src: StorageBackend, dst: StorageBackend) -> int:
    """The copy up to the new destination snapshot; returns the bytes on the wire."""
    plan = copy.plan
    if not await dst.exists(copy.receive_into):
        await dst.create_volume(copy.receive_into)
    elif await dst.is_readonly(copy.receive_into):
        await dst.set_readonly(copy.receive_into, False)
    if plan.mode == PlanMode.INCREMENTAL and plan.target_base is not None:
        ctx.remember(generic_base=plan.target_base.name)
    view = await src.snapshot_view(plan.snapshot.name, for_server=copy.destination)
    try:
        into = await dst.volume_path(copy.receive_into)
        source = file_end(servers.entry(copy.source).transport, view)
        target = file_end(servers.entry(copy.destination).transport, into)
        try:
            planned = await measure(source, target)
            ctx.set_progress(0, planned.transferred_size, estimated=False)
            ctx.counters.done = 0
            ctx.log.info("generic copy planned", mode=plan.mode, view=view, into=into,
                         bytes=planned.transferred_size)
            started = time.monotonic()
            stats = await sync(source, target, counters=ctx.counters, gate=ctx.flow,
                               limit=copy.limit,
                               sparse=not dst.capabilities.holes_from_zeros)
            ctx.log.info("rsync finished", seconds=round(time.monotonic() - started, 3),
                         sent=stats.sent, received=stats.received)
        except SyncFailed as exc:
            raise _failure(exc, copy) from exc
    finally:
        await asyncio.shield(src.release_view(plan.snapshot.name,
                                              for_server=copy.destination))
    ctx.counters.sent(stats.wire)
    ctx.remember(generic_stats={"transferred_size": stats.transferred_size,
                                "literal": stats.literal, "sent": stats.sent,
                                "received": stats.received})
    await dst.create_snapshot(copy.receive_into, plan.snapshot.label,
                              origin=plan.snapshot.guid)
    return stats.transferred_size


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
