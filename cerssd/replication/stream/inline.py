"""Small streams read whole, for a destination where a stream endpoint costs a session.

Each stream to a server reached over SSH opens an SSH session there: sshd forks, the
user's login shell starts (and with bash reads ``~/.bashrc``: 0.2 s and 0.17 CPU-s on
this project's test host, a few ms on a lean one), then ``zfs receive`` runs. A tree's
cycle sends every member, and most members of a big tree did not change: their
incremental is a few hundred bytes (624 on zfs-fuse), and paying a session for each made
one changed 1 GiB member among 20 unchanged ones measurably slower than the plain
``zfs send | ssh | zfs receive`` (bench/RESULTS.md, "big member in a tree"). Such a
stream is read whole here and handed to the destination's ``receive_inline`` (one
command through its long-lived shell); anything larger, or slower, takes the stream path
as before.
"""

from __future__ import annotations

import asyncio
import os

from ...transport.process import stop_process
from ...transport.stream import StreamEndpoint
from .transfer import FdSet, TransferFailed, first_line

#: How long a send may take to end within the limit before it is left to the stream path.
INLINE_WAIT = 5.0


async def read_small(sender: StreamEndpoint, limit: int,
                     wait: float = INLINE_WAIT) -> bytes | None:
    """The sender's whole stream if it ends within ``limit`` bytes and ``wait`` seconds,
    else None (the sender is stopped; the stream path starts it again). A send that
    fails raises TransferFailed, as in a transfer."""
    loop = asyncio.get_running_loop()
    fds = FdSet()
    r, w = fds.pipe()
    pipe = os.fdopen(r, "rb", buffering=0)
    fds.forget(r)  # the file object owns it, then the transport
    proc: asyncio.subprocess.Process | None = None
    transport: asyncio.ReadTransport | None = None
    errors: asyncio.Future[bytes] | None = None
    try:
        proc = await sender.spawn(stdin=None, stdout=w)
        fds.close(w)
        reader = asyncio.StreamReader(limit=limit + 1)
        # closing the read end (at the latest below) is what stops a sender that has
        # more to write (EPIPE): zfs send does not die of SIGTERM while zfs-fuse blocks
        # writing into a full pipe for it
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        assert proc.stderr is not None
        errors = asyncio.ensure_future(proc.stderr.read())
        try:
            await asyncio.wait_for(reader.readexactly(limit + 1), wait)
            return None  # more than the limit
        except asyncio.IncompleteReadError as exc:
            data = exc.partial  # the stream ended within the limit
        except TimeoutError:
            return None
        try:
            rc = await asyncio.wait_for(proc.wait(), wait)
            err = (await asyncio.wait_for(errors, wait)).decode(errors="replace").strip()
        except TimeoutError:
            return None  # ended its output but not itself: the stream path deals with it
        if rc != 0:
            raise TransferFailed("send", first_line(err, rc), err, rc)
        return data
    finally:
        if transport is not None:
            transport.close()
        else:
            pipe.close()
        fds.close_all()
        if errors is not None:
            errors.cancel()
        if proc is not None:
            await asyncio.shield(stop_process(proc))
