"""Read a backup's stream back from the bucket into a pipe, every part verified first.

Parts are fetched with ranged GETs, up to ``concurrency`` ahead of the one being
written, and written in order. Each part's sha256 is checked against the manifest
*before* any of its bytes are written, so a corrupt object never reaches
``zfs receive``; the whole stream's sha256 is checked at the end. Memory stays at
about ``concurrency`` parts.
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


def _verified(part: Part, data: bytes, key: str, whole: Any) -> None:
    if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
        raise CorruptPart(f"part {part.number} of {key} (bytes {part.offset}.."
                          f"{part.offset + part.size - 1} of the stream) does not match its "
                          "sha256 in the manifest: the object was changed or damaged")
    whole.update(data)


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
        return asyncio.ensure_future(retry(
            f"part {part.number} of {seg.key}",
            lambda: store.get_bytes(seg.key, (start, start + part.size - 1))))

    try:
        next_index = 0
        for part in parts:
            while next_index < len(parts) and len(pending) < concurrency:
                pending.append(fetch(parts[next_index]))
                next_index += 1
            data = await pending.pop(0)
            seg_key = manifest.segments[part.segment].key
            await asyncio.to_thread(_verified, part, data, seg_key, whole)
            await checkpoint()
            await asyncio.to_thread(write_all, fd, data)
            on_bytes(len(data))
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
    if whole.hexdigest() != manifest.sha256:
        raise CorruptPart(f"the stream of {manifest.snapshot} does not match the sha256 in "
                          "its manifest")
