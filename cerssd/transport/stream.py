"""One end of a byte stream: a process a transfer starts with the pipe ends it gives it.

A storage backend hands out ready endpoints for a planned stream (``send``/``receive``);
the stream pipeline (``replication.stream.transfer``, ``fanout``) only starts them and wires
their standard input and output, so it never learns what command runs, or where.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .runner import LocalRunner, Runner


class StreamEndpoint(Protocol):
    async def spawn(self, *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process: ...


@dataclass(frozen=True)
class Endpoint:
    """An argv run through a runner (so on the server the runner reaches)."""

    runner: Runner
    argv: Sequence[str]

    async def spawn(self, *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        return await self.runner.spawn(self.argv, stdin=stdin, stdout=stdout)


def local_command(argv: Sequence[str]) -> StreamEndpoint:
    """An argv run on this node: a compressor between a stream and an uploader."""
    return Endpoint(LocalRunner(), argv)
