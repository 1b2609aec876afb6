"""Part buffers allocated once per transfer.

Why this exists (bench/RESULTS.md, issue 13): a fresh 8 MiB ``bytes`` per part costs
far more than the copy itself. The daemon keeps every allocation above 1 MiB in its
own mapping (cerssd/memory.py), so each new part buffer is faulted in page by page and
zeroed by the kernel: ~0.9 CPU-s per GiB per copy on this machine, against 0.7 for a
whole sha256. The upload made three such copies of every part (``bytes`` off the read
buffer, ``io.BytesIO.getbuffer`` unsharing it, 64 KiB reads out of it) and the
download one (joining the response). Now a transfer takes ``count`` buffers at its
start, faults them in once, and moves every part through them: read into one and
sent from it, or received into one and written from it (wire.py).
"""

from __future__ import annotations

import asyncio


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
