"""The generic path's data mover: Debian's ``rsync`` from a snapshot's view into a volume.

One end is local to the daemon, the other local too or reached over the server's SSH
settings (user, port, identity, known_hosts, cipher, keepalives and the stream
multiplexer: ``SshRunner.rsync_shell``), so rsync runs here as ``rsync -e 'ssh …'``.

Options, and why (docs/drivers.md has the table):

* ``-a --numeric-ids``: contents, times, permissions, owners by number (the two servers'
  user tables need not agree), symlinks, devices and specials;
* ``-H -A -X``: hard links, POSIX ACLs and extended attributes. A destination that cannot
  store what the source has (zfs-fuse has neither ACLs nor xattrs) fails the copy with
  rsync's words rather than dropping them silently;
* ``--inplace``: changed files are rewritten in place (no temporary copy: a snapshot
  keeps the blocks that did not change shared with the previous one);
* ``--sparse`` (holes stay holes in new files) only where the destination does not keep
  runs of zeros as holes itself (``Capabilities.holes_from_zeros``: ZFS with
  compression): rsync writes sparse files 1 KiB at a time, 1.7x slower onto zfs-fuse;
* ``--delete``: files gone on the source go on the destination; ``-x``: never into
  another filesystem mounted below either end (a child volume), on either side;
* ``--exclude=/.zfs``: ZFS's snapshot directory, where ``snapdir=visible`` lists it;
  ``--filter=-x user.cerssd.*``: cerssd's own extended attributes (btrfs records a
  snapshot's origin on the volume's root as ``user.cerssd.origin``), which belong to
  each server, not to the data;
* ``--info=progress2``: live bytes for n of m; ``--stats``: what moved, at the end.

m comes from a dry run (``-n --stats``: "Total transferred file size", what the quick
check will send) that the generic flow runs alongside the copy. Suspend stops the rsync processes
(SIGSTOP; their ``ssh`` keeps answering keepalives, so the link outlives a long
suspend) and resume continues them. A lost link shows as ssh's exit (255) or rsync's
"connection unexpectedly closed" (exit 12), found by ssh's keepalives within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass

from ...flow_control import Counters, FlowGate
from ...transport.errors import LINK_ERRORS
from ...transport.files import FileEnd
from ...transport.process import stop_process

RSYNC_OPTIONS = ("-aHAX", "--numeric-ids", "--inplace", "--delete", "-x",
                 "--exclude=/.zfs", "--filter=-x user.cerssd.*")
#: rsync's exit codes that mean its connection, not its work, failed: socket I/O (10),
#: protocol stream (12), timeout (30, 35), and ssh's own (255).
LINK_EXITS = frozenset({10, 12, 30, 35, 255})
_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")
#: How often the gate is looked at for suspend and resume.
GATE_POLL = 0.2


@dataclass(frozen=True)
class SyncStats:
    """rsync's ``--stats``: file data that needed sending, and what crossed the wire."""

    transferred_size: int
    literal: int
    sent: int
    received: int

    @property
    def wire(self) -> int:
        return self.sent + self.received


class SyncFailed(Exception):
    def __init__(self, message: str, returncode: int, stderr: str, link_lost: bool) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.link_lost = link_lost


def rsync_argv(source: FileEnd, destination: FileEnd, *, dry_run: bool = False,
               limit: float | None = None, sparse: bool = True) -> list[str]:
    if source.remote and destination.remote:
        raise ValueError("rsync runs with one end local")
    remote = source if source.remote else destination
    argv = ["rsync", *RSYNC_OPTIONS, "--stats"]
    if sparse:
        argv.append("--sparse")
    argv += ["-n"] if dry_run else ["--info=progress2"]
    if limit:
        argv.append(f"--bwlimit={max(1, int(limit) // 1024)}")  # KiB/s
    if remote.shell is not None:
        argv += ["-e", remote.shell]
    return [*argv, source.spec(), destination.spec()]


async def measure(source: FileEnd, destination: FileEnd) -> SyncStats:
    """What a copy would send (a dry run: the file lists and the quick check only)."""
    proc = await _start(rsync_argv(source, destination, dry_run=True))
    out, err = await proc.communicate()
    _check(proc.returncode or 0, err.decode(errors="replace"), source, destination)
    return parse_stats(out.decode(errors="replace"))


async def sync(source: FileEnd, destination: FileEnd, *, counters: Counters, gate: FlowGate,
               limit: float | None = None, sparse: bool = True) -> SyncStats:
    """Copy; progress into ``counters`` as it goes, suspended while ``gate`` is closed.
    Cancel-safe: the processes are stopped."""
    proc = await _start(rsync_argv(source, destination, limit=limit, sparse=sparse))
    suspender = asyncio.ensure_future(_follow_gate(proc.pid, gate))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        err_task = asyncio.ensure_future(proc.stderr.read())
        tail = await _progress(proc.stdout, counters)
        rc = await proc.wait()
        err = (await err_task).decode(errors="replace")
    finally:
        suspender.cancel()
        _signal_rsync(proc.pid, signal.SIGCONT)  # a stopped process cannot exit
        await asyncio.shield(stop_process(proc))
    _check(rc, err, source, destination)
    return parse_stats(tail.decode(errors="replace"))


async def _start(argv: list[str]) -> asyncio.subprocess.Process:
    # Its own session: its processes (rsync forks a receiver and a generator) are found
    # by session id for suspend; ``ssh`` among them is left running.
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)


async def _progress(stdout: asyncio.StreamReader, counters: Counters) -> bytes:
    """Read ``--info=progress2`` lines (ended by CR) into ``counters``; returns what
    follows them (the ``--stats`` block)."""
    seen = 0
    buffer = b""
    tail: list[bytes] = []
    while chunk := await stdout.read(65536):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            m = _PROGRESS.match(line)
            if m:
                now = int(m.group(1).replace(b",", b""))
                if now > seen:
                    counters.read(now - seen)
                    seen = now
            elif line.strip():
                tail.append(line)
    tail.append(buffer)
    return b"\n".join(tail)


async def _follow_gate(session: int, gate: FlowGate) -> None:
    """SIGSTOP the rsync processes while the gate is closed, SIGCONT when it opens."""
    stopped = False
    while True:
        if gate.is_open == stopped:
            stopped = not stopped
            _signal_rsync(session, signal.SIGSTOP if stopped else signal.SIGCONT)
        await asyncio.sleep(GATE_POLL)


def _signal_rsync(session: int, sig: int) -> None:
    """``sig`` to every ``rsync`` process of ``session`` (not its ``ssh``)."""
    for pid in _session_rsyncs(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _session_rsyncs(session: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm_end = stat.rfind(b")")
        comm = stat[stat.find(b"(") + 1:comm_end]
        fields = stat[comm_end + 2:].split()
        if comm == b"rsync" and len(fields) > 3 and int(fields[3]) == session:
            found.append(int(entry))
    return found


def _check(rc: int, stderr: str, source: FileEnd, destination: FileEnd) -> None:
    if rc == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = "; ".join(lines[-3:]) if lines else f"rsync exited {rc}"
    remote = source.remote or destination.remote
    lost = remote and (rc in LINK_EXITS or any(t in stderr for t in LINK_ERRORS))
    raise SyncFailed(message, rc, stderr, lost)


def parse_stats(text: str) -> SyncStats:
    def number(label: str) -> int:
        m = re.search(rf"^{label}: ([\d,]+)", text, re.MULTILINE)
        return int(m.group(1).replace(",", "")) if m else 0

    return SyncStats(transferred_size=number("Total transferred file size"),
                     literal=number("Literal data"), sent=number("Total bytes sent"),
                     received=number("Total bytes received"))
