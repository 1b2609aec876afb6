"""One ``zfs send`` → ``zfs receive`` stream, joined through the daemon by two pipes.

    zfs send ──pipe──▶ [Relay: splice, count, gate, limit] ──pipe──▶ zfs receive

The daemon sits in the path so it can count bytes live, apply backpressure and
kill both ends; ``splice`` keeps the bytes in the kernel. If either end fails
the other is stopped, and the error names the side and its own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends.runner import Runner, stop_process
from ..engine import Counters, FlowGate
from .relay import Relay, enlarge_pipe


class TransferFailed(Exception):
    def __init__(self, side: str, message: str, stderr: str = "") -> None:
        super().__init__(f"{side}: {message}")
        self.side = side
        self.stderr = stderr


@dataclass(frozen=True)
class Endpoint:
    runner: Runner
    argv: Sequence[str]


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def transfer(sender: Endpoint, receiver: Endpoint, *, counters: Counters,
                   gate: FlowGate, limit: float | None = None) -> int:
    """Run the stream to completion; returns the bytes moved. Cancel-safe."""
    send_r, send_w = os.pipe()
    recv_r, recv_w = os.pipe()
    for fd in (send_r, recv_w):
        enlarge_pipe(fd)
    send = recv = None
    try:
        send = await sender.runner.spawn(sender.argv, stdin=None, stdout=send_w)
        recv = await receiver.runner.spawn(receiver.argv, stdin=recv_r,
                                           stdout=asyncio.subprocess.DEVNULL)
        _close(send_w, recv_r)
        return await _pump(send, recv, send_r, recv_w, counters, gate, limit)
    finally:
        _close(send_w, recv_r, send_r, recv_w)
        for proc in (send, recv):
            if proc is not None:
                await asyncio.shield(stop_process(proc))


async def _pump(send: asyncio.subprocess.Process, recv: asyncio.subprocess.Process,
                src: int, dst: int, counters: Counters, gate: FlowGate,
                limit: float | None) -> int:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    relay = Relay(src, dst, counters=counters, gate=gate, limit=limit)

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def done() -> None:
        relay.finished.wait()
        loop.call_soon_threadsafe(settle)

    relay.start()
    watcher = loop.run_in_executor(None, done)
    send_err = asyncio.ensure_future(_stderr(send))
    recv_err = asyncio.ensure_future(_stderr(recv))
    try:
        await finished
    except asyncio.CancelledError:
        relay.stop.set()
        await asyncio.shield(_stop_both(send, recv))
        raise
    finally:
        # Only close once the relay thread is out of splice(): a closed fd number can be
        # reused at once. Closing then gives EOF to the receiver and EPIPE to a sender.
        await asyncio.shield(watcher)
        _close(src, dst)
    send_rc, recv_rc = await send.wait(), await recv.wait()
    send_msg, recv_msg = await send_err, await recv_err
    receiver_broke = isinstance(relay.result.error, BrokenPipeError)
    if recv_rc != 0 and (receiver_broke or send_rc == 0):
        raise TransferFailed("receive", _first_line(recv_msg, recv_rc), recv_msg)
    if send_rc != 0:
        raise TransferFailed("send", _first_line(send_msg, send_rc), send_msg)
    if recv_rc != 0:
        raise TransferFailed("receive", _first_line(recv_msg, recv_rc), recv_msg)
    if relay.result.error is not None and not receiver_broke:
        # A receiver that exits 0 has read a complete stream (through its END record);
        # a broken pipe after that is trailing bytes it had no use for, not a failure.
        raise TransferFailed("relay", str(relay.result.error))
    return relay.result.bytes


async def _stop_both(*procs: asyncio.subprocess.Process) -> None:
    await asyncio.gather(*(stop_process(p) for p in procs))


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    data = await proc.stderr.read()
    return data.decode(errors="replace").strip()


def _first_line(text: str, rc: int) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"exited with status {rc}"
