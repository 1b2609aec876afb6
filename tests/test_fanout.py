"""Fan-out of one send to several receivers, with real processes and pipes.

Every test checks, through the ``runner`` fixture, that each process it spawned
was reaped, and through ``no_fd_leak`` that it left no fd open.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from cerssd.flow_control import Counters, FlowGate
from cerssd.replication.stream.fanout import PIPE_SIZE, WINDOW, FanoutGroup, FanoutMissed, SplitOff
from cerssd.replication.stream.relay import CHUNK
from cerssd.replication.stream.transfer import (
    IN_FLIGHT,
    TransferFailed,
    TransferStalled,
    exit_timeout,
    transfer,
)
from cerssd.transport.runner import LocalRunner
from cerssd.transport.stream import Endpoint

MiB = 1 << 20
#: A receiver that reads 64 KiB every 50 ms (about 1.3 MB/s): far slower than ``cat``.
SLOW_READER = ("import sys, time\nraw = sys.stdin.buffer.raw\n"
               "while raw.read(65536):\n    time.sleep(0.05)\n")


class RecordingRunner(LocalRunner):
    """A local runner that remembers its processes, to check they were all reaped."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Sequence[str], asyncio.subprocess.Process]] = []

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        proc = await super().spawn(argv, stdin=stdin, stdout=stdout)
        self.spawned.append((argv, proc))
        return proc

    @property
    def procs(self) -> list[asyncio.subprocess.Process]:
        return [proc for _, proc in self.spawned]

    def proc_running(self, text: str) -> asyncio.subprocess.Process:
        """The one process whose argv mentions ``text``."""
        [proc] = [proc for argv, proc in self.spawned if any(text in a for a in argv)]
        return proc


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(predicate: Callable[[], object], timeout: float = 30.0,
                     what: str = "condition") -> None:
    """Poll ``predicate``; the limit is generous, as these are real processes on a machine
    that may be busy, and the wait ends as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
async def no_fd_leak() -> AsyncIterator[None]:
    before = _fd_count()
    yield
    # Transports close their pipes in loop callbacks just after the processes end.
    await wait_until(lambda: _fd_count() <= before, what=f"fds back to {before}")


@pytest.fixture
async def runner() -> AsyncIterator[RecordingRunner]:
    r = RecordingRunner()
    yield r
    assert all(p.returncode is not None for p in r.procs), "a process was not reaped"


def make_source(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "source"
    path.write_bytes(os.urandom(size))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def counted_sender(runner: RecordingRunner, tmp_path: Path, src: Path) -> Endpoint:
    """``cat src``, noting each start as a line of ``tmp_path/starts``."""
    script = 'echo started >> "$1"; exec cat "$2"'
    return Endpoint(runner, ["sh", "-c", script, "sh", str(tmp_path / "starts"), str(src)])


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def cat_to(runner: RecordingRunner, path: Path) -> Endpoint:
    return Endpoint(runner, ["sh", "-c", 'exec cat > "$0"', str(path)])


def slow_reader(runner: RecordingRunner) -> Endpoint:
    return Endpoint(runner, [sys.executable, "-c", SLOW_READER])


class Member:
    """One member's activity side: its counters and gate, and its attach task."""

    def __init__(self, group: FanoutGroup, name: str, receiver: Endpoint, *,
                 suspended: bool = False, limit: float | None = None) -> None:
        self.counters = Counters()
        self.gate = FlowGate()
        if suspended:
            self.gate.close()
        self.task = asyncio.ensure_future(group.attach(
            name, receiver, counters=self.counters, gate=self.gate, limit=limit))


def fanout(runner: RecordingRunner, tmp_path: Path, src: Path, names: Sequence[str], *,
           buffer_limit: int = 64 * MiB, join_timeout: float = 10.0) -> FanoutGroup:
    return FanoutGroup(counted_sender(runner, tmp_path, src), names,
                       buffer_limit=buffer_limit, join_timeout=join_timeout)


async def test_every_member_gets_the_same_stream_from_one_send(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 8 * MiB + 12345)
    names = ["a", "b", "c"]
    group = fanout(runner, tmp_path, src, names)
    members = {n: Member(group, n, cat_to(runner, tmp_path / n)) for n in names}
    members["b"].counters.done = 0  # progress measured in bytes
    moved = await asyncio.gather(*(m.task for m in members.values()))
    size = src.stat().st_size
    assert moved == [size] * 3
    for n, m in members.items():
        assert sha(tmp_path / n) == sha(src)
        assert m.counters.bytes_read == m.counters.bytes_on_wire == size
    assert members["b"].counters.done == size
    assert members["a"].counters.done is None
    assert group.sends_started == 1 and starts(tmp_path) == 1


async def test_slow_member_is_split_off_and_the_others_finish(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 32 * MiB)
    group = fanout(runner, tmp_path, src, ["fast1", "fast2", "slow"], buffer_limit=8 * MiB)
    fast = [Member(group, n, cat_to(runner, tmp_path / n)) for n in ("fast1", "fast2")]
    slow = Member(group, "slow", slow_reader(runner))
    await asyncio.gather(*(m.task for m in fast))
    # Not held back: had the fast ones waited for the slow one, they could be at most the
    # buffer limit ahead of it when they finished. (Bytes, not seconds: a busy machine
    # slows cat, not the slow reader's clock.)
    assert slow.counters.bytes_read < 32 * MiB - 8 * MiB
    with pytest.raises(SplitOff) as caught:
        await slow.task
    assert caught.value.side == "fanout"
    assert slow.counters.bytes_read < 16 * MiB
    for n in ("fast1", "fast2"):
        assert sha(tmp_path / n) == sha(src)
    assert starts(tmp_path) == 1


async def test_suspended_member_is_split_off_once_its_buffer_is_full(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 32 * MiB)
    group = fanout(runner, tmp_path, src, ["a", "b", "held"], buffer_limit=8 * MiB)
    running = [Member(group, n, cat_to(runner, tmp_path / n)) for n in ("a", "b")]
    held = Member(group, "held", cat_to(runner, tmp_path / "held"), suspended=True)
    assert await asyncio.gather(*(m.task for m in running)) == [32 * MiB] * 2
    with pytest.raises(SplitOff):
        await held.task
    assert held.counters.bytes_read == 0
    assert [sha(tmp_path / n) for n in ("a", "b")] == [sha(src)] * 2


def _written_by(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/pid/io")


async def _settled_writes(pid: int) -> int:
    """The sender's bytes written, once unchanged for 10 looks in a row (it is blocked)."""
    seen: list[int] = []

    def steady() -> bool:
        seen.append(_written_by(pid))
        return len(seen) > 10 and len(set(seen[-10:])) == 1

    await wait_until(steady, what="the sender to block")
    return seen[-1]


async def test_all_suspended_blocks_the_sender_until_resumed(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 48 * MiB)
    names = ["a", "b", "c"]
    group = fanout(runner, tmp_path, src, names, buffer_limit=16 * MiB)
    members = [Member(group, n, cat_to(runner, tmp_path / n), suspended=True) for n in names]
    await wait_until(lambda: group.sends_started == 1, what="the send to start")
    sender = runner.proc_running(str(tmp_path / "starts"))
    assert sender.pid is not None
    written = await _settled_writes(sender.pid)
    # Each queue stops a chunk past the window; the rest sits in the pipe and in cat.
    assert written <= WINDOW + CHUNK + PIPE_SIZE + 1 * MiB
    assert sender.returncode is None
    assert all(m.counters.bytes_read == 0 for m in members)
    for m in members:
        m.gate.open()
    assert await asyncio.gather(*(m.task for m in members)) == [48 * MiB] * 3
    assert [sha(tmp_path / n) for n in names] == [sha(src)] * 3


async def test_failing_receiver_fails_only_its_member(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 8 * MiB)
    group = fanout(runner, tmp_path, src, ["a", "bad", "c"])
    good = [Member(group, n, cat_to(runner, tmp_path / n)) for n in ("a", "c")]
    failing = Endpoint(runner, ["sh", "-c", "head -c 1000 >/dev/null; echo no space >&2; exit 3"])
    bad = Member(group, "bad", failing)
    with pytest.raises(TransferFailed) as caught:
        await bad.task
    assert (caught.value.side, caught.value.returncode) == ("receive", 3)
    assert "no space" in caught.value.stderr
    assert await asyncio.gather(*(m.task for m in good)) == [8 * MiB] * 2
    assert [sha(tmp_path / n) for n in ("a", "c")] == [sha(src)] * 2


async def test_failing_sender_fails_every_member(runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    script = 'head -c 100000 "$0"; echo cannot send >&2; exit 2'
    group = FanoutGroup(Endpoint(runner, ["sh", "-c", script, str(src)]), ["a", "b"])
    members = [Member(group, n, cat_to(runner, tmp_path / n)) for n in ("a", "b")]
    results = await asyncio.gather(*(m.task for m in members), return_exceptions=True)
    for exc in results:
        assert isinstance(exc, TransferFailed)
        assert (exc.side, exc.returncode) == ("send", 2)
        assert "cannot send" in exc.stderr


async def test_sender_that_cannot_start_fails_every_member(
        runner: RecordingRunner, tmp_path: Path) -> None:
    group = FanoutGroup(Endpoint(runner, [str(tmp_path / "no-such-zfs")]), ["a", "b"])
    members = [Member(group, n, cat_to(runner, tmp_path / n)) for n in ("a", "b")]
    results = await asyncio.gather(*(m.task for m in members), return_exceptions=True)
    for exc in results:
        assert isinstance(exc, TransferFailed) and exc.side == "send"
        assert "could not start" in str(exc)
    assert group.sends_started == 0


async def test_cancelling_one_member_leaves_the_others_intact(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 32 * MiB)
    group = fanout(runner, tmp_path, src, ["gone", "a", "b"])
    # One at a time, so fd numbers the first member gave up are reused by later pipes:
    # the member that leaves must close only its own.
    gone = Member(group, "gone", slow_reader(runner))
    await wait_until(lambda: len(runner.procs) == 1, what="the first receiver")
    # a and b are suspended so the stream is surely mid-way when "gone" is cancelled.
    held = []
    for n in ("a", "b"):
        held.append(Member(group, n, cat_to(runner, tmp_path / n), suspended=True))
        await wait_until(lambda: len(runner.procs) > len(held), what=f"{n}'s receiver")
    await wait_until(lambda: gone.counters.bytes_read > 0, what="bytes to reach 'gone'")
    gone.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    assert runner.proc_running(SLOW_READER).returncode is not None
    for m in held:
        m.gate.open()
    assert await asyncio.gather(*(m.task for m in held)) == [32 * MiB] * 2
    assert [sha(tmp_path / n) for n in ("a", "b")] == [sha(src)] * 2
    assert starts(tmp_path) == 1


async def test_cancelling_every_member_stops_the_sender(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 16 * MiB)
    group = fanout(runner, tmp_path, src, ["a", "b"])
    members = [Member(group, n, slow_reader(runner)) for n in ("a", "b")]
    await wait_until(lambda: all(m.counters.bytes_read for m in members), what="bytes")
    for m in members:
        m.task.cancel()
    await asyncio.gather(*(m.task for m in members), return_exceptions=True)
    assert all(p.returncode is not None for p in runner.procs)


async def test_member_cancelled_before_the_start_counts_as_withdrawn(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    group = fanout(runner, tmp_path, src, ["early", "late"], join_timeout=60)
    early = Member(group, "early", cat_to(runner, tmp_path / "early"))
    await wait_until(lambda: runner.procs, what="the first receiver")
    early.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await early.task
    assert group.sends_started == 0
    late = Member(group, "late", cat_to(runner, tmp_path / "late"))
    assert await late.task == 1 * MiB  # started at once: nobody else is awaited
    assert sha(tmp_path / "late") == sha(src)


async def test_withdrawing_every_member_spawns_no_sender(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1000)
    group = fanout(runner, tmp_path, src, ["a", "b"])
    group.withdraw("a")
    group.withdraw("b")
    assert group.sends_started == 0 and starts(tmp_path) == 0 and not runner.procs
    with pytest.raises(FanoutMissed):
        await group.attach("a", cat_to(runner, tmp_path / "a"), counters=Counters(),
                           gate=FlowGate())


async def test_one_withdrawn_the_send_starts_without_waiting(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 2 * MiB)
    group = fanout(runner, tmp_path, src, ["a", "b"], join_timeout=60)
    a = Member(group, "a", cat_to(runner, tmp_path / "a"))
    group.withdraw("b")
    assert await asyncio.wait_for(a.task, 60) == 2 * MiB
    assert group.sends_started == 1


async def test_member_after_the_join_timeout_is_missed(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    group = fanout(runner, tmp_path, src, ["a", "b"], join_timeout=0.2)
    assert await Member(group, "a", cat_to(runner, tmp_path / "a")).task == 1 * MiB
    with pytest.raises(FanoutMissed):
        await group.attach("b", cat_to(runner, tmp_path / "b"), counters=Counters(),
                           gate=FlowGate())
    assert starts(tmp_path) == 1 and not (tmp_path / "b").exists()


async def test_stalled_stream_raises_within_the_timeout(runner: RecordingRunner) -> None:
    sender = Endpoint(runner, ["sh", "-c", "head -c 1000 /dev/zero; exec sleep 60"])
    group = FanoutGroup(sender, ["a"], stall_timeout=0.5)
    counters = Counters()
    started = time.monotonic()
    with pytest.raises(TransferStalled):
        await group.attach("a", Endpoint(runner, ["sh", "-c", "exec cat >/dev/null"]),
                           counters=counters, gate=FlowGate())
    assert time.monotonic() - started < 30  # the stalled sender ends only after 60 s
    assert counters.bytes_read == 1000


#: A receiver that takes the whole stream, then never exits (a hung ``zfs receive``).
HANGS_AFTER_THE_STREAM = ["sh", "-c", 'cat > "$0"; exec sleep 60']


async def test_receiver_hung_after_the_whole_stream_is_a_stall(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    group = FanoutGroup(counted_sender(runner, tmp_path, src), ["a"], stall_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransferStalled, match="did not exit"):
        await group.attach("a", Endpoint(runner, [*HANGS_AFTER_THE_STREAM,
                                                  str(tmp_path / "a")]),
                           counters=Counters(), gate=FlowGate())
    assert time.monotonic() - started < 8  # 1 s + what a MiB takes to drain, then stopped
    assert sha(tmp_path / "a") == sha(src)  # it did have the whole stream


async def test_transfer_with_a_receiver_hung_after_the_stream_is_a_stall(
        runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    started = time.monotonic()
    with pytest.raises(TransferStalled, match="did not exit") as raised:
        await transfer(Endpoint(runner, ["cat", str(src)]),
                       Endpoint(runner, [*HANGS_AFTER_THE_STREAM, str(tmp_path / "b")]),
                       counters=Counters(), gate=FlowGate(), stall_timeout=1.0)
    assert raised.value.side == "receive"
    assert time.monotonic() - started < 8
    assert sha(tmp_path / "b") == sha(src)


@pytest.mark.parametrize(("sender", "receiver", "blamed"), [
    (["sh", "-c", "head -c 1000 /dev/zero; exec sleep 60"], ["cat"], "the send produced none"),
    (["head", "-c", str(4 * MiB), "/dev/zero"], ["sleep", "60"], "the receive took none"),
], ids=["quiet-source", "stuck-sink"])
async def test_a_stall_names_the_end_that_held_it_up(
        runner: RecordingRunner, sender: list[str], receiver: list[str], blamed: str) -> None:
    with pytest.raises(TransferStalled, match=blamed):
        await transfer(Endpoint(runner, sender), Endpoint(runner, receiver),
                       counters=Counters(), gate=FlowGate(), stall_timeout=0.5)


def test_exit_timeout_allows_what_may_still_be_on_its_way() -> None:
    assert exit_timeout(None, MiB, 10) is None  # the watchdog is off
    assert exit_timeout(30, 0, 10) == 30
    # A quick stream: at most its own duration again (it cannot have more in flight).
    assert exit_timeout(30, 10 * MiB, 0.5) == 30.5
    # 1 GiB at 1 MiB/s (a slow WAN): IN_FLIGHT takes IN_FLIGHT/1 MiB seconds to arrive.
    assert exit_timeout(30, 1024 * MiB, 1024) == 30 + IN_FLIGHT / MiB


async def test_rate_limit_paces_a_member(runner: RecordingRunner, tmp_path: Path) -> None:
    src = make_source(tmp_path, 1 * MiB)
    group = fanout(runner, tmp_path, src, ["a"])
    started = time.monotonic()
    m = Member(group, "a", cat_to(runner, tmp_path / "a"), limit=4 * MiB)
    assert await m.task == 1 * MiB
    assert time.monotonic() - started >= 0.2
    assert sha(tmp_path / "a") == sha(src)


async def test_attach_checks_membership(runner: RecordingRunner, tmp_path: Path) -> None:
    group = fanout(runner, tmp_path, make_source(tmp_path, 10), ["a"])
    with pytest.raises(ValueError):
        await group.attach("stranger", cat_to(runner, tmp_path / "x"), counters=Counters(),
                           gate=FlowGate())
