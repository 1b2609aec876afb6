"""``snapshot_replicate`` as an activity: plan, stream, verify by guid, hold the new base.

The plan is made twice on purpose: once when the request arrives, so a conflict
is answered at once (HTTP 409) instead of as a failed activity, and again when
the activity runs (or re-runs after a daemon restart), because the servers may
have changed in between.

An interrupted transfer continues from the receive's resume token where the
destination keeps them (capability ``resumable_send``: OpenZFS); elsewhere (zfs-fuse)
it starts again from the common base, since a cut-off receive leaves the target at
its last complete snapshot. A token whose snapshot was destroyed on the source since
is discarded (``abort_receive``) and the transfer planned again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from tenacity import (
    RetryCallState,
)

from ...activity import ActivityRecord, DataRoute, State, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...peers.delegate import ChildRequest, DelegatedWork
from ...servers import ServerRegistry, ServerUnavailable
from ...storage.errors import BackendError, Busy, NotFound, while_busy
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot, validate_volume
from ...storage.values import ReceiveProperties, Snapshot, StreamOptions
from ...transport.errors import LinkError, LinkLost, stream_link_lost, stream_link_refused
from ...transport.stream import StreamEndpoint
from ..logic.plan import (
    Ends,
    PathUnavailable,
    Plan,
    PlanMode,
    PlanPath,
    ReplicationConflict,
    ReplicationPath,
    TargetDiverged,
    TargetPoolMissing,
    generic_fallback,
    plan_replication,
    without_intermediates,
)
from ..logic.receive import ReceiveSettings, for_stream
from ..logic.retention import owned
from ..logic.spec import RelationshipSpec
from ..retry import RetryPolicy, Transient, report_link_retry
from ..stream.fanout import FanoutGroup, FanoutMissed, SplitOff
from ..stream.groups import FanoutGroups, StreamKey
from ..stream.transfer import TransferFailed, TransferStalled, transfer
from .generic import GenericCopy, run_copy
from .generic import roll_back as generic_roll_back

KIND = "replicate"
#: What receivers say when a stream uses features they do not have (older ZFS).
INCOMPATIBLE_STREAM = ("unsupported", "stream version", "invalid backup stream")
STAGING_SUFFIX = "-cerssd-incoming"


class StreamIncompatible(ActivityError):
    """The destination's ZFS refused the stream's format (``INCOMPATIBLE_STREAM``)."""


@dataclass(frozen=True)
class ReplicationRequest:
    snapshot: str
    source: str
    destination: str
    target_volume: str
    force_full_copy: bool = False
    overwrite: bool = False
    intermediates: bool = False
    bandwidth_limit: int | None = None
    #: Set by a relationship: each attempt sends the newest snapshot whose label starts
    #: with this prefix, so a slave that was away catches up in one incremental.
    latest_prefix: str | None = None
    #: Overrides the daemon's retry deadline (a relationship's own); inf = never give up.
    retry_deadline: float | None = None
    #: The fan-out group whose single send this transfer joins on its first attempt.
    fanout_group: str | None = None
    relationship: str | None = None
    #: Leave a received filesystem unmounted (a relationship's replicas, by default).
    unmounted: bool = False
    #: ``auto``, ``native`` or ``generic`` (``logic.plan.ReplicationPath``).
    path: str = "auto"
    #: The stream carries the volume's properties (``send -p``; a relationship's
    #: ``send_properties``).
    send_properties: bool = False
    #: Properties the replica never takes from the stream, and ones set on it
    #: (a relationship slave's ``receive_exclude``/``receive_set``; ``logic.receive``).
    receive_exclude: tuple[str, ...] = ()
    receive_set: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> ReplicationRequest:
        return cls(snapshot=p["snapshot"], source=p["source"], destination=p["destination"],
                   target_volume=p["target_volume"], force_full_copy=p["force_full_copy"],
                   overwrite=p.get("overwrite", False), intermediates=p["intermediates"],
                   bandwidth_limit=p["bandwidth_limit"], latest_prefix=p.get("latest_prefix"),
                   retry_deadline=p.get("retry_deadline"), fanout_group=p.get("fanout_group"),
                   relationship=p.get("relationship"), unmounted=p.get("unmounted", False),
                   path=p.get("path", "auto"), send_properties=p.get("send_properties", False),
                   receive_exclude=tuple(p.get("receive_exclude", ())),
                   receive_set=tuple((str(k), str(v)) for k, v in
                                     dict(p.get("receive_set", {})).items()))

    def params(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "source": self.source,
                "destination": self.destination, "target_volume": self.target_volume,
                "force_full_copy": self.force_full_copy, "overwrite": self.overwrite,
                "intermediates": self.intermediates, "bandwidth_limit": self.bandwidth_limit,
                "latest_prefix": self.latest_prefix, "retry_deadline": self.retry_deadline,
                "fanout_group": self.fanout_group, "relationship": self.relationship,
                "unmounted": self.unmounted, "path": self.path,
                "send_properties": self.send_properties,
                "receive_exclude": list(self.receive_exclude),
                "receive_set": dict(self.receive_set)}

    @property
    def receive_settings(self) -> ReceiveSettings:
        return ReceiveSettings(not self.unmounted,
                               ReceiveProperties(self.receive_exclude, self.receive_set))

    @property
    def staging_volume(self) -> str:
        """Where an overwriting full copy is received before it replaces the target."""
        return self.target_volume + STAGING_SUFFIX


async def make_plan(req: ReplicationRequest, src: StorageBackend, dst: StorageBackend, *,
                    source_snaps: list[Snapshot] | None = None,
                    both_remote: bool = False, absent: str | None = None) -> Plan:
    """The plan from one listing of each side's snapshots (``source_snaps``: the source's,
    when the caller has just listed them). The target's pool and parent are asked about
    only when the target does not exist: a volume that exists has both. ``both_remote``:
    neither server is this daemon's node (the generic path cannot run there).
    ``absent``: a volume to plan as if it did not exist (this activity's own unfinished
    first copy, which the next attempt continues)."""
    snap = validate_snapshot(req.snapshot)
    validate_volume(req.target_volume)
    if source_snaps is None:
        try:
            source_snaps = await src.snapshots(snap.volume)
        except NotFound:
            source_snaps = []
    try:
        if req.target_volume == absent:
            raise NotFound(absent)
        target_snaps = await dst.snapshots(req.target_volume)
        exists = True
    except NotFound:
        if problem := await dst.target_problem(req.target_volume):
            raise TargetPoolMissing(problem) from None
        target_snaps, exists = [], False
    bookmarks = await src.bookmarks(snap.volume) if source_snaps else []
    plan = plan_replication(
        snapshot_name=req.snapshot, source_snapshots=source_snaps,
        target_volume=req.target_volume, target_exists=exists,
        target_snapshots=target_snaps, force_full_copy=req.force_full_copy,
        intermediates=req.intermediates, overwrite=req.overwrite,
        source_bookmarks=bookmarks, ends=ends_of(src, dst, both_remote),
        path=ReplicationPath(req.path))
    plan = replace(plan, listed=(tuple(source_snaps), tuple(target_snaps)))
    if plan.path == PlanPath.GENERIC:
        if plan.mode != PlanMode.UP_TO_DATE and \
                (await src.volume(snap.volume)).type == "volume":
            raise PathUnavailable(
                f"{snap.volume} is a block volume (zvol) and the generic path copies "
                f"files: {dst.info().get('backend')} on {req.destination} has no block "
                "volumes a native stream could fill")
        return plan
    if not src.capabilities.safe_send_holds:
        plan = without_intermediates(plan, source_snaps)
    return plan


def ends_of(src: StorageBackend, dst: StorageBackend, both_remote: bool) -> Ends:
    """The two servers as the path choice sees them (drivers by their ``info`` name)."""
    return Ends(source_driver=str(src.info().get("backend")),
                destination_driver=str(dst.info().get("backend")), both_remote=both_remote,
                source_views=src.capabilities.snapshot_views,
                destination_views=dst.capabilities.snapshot_views,
                source_rsync=src.capabilities.file_copy,
                destination_rsync=dst.capabilities.file_copy)


async def stream_options(src: StorageBackend, dst: StorageBackend,
                         volume: str, *, properties: bool = False) -> StreamOptions:
    """Options both ends understand: raw for encrypted data, else compressed blocks;
    ``properties`` (a relationship's ``send_properties``) sends the volume's along.

    Raw keeps an encrypted volume encrypted on the wire and on the target (the key never
    leaves the source). Compressed keeps blocks as they are on disk; only receivers with
    ``compressed_send`` read such streams, so the others get plain ones.
    """
    both = (src.capabilities, dst.capabilities)
    if all(c.raw_send for c in both) and await src.encrypted(volume):
        return StreamOptions(raw=True, properties=properties)
    if all(c.compressed_send for c in both):
        return StreamOptions(compressed=True, properties=properties)
    return StreamOptions(properties=properties)


def estimate(plan: Plan) -> int:
    return estimate_stream(plan.snapshot, plan.base)


def estimate_stream(snapshot: Snapshot, base: Snapshot | None) -> int:
    """A stream size guessed from space accounting, for servers without ``send -nvP``.

    A full stream is about the snapshot's referenced size; an incremental at least
    the growth since the base. Overwritten blocks make it low, so progress flags it
    as an estimate and raises the total if the stream runs past it.
    """
    if base is None:
        return max(snapshot.referenced, 1)
    return max(snapshot.referenced - base.referenced, snapshot.used, 1)


def _link_error(exc: LinkError | ServerUnavailable) -> ActivityError:
    if exc.permanent:
        return ActivityError(str(exc), StatusCode.ERROR, "ssh-rejected")
    return ActivityError(str(exc), StatusCode.LINK, "link")


class ReplicateWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry,
                 policy: RetryPolicy, groups: FanoutGroups | None = None) -> None:
        self.req = ReplicationRequest.from_params(record.params)
        self.servers = servers
        self.policy = policy
        self.target_created = bool(record.params.get("target_created"))
        # Only a first run joins its group: after a daemon restart the group is gone.
        self.group = groups.get(self.req.fanout_group) if groups and self.req.fanout_group \
            and not record.restarts else None
        self.fanout_result: str | None = None

    async def run(self, ctx: ActivityContext) -> None:
        """Attempts until success, a permanent error, or the retry deadline.

        While a transient failure (link lost, stream stalled) is retried the activity
        is ``retrying`` and its ``link`` says what happened and when the next try is.
        """
        deadline = self.policy.deadline if self.req.retry_deadline is None \
            else self.req.retry_deadline
        retrying = self.policy.attempts(
            ctx, transient=lambda exc: isinstance(exc, Transient),
            report=lambda state: self._report_retry(ctx, state), deadline=deadline)
        try:
            async for attempt in retrying:
                with attempt:
                    await self._attempt(ctx)
        except Transient as exc:
            raise ActivityError(f"gave up after retrying for {deadline:g} s: {exc}",
                                StatusCode.LINK, "link") from exc

    def _report_retry(self, ctx: ActivityContext, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, Transient):
            return
        delay = report_link_retry(ctx, self.servers.links, exc.server, str(exc), state)
        ctx.log.warning("replication interrupted; retrying", server=exc.server,
                        error=str(exc), attempt=state.attempt_number, retry_in=round(delay, 1))

    async def _attempt(self, ctx: ActivityContext) -> None:
        try:
            await self._mapped(ctx)
        except (SplitOff, FanoutMissed) as exc:
            # The shared stream went on without this slave (it was slower than the others
            # or suspended, or came late): it catches up with a send of its own, now.
            self.fanout_result = "split-off" if isinstance(exc, SplitOff) else "missed"
            self.group = None
            ctx.log.info("left the fan-out; sending on its own", why=str(exc))
            ctx.remember(fanout=self.fanout_result)
            await self._mapped(ctx)
        finally:
            self._leave_group()

    def _leave_group(self) -> None:
        """A member that will not attach must say so, or the group waits for it."""
        if self.group is not None and self.fanout_result is None:
            self.group.group.withdraw(self.req.destination)
            self.fanout_result = "withdrawn"
        self.group = None

    async def _mapped(self, ctx: ActivityContext) -> None:
        """One attempt, with failures sorted into transient (retried) and permanent."""
        try:
            await self._run(ctx)
        except LinkLost as exc:
            raise Transient(exc.server or self.req.destination, str(exc)) from exc
        except ServerUnavailable as exc:
            if exc.permanent:
                raise _link_error(exc) from exc
            raise Transient(exc.server, str(exc)) from exc
        except LinkError as exc:
            raise _link_error(exc) from exc
        except BackendError as exc:
            raise ActivityError(str(exc), StatusCode.ERROR, "backend") from exc

    async def _run(self, ctx: ActivityContext) -> None:
        src = await self.servers.backend(self.req.source)
        dst = await self.servers.backend(self.req.destination)
        await ctx.checkpoint()
        receive_into, token = await self._pending_receive(dst)
        if ctx.record.state == State.RETRYING:  # both servers answered again
            ctx.link_up(self._remote_side())
        if token is not None and (why := await self._unusable(src, token)):
            # No retry could ever resume from it, and while it stays the target can
            # receive nothing else: discard it and plan as if it had never been.
            await dst.abort_receive(receive_into)
            ctx.log.warning("discarded a resume token the source can never resume; "
                            "planning the transfer again", target=receive_into, why=why)
            receive_into, token = self.req.target_volume, None
        if token is None:
            kept = await self._kept_copy(ctx, dst)
            await self._clean_leftovers(ctx, dst, keep=kept)
            listed = await self._follow_latest(ctx, src)
            plan = await self._plan(src, dst, source_snaps=listed, absent=kept)
            ctx.remember(plan={"mode": str(plan.mode), "path": str(plan.path)})
            if plan.mode == PlanMode.UP_TO_DATE:
                ctx.set_progress(0, 0)
                ctx.log.info("destination already has the snapshot", snapshot=plan.snapshot.name)
                await self._finish_target(src, dst, plan)
                _remember_received(ctx, plan)
                return
            receive_into = self.req.staging_volume if plan.overwrite else plan.target_volume
            if plan.mode == PlanMode.FULL and not plan.overwrite and not self.target_created:
                self.target_created = True
                ctx.remember(target_created=True)
            resumed = kept == receive_into and plan.path == PlanPath.GENERIC \
                and plan.mode == PlanMode.FULL
            if kept is not None and not resumed:  # the copy starts afresh, the plan's way
                await self._remove_partial(ctx, dst, kept, any_content=True)
            if plan.path == PlanPath.GENERIC:
                await self._generic(ctx, src, dst, plan, receive_into, resumed=resumed)
                return
        else:
            ctx.log.info("resuming an interrupted receive from its token", target=receive_into)
            plan = await self._plan(src, dst, resuming=True)
            plan = replace(plan, overwrite=receive_into == self.req.staging_volume)
        options = await stream_options(src, dst, plan.snapshot.volume,
                                       properties=self.req.send_properties)
        props = for_stream(self.req.receive_settings, options,
                           creates=plan.mode == PlanMode.FULL)
        base = plan.base.name if plan.base else None
        steps = [(b.name if b else None, snap.name) for b, snap in plan.steps()]
        if token is not None:
            steps = [(base, plan.snapshot.name)]
        sizes = [await src.estimate(snap, b, intermediates=plan.intermediates,
                                    resume_token=token, options=options)
                 for b, snap in steps]
        exact = None if None in sizes else sum(s or 0 for s in sizes)
        ctx.set_progress(0, exact if exact is not None else estimate(plan),
                         estimated=exact is None)
        ctx.log.info("replication planned", mode=plan.mode, resumed=token is not None,
                     base=base, snapshot=plan.snapshot.name, size=exact, options=str(options),
                     steps=len(steps))
        ctx.counters.done = 0
        started = time.monotonic()
        moved = 0
        # A partial receive is kept only where the source can resume from it.
        resumable = src.capabilities.resumable_send and dst.capabilities.resumable_send
        try:
            for step_base, step_snapshot in steps:
                # One stream per step, each into its own receive: a receive reads one stream.
                sender = src.send(step_snapshot, step_base, intermediates=plan.intermediates,
                                  resume_token=token, options=options)
                receiver = dst.receive(receive_into, resumable=resumable,
                                       unmounted=self.req.unmounted, properties=props)
                group = self._member_of(plan, options, token) if len(steps) == 1 else None
                moved += await self._transfer(ctx, sender, receiver, group)
        except StreamIncompatible as exc:
            generic = await self._fallback(src, dst, plan) if token is None else None
            if generic is None:
                raise
            await self._fall_back(ctx, dst, generic, receive_into, exc)
            await self._generic(ctx, src, dst, generic, receive_into)
            return
        seconds = time.monotonic() - started
        ctx.log.info("stream complete", bytes=moved, seconds=round(seconds, 3),
                     mb_per_second=round(moved / seconds / 1e6, 1) if seconds else None)
        await self._arrived(ctx, src, dst, plan, moved)

    async def _fallback(self, src: StorageBackend, dst: StorageBackend,
                        plan: Plan) -> Plan | None:
        """The generic plan for a first copy the destination's ZFS cannot read as a
        stream (``logic.plan.generic_fallback``); None where files cannot carry it."""
        generic = generic_fallback(plan, ReplicationPath(self.req.path),
                                   ends_of(src, dst, self._both_remote()))
        if generic is None or (await src.volume(plan.snapshot.volume)).type == "volume":
            return None
        return generic

    async def _fall_back(self, ctx: ActivityContext, dst: StorageBackend, generic: Plan,
                         receive_into: str, exc: StreamIncompatible) -> None:
        """Clear what the refused receive left and say, in the log and the activity's
        result, that this copy (and, by the planner's rules, the pair's next ones) goes
        the generic way."""
        if await dst.resume_token(receive_into) is not None:
            await dst.abort_receive(receive_into)
        await self._clean_leftovers(ctx, dst)
        ctx.log.warning("the destination cannot read the native stream; copying files "
                        "instead (generic path)", error=exc.message)
        ctx.remember(plan={"mode": str(generic.mode), "path": str(generic.path)},
                     fallback={"from": "native", "reason": "stream-incompatible",
                               "message": exc.message})

    async def _generic(self, ctx: ActivityContext, src: StorageBackend, dst: StorageBackend,
                       plan: Plan, receive_into: str, *, resumed: bool = False) -> None:
        """The generic path (``flows.generic``), then what every replication ends with.

        A first copy names its new volume in the record (``generic_copy``) before it
        writes: if a lost link (or a restart of the daemon) cuts it off, the next attempt
        keeps what arrived and rsync's quick check skips it (``_kept_copy``), where a
        native stream without a resume token must start over."""
        if plan.mode == PlanMode.FULL:
            ctx.remember(generic_copy=receive_into)
        started = time.monotonic()
        moved = await run_copy(ctx, self.servers, GenericCopy(
            plan, self.req.source, self.req.destination, receive_into,
            remote=self._remote_side(), limit=self.req.bandwidth_limit,
            stall_timeout=self.policy.stall_timeout, resumed=resumed), src, dst)
        ctx.log.info("file copy complete", bytes=moved,
                     seconds=round(time.monotonic() - started, 3))
        await self._arrived(ctx, src, dst, plan, moved)

    async def _arrived(self, ctx: ActivityContext, src: StorageBackend, dst: StorageBackend,
                       plan: Plan, moved: int) -> None:
        """What every replication ends with, by either path: the target put in place,
        the snapshot verified, pins and marks moved, progress made exact."""
        if plan.overwrite:
            await self._replace_target(ctx, dst)
        await self._verify(plan, dst)
        await self._finish_target(src, dst, plan)
        _remember_received(ctx, plan)
        ctx.counters.done = moved
        ctx.set_progress(moved, moved, estimated=False)

    @staticmethod
    async def _unusable(src: StorageBackend, token: str) -> str | None:
        """Why the source can never resume from ``token``, or None if it can."""
        if not src.capabilities.resumable_send:
            return f"{src.server} cannot resume a send (no zfs send -t)"
        return await src.stale_resume_token(token)

    async def _pending_receive(self, dst: StorageBackend) -> tuple[str, str | None]:
        """Where a cut-off resumable receive of this request left a token, if anywhere."""
        candidates = [self.req.target_volume]
        if self.req.overwrite:
            candidates.insert(0, self.req.staging_volume)
        for volume in candidates:
            token = await dst.resume_token(volume)
            if token is not None:
                return volume, token
        return self.req.target_volume, None

    async def _plan(self, src: StorageBackend, dst: StorageBackend, *,
                    resuming: bool = False, source_snaps: list[Snapshot] | None = None,
                    absent: str | None = None) -> Plan:
        try:
            if not resuming:
                return await make_plan(self.req, src, dst, source_snaps=source_snaps,
                                       both_remote=self._both_remote(), absent=absent)
            snap = await src.snapshot(self.req.snapshot)
            return Plan(PlanMode.RESUME, snap, None, self.req.target_volume)
        except ReplicationConflict as exc:
            raise ActivityError(exc.message, StatusCode.CONFLICT, exc.code) from exc
        except NotFound as exc:
            raise ActivityError(str(exc), StatusCode.NOT_FOUND, "not-found") from exc

    async def _follow_latest(self, ctx: ActivityContext,
                             src: StorageBackend) -> list[Snapshot] | None:
        """For a relationship: aim at the master's newest snapshot of the relationship.
        Returns the source's snapshots it listed for that (the plan uses them), if any."""
        prefix = self.req.latest_prefix
        if prefix is None:
            return None
        volume = validate_snapshot(self.req.snapshot).volume
        try:
            listed = await src.snapshots(volume)
        except NotFound:
            return None  # the plan says what is missing
        ours = [s for s in listed if owned(s.label, prefix)]  # never someone else's
        if ours and ours[-1].name != self.req.snapshot:
            ctx.log.info("catching up to the newest snapshot", snapshot=ours[-1].name,
                         was=self.req.snapshot)
            self.req = replace(self.req, snapshot=ours[-1].name)
            ctx.remember(snapshot=self.req.snapshot)
        return listed

    def _member_of(self, plan: Plan, options: StreamOptions,
                   token: str | None) -> FanoutGroup | None:
        """The fan-out group to join, if its stream is exactly the one this plan needs."""
        entry = self.group
        if entry is None:
            return None
        wanted = StreamKey(plan.snapshot.guid, plan.base.guid if plan.base else None,
                           options, plan.intermediates)
        if token is not None or plan.overwrite or plan.chain or entry.key != wanted:
            self._leave_group()
            return None
        return entry.group

    async def _transfer(self, ctx: ActivityContext, sender: StreamEndpoint,
                        receiver: StreamEndpoint, group: FanoutGroup | None = None) -> int:
        try:
            if group is not None:
                self.fanout_result, self.group = "joined", None  # one try at the shared send
                moved = await group.attach(self.req.destination, receiver,
                                           counters=ctx.counters, gate=ctx.flow,
                                           limit=self.req.bandwidth_limit)
                ctx.remember(fanout="shared")
                return moved
            return await transfer(sender, receiver, counters=ctx.counters, gate=ctx.flow,
                                  limit=self.req.bandwidth_limit,
                                  stall_timeout=self.policy.stall_timeout)
        except (SplitOff, FanoutMissed):
            raise
        except TransferStalled as exc:
            raise Transient(self._remote_side(), str(exc)) from exc
        except TransferFailed as exc:
            side = self.req.source if exc.side == "send" else self.req.destination
            if self._is_remote(side) and stream_link_lost(exc.returncode, exc.stderr):
                raise Transient(side, f"stream interrupted: {exc}") from exc
            if exc.side == "receive" and "busy" in exc.stderr:
                # After a lost link the old receive can linger on the server until its
                # sshd notices; the target is busy until then.
                raise Transient(side, f"target busy, likely an earlier receive: {exc}") \
                    from exc
            if "modified" in exc.stderr or "destination has snapshots" in exc.stderr:
                raise ActivityError(TargetDiverged(
                    f"{self.req.target_volume} on {self.req.destination} was modified since "
                    f"the common snapshot ({exc}); nothing was destroyed").message,
                    StatusCode.CONFLICT, "target-modified") from exc
            if any(text in exc.stderr for text in INCOMPATIBLE_STREAM):
                raise StreamIncompatible(
                    f"{self.req.destination}'s ZFS cannot read the stream "
                    f"{self.req.source} sends ({exc}); replicate between these two only "
                    "towards the newer ZFS, or with a stream format both know",
                    StatusCode.ERROR, "stream-incompatible") from exc
            if stream_link_refused(exc.stderr):
                raise ActivityError(f"transfer refused: {exc}", StatusCode.ERROR,
                                    "ssh-rejected") from exc
            raise ActivityError(f"transfer failed on the {exc}", StatusCode.ERROR,
                                "transfer") from exc

    async def _replace_target(self, ctx: ActivityContext, dst: StorageBackend) -> None:
        """Overwrite: the staged copy is complete, only now is the old target destroyed.

        Our own holds on the old target go with it; anyone else's hold stops the
        destroy with a clear error and the staged copy stays for a retry.
        """
        await self._release_all(dst, self.req.target_volume)
        await dst.replace_volume(self.req.target_volume, self.req.staging_volume)
        ctx.log.warning("replaced the target with a full copy (overwrite)",
                        target=self.req.target_volume)

    async def _verify(self, plan: Plan, dst: StorageBackend) -> None:
        try:
            received = await dst.snapshot(plan.target_snapshot)
        except NotFound as exc:
            raise ActivityError(f"{plan.target_snapshot} is missing after the receive",
                                reason="verify") from exc
        if plan.path == PlanPath.GENERIC:
            if received.origin != plan.snapshot.guid:
                raise ActivityError(
                    f"{plan.target_snapshot} records origin {received.origin or 'none'}, "
                    f"the source snapshot is {plan.snapshot.guid}", reason="verify")
        elif received.guid != plan.snapshot.guid:
            raise ActivityError(
                f"guid mismatch after receive: {plan.target_snapshot} has {received.guid}, "
                f"source has {plan.snapshot.guid}", reason="verify")

    async def _finish_target(self, src: StorageBackend, dst: StorageBackend, plan: Plan) -> None:
        """With the target at the snapshot: read-only replica, holds and bookmark moved.

        The source's and the destination's steps are independent, so they run at once
        (each is a round trip to its server).
        """
        async def destination_side() -> None:
            if plan.mode == PlanMode.FULL or self.target_created or \
                    plan.path == PlanPath.GENERIC:
                # A replica is a standby: read-only, so that not even atime updates make it
                # diverge from the master (failover makes it writable). Where the backend
                # cannot put that in force while a reader holds the volume (Busy), it is
                # only delayed: it is recorded, and the next failover's fence checks again.
                try:
                    await dst.set_readonly(plan.target_volume)
                except Busy as exc:
                    structlog.get_logger("cerssd.replicate").warning(
                        "replica marked read-only but still mounted writable",
                        target=plan.target_volume, error=str(exc))
            # An overwritten target is another volume than the one listed.
            listed = plan.listed[1] if plan.listed and not plan.overwrite else None
            await self._move_hold(dst, plan.target_volume, plan.target_snapshot,
                                  plan.snapshot.label, listed)

        async def source_side() -> None:
            await self._move_hold(src, plan.snapshot.volume, plan.snapshot.name,
                                  plan.snapshot.label, plan.listed[0] if plan.listed else None)
            # Still a base for the next incremental if the snapshot is destroyed after all.
            await src.mark_base(plan.snapshot, self.req.destination)

        await asyncio.gather(destination_side(), source_side())

    async def _move_hold(self, backend: StorageBackend, volume: str, snapshot: str,
                         label: str, listed: Sequence[Snapshot] | None) -> None:
        """Pin the new common snapshot, unpin this destination's older bases.

        ``listed`` is the plan's listing of ``volume``, if it has one: only this activity
        moves this destination's pin (one transfer per destination at a time), so every
        snapshot that carried it already had a user reference there, and the snapshots
        received or made since carry none of ours but the one just pinned.
        """
        if not backend.capabilities.holds:
            return
        await backend.pin(snapshot, self.req.destination)
        await self._release_all(backend, volume, keep=label, listed=listed)

    async def _release_all(self, backend: StorageBackend, volume: str, keep: str = "",
                           listed: Sequence[Snapshot] | None = None) -> None:
        """Unpin this destination's base from every held snapshot of ``volume`` but one.

        Every snapshot with a user reference is asked (a backend may not list its pins
        cheaply); one without this destination's pin is not an error.
        ``listed``: a recent listing of the volume to use instead of a new one.
        """
        if not backend.capabilities.holds:
            return
        for snap in listed if listed is not None else await backend.snapshots(volume):
            if snap.userrefs and snap.label != keep:
                await backend.unpin(snap.name, self.req.destination)

    async def _clean_leftovers(self, ctx: ActivityContext, dst: StorageBackend,
                               keep: str | None = None) -> None:
        """Before a (re)start: drop what an earlier, cut-off run of this activity left,
        but ``keep`` (a first generic copy's volume that the next attempt continues)."""
        if self.target_created and keep != self.req.target_volume:
            await self._remove_partial(ctx, dst, self.req.target_volume)
        if self.req.overwrite and keep != self.req.staging_volume:
            await self._remove_partial(ctx, dst, self.req.staging_volume, any_content=True)

    async def _kept_copy(self, ctx: ActivityContext, dst: StorageBackend) -> str | None:
        """The volume an earlier attempt's first generic copy was writing into, if it is
        still there without a snapshot (the copy never finished): it is kept for the
        next attempt to continue. None after a cancel, which removes it."""
        volume = ctx.record.params.get("generic_copy")
        if not isinstance(volume, str) or ctx.cancel_requested:
            return None
        if volume not in (self.req.target_volume, self.req.staging_volume):
            return None
        try:
            return volume if not await dst.snapshots(volume) else None
        except NotFound:
            return None

    async def rollback(self, ctx: ActivityContext) -> None:
        """Both ends are already stopped: clear partial state so the target is as it was.

        On cancel a resumable receive's saved state is aborted (``abort_receive``); after a
        failure it is kept so that the next attempt resumes. A new volume this activity
        created and that holds no snapshot is removed (zfs-fuse leaves one behind and
        cleans it up asynchronously); a staging copy for overwrite is removed.
        """
        try:
            dst = await self.servers.backend(self.req.destination)
        except ServerUnavailable as exc:
            raise ActivityError(f"cannot roll back on {self.req.destination}: {exc}") from exc
        await generic_roll_back(ctx, dst, self.req.target_volume)
        if not dst.capabilities.resumable_send:
            # Nothing to resume from: what a cut-off receive left beside the target (btrfs:
            # a partial subvolume in its receive directory) goes now (a no-op on ZFS).
            for volume in (self.req.target_volume, self.req.staging_volume):
                await dst.abort_receive(volume)
        for volume in (self.req.target_volume, self.req.staging_volume):
            if await dst.resume_token(volume) is None:
                continue
            if ctx.cancel_requested:
                await dst.abort_receive(volume)
            else:
                # A failed or interrupted transfer keeps its resumable state: it changes
                # nothing visible on the target, and the next attempt continues from it.
                ctx.log.info("kept the partial receive for a resume", volume=volume)
                return
        await self._clean_leftovers(ctx, dst)

    async def _remove_partial(self, ctx: ActivityContext, dst: StorageBackend, volume: str, *,
                              any_content: bool = False) -> None:
        try:
            # Right after the receiver is killed ZFS may still be cleaning up the partial
            # receive itself (busy), and may finish that first (gone).
            async for attempt in while_busy():
                with attempt, contextlib.suppress(NotFound):
                    if await dst.exists(volume) and (
                            any_content or not await dst.snapshots(volume)):
                        await dst.destroy_volume(volume)
                        ctx.log.info("removed a partial receive", volume=volume)
        except BackendError as exc:
            raise ActivityError(f"could not remove partial receive {volume}: {exc}") from exc


    def _is_remote(self, server: str) -> bool:
        entry = self.servers.entries.get(server)
        return entry is not None and entry.config.kind == "ssh"

    def _both_remote(self) -> bool:
        return self._is_remote(self.req.source) and self._is_remote(self.req.destination)

    def _remote_side(self) -> str:
        """The server whose link a stream depends on (the destination if both are remote)."""
        if self._is_remote(self.req.destination) or not self._is_remote(self.req.source):
            return self.req.destination
        return self.req.source


def _remember_received(ctx: ActivityContext, plan: Plan) -> None:
    """The snapshot the destination now shares with the source: the relationship takes
    its slave's newest common base from here instead of listing both sides again."""
    ctx.remember(received={"label": plan.snapshot.label, "guid": plan.snapshot.guid,
                           "creation": plan.snapshot.creation})


def relationship_fields(spec: RelationshipSpec, server: str) -> dict[str, Any]:
    """The request fields a relationship's transfer to slave ``server`` takes from it:
    how the stream carries properties and how the slave receives them."""
    slave = spec.slave(server).receive
    return {"unmounted": not slave.mount, "send_properties": spec.send_properties,
            "receive_exclude": slave.properties.exclude,
            "receive_set": slave.properties.override}


def submit_replication(engine: ActivityEngine, req: ReplicationRequest, *,
                       route: DataRoute = DataRoute.LOCAL, **extra: Any) -> ActivityRecord:
    """``extra`` params are kept with the activity (a relationship's ``parent`` id).
    ``route`` delegated: the source's peer daemon sends it (``delegated_replication``)."""
    snap = validate_snapshot(req.snapshot)
    validate_volume(req.target_volume)
    return engine.submit(KIND, volume=snap.volume, source=req.source,
                         target=f"{req.destination}:{req.target_volume}",
                         params={**req.params(), **extra}, self_restarting=True,
                         route=route,
                         node=req.source if route == DataRoute.DELEGATED else None)


def transfer_route(servers: ServerRegistry, source: str, destination: str, *,
                   delegate: bool = True) -> DataRoute:
    """How a transfer's bytes move: ``local`` where this daemon's node is an end,
    ``delegated`` between two remotes when the source runs cerssd (it sends), else
    ``relayed`` through this node (docs/peers.md). ``delegate`` False: work that is not
    delegated (a tree member's transfer) is relayed even from a peer."""
    src, dst = (servers.entry(s).config for s in (source, destination))
    if src.kind != "ssh" or dst.kind != "ssh":
        return DataRoute.LOCAL
    if delegate and source != destination and servers.delegates(source):
        return DataRoute.DELEGATED
    return DataRoute.RELAYED


def delegated_replication(record: ActivityRecord, servers: ServerRegistry,
                          policy: RetryPolicy) -> DelegatedWork:
    """The parent of a transfer that the source's peer daemon sends to the destination
    over its own SSH connection: the peer's config names the destination as this one
    does, and its own storage ``daemon_server`` (docs/peers.md)."""
    req = ReplicationRequest.from_params(record.params)
    cfg = servers.entry(req.source).config
    body: dict[str, Any] = {
        "snapshot": req.snapshot, "source": cfg.daemon_server,
        "destination": req.destination, "target_volume": req.target_volume,
        "force_full_copy": req.force_full_copy, "overwrite": req.overwrite,
        "intermediates": req.intermediates, "path": req.path, "mount": not req.unmounted,
        "send_properties": req.send_properties}
    if req.receive_exclude or req.receive_set:  # a relationship slave's
        body["receive_exclude"] = list(req.receive_exclude)
        body["receive_set"] = dict(req.receive_set)
    if req.bandwidth_limit:
        body["bandwidth_limit"] = req.bandwidth_limit
    return DelegatedWork(servers.peer(req.source), servers.links, policy,
                         ChildRequest("/v1/replications", body, adopt=("received",)))


def register(engine: ActivityEngine, servers: ServerRegistry,
             policy: RetryPolicy | None = None, groups: FanoutGroups | None = None) -> None:
    def work(r: ActivityRecord) -> ReplicateWork | DelegatedWork:
        if r.route == DataRoute.DELEGATED:
            return delegated_replication(r, servers, policy or RetryPolicy())
        return ReplicateWork(r, servers, policy or RetryPolicy(), groups)

    engine.register(KIND, work)
