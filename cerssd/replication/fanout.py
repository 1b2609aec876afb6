"""One ``zfs send`` feeding several ``zfs receive`` at once, each with its own pace.

    zfs send ──pipe──▶ [reader] ──chunk──▶ queue A ──[writer A]──pipe──▶ zfs receive A
                                   └─────▶ queue B ──[writer B]──pipe──▶ zfs receive B

Slaves that share a base need the same stream; sending it once spares the
master's disks and CPU. Each receiver belongs to its own activity (suspend,
resume, cancel), so each member attaches from its own task and has its own
queue, gate, rate limit and counters. The reader goes at the pace of the
fastest member (waiting a little for one that lags, see _Grace) and blocks when
every queue holds a window, so the sender is throttled by real backpressure; a
member whose queue passes the buffer limit (slower than the others, or
suspended) is split off and must catch up alone. The members share each chunk,
so memory stays under one buffer limit (plus a chunk) however many there are.

The bytes cross user space here (``splice`` cannot duplicate a stream), but
each chunk is read once and the same immutable buffer is queued to every member.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import threading
import time
from collections import deque
from collections.abc import Awaitable, Collection
from dataclasses import dataclass

from ..backends.runner import stop_process
from ..engine import Counters, FlowGate
from .relay import CHUNK, RateLimit
from .transfer import (
    Endpoint,
    FdSet,
    TransferFailed,
    TransferStalled,
    _first_line,
    _stderr,
    _watch_stall,
)

#: Bytes every member's queue must hold before the reader stops reading: enough to keep
#: a writer busy while the reader fills the next chunk, small enough to bound memory.
WINDOW = 4 << 20
#: How long the reader waits for more bytes before handing on a part-filled chunk: a
#: fast sender refills its pipe within microseconds, a slow one should not be held up.
LINGER_MS = 20
#: Kernel buffer of each pipe. Unlike the relay's splice, every byte here costs a
#: write() per member; measured on 2 CPUs with 3 members, 256 KiB pipes moved 1 GiB
#: about 1.4 times as fast as the default 64 KiB (fewer wake-ups per MiB), and 1 MiB
#: was no better than 256 KiB.
PIPE_SIZE = 256 << 10
#: Share of the time the reader may spend waiting for a member that lags (see _Grace),
#: and the most of it that can be saved up.
SLACK = 0.1
GRACE_BURST = 1.0
#: How often a blocked thread looks at its stop request.
TICK = 0.2

Chunk = bytes | memoryview


class SplitOff(TransferFailed):
    """This member's buffer passed the limit (it was slower than the others, or suspended);
    its receiver was stopped and it must catch up with a send of its own."""

    def __init__(self, message: str) -> None:
        super().__init__("fanout", message)


class FanoutMissed(Exception):
    """The group's send already started (or ended) without this member; send on your own."""


class _Stopped(Exception):
    """The reader stopped before the end of the stream; writers must not drain."""


def _post(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` from a thread: asyncio objects belong to the loop's thread."""

    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


def _ready(poller: select.poll, stop: threading.Event) -> bool:
    """Block until the polled fd is ready; False once ``stop`` is set."""
    while not stop.is_set():
        if poller.poll(int(TICK * 1000)):
            return True
    return False


class _Pipe(FdSet):
    """One pipe; each end is closed exactly once (see transfer.FdSet).

    Pipe numbers are reused at once by the next pipe, so the
    record of what is open must be per pipe: a record shared by the group would take
    a stale number for the new owner's fd.
    """

    def __init__(self) -> None:
        super().__init__()
        self.r, self.w = self.pipe()
        with contextlib.suppress(OSError):  # best effort: the user's pipe quota may be spent
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class _Lane:
    """One member: its queue of chunks and the writer thread that empties it.

    Our write end is non-blocking (the receiver's read end is a separate open file,
    left blocking) so a stop request is seen within a tick even if the receiver
    never reads again.
    """

    def __init__(self, hub: _Hub, name: str, counters: Counters, gate: FlowGate,
                 limit: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self.hub, self.name, self.counters, self.gate = hub, name, counters, gate
        self.limit = RateLimit(limit) if limit else None
        self.loop = loop
        self.pipe = _Pipe()
        os.set_blocking(self.pipe.w, False)
        self._poller = select.poll()
        self._poller.register(self.pipe.w, select.POLLOUT)
        self._full = False
        self.queue: deque[Chunk] = deque()
        self.queued = 0  # bytes in the queue; guarded by hub.lock
        self.ready = threading.Condition(hub.lock)
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None
        self.drained = False  # the whole stream reached the receiver's pipe
        self.split = False
        self.grace = _Grace()  # used by the reader thread only
        self.finished: asyncio.Future[None] = loop.create_future()
        self.split_off: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"cerssd-fanout-{name}",
                                        daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        """Write the queue out until the stream ends; on leaving, the lane drops out of
        the hub so the reader no longer queues for it nor waits on its window."""
        try:
            while (data := self._next()) is not None:
                if not self._send(data):
                    return
                self._consumed(data)
        except BaseException as exc:
            self.error = exc
        finally:
            self.hub.drop(self)
            _post(self.loop, self.finished)

    def _next(self) -> Chunk | None:
        """The chunk at the head of the queue, left there until written (it counts
        toward the window meanwhile); None at the end of the stream or on stop."""
        with self.hub.lock:
            while not self.queue and not self.hub.ended and not self.stop.is_set():
                self.ready.wait()
            if self.stop.is_set():
                return None
            if not self.queue:
                self.drained = True
                return None
            return self.queue[0]

    def _consumed(self, data: Chunk) -> None:
        with self.hub.lock:
            if self.queue and self.queue[0] is data:  # a split or stop may have emptied it
                self.queue.popleft()
                self.queued -= len(data)
                self.hub.room.notify()  # the reader may wait for this lane's window or lag

    def _send(self, data: Chunk) -> bool:
        """Write one chunk, honouring gate, rate limit and stop; False when stopped."""
        view = memoryview(data)
        pos = 0
        if self.limit and not self.written:
            self.limit.rebase()  # the pace starts with the stream, not when we attached
        while pos < len(view):
            if self.stop.is_set() or not self._wait_gate():
                return False
            end = pos + self.limit.chunk() if self.limit else len(view)
            n = self._write(view[pos:end])
            if n is None:
                return False
            pos += n
            self.written += n
            self.counters.moved(n)
            if self.limit:
                self.limit.pace(n, self.stop)
        return True

    def _write(self, piece: memoryview) -> int | None:
        """os.write that waits (stoppably) for room in the pipe; may write part.

        A part write means the pipe is full: wait before the next write rather
        than spend a failing write on finding that out.
        """
        while True:
            if self._full and not _ready(self._poller, self.stop):
                return None
            try:
                n = os.write(self.pipe.w, piece)
            except BlockingIOError:
                self._full = True
                continue
            self._full = n < len(piece)
            return n

    def _wait_gate(self) -> bool:
        """Block while suspended (the queue grows meanwhile); False when asked to stop."""
        if self.gate.is_open:
            return True
        while not self.gate.wait(TICK):
            if self.stop.is_set():
                return False
        if self.limit:
            self.limit.rebase()
        return not self.stop.is_set()


class _Grace:
    """How long the reader may wait for one lagging member: SLACK of the time
    running, banked up to GRACE_BURST seconds.

    Waiting only for the fastest member leaves the lag between equally fast members
    a random walk with nothing pulling it back: measured here, three ``cat`` of one
    4 GiB stream drifted 113 MiB apart and would have been split off. Waiting a little
    for a member past the soft mark brings it back, and each member can cost the
    others at most SLACK of their time; one slower than that still falls behind and
    is split off, without using up the grace the others may need.
    """

    def __init__(self) -> None:
        # Saved up from the start: receivers warm up unevenly (process start, SSH login).
        self._tokens = GRACE_BURST
        self._mark = time.monotonic()

    def available(self) -> float:
        now = time.monotonic()
        self._tokens = min(GRACE_BURST, self._tokens + (now - self._mark) * SLACK)
        self._mark = now
        return self._tokens

    def spend(self, seconds: float) -> None:
        self._tokens -= seconds


class _Hub:
    """The thread side: the reader, the live lanes, and the one lock they share."""

    def __init__(self, buffer_limit: int) -> None:
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)  # the reader waits here for a window
        self.lanes: list[_Lane] = []
        self.limit = buffer_limit
        # A chunk added to a queue below the window must never take it past the limit,
        # or members suspended together would all be split instead of blocking the send.
        self.window = min(WINDOW, buffer_limit // 2)
        self.chunk = max(1, min(CHUNK, buffer_limit - self.window))
        self.soft = (self.window + buffer_limit) // 2  # lag past which the reader may wait
        self.ended = False
        self.eof = False  # the sender's stream ended (as opposed to the reader stopping)
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._buf = bytearray(self.chunk)

    def add(self, lane: _Lane) -> None:
        with self.lock:
            self.lanes.append(lane)

    def drop(self, lane: _Lane) -> None:
        """Take a lane out of the stream: stop its writer and free its queue."""
        with self.lock:
            self._drop_locked(lane)

    def _drop_locked(self, lane: _Lane) -> None:
        """Both waiters are woken: the writer to stop, the reader to recount windows."""
        if lane in self.lanes:
            self.lanes.remove(lane)
        lane.stop.set()
        lane.queue.clear()
        lane.queued = 0
        lane.ready.notify()
        self.room.notify()

    def halt(self) -> None:
        with self.lock:
            self.stop.set()
            self.room.notify()

    def finish(self, error: BaseException | None) -> None:
        """The stream ended: writers drain their queues, or on an error are stopped."""
        with self.lock:
            self.ended, self.error = True, error
            for lane in list(self.lanes):
                if error is not None:
                    self._drop_locked(lane)
                else:
                    lane.ready.notify()

    async def run_reader(self, src_fd: int) -> None:
        """Run the reader thread until EOF, stop or error; cancel-safe."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(target=self._read_loop, args=(src_fd, loop, done),
                                  name="cerssd-fanout-reader", daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self.halt()  # the fd may be closed only once the thread is out of read()
            await asyncio.shield(done)
            raise

    def _read_loop(self, src_fd: int, loop: asyncio.AbstractEventLoop,
                   done: asyncio.Future[None]) -> None:
        """Read, queue to every lane, repeat; ending with EOF, a stop or an error."""
        error: BaseException | None = None
        poller = select.poll()
        poller.register(src_fd, select.POLLIN)
        try:
            while self._await_room():
                data = self._read_chunk(src_fd, poller)
                if data is None:  # stopped
                    break
                if not data:
                    self.eof = True
                    break
                self._deliver(data)
        except BaseException as exc:
            error = exc
        finally:
            if error is None and not self.eof:  # stopped: the stream is cut, not complete
                error = _Stopped("the shared send was stopped")
            self.finish(error)
            _post(loop, done)

    def _await_room(self) -> bool:
        """Wait while every live member's queue holds a window (backpressure), or
        while a member lags past the soft mark and still has grace (see _Grace)."""
        with self.lock:
            while not self.stop.is_set() and self.lanes:
                if all(lane.queued >= self.window for lane in self.lanes):
                    self.room.wait(TICK)
                elif waited := self._lagging():
                    started = time.monotonic()
                    self.room.wait(min(TICK, *(lane.grace.available() for lane in waited)))
                    for lane in waited:
                        lane.grace.spend(time.monotonic() - started)
                else:
                    break
            return not self.stop.is_set() and bool(self.lanes)

    def _lagging(self) -> list[_Lane]:
        """Members past the soft mark worth waiting for; not suspended ones, which are
        expected to be split off, nor those whose grace is spent."""
        return [lane for lane in self.lanes if lane.queued >= self.soft
                and lane.gate.is_open and lane.grace.available() > 0]

    def _read_chunk(self, fd: int, poller: select.poll) -> Chunk | None:
        """Read until a chunk is full, EOF, or the pipe stays empty for a moment.

        Returns b"" at EOF and None when stopped.
        """
        view = memoryview(self._buf)
        filled = 0
        empty = False  # the last read emptied the pipe: wait before reading again
        while filled < len(view):
            if empty:
                if filled:
                    if not poller.poll(LINGER_MS):
                        break
                elif not _ready(poller, self.stop):
                    return None
            try:
                n = os.readv(fd, [view[filled:]])
            except BlockingIOError:
                empty = True
                continue
            if n == 0:
                break
            empty = n < len(view) - filled
            filled += n
        return self._take(view, filled)

    def _take(self, view: memoryview, filled: int) -> Chunk:
        """Hand the buffer over when mostly full; copy a small part and keep the buffer,
        so a trickling sender cannot pin a whole chunk's memory per few bytes queued."""
        if filled < len(view) // 2:
            return bytes(view[:filled])
        self._buf = bytearray(self.chunk)
        return view[:filled].toreadonly()

    def _deliver(self, data: Chunk) -> None:
        """Queue the same chunk to every live lane; split off those past the limit."""
        with self.lock:
            over = []
            for lane in self.lanes:
                lane.queue.append(data)
                lane.queued += len(data)
                if lane.queued > self.limit:
                    over.append(lane)
                else:
                    lane.ready.notify()
            for lane in over:
                lane.split = True
                self._drop_locked(lane)
        for lane in over:
            _post(lane.loop, lane.split_off)


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

    def __init__(self, sender: Endpoint, members: Collection[str], *,
                 buffer_limit: int = 64 << 20, join_timeout: float = 10.0,
                 stall_timeout: float | None = None) -> None:
        if buffer_limit < 2:
            raise ValueError("buffer_limit must be at least 2 bytes")
        self._sender = sender
        self._expected = frozenset(members)
        self._join_timeout = join_timeout
        self._stall_timeout = stall_timeout
        self._hub = _Hub(buffer_limit)
        self._lanes: dict[str, _Lane] = {}  # members attached and not yet gone
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

    async def attach(self, member: str, receiver: Endpoint, *, counters: Counters,
                     gate: FlowGate, limit: float | None = None) -> int:
        """Receive the shared stream; returns the bytes written to this member."""
        lane = self._join(member, counters, gate, limit)
        recv: asyncio.subprocess.Process | None = None
        err: asyncio.Future[str] | None = None
        try:
            recv = await receiver.runner.spawn(receiver.argv, stdin=lane.pipe.r,
                                               stdout=asyncio.subprocess.DEVNULL)
            lane.pipe.close(lane.pipe.r)  # the receiver holds it now
            err = asyncio.ensure_future(_stderr(recv))
            lane.start()
            self._settle(member)
            await self._started.wait()
            await self._stream(lane)
            return await self._conclude(lane, recv, err)
        finally:
            await asyncio.shield(self._leave(lane, recv, err))

    def _join(self, member: str, counters: Counters, gate: FlowGate,
              limit: float | None) -> _Lane:
        """Register the member before any await, so a start meanwhile includes it."""
        if member not in self._expected:
            raise ValueError(f"{member!r} is not a member of this fan-out group")
        if member in self._lanes:
            raise ValueError(f"{member!r} is already attached")
        if self._phase != "waiting" or member in self._arrived:
            raise FanoutMissed(f"the shared send for {member} already started or ended")
        loop = asyncio.get_running_loop()
        lane = _Lane(self._hub, member, counters, gate, limit, loop)
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
            pipe = _Pipe()
        except OSError as exc:
            return self._not_started(exc)
        try:
            os.set_blocking(pipe.r, False)  # only our end: the sender's stays blocking
            try:
                proc = await self._sender.runner.spawn(self._sender.argv, stdin=None,
                                                       stdout=pipe.w)
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

    async def _pump(self, proc: asyncio.subprocess.Process, pipe: _Pipe) -> _SendResult:
        """Read the stream until its end; if the reader quits early, stop the sender."""
        err = asyncio.ensure_future(_stderr(proc))
        try:
            await self._hub.run_reader(pipe.r)
        finally:
            if not self._hub.eof:  # no member is left (or reading failed)
                pipe.close(pipe.r)  # the reader thread is out of read() by now
                await asyncio.shield(stop_process(proc))
        rc = await proc.wait()
        return _SendResult(rc, await err)

    async def _stream(self, lane: _Lane) -> None:
        """Wait until this member's writer is done; raise on split-off or stall."""
        watchdog = asyncio.ensure_future(
            _watch_stall(lane.counters, lane.gate, self._stall_timeout))
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

    async def _conclude(self, lane: _Lane, recv: asyncio.subprocess.Process,
                        err: asyncio.Future[str]) -> int:
        """Judge the member by the send's and its receiver's exit, as transfer._pump does."""
        broke = isinstance(lane.error, BrokenPipeError)
        cut = not lane.drained and not broke
        if cut:  # never hand a cut stream over as complete: stop the receiver first
            await stop_process(recv)
        lane.pipe.close(lane.pipe.w)  # EOF to the receiver
        recv_rc = await recv.wait()
        recv_msg = await err
        if cut and lane.error is not None:  # this writer failed: no need to await the send
            raise TransferFailed("fanout", str(lane.error))
        if recv_rc != 0 and broke:
            raise TransferFailed("receive", _first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        assert self._task is not None
        sent = await asyncio.shield(self._task)
        if sent.error is not None:
            raise TransferFailed("send", sent.error)
        if cut:
            raise TransferFailed("fanout", str(self._hub.error or "the shared send stopped"))
        if recv_rc != 0 and sent.returncode == 0:
            raise TransferFailed("receive", _first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        if sent.returncode != 0:
            raise TransferFailed("send", _first_line(sent.stderr, sent.returncode),
                                 sent.stderr, sent.returncode)
        if recv_rc != 0:
            raise TransferFailed("receive", _first_line(recv_msg, recv_rc), recv_msg, recv_rc)
        return lane.written

    async def _leave(self, lane: _Lane, recv: asyncio.subprocess.Process | None,
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
