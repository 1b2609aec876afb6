"""``snapshot_replicate`` as an activity: plan, stream, verify by guid.

The plan is made twice on purpose: once when the request arrives, so a conflict
is answered at once (HTTP 409) instead of as a failed activity, and again when
the activity runs (or re-runs after a daemon restart), because the servers may
have changed in between.

A restarted replication starts again from the common base: a receive that was
cut off leaves the target at its last complete snapshot (zfs-fuse has no resume
tokens; resumable receives come with the OpenZFS tier).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from ..activity import ActivityRecord, StatusCode
from ..backends.base import BackendError, Busy, NotFound
from ..backends.names import validate_snapshot, validate_volume
from ..backends.zfs import ZfsBackend
from ..engine import ActivityContext, ActivityEngine, ActivityError
from ..servers import ServerRegistry
from .plan import Plan, ReplicationConflict, TargetDiverged, TargetPoolMissing, plan_replication
from .transfer import Endpoint, TransferFailed, transfer

KIND = "replicate"


@dataclass(frozen=True)
class ReplicationRequest:
    snapshot: str
    source: str
    destination: str
    target_volume: str
    force_full_copy: bool = False
    intermediates: bool = False
    bandwidth_limit: int | None = None

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> ReplicationRequest:
        return cls(snapshot=p["snapshot"], source=p["source"], destination=p["destination"],
                   target_volume=p["target_volume"], force_full_copy=p["force_full_copy"],
                   intermediates=p["intermediates"], bandwidth_limit=p["bandwidth_limit"])

    def params(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "source": self.source,
                "destination": self.destination, "target_volume": self.target_volume,
                "force_full_copy": self.force_full_copy, "intermediates": self.intermediates,
                "bandwidth_limit": self.bandwidth_limit}


async def make_plan(req: ReplicationRequest, src: ZfsBackend, dst: ZfsBackend) -> Plan:
    snap = validate_snapshot(req.snapshot)
    try:
        source_snaps = await src.snapshots(snap.volume)
    except NotFound:
        source_snaps = []
    pool = req.target_volume.split("/")[0]
    if pool not in await dst.pools():
        raise TargetPoolMissing(f"pool {pool} does not exist on {dst.server}")
    parent = req.target_volume.rpartition("/")[0]
    if parent and not await dst.exists(parent):
        raise TargetPoolMissing(
            f"{parent} does not exist on {dst.server}; create the parent dataset first")
    exists = await dst.exists(req.target_volume)
    target_snaps = await dst.snapshots(req.target_volume) if exists else []
    return plan_replication(
        snapshot_name=req.snapshot, source_snapshots=source_snaps,
        target_volume=req.target_volume, target_exists=exists,
        target_snapshots=target_snaps, force_full_copy=req.force_full_copy,
        intermediates=req.intermediates)


def estimate(plan: Plan) -> int:
    """A stream size guessed from space accounting, for servers without ``send -nvP``.

    A full stream is about the snapshot's referenced size; an incremental at least
    the growth since the base. Overwritten blocks make it low, so progress flags it
    as an estimate and raises the total if the stream runs past it.
    """
    if plan.base is None:
        return max(plan.snapshot.referenced, 1)
    return max(plan.snapshot.referenced - plan.base.referenced, plan.snapshot.used, 1)


class ReplicateWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        self.req = ReplicationRequest.from_params(record.params)
        self.servers = servers
        self.target_created = bool(record.params.get("target_created"))

    async def run(self, ctx: ActivityContext) -> None:
        src = self.servers.backend(self.req.source)
        dst = self.servers.backend(self.req.destination)
        await ctx.checkpoint()
        if self.target_created:  # a restart after a full receive was cut off
            await self._remove_partial_target(ctx)
        try:
            plan = await make_plan(self.req, src, dst)
        except ReplicationConflict as exc:
            raise ActivityError(exc.message, StatusCode.CONFLICT) from exc
        if plan.mode == "up-to-date":
            ctx.set_progress(0, 0)
            ctx.log.info("destination already has the snapshot", snapshot=self.req.snapshot)
            return
        if plan.mode == "full" and not self.target_created:
            self.target_created = True
            ctx.remember(target_created=True)
        ctx.set_progress(0, estimate(plan), estimated=True)
        ctx.log.info("replication planned", mode=plan.mode,
                     base=plan.base.name if plan.base else None, snapshot=plan.snapshot.name)
        sender = Endpoint(src.runner, src.send_argv(
            plan.snapshot.name, plan.base.name if plan.base else None,
            intermediates=plan.intermediates))
        receiver = Endpoint(dst.runner, dst.receive_argv(plan.target_volume))
        ctx.counters.done = 0
        moved = await self._transfer(ctx, sender, receiver)
        await self._verify(plan, dst)
        if plan.mode == "full":
            # A replica is a standby: read-only, so that not even atime updates make it
            # diverge from the master (failover makes it writable).
            await dst.set_readonly(plan.target_volume)
        ctx.counters.done = moved
        ctx.set_progress(moved, moved, estimated=False)

    async def _transfer(self, ctx: ActivityContext, sender: Endpoint, receiver: Endpoint) -> int:
        try:
            return await transfer(sender, receiver, counters=ctx.counters, gate=ctx.flow,
                                  limit=self.req.bandwidth_limit)
        except TransferFailed as exc:
            if "modified" in exc.stderr or "destination has snapshots" in exc.stderr:
                raise ActivityError(TargetDiverged(
                    f"{self.req.target_volume} on {self.req.destination} was modified since "
                    f"the common snapshot ({exc}); nothing was destroyed").message,
                    StatusCode.CONFLICT) from exc
            raise ActivityError(f"transfer failed on the {exc}") from exc

    async def _verify(self, plan: Plan, dst: ZfsBackend) -> None:
        try:
            received = await dst.snapshot(plan.target_snapshot)
        except NotFound as exc:
            raise ActivityError(f"{plan.target_snapshot} is missing after the receive") from exc
        if received.guid != plan.snapshot.guid:
            raise ActivityError(
                f"guid mismatch after receive: {plan.target_snapshot} has {received.guid}, "
                f"source has {plan.snapshot.guid}")

    async def rollback(self, ctx: ActivityContext) -> None:
        """Both ends are already stopped; an aborted receive leaves the target as it was.

        A full receive that was cut off can leave a new, empty volume behind (zfs-fuse
        does, and cleans it up asynchronously); it is removed if this activity created it.
        """
        if self.target_created:
            await self._remove_partial_target(ctx)

    async def _remove_partial_target(self, ctx: ActivityContext) -> None:
        """Remove the target volume this activity created, if it holds no snapshot."""
        dst = self.servers.backend(self.req.destination)
        volume = self.req.target_volume
        try:
            # Right after the receiver is killed ZFS may still be cleaning up the partial
            # receive itself (busy), and may finish that first (gone).
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(Busy), stop=stop_after_delay(30),
                    wait=wait_exponential(multiplier=0.1, max=2), reraise=True):
                with attempt, contextlib.suppress(NotFound):
                    if await dst.exists(volume) and not await dst.snapshots(volume):
                        await dst.destroy_volume(volume)
                        ctx.log.info("removed the partial target", target=volume)
        except BackendError as exc:
            raise ActivityError(f"could not remove partial target {volume}: {exc}") from exc


def submit_replication(engine: ActivityEngine, req: ReplicationRequest) -> ActivityRecord:
    validate_snapshot(req.snapshot)
    validate_volume(req.target_volume)
    return engine.submit(KIND, volume=validate_snapshot(req.snapshot).volume,
                         source=req.source, target=f"{req.destination}:{req.target_volume}",
                         params=req.params(), self_restarting=True)


def register(engine: ActivityEngine, servers: ServerRegistry) -> None:
    engine.register(KIND, lambda r: ReplicateWork(r, servers))
