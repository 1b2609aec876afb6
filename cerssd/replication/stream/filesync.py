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
  compression) and the source has a file with holes (``files.survey_tree``): rsync
  then writes every file 1 KiB at a time, 1.7x slower onto zfs-fuse;
* ``--delete``: files gone on the source go on the destination; ``-x``: never into
  another filesystem mounted below either end (a child volume), on either side;
* ``--exclude=/.zfs``: ZFS's snapshot directory, where ``snapdir=visible`` lists it;
  ``--filter=-x user.cerssd.*``: cerssd's own extended attributes (btrfs records a
  snapshot's origin on the volume's root as ``user.cerssd.origin``), which belong to
  each server, not to the data;
* ``--info=progress2``: live bytes for n of m; ``--stats``: what moved, at the end;
* ``--timeout=N`` (the daemon's ``stall_timeout``): the stall watchdog. rsync exits 30
  when no byte moved either way for N seconds; its ends send keepalives while they
  build file lists or compare a big file, so a slow but live copy is not a stall. A
  peer process that hangs (stopped, stuck on its disk) while ssh still answers is
  found this way, where ssh's own keepalives see nothing wrong.

m of an incremental comes from a dry run (``-n --stats``: "Total transferred file size",
what the quick check will send) that the generic flow runs alongside a copy that lasts
more than a second; m of a first copy from the source's walk. Suspend stops the rsync processes
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
from ...transport.process import exited, stop_process

RSYNC_OPTIONS = ("-aHAX", "--numeric-ids", "--inplace", "--delete", "-x",
                 "--exclude=/.zfs", "--filter=-x user.cerssd.*")
#: rsync's exit codes that mean its connection, not its work, failed: socket I/O (10),
#: protocol stream (12), timeout (30, 35), and ssh's own (255).
LINK_EXITS = frozenset({10, 12, 30, 35, 255})
#: What the local rsync exits with when its peer gave up waiting (``--timeout``): the
#: timeout itself (30), or the connection the peer closed on it (12).
TIMEOUT_EXITS = frozenset({12, 30})
_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")
#: Seconds to wait, after rsync exited, for the rest of its stderr.
STDERR_GRACE = 1.0
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
               limit: float | None = None, sparse: bool = True,
               stall: float | None = None) -> list[str]:
    if source.remote and destination.remote:
        raise ValueError("rsync runs with one end local")
    remote = source if source.remote else destination
    argv = ["rsync", *RSYNC_OPTIONS, "--stats"]
    if sparse:
        argv.append("--sparse")
    if stall:
        argv.append(f"--timeout={_timeout_seconds(stall)}")
    argv += ["-n"] if dry_run else ["--info=progress2"]
    if limit:
        argv.append(f"--bwlimit={max(1, int(limit) // 1024)}")  # KiB/s
    if remote.shell is not None:
        argv += ["-e", remote.shell]
    return [*argv, source.spec(), destination.spec()]


async def measure(source: FileEnd, destination: FileEnd, *,
                  stall: float | None = None) -> SyncStats:
    """What a copy would send (a dry run: the file lists and the quick check only)."""
    proc = await _start(rsync_argv(source, destination, dry_run=True, stall=stall))
    assert proc.stdout is not None and proc.stderr is not None
    err_chunks: list[bytes] = []
    err_task = asyncio.ensure_future(_collect(proc.stderr, err_chunks))
    try:
        out = await proc.stdout.read()
        rc = await exited(proc)
        await _rest_of_stderr(err_task)
    finally:
        err_task.cancel()
        await asyncio.shield(stop_process(proc))
    _check(rc, b"".join(err_chunks).decode(errors="replace"), source, destination)
    return parse_stats(out.decode(errors="replace"))


async def sync(source: FileEnd, destination: FileEnd, *, counters: Counters, gate: FlowGate,
               limit: float | None = None, sparse: bool = True,
               stall: float | None = None) -> SyncStats:
    """Copy; progress into ``counters`` as it goes, suspended while ``gate`` is closed.
    ``stall``: the stall watchdog's seconds (rsync's own ``--timeout``). Cancel-safe:
    the processes are stopped.

    A suspend stops the rsync processes on this node only. A peer that sends hears
    nothing from here meanwhile, and one that lasts longer than ``stall`` ends it by
    its timeout (a peer that receives keeps writing keepalives into ssh's buffers and
    waits). That is the operator's pause, not a fault: rsync runs again, and its quick
    check skips the files already copied.
    """
    while True:
        pauses = _Pauses()
        try:
            return await _sync_once(rsync_argv(source, destination, limit=limit,
                                               sparse=sparse, stall=stall),
                                    source, destination, counters, gate, pauses)
        except SyncFailed as exc:
            if not (stall and exc.returncode in TIMEOUT_EXITS
                    and pauses.longest >= _timeout_seconds(stall) - 1):
                raise


def _timeout_seconds(stall: float) -> int:
    """rsync's ``--timeout``: whole seconds. It compares whole-second clock readings
    (``time()``), so a peer gives up after as little as one second less than that."""
    return max(1, round(stall))


@dataclass
class _Pauses:
    """How long the longest suspend of one rsync run lasted (seconds)."""

    longest: float = 0.0


async def _sync_once(argv: list[str], source: FileEnd, destination: FileEnd,
                     counters: Counters, gate: FlowGate, pauses: _Pauses) -> SyncStats:
    proc = await _start(argv)
    suspender = asyncio.ensure_future(_follow_gate(proc.pid, gate, pauses))
    assert proc.stdout is not None and proc.stderr is not None
    err_chunks: list[bytes] = []
    err_task = asyncio.ensure_future(_collect(proc.stderr, err_chunks))
    try:
        tail = await _progress(proc.stdout, counters)
        rc = await exited(proc)
        await _rest_of_stderr(err_task)
        err = b"".join(err_chunks).decode(errors="replace")
    finally:
        err_task.cancel()
        suspender.cancel()
        _signal_rsync(proc.pid, signal.SIGCONT)  # a stopped process cannot exit
        await asyncio.shield(stop_process(proc))
    _check(rc, err, source, destination)
    return parse_stats(tail.decode(errors="replace"))


async def _collect(stream: asyncio.StreamReader, chunks: list[bytes]) -> None:
    while chunk := await stream.read(65536):
        chunks.append(chunk)


async def _rest_of_stderr(collecting: asyncio.Future[None]) -> None:
    """Wait a moment for the end of an exited rsync's stderr, never for ever.

    The ssh that rsync starts may become the server's stream multiplexer
    (``ControlPersist``): that master lives on after rsync, holding a copy of the stderr
    it was given, so the pipe may not end until the master does. What rsync itself
    wrote is there once it has exited.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(collecting), STDERR_GRACE)


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


async def _follow_gate(session: int, gate: FlowGate, pauses: _Pauses) -> None:
    """SIGSTOP the rsync processes while the gate is closed, SIGCONT when it opens;
    the longest pause goes into ``pauses``."""
    loop = asyncio.get_running_loop()
    stopped_at: float | None = None
    while True:
        if stopped_at is not None:
            pauses.longest = max(pauses.longest, loop.time() - stopped_at)
        if gate.is_open == (stopped_at is not None):
            stopped_at = None if stopped_at is not None else loop.time()
            _signal_rsync(session, signal.SIGCONT if stopped_at is None else signal.SIGSTOP)
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
