"""Read a backup's stream back from the bucket into a pipe, every part verified first.

Parts are fetched with ranged GETs (``GETS_PER_PART`` for each), up to
``concurrency`` parts at once and one more ahead of the one being written, and
written in order. Each GET reads straight into a buffer
of a pool allocated once per download (buffers.py: a fresh buffer per part cost more
CPU than the copy), through the lean path of parts.py. Each part's sha256 is checked
against the manifest as soon as it arrives (in a thread, so parts are checked in
parallel and while the writer writes) and *before* any of its bytes are written, so a
corrupt object never reaches ``zfs receive``. Memory stays at ``concurrency + 1``
buffers of the largest part.

The whole stream's sha256 is not computed again here (it was, until issue 13: a second
pass over every byte, ~0.6 CPU-s per GiB on this machine, a fifth of a restore's CPU):
the manifest's parts tile the stream exactly, in order and without a gap
(``layout.check_parts`` refuses any other manifest before a restore starts), and every
part is written only after its own sha256 matched, so the bytes written are the stream
the manifest describes, byte for byte, which is what the whole-stream check asserted.
(Backups no longer carry a whole-stream digest at all: ``upload.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .buffers import BufferPool
from .client import ObjectStore
from .layout import Manifest, Part

Retrier = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
#: Ranged GETs a part is fetched with, at once. A GET spends much of its time waiting
#: for the store; more of them in flight hide that wait without holding more memory
#: (the part's buffer is the same), where more parts ahead would.
GETS_PER_PART = 2


class CorruptPart(Exception):
    """A part's bytes do not match the manifest: nothing of it was written."""


def write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _check(part: Part, data: memoryview, key: str) -> None:
    if hashlib.sha256(data).hexdigest() != part.sha256:
        raise CorruptPart(f"part {part.number} of {key} (bytes {part.offset}.."
                          f"{part.offset + part.size - 1} of the stream) does not match its "
                          "sha256 in the manifest: the object was changed or damaged")


async def _all_or_none(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``calls`` at once; when one fails, the others are stopped (they write into a
    buffer that goes back to the pool) before its exception is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def download(store: ObjectStore, manifest: Manifest, fd: int, *, concurrency: int,
                   retry: Retrier, checkpoint: Callable[[], Awaitable[None]],
                   on_bytes: Callable[[int], None]) -> None:
    """Write the verified stream of ``manifest`` to ``fd``, in order (``manifest`` as
    ``layout.decode`` gives it: its parts tile the stream)."""
    pending: list[asyncio.Task[tuple[bytearray, memoryview]]] = []
    parts = list(manifest.parts)
    # Up to ``concurrency + 1`` parts fetched or fetching ahead, one of them being written.
    pool = BufferPool(min(concurrency + 1, len(parts)),
                      max((p.size for p in parts), default=0))

    def fetch(part: Part, buffer: bytearray) -> asyncio.Task[tuple[bytearray, memoryview]]:
        seg = manifest.segments[part.segment]
        start = part.offset - seg.offset

        async def piece(offset: int, end: int, data: memoryview) -> None:
            await retry(f"part {part.number} of {seg.key}",
                        lambda: store.get_range_into(seg.key, start + offset,
                                                     data[offset:end]))

        async def verified() -> tuple[bytearray, memoryview]:
            data = memoryview(buffer)[:part.size]
            step = -(-part.size // GETS_PER_PART)
            try:
                await _all_or_none([piece(offset, min(offset + step, part.size), data)
                                    for offset in range(0, part.size, step)])
                await asyncio.to_thread(_check, part, data, seg.key)
            except BaseException:
                pool.give(buffer)
                raise
            return buffer, data

        return asyncio.ensure_future(verified())

    try:
        next_index = 0
        for _ in parts:
            # ``concurrency`` GETs in flight, plus one part ready for the next write.
            while next_index < len(parts) and len(pending) <= concurrency:
                pending.append(fetch(parts[next_index], await pool.take()))
                next_index += 1
            buffer, data = await pending.pop(0)
            try:
                await checkpoint()
                await asyncio.to_thread(write_all, fd, data)
            finally:
                pool.give(buffer)
            on_bytes(len(data))
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
