"""Read a backup's stream back from the bucket into a pipe, every part verified first.

Parts are fetched with ranged GETs, up to ``concurrency`` at once and one more ahead
of the one being written, and written in order. Each part's sha256 is checked against
the manifest as soon as it arrives (in a thread, so parts are checked in parallel and
while the writer writes) and *before* any of its bytes are written, so a corrupt
object never reaches ``zfs receive``; the whole stream's sha256 is computed alongside
the writes and checked at the end. Memory stays at about ``concurrency + 2`` parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .client import ObjectStore
from .layout import Manifest, Part

Retrier = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class CorruptPart(Exception):
    """A part's bytes do not match the manifest: nothing of it was written."""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _check(part: Part, data: bytes, key: str) -> None:
    if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
        raise CorruptPart(f"part {part.number} of {key} (bytes {part.offset}.."
                          f"{part.offset + part.size - 1} of the stream) does not match its "
                          "sha256 in the manifest: the object was changed or damaged")


async def download(store: ObjectStore, manifest: Manifest, fd: int, *, concurrency: int,
                   retry: Retrier, checkpoint: Callable[[], Awaitable[None]],
                   on_bytes: Callable[[int], None]) -> None:
    """Write the verified stream of ``manifest`` to ``fd``, in order."""
    whole = hashlib.sha256()
    pending: list[asyncio.Task[bytes]] = []
    parts = list(manifest.parts)

    def fetch(part: Part) -> asyncio.Task[bytes]:
        seg = manifest.segments[part.segment]
        start = part.offset - seg.offset

        async def verified() -> bytes:
            data: bytes = await retry(
                f"part {part.number} of {seg.key}",
                lambda: store.get_bytes(seg.key, (start, start + part.size - 1)))
            await asyncio.to_thread(_check, part, data, seg.key)
            return data

        return asyncio.ensure_future(verified())

    try:
        next_index = 0
        for _ in parts:
            # ``concurrency`` GETs in flight, plus one part ready for the next write.
            while next_index < len(parts) and len(pending) <= concurrency:
                pending.append(fetch(parts[next_index]))
                next_index += 1
            data = await pending.pop(0)
            await checkpoint()
            await asyncio.gather(asyncio.to_thread(write_all, fd, data),
                                 asyncio.to_thread(whole.update, data))
            on_bytes(len(data))
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
    if whole.hexdigest() != manifest.sha256:
        raise CorruptPart(f"the stream of {manifest.snapshot} does not match the sha256 in "
                          "its manifest")
