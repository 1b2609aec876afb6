"""Running commands on a server: one abstraction for local and (later) SSH execution.

Commands are argv lists, never shell strings. ``LocalRunner`` executes them
directly; a remote runner quotes each argument with ``shlex.quote`` because SSH
hands a single string to the remote shell. Cancelling a run kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("cerssd.runner")


class CommandFailed(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()
        super().__init__(f"`{shlex.join(argv)}` exited {returncode}: "
                         f"{detail[0] if detail else 'no message'}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Executes argv lists on one server."""

    server: str

    async def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult: ...

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process: ...


class LocalRunner:
    def __init__(self, server: str = "local") -> None:
        self.server = server

    async def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            await stop_process(proc)
            raise
        result = CommandResult(proc.returncode or 0, out.decode(errors="replace"),
                               err.decode(errors="replace"))
        if check and result.returncode != 0:
            raise CommandFailed(argv, result.returncode, result.stderr)
        return result

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout, stderr=asyncio.subprocess.PIPE)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Terminate, then kill after ``grace`` seconds, and reap the child.

    A process stuck in the kernel (a ``zfs receive`` in uninterruptible sleep on a
    hung pool) survives even SIGKILL until it leaves it; the caller is not held up
    for that longer than another ``grace``: asyncio reaps the child once it does exit.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("process did not exit on SIGKILL (stuck in the kernel); left "
                        "to exit by itself", pid=proc.pid)
