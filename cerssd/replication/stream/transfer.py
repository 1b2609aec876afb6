"""One ``zfs send`` → ``zfs receive`` stream, joined through the daemon by two pipes.

    zfs send ──pipe──▶ [Relay: splice, count, gate, limit] ──pipe──▶ zfs receive

The daemon sits in the path so it can count bytes live, apply backpressure and
kill both ends; ``splice`` keeps the bytes in the kernel. If either end fails
the other is stopped, and the error names the side and its own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
import time
from collections.abc import Iterable

from ...flow_control import Counters, FlowGate
from ...transport.process import exited, stop_process
from ...transport.stream import StreamEndpoint
from .inline import SmallStream, peek
from .relay import Relay

#: The most a stream can have on its way between the daemon's pipe and a remote receive:
#: OpenSSH's 2 MiB channel window, its buffers and both kernels' socket buffers (a few
#: MiB each at most), with room to spare.
IN_FLIGHT = 16 << 20


class TransferFailed(Exception):
    def __init__(self, side: str, message: str, stderr: str = "", returncode: int = 0) -> None:
        super().__init__(f"{side}: {message}")
        self.side = side
        self.stderr = stderr
        self.returncode = returncode


class TransferStalled(TransferFailed):
    """No byte moved for the stall timeout while the activity was not suspended."""


#: Room in an object store stream's pipes: the uploader reads and the downloader writes
#: a part at a time, and with the kernel's default 64 KiB both ends of the pipe woke
#: ~16,000 times per GiB.
STREAM_PIPE = 1 << 20
#: The same for a stream socket pair (``FdSet.channel``): the writer's send buffer.
STREAM_SOCKET = 1 << 20


class FdSet:
    """Pipe ends this process opened; each is closed exactly once.

    Closing an fd twice is not harmless: the number may already belong to a
    socket the daemon accepted in between.
    """

    def __init__(self) -> None:
        self._open: set[int] = set()

    def pipe(self, size: int | None = None) -> tuple[int, int]:
        """A new pipe; ``size`` asks the kernel for that much room in it (best effort:
        the user's pipe quota may be spent, and the default then serves)."""
        r, w = os.pipe()
        self._open.update((r, w))
        if size is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
        return r, w

    def channel(self, size: int = STREAM_SOCKET) -> tuple[int, int]:
        """A one-way byte stream for a process and the daemon that reads or writes it
        itself: (read end, write end) of a Unix stream socket pair.

        Why not a pipe (bench/RESULTS.md, issue 13): a pipe carries its bytes in 4 KiB
        pages that the writer allocates and the reader frees, page by page, accounted
        to the memory cgroup both ways; reading 1 GiB out of one cost the daemon
        0.55-0.75 CPU-s here, out of a socket pair 0.22-0.30, and the process at the
        other end spent less as well (the socket's buffers are larger pages). Not for
        ``splice``: the relay's ends stay pipes. OpenZFS on Linux relays a ``zfs send``
        into anything but a pipe through a pipe of its own (``lzc_send_wrapper``), so
        there this gains the daemon nothing and costs the ``zfs`` process a splice;
        zfs-fuse writes into the socket itself.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            r, w = ours.detach(), theirs.detach()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self._open.update((r, w))
        # One way only: nothing is ever written back towards the writer.
        for fd, how in ((r, socket.SHUT_WR), (w, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                _shutdown(fd, how)
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self._open))

    def forget(self, fd: int) -> None:
        """``fd`` is someone else's to close now (a transport took it over)."""
        self._open.discard(fd)


def _shutdown(fd: int, how: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(how)
    finally:
        sock.detach()  # the fd stays open: FdSet closes it


class _Pipes(FdSet):
    """The two pipes of a transfer: sender → relay, relay → receiver."""

    def __init__(self) -> None:
        super().__init__()
        self.send_r, self.send_w = self.pipe()
        self.recv_r, self.recv_w = self.pipe()


async def transfer(sender: StreamEndpoint, receiver: StreamEndpoint, *, counters: Counters,
                   gate: FlowGate, limit: float | None = None,
                   stall_timeout: float | None = None, small: SmallStream | None = None,
                   ) -> int:
    """Run the stream to completion; returns the bytes moved. Cancel-safe.

    With ``small``, a stream that ends within its limit goes to ``small.deliver`` and the
    receiver is never started (``inline``)."""
    pipes = _Pipes()
    send = recv = None
    try:
        send = await sender.spawn(stdin=None, stdout=pipes.send_w)
        pipes.close(pipes.send_w)  # the sender holds this end now
        head = b""
        if small is not None:
            peeked = await peek(pipes.send_r, small.limit, small.wait)
            if peeked.ended and len(peeked.data) <= small.limit:
                return await _deliver(send, peeked.data, small, counters, stall_timeout)
            head = peeked.data
        recv = await receiver.spawn(stdin=pipes.recv_r, stdout=asyncio.subprocess.DEVNULL)
        pipes.close(pipes.recv_r)
        return await _pump(send, recv, pipes, counters, gate, limit, stall_timeout, head)
    finally:
        pipes.close_all()
        for proc in (send, recv):
            if proc is not None:
                await asyncio.shield(stop_process(proc))


async def _deliver(send: asyncio.subprocess.Process, data: bytes, small: SmallStream,
                   counters: Counters, stall_timeout: float | None) -> int:
    """The whole (small) stream handed to ``small.deliver`` once the send has exited 0."""
    send_rc = await exit_status(send, "send", stall_timeout)
    if send_rc != 0:
        err = await read_stderr(send)
        raise TransferFailed("send", first_line(err, send_rc), err, send_rc)
    await small.deliver(data)
    counters.moved(len(data))
    return len(data)


async def _pump(send: asyncio.subprocess.Process, recv: asyncio.subprocess.Process,
                pipes: _Pipes, counters: Counters, gate: FlowGate,
                limit: float | None, stall_timeout: float | None, head: bytes = b"") -> int:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    finished: asyncio.Future[None] = loop.create_future()
    relay = Relay(pipes.send_r, pipes.recv_w, counters=counters, gate=gate, limit=limit,
                  prefix=head)

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def done() -> None:
        relay.finished.wait()
        loop.call_soon_threadsafe(settle)

    relay.start()
    watcher = loop.run_in_executor(None, done)
    send_err = asyncio.ensure_future(read_stderr(send))
    recv_err = asyncio.ensure_future(read_stderr(recv))
    watchdog = asyncio.ensure_future(watch_stall(counters, gate, stall_timeout))
    try:
        await asyncio.wait([finished, watchdog], return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():  # the watchdog fired: nothing moved for too long
            why = stuck_side(pipes)
            relay.stop.set()
            await _stop_both(send, recv)
            raise TransferStalled("relay", f"no data moved for {stall_timeout:g} s "
                                  f"({why}; stalled)")
    except asyncio.CancelledError:
        relay.stop.set()
        await asyncio.shield(_stop_both(send, recv))
        raise
    finally:
        watchdog.cancel()
        # Only close once the relay thread is out of splice(): a closed fd number can be
        # reused at once. Closing then gives EOF to the receiver and EPIPE to a sender.
        await asyncio.shield(watcher)
        pipes.close(pipes.send_r, pipes.recv_w)
    # The stream has ended (or broke): both ends must exit now. One that does not is hung
    # (a receive whose mount never returns, a stopped process): a stall, not a wait for ever.
    recv_rc = await exit_status(recv, "receive", exit_timeout(
        stall_timeout, relay.result.bytes, time.monotonic() - started))
    send_rc = await exit_status(send, "send", stall_timeout)
    send_msg, recv_msg = await send_err, await recv_err
    receiver_broke = isinstance(relay.result.error, BrokenPipeError)
    if recv_rc != 0 and (receiver_broke or send_rc == 0):
        raise TransferFailed("receive", first_line(recv_msg, recv_rc), recv_msg, recv_rc)
    if send_rc != 0:
        raise TransferFailed("send", first_line(send_msg, send_rc), send_msg, send_rc)
    if recv_rc != 0:
        raise TransferFailed("receive", first_line(recv_msg, recv_rc), recv_msg, recv_rc)
    if relay.result.error is not None and not receiver_broke:
        # A receiver that exits 0 has read a complete stream (through its END record);
        # a broken pipe after that is trailing bytes it had no use for, not a failure.
        raise TransferFailed("relay", str(relay.result.error))
    return relay.result.bytes


async def watch_stall(counters: Counters, gate: FlowGate, timeout: float | None) -> None:
    """Return once no byte has moved for ``timeout`` seconds of not being suspended."""
    if timeout is None:
        await asyncio.Event().wait()  # never fires
        return
    seen, quiet = counters.bytes_read, 0.0
    step = min(1.0, timeout / 4)
    while quiet < timeout:
        await asyncio.sleep(step)
        if counters.bytes_read != seen or not gate.is_open:
            seen, quiet = counters.bytes_read, 0.0
        else:
            quiet += step


def exit_timeout(stall_timeout: float | None, moved: int, seconds: float) -> float | None:
    """How long a receive may take to exit once the daemon has passed on the last byte.

    The stall timeout, plus the time to drain what may still be on its way: between
    the daemon's pipe and a remote ``zfs receive`` lie the SSH channel window and both
    kernels' socket buffers (IN_FLIGHT at most, never more than the stream itself), which
    on a slow link take a while to arrive; the stream's own rate says how long.
    """
    if stall_timeout is None:
        return None
    if moved <= 0 or seconds <= 0:
        return stall_timeout
    return stall_timeout + min(seconds, IN_FLIGHT / (moved / seconds))


async def exit_status(proc: asyncio.subprocess.Process, side: str,
                      timeout: float | None) -> int:
    """``proc``'s exit status once its stream has ended, waiting at most ``timeout``.

    A ``zfs receive`` that has read the whole stream has only its commit left: a few
    seconds, more on a slow disk. One that has not exited a stall timeout later is
    hung, and a transfer waiting for it would show ``running`` for ever; it is stopped
    (by the caller) and the transfer retried like any stall. A receive that did commit
    before it hung leaves the target at the snapshot, so the retry finds nothing to do.
    """
    if timeout is None:
        return await exited(proc)
    try:
        return await asyncio.wait_for(exited(proc), timeout)
    except TimeoutError:
        raise TransferStalled(side, f"the stream ended but the {side} did not exit within "
                              f"{timeout:.0f} s (hung; stalled)") from None


def stuck_side(pipes: _Pipes) -> str:
    """Which end held a stalled stream up: bytes left waiting in the pipe to the receive
    (or in the sender's, behind it) mean the receive took none; empty pipes mean the send
    produced none. Read with FIONREAD, before either pipe is closed."""
    def queued(fd: int) -> int:
        try:
            count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            return 0
        return count

    if queued(pipes.recv_w) or queued(pipes.send_r):
        return "the receive took none of it"
    return "the send produced none"


async def _stop_both(*procs: asyncio.subprocess.Process) -> None:
    await asyncio.gather(*(stop_process(p) for p in procs))


async def read_stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    data = await proc.stderr.read()
    return data.decode(errors="replace").strip()


async def first_failure(named: Iterable[tuple[str, asyncio.subprocess.Process]],
                        ) -> str | None:
    """``NAME failed: its last stderr line`` for the first process that exited non-zero."""
    for name, proc in named:
        rc = await exited(proc)
        if rc != 0:
            return f"{name} failed: {first_line(await read_stderr(proc), rc)}"
    return None


#: A closing line that says nothing of the error: age's request for bug reports; and
#: age's own prefix, which the name of the failing stage says better.
_NOISE = ("age: report ",)
_AGE_PREFIX = "age: error: "


def first_line(text: str, rc: int) -> str:
    lines = [line.removeprefix(_AGE_PREFIX) for line in text.splitlines()
             if line.strip() and not line.startswith(_NOISE)]
    return lines[-1] if lines else f"exited with status {rc}"
