"""One ``zfs send`` feeding several ``zfs receive`` at once, each with its own pace.

    zfs send ──pipe──▶ [reader] ──chunk──▶ queue A ──[writer A]──pipe──▶ zfs receive A
                                   └─────▶ queue B ──[writer B]──pipe──▶ zfs receive B

Slaves that share a base need the same stream; sending it once spares the
master's disks and CPU. Each receiver belongs to its own activity (suspend,
resume, cancel), so each member attaches from its own task and has its own
queue, gate, rate limit and counters. The reader goes at the pace of the
fastest member (waiting a little for one that lags, see fanout_lanes.Grace) and blocks when
every queue holds a window, so the sender is throttled by real backpressure; a
member whose queue passes the buffer limit (slower than the others, or
suspended) is split off and must catch up alone. The members share each chunk,
so memory stays under one buffer limit (plus a chunk) however many there are.

The bytes cross user space here (``splice`` cannot duplicate a stream), but
each chunk is read once and the same immutable buffer is queued to every member.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from ...flow_control import Counters, FlowGate
from ...transport.process import exited, stop_process
from ...transport.stream import StreamEndpoint
from .fanout_lanes import PIPE_SIZE, WINDOW, Hub, Lane, Pipe
from .transfer import (
    TransferFailed,
    TransferStalled,
    exit_status,
    exit_timeout,
    first_line,
    read_stderr,
    watch_stall,
)

__all__ = ["PIPE_SIZE", "WINDOW", "FanoutGroup", "FanoutMissed", "SplitOff"]


class SplitOff(TransferFailed):
    """This member's buffer passed the limit (it was slower than the others, or suspended);
    its receiver was stopped and it must catch up with a send of its own."""

    def __init__(self, message: str) -> None:
        super().__init__("fanout", message)


class FanoutMissed(Exception):
    """The group's send already started (or ended) without this member; send on your own."""


@dataclass(frozen=True)
class _SendResult:
    returncode: int = 0
    stderr: str = ""
    error: str | None = None  # the sender could not be started


class FanoutGroup:
    """One send, several receivers; each member attaches from its own task.

    The send starts once every expected member has attached (its receiver running)
    or withdrawn, or ``join_timeout`` seconds after the first attach; whoever comes
    later gets FanoutMissed. No sender runs if every member withdraws.
    """

    def __init__(self, sender: StreamEndpoint, members: Collection[str], *,
                 buffer_limit: int = 64 << 20, join_timeout: float = 10.0,
                 stall_timeout: float | None = None) -> None:
        if buffer_limit < 2:
            raise ValueError("buffer_limit must be at least 2 bytes")
        self._sender = sender
        self._expected = frozenset(members)
        self._join_timeout = join_timeout
        self._stall_timeout = stall_timeout
        self._hub = Hub(buffer_limit)
        self._lanes: dict[str, Lane] = {}  # members attached and not yet gone
        self._arrived: set[str] = set()  # attached or withdrawn, ever
        self._settled: set[str] = set()  # withdrawn, gone, or with a running receiver
        self._phase = "waiting"  # then "running", or "closed" if it never ran
        self._started = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[_SendResult] | None = None
        self._sends = 0

    @property
    def sends_started(self) -> int:
        """How many times the sender was spawned (0 or 1)."""
        return self._sends

    def withdraw(self, member: str) -> None:
        """Say that ``member`` will not attach, so the send need not wait for it.

        Harmless for unknown members and after attaching (use cancellation then).
        """
        if member in self._expected and member not in self._arrived:
            self._arrived.add(member)
            self._settle(member)

    async def attach(self, member: str, receiver: StreamEndpoint, *, counters: Counters,
                     gate: FlowGate, limit: float | None = None, stdout: int | None = None,
                     spawned: Callable[[], None] | None = None) -> int:
        """Receive the shared stream; returns the bytes written to this member.

        ``stdout`` gives the receiver's output to the caller (a backup's compressor feeds
        the uploader); ``spawned`` is called once the receiver holds it.
        """
        lane = self._join(member, counters, gate, limit)
        recv: asyncio.subprocess.Process | None = None
        err: asyncio.Future[str] | None = None
        try:
            recv = await receiver.spawn(
                stdin=lane.pipe.r,
                stdout=asyncio.subprocess.DEVNULL if stdout is None else stdout)
            if spawned is not None:
                spawned()
            lane.pipe.close(lane.pipe.r)  # the receiver holds it now
            err = asyncio.ensure_future(read_stderr(recv))
            lane.start()
            self._settle(member)
            await self._started.wait()
            await self._stream(lane)
            return await self._conclude(lane, recv, err, bounded=stdout is None)
        finally:
            await asyncio.shield(self._leave(lane, recv, err))

    def _join(self, member: str, counters: Counters, gate: FlowGate,
              limit: float | None) -> Lane:
        """Register the member before any await, so a start meanwhile includes it."""
        if member not in self._expected:
            raise ValueError(f"{member!r} is not a member of this fan-out group")
        if member in self._lanes:
            raise ValueError(f"{member!r} is already attached")
        if self._phase != "waiting" or member in self._arrived:
            raise FanoutMissed(f"the shared send for {member} already started or ended")
        loop = asyncio.get_running_loop()
        lane = Lane(self._hub, member, counters, gate, limit, loop)
        self._hub.add(lane)
        self._lanes[member] = lane
        self._arrived.add(member)
        if self._timer is None:
            self._timer = loop.call_later(self._join_timeout, self._start)
        return lane

    def _settle(self, member: str) -> None:
        """Note that ``member`` no longer holds up the start; start once none does."""
        self._settled.add(member)
        if self._phase == "waiting" and self._settled >= self._expected:
            self._start()

    def _start(self) -> None:
        """Spawn the send for the members attached now (none: the group just closes)."""
        if self._phase != "waiting":
            return
        if self._timer is not None:
            self._timer.cancel()
        if not self._lanes:
            self._phase = "closed"
            return
        self._phase = "running"
        self._task = asyncio.get_running_loop().create_task(self._drive())
        self._started.set()

    async def _drive(self) -> _SendResult:
        """Spawn the sender and run it to the end; all its fds are closed here."""
        try:
            pipe = Pipe()
        except OSError as exc:
            return self._not_started(exc)
        try:
            os.set_blocking(pipe.r, False)  # only our end: the sender's stays blocking
            try:
                proc = await self._sender.spawn(stdin=None, stdout=pipe.w)
            except Exception as exc:
                return self._not_started(exc)
            finally:
                pipe.close(pipe.w)  # the sender holds it now
            self._sends += 1
            return await self._pump(proc, pipe)
        finally:
            pipe.close_all()

    def _not_started(self, exc: Exception) -> _SendResult:
        self._hub.finish(exc)  # stops every writer: no member may take this as EOF
        return _SendResult(error=f"could not start: {exc}")

    async def _pump(self, proc: asyncio.subprocess.Process, pipe: Pipe) -> _SendResult:
        """Read the stream until its end; if the reader quits early, stop the sender."""
        err = asyncio.ensure_future(read_stderr(proc))
        try:
            await self._hub.run_reader(pipe.r)
        finally:
            if not self._hub.eof:  # no member is left (or reading failed)
                pipe.close(pipe.r)  # the reader thread is out of read() by now
                await asyncio.shield(stop_process(proc))
        rc = await exited(proc)
        return _SendResult(rc, await err)

    async def _stream(self, lane: Lane) -> None:
        """Wait until this member's writer is done; raise on split-off or stall."""
        watchdog = asyncio.ensure_future(
            watch_stall(lane.counters, lane.gate, self._stall_timeout))
        try:
            await asyncio.wait([lane.finished, lane.split_off, watchdog],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            watchdog.cancel()
        if lane.split:
            raise SplitOff(f"{lane.name} fell more than {self._hub.limit} bytes behind "
                           "the shared send (slower than the others, or suspended)")
        if not lane.finished.done():
            raise TransferStalled("fanout", f"no data reached {lane.name} for "
                                  f"{self._stall_timeout:g} s (stalled)")

    async def _conclude(self, lane: Lane, recv: asyncio.subprocess.Process,
                        err: asyncio.Future[str], *, bounded: bool) -> int:
        """Judge the member by the send's and its receiver's exit, as transfer._pump does.

        A ``zfs receive`` that does not exit once it has the whole stream is hung and is
        reported as a stall (``bounded``); a receiver whose output goes on to the caller
        (a backup's compressor) exits when the caller has taken its output, which the
        caller watches itself.
        """
        broke = isinstance(lane.error, BrokenPipeError)
        cut = not lane.drained and not broke
        if cut:  # never hand a cut stream over as complete: stop the receiver first
            await stop_process(recv)
        lane.pipe.close(lane.pipe.w)  # EOF to the receiver
        recv_rc = await exit_status(recv, "receive", exit_timeout(
            self._stall_timeout, lane.written, time.monotonic() - lane.began)
            if bounded else None)
        recv_msg = await err
        if cut and lane.error is not None:  # this writer failed: no need to await the send
            raise TransferFailed("fanout", str(lane.error))
        if recv_rc != 0 and broke:
            raise TransferFailed("receive", first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        assert self._task is not None
        sent = await asyncio.shield(self._task)
        if sent.error is not None:
            raise TransferFailed("send", sent.error)
        if cut:
            raise TransferFailed("fanout", str(self._hub.error or "the shared send stopped"))
        if recv_rc != 0 and sent.returncode == 0:
            raise TransferFailed("receive", first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        if sent.returncode != 0:
            raise TransferFailed("send", first_line(sent.stderr, sent.returncode),
                                 sent.stderr, sent.returncode)
        if recv_rc != 0:
            raise TransferFailed("receive", first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        return lane.written

    async def _leave(self, lane: Lane, recv: asyncio.subprocess.Process | None,
                     err: asyncio.Future[str] | None) -> None:
        """Remove this member whatever happened; the last one out stops the send."""
        self._hub.drop(lane)
        del self._lanes[lane.name]
        self._settle(lane.name)  # before any await: a start now must not count this member
        waits: list[Awaitable[None]] = [stop_process(recv)] if recv is not None else []
        if lane.started:
            waits.append(lane.finished)
        await asyncio.gather(*waits)
        lane.pipe.close_all()  # only now: the writer is out of write()
        if err is not None:
            err.cancel()
            await asyncio.gather(err, return_exceptions=True)
        if not self._lanes and self._task is not None:
            self._hub.halt()
            await asyncio.gather(self._task, return_exceptions=True)
