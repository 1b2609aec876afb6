"""Small streams delivered inline, for a destination where a stream costs a session.

Each stream to a server reached over SSH opens an SSH session there: sshd forks, the
user's login shell starts (and with bash reads ``~/.bashrc``: 0.2 s and 0.17 CPU-s on
this project's test host, a few ms on a lean one), then ``zfs receive`` runs. A tree's
cycle sends every member, and most members of a big tree did not change: their
incremental is a few hundred bytes (624 on zfs-fuse), and paying a session for each made
one changed 1 GiB member among 20 unchanged ones measurably slower than the plain
``zfs send | ssh | zfs receive`` (bench/RESULTS.md, "big member in a tree").

So a transfer offered a ``SmallStream`` first *peeks* at the running send: if its whole
stream ends within the limit, the bytes go to the destination's ``receive_inline`` (one
command through its long-lived shell) and no receiving session starts. Otherwise what was
peeked is passed on ahead of the rest, by the same send: an earlier version stopped the
send and started it again for the stream path, and on OpenZFS in an emulated guest that
second ``zfs send`` per changed member was about a quarter of a tree cycle's CPU
(bench/RESULTS.md, "Where a steady cycle's CPU went").
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: How long a send may take to end within the limit before the stream path takes it.
INLINE_WAIT = 5.0


@dataclass(frozen=True)
class SmallStream:
    """Deliver a stream of at most ``limit`` bytes by ``deliver`` instead of a receiver."""

    limit: int
    deliver: Callable[[bytes], Awaitable[None]]
    wait: float = INLINE_WAIT


@dataclass(frozen=True)
class Peeked:
    """The first bytes of a stream; ``ended``: they are all of it (the send closed its
    output)."""

    data: bytes
    ended: bool


async def peek(fd: int, limit: int, wait: float) -> Peeked:
    """At most ``limit + 1`` bytes of pipe ``fd``, read within ``wait`` seconds: never
    more, so what was read is small and the rest stays in the pipe for a relay. Read by
    the event loop (``add_reader``), not a thread: a tree's transfers each hold one of
    the default executor's few threads while they run, and peeks queued behind them."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    outcome: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, limit + 1 - len(data))
        except BlockingIOError:
            return
        except OSError as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            return
        if not chunk or len(data) + len(chunk) > limit:
            data.extend(chunk)
            if not outcome.done():
                outcome.set_result(not chunk)
            return
        data.extend(chunk)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        ended = await asyncio.wait_for(outcome, wait)
    except TimeoutError:
        ended = False
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, True)  # the relay's splice blocks on it
    return Peeked(bytes(data), ended)
