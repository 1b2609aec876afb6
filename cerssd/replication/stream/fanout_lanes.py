"""The threads of a fan-out: one reader feeding a queue per member, a writer per member.

Kept apart from ``fanout`` (the asyncio side: who joins, when the send starts, how
each member's result is judged) because this side is plain threads and pipes: the
reader goes at the pace of the fastest member (waiting a little for one that lags,
see Grace) and blocks when every queue holds a window, so the sender is throttled
by real backpressure; a member whose queue passes the buffer limit is split off.
Threads never touch asyncio objects: they resolve futures through
``call_soon_threadsafe`` (post_result).
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

from ...flow_control import Counters, FlowGate
from .relay import CHUNK, RateLimit
from .transfer import FdSet

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
#: Share of the time the reader may spend waiting for a member that lags (see Grace),
#: and the most of it that can be saved up.
SLACK = 0.1
GRACE_BURST = 1.0
#: How often a blocked thread looks at its stop request.
TICK = 0.2



Chunk = bytes | memoryview


class Stopped(Exception):
    """The reader stopped before the end of the stream; writers must not drain."""


def post_result(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` from a thread: asyncio objects belong to the loop's thread."""

    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


def wait_readable(poller: select.poll, stop: threading.Event) -> bool:
    """Block until the polled fd is ready; False once ``stop`` is set."""
    while not stop.is_set():
        if poller.poll(int(TICK * 1000)):
            return True
    return False


class Pipe(FdSet):
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


class Lane:
    """One member: its queue of chunks and the writer thread that empties it.

    Writes block, a whole chunk per call: the thread sleeps in the kernel (without
    the GIL) until the receiver has taken the chunk. Non-blocking writes woke the
    thread each time the receiver freed a few pages and cost ~0.8 CPU-s per GiB per
    member (bench/RESULTS.md). A writer blocked on a receiver that never reads again
    is released by stopping that receiver (EPIPE), which every way out of a member
    does before it waits for the writer.
    """

    def __init__(self, hub: Hub, name: str, counters: Counters, gate: FlowGate,
                 limit: float | None, loop: asyncio.AbstractEventLoop) -> None:
        self.hub, self.name, self.counters, self.gate = hub, name, counters, gate
        self.limit = RateLimit(limit) if limit else None
        self.loop = loop
        self.pipe = Pipe()
        self.queue: deque[Chunk] = deque()
        self.queued = 0  # bytes in the queue; guarded by hub.lock
        self.ready = threading.Condition(hub.lock)
        self.stop = threading.Event()
        self.written = 0
        self.began = time.monotonic()  # when it joined: the stream can be no older
        self.error: BaseException | None = None
        self.drained = False  # the whole stream reached the receiver's pipe
        self.split = False
        self.grace = Grace()  # used by the reader thread only
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
            post_result(self.loop, self.finished)

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
            n = os.write(self.pipe.w, view[pos:end])
            pos += n
            self.written += n
            self.counters.moved(n)
            if self.limit:
                self.limit.pace(n, self.stop)
        return True

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


class Grace:
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


class Hub:
    """The thread side: the reader, the live lanes, and the one lock they share."""

    def __init__(self, buffer_limit: int) -> None:
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)  # the reader waits here for a window
        self.lanes: list[Lane] = []
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

    def add(self, lane: Lane) -> None:
        with self.lock:
            self.lanes.append(lane)

    def drop(self, lane: Lane) -> None:
        """Take a lane out of the stream: stop its writer and free its queue."""
        with self.lock:
            self._drop_locked(lane)

    def _drop_locked(self, lane: Lane) -> None:
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
                error = Stopped("the shared send was stopped")
            self.finish(error)
            post_result(loop, done)

    def _await_room(self) -> bool:
        """Wait while every live member's queue holds a window (backpressure), or
        while a member lags past the soft mark and still has grace (see Grace)."""
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

    def _lagging(self) -> list[Lane]:
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
                elif not wait_readable(poller, self.stop):
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
            post_result(lane.loop, lane.split_off)
