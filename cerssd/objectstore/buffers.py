"""Part buffers allocated once per transfer, and a request body that sends one as it is.

Why this exists (bench/RESULTS.md, issue 13): a fresh 8 MiB ``bytes`` per part costs
far more than the copy itself. The daemon keeps every allocation above 1 MiB in its
own mapping (cerssd/memory.py), so each new part buffer is faulted in page by page and
zeroed by the kernel: ~0.9 CPU-s per GiB per copy on this machine, against 0.7 for a
whole sha256. The upload made three such copies of every part (``bytes`` off the read
buffer, ``io.BytesIO.getbuffer`` unsharing it, 64 KiB reads out of it) and the
download one (joining the response). Now a transfer takes ``count`` buffers at its
start, faults them in once, and moves every part through them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

#: Bytes handed to the socket per write. The transport copies what the socket does not
#: take at once (Python 3.11); a slice this small stays in malloc's heap instead of a
#: fresh mapping, and a part still costs only a few dozen loop turns.
SEND_SLICE = 256 << 10


class BufferPool:
    """``count`` buffers of ``size`` bytes; ``take`` waits until one is given back.

    Memory is exactly ``count x size`` for the whole transfer, however long the stream.
    """

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: asyncio.Queue[bytearray] = asyncio.Queue()
        for _ in range(count):
            self._free.put_nowait(bytearray(size))

    async def take(self) -> bytearray:
        return await self._free.get()

    def give(self, buffer: bytearray) -> None:
        self._free.put_nowait(buffer)


class PartBody(Payload):
    """An upload part's bytes, sent straight from its buffer in ``SEND_SLICE`` slices.

    botocore passes an aiohttp ``Payload`` through untouched (``bytes`` it would wrap
    in a ``BytesIO``, which copies), and aiohttp writes it as it is. ``read`` is there
    only because botocore accepts a streaming body that has one; nothing here calls it.
    A body can be sent again (a retried part): ``write`` always starts at the first byte.
    """

    _autoclose = True  # memory only: nothing to close

    def __init__(self, view: memoryview, **kwargs: Any) -> None:
        super().__init__(view, content_type="application/octet-stream", **kwargs)
        self._view = view
        self._size = view.nbytes

    def read(self, size: int = -1) -> bytes:
        return bytes(self._view if size < 0 else self._view[:size])

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._view).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        for start in range(0, view.nbytes, SEND_SLICE):
            await writer.write(view[start:start + SEND_SLICE])
