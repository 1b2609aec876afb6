"""Running commands on a server: the ``Runner`` protocol and the local runner.

Commands are argv lists, never shell strings. ``LocalRunner`` executes them
directly; the SSH runner (``ssh``) quotes each argument with ``shlex.quote`` because
SSH hands a single string to the remote shell. Cancelling a run kills the process.
A runner also says what its link is like (``TransportFacts``): whether a lost
connection is reported while retries go on, and whether the node can stream to an
object store itself.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .process import stop_process


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


@dataclass(frozen=True)
class TransportFacts:
    """What the way to a server offers, published next to its storage capabilities."""

    #: A lost link is watched (keepalives, stall watchdog) and reported while retries go
    #: on; a local server has no link to lose.
    connection_loss_reporting: bool = False
    #: The node streams to object stores itself (no controller in the path): only the
    #: one this daemon runs on.
    direct_copy: bool = False
    #: Each stream opens a session of its own on the server (an SSH session: sshd and
    #: the user's login shell start for it), where a command shares a long-lived shell.
    stream_sessions: bool = False


class Runner(Protocol):
    """Executes argv lists on one server."""

    server: str
    facts: TransportFacts

    async def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult: ...

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process: ...


class LocalRunner:
    facts = TransportFacts(connection_loss_reporting=False, direct_copy=True)

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
