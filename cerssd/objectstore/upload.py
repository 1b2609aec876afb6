"""Stream a pipe into S3 by multipart upload, with memory bounded whatever the size.

Bytes are read from the pipe one part at a time by a worker thread (``readv`` into a
buffer of a pool allocated once per upload; the part's sha256 is computed as it goes,
and hashlib drops the GIL), and up to
``concurrency`` parts upload at once, each sent from its buffer without a copy
(wire.py). The reader waits for a free buffer before reading on, so memory
stays at ``(concurrency + 1) x part_size``, and a slow or lost store stops the
reading, which blocks ``zfs send``: the backpressure the design asks for. Each part
carries its sha256 (``ChecksumSHA256``), which the store verifies, and is sent without
botocore's per-call overhead and signed without hashing the payload again (parts.py).

Every byte is hashed once, in its part. No digest of the whole stream (or of a segment)
is computed: it was a second sha256 pass over every byte, 0.6 CPU-s per GiB of the
daemon's ~2.4 (issue 13), and it asserted nothing the part digests do not. The store
verifies each part against its digest, the manifest lists every part's digest and byte
range, the parts must tile the stream exactly to be read back (``layout.decode``), and a
restore checks each part before any of its bytes reaches ``zfs receive``; with standard
tools, each part is checked the same way (docs/backups.md).

S3 allows 10,000 parts per object. Instead of growing the parts (and the memory)
with the stream, a stream longer than 10,000 parts continues in a next *segment*
object: a backup is one or more segments whose concatenation is the stream. With
the default 8 MiB parts a segment holds 78 GiB, so most backups are one object.

A part that fails transiently is retried by ``retry`` (the activity reports the lost
link meanwhile) with its bytes still in memory: an outage costs no more than the
parts in flight.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from .buffers import BufferPool
from .client import ObjectStore
from .config import MAX_PARTS
from .layout import Part, Segment

T = TypeVar("T")
#: ``retry(what, call)``: runs ``call`` until it succeeds, retrying transient failures
#: (and reporting the link) as the activity's policy says.
Retrier = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True)
class UploadResult:
    parts: tuple[Part, ...]
    segments: tuple[Segment, ...]
    size: int


@dataclass
class _Open:
    """A segment whose multipart upload is under way."""

    index: int
    key: str
    upload_id: str
    offset: int
    etags: dict[int, tuple[str, str]] = field(default_factory=dict)  # (etag, checksum)
    #: Parts uploading; a task leaves the set when it succeeds, so the set (and every
    #: look at it, once per part) stays as small as ``concurrency``.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    size: int = 0


#: Bytes read from the stream per call, and hashed right away while they are in the CPU's
#: cache: a part read whole and hashed after was read back from memory twice more. 1 MiB
#: rather than 256 KiB (issue 13): a quarter of the calls, each a system call and a
#: hash update from Python. Measured (2026-12-07, loaded machine): reading 1 GiB from a
#: socket pair with two hashes (the whole stream's too, then) 1.43 -> 1.38 CPU-s.
READ_CHUNK = 1 << 20


def read_part(fd: int, buffer: bytearray, size: int) -> tuple[int, str]:
    """Fill ``buffer[:size]`` from ``fd`` (short only at EOF); returns (bytes, sha256).

    Every chunk is added to the part's sha256 as soon as it is read.
    """
    view = memoryview(buffer)[:size]
    part = hashlib.sha256()
    got = 0
    try:
        while got < size:
            n = os.readv(fd, [view[got:got + READ_CHUNK]])
            if n == 0:
                break
            chunk = view[got:got + n]
            part.update(chunk)
            chunk.release()
            got += n
    finally:
        view.release()
    return got, part.hexdigest()


class SegmentedUpload:
    """Streams one pipe into segment objects ``key_for(0)``, ``key_for(1)``, ..."""

    def __init__(self, store: ObjectStore, key_for: Callable[[int], str], *,
                 part_size: int, concurrency: int, retry: Retrier,
                 checkpoint: Callable[[], Awaitable[None]],
                 started: Callable[[str, str], None],
                 parts_per_segment: int = MAX_PARTS, extra: dict[str, Any] | None = None,
                 pool: BufferPool | None = None) -> None:
        self.store = store
        self.key_for = key_for
        self.part_size = part_size
        self.concurrency = concurrency
        self.retry = retry
        self.checkpoint = checkpoint
        self.started = started  # (key, upload id) of each upload, for crash cleanup
        self.parts_per_segment = parts_per_segment
        self.extra = extra or {}
        #: Part buffers shared with other uploads of one activity (a tree's backup runs
        #: several at once): its memory is the pool's, not ``concurrency + 1`` each.
        self.pool = pool
        self.on_read: Callable[[int], None] = lambda n: None
        self.on_sent: Callable[[int], None] = lambda n: None
        #: Uploads begun and not completed, and segment objects completed: what a
        #: rollback must remove while there is no manifest.
        self.unfinished: dict[str, str] = {}
        self.completed: list[str] = []

    async def run(self, fd: int) -> UploadResult:
        # ``concurrency`` parts uploading and one being read: the memory of the upload.
        pool = self.pool or BufferPool(self.concurrency + 1, self.part_size)
        parts: list[Part] = []
        segments: list[Segment] = []
        current: _Open | None = None
        offset = 0
        try:
            while True:
                await self.checkpoint()
                buffer = await pool.take()  # a part in flight less: memory stays bounded
                if current is not None:
                    _raise_failed(current.tasks)
                starting = current is None or self._full(current, parts)
                got, digest = await asyncio.to_thread(read_part, fd, buffer, self.part_size)
                self.on_read(got)
                if got == 0 and parts:
                    pool.give(buffer)
                    break
                if starting:
                    index = 0 if current is None else current.index + 1
                    if current is not None:
                        segments.append(await self._complete(current))
                    current = await self._begin(index, offset)
                assert current is not None
                number = len(parts) - current.index * self.parts_per_segment + 1
                parts.append(Part(number, offset, got, digest, current.index))
                offset += got
                current.size += got
                task = asyncio.ensure_future(self._upload(current, number, buffer, got, digest,
                                                          pool))
                current.tasks.add(task)
                task.add_done_callback(partial(_forget_if_ok, current.tasks))
                if got < self.part_size:  # EOF inside this part: it is the last
                    break
            assert current is not None
            segments.append(await self._complete(current))
        except BaseException:
            if current is not None:
                await _cancel(current.tasks)
            raise
        return UploadResult(tuple(parts), tuple(segments), offset)

    def _full(self, current: _Open, parts: list[Part]) -> bool:
        return len(parts) - current.index * self.parts_per_segment >= self.parts_per_segment

    async def _begin(self, index: int, offset: int) -> _Open:
        key = self.key_for(index)
        created = await self.retry(f"create upload {key}", lambda: self.store.call(
            "create_multipart_upload", Key=key, ContentType="application/octet-stream",
            ChecksumAlgorithm="SHA256", **self.extra))
        upload_id = str(created["UploadId"])
        self.unfinished[key] = upload_id
        self.started(key, upload_id)
        return _Open(index, key, upload_id, offset)

    async def _complete(self, seg: _Open) -> Segment:
        await asyncio.gather(*seg.tasks)
        parts = [{"PartNumber": n, "ETag": etag, "ChecksumSHA256": checksum}
                 for n, (etag, checksum) in sorted(seg.etags.items())]
        await self.retry(f"complete upload {seg.key}", lambda: self.store.call(
            "complete_multipart_upload", Key=seg.key, UploadId=seg.upload_id,
            MultipartUpload={"Parts": parts}))
        del self.unfinished[seg.key]
        self.completed.append(seg.key)
        return Segment(seg.index, seg.key, seg.offset, seg.size)

    async def _upload(self, seg: _Open, number: int, buffer: bytearray, size: int,
                      digest: str, pool: BufferPool) -> None:
        """Send ``buffer[:size]`` as part ``number`` (retried from the same buffer), then
        give the buffer back for the next part to be read into."""
        # The store checks the part against our sha256 (and refuses it with BadDigest if
        # it arrived damaged), so botocore need not hash the payload again to sign it.
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        view = memoryview(buffer)[:size]

        async def attempt() -> str:
            return await self.store.upload_part(seg.key, seg.upload_id, number, view,
                                                digest, checksum)

        try:
            seg.etags[number] = (await self.retry(f"part {number} of {seg.key}", attempt),
                                 checksum)
            self.on_sent(size)
        finally:
            pool.give(buffer)


def _forget_if_ok(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    """A part that went up needs no more looking after; a failed one stays to be raised."""
    if not task.cancelled() and task.exception() is None:
        tasks.discard(task)


def _raise_failed(tasks: set[asyncio.Task[None]]) -> None:
    for task in list(tasks):
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)
