"""Benchmark: replicating a ZFS snapshot over SSH, cerssd against a plain shell pipeline.

What it measures, on the same machine and the same data, in the same run:

* **baseline**: ``zfs send SNAP | ssh -c CIPHER ... root@127.0.0.1 zfs receive TARGET``,
  run by ``bash -c`` with ``set -o pipefail``, timed wall clock;
* **cerssd**: a real ``cerssd`` daemon whose ``[servers.remote]`` is ``kind = "ssh"``
  (pointing at this benchmark's own sshd), driven through its control socket:
  ``POST /v1/replications``, then ``GET /v1/activities/{id}`` until the state is terminal;
  timed wall clock from the POST to the terminal state.

Two cases: **full** (``--size`` MiB of random data, snapshot ``s1``, full stream into a fresh
target) and **incremental** (``--incr`` MiB more, snapshot ``s2``, ``s1 -> s2`` into a target
that already holds ``s1``; the target is made to hold ``s1`` by an untimed full send of the
same method and rolled back to ``s1`` after each run). Each method receives into its own
target volume. Every measurement is repeated ``--runs`` times, alternating baseline and
cerssd, and the median is reported as MB/s (MB = 10^6 bytes of the send stream, measured
once with ``zfs send SNAP | wc -c``; the "send only" column is that command's own rate, an
upper bound for both methods). cerssd's ssh streams share one ControlMaster connection that
its first stream opens, so its first full run pays that handshake; the baseline pays one
per run.

Everything it needs is set up here and removed afterwards, also on error or Ctrl-C, by pid:
zfs-fuse (started only if ``zpool list`` fails, and then stopped), one pool on a sparse file,
a private sshd on 127.0.0.1 with its own host and client keys, and the daemon with its own
state directory and socket. That environment, the socket client and the machine facts come
from bench/common.py, which bench/fanout_ssh.py uses too.

Run as root from the repository (cerssd installed, e.g. ``pip install -e .``)::

    python bench/replicate_ssh.py                # 1 GiB full, 256 MiB incremental, 3 runs
    python bench/replicate_ssh.py --quick        # 64 MiB, 16 MiB, 1 run: a smoke test
    python bench/replicate_ssh.py --cipher chacha20-poly1305@openssh.com
    python bench/replicate_ssh.py --daemon-log /tmp/cerssd.log --workdir /var/tmp

Progress goes to stderr; the report (machine, date, table) is Markdown on stdout, ready to
paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MIB,
    BenchError,
    Daemon,
    Sshd,
    SshServer,
    announced_stack,
    bash,
    bench_main,
    check_received,
    common_arguments,
    destroy_volume,
    ensure_zfs_fuse,
    machine,
    make_pool,
    median,
    plain_pipeline,
    rate,
    release_holds,
    retry_busy,
    say,
    scratch_dir,
    seconds_list,
    snapshots_of,
    start_daemon,
    start_sshd,
    utc_now,
    write_random,
    zfs,
)

HOLD_TAGS = ("cerssd:remote",)  # cerssd's hold tag for destination "remote"


# -- the measurements --------------------------------------------------------------------

@dataclass
class Case:
    name: str
    snapshot: str  # what is sent
    base: str | None  # incremental from this snapshot, or a full stream
    stream_bytes: int = 0
    send_only_seconds: float = 0.0
    baseline: list[float] = field(default_factory=list)
    cerssd: list[float] = field(default_factory=list)

    def send_argv(self) -> list[str]:
        return ["zfs", "send", *(["-i", self.base] if self.base else []), self.snapshot]


def measure_stream(case: Case) -> None:
    """``zfs send SNAP | wc -c``: the stream's size, and how fast zfs alone produces it."""
    start = time.monotonic()
    out = bash(f"{shlex.join(case.send_argv())} | wc -c")
    case.send_only_seconds = time.monotonic() - start
    case.stream_bytes = int(out.stdout.strip())
    say(f"{case.name}: stream {case.stream_bytes / 1e6:.1f} MB, zfs send | wc -c "
        f"{case.send_only_seconds:.2f} s ({rate(case.stream_bytes, case.send_only_seconds)})")


def baseline_send(case: Case, sshd: Sshd, cipher: str, target: str,
                  snapshot: str | None = None, base: str | None = None) -> float:
    """The plain pipeline; returns its wall-clock seconds."""
    return plain_pipeline(snapshot or case.snapshot, sshd, cipher, target, base)


def cerssd_send(daemon: Daemon, snapshot: str, target: str, mode: str,
                expect_bytes: int | None = None,
                timeout: float = 3600.0) -> tuple[float, dict[str, Any]]:
    """POST a replication and wait for its end; returns wall-clock seconds and the record.

    ``mode`` is the plan cerssd must answer with ("full" or "incremental"), so that a
    changed planner cannot make the comparison unfair unnoticed.
    """
    body = {"snapshot": snapshot, "source": "local", "destination": "remote",
            "target_volume": target}
    start = time.monotonic()
    activity: dict[str, Any] = daemon.api("POST", "/v1/replications", body)
    if activity.get("plan", mode) != mode:
        raise BenchError(f"cerssd planned {activity['plan']!r} for {snapshot} -> {target}, "
                         f"expected {mode!r}")
    activity = daemon.wait_activity(activity["id"], timeout)
    elapsed = time.monotonic() - start
    status = activity.get("status") or {}
    if activity["state"] != "succeeded" or status.get("code") != 0:
        raise BenchError(f"cerssd replication {snapshot} -> {target} ended "
                         f"{activity['state']}: {status.get('message')}\n{daemon.log_tail()}")
    moved = activity["usage"]["bytes_read"]
    if expect_bytes is not None and moved != expect_bytes:
        say(f"note: cerssd counted {moved} bytes, zfs send | wc -c gave {expect_bytes}")
    return elapsed, activity


def bench_full(case: Case, runs: int, pool: str, sshd: Sshd, cipher: str,
               daemon: Daemon) -> None:
    for i in range(1, runs + 1):
        plain, ours = f"{pool}/plain_full_{i}", f"{pool}/cerssd_full_{i}"
        seconds = baseline_send(case, sshd, cipher, plain)
        check_received(case.snapshot, plain)
        destroy_volume(plain, HOLD_TAGS)
        case.baseline.append(seconds)
        say(f"full run {i}/{runs}: baseline {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)})")
        seconds, activity = cerssd_send(daemon, case.snapshot, ours, "full", case.stream_bytes)
        check_received(case.snapshot, ours)
        destroy_volume(ours, HOLD_TAGS)
        case.cerssd.append(seconds)
        say(f"full run {i}/{runs}: cerssd   {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)}; daemon's elapsed "
            f"{activity['usage']['elapsed_seconds']:.2f} s)")


def bench_incremental(case: Case, runs: int, pool: str, sshd: Sshd, cipher: str,
                      daemon: Daemon) -> None:
    assert case.base is not None
    plain, ours = f"{pool}/plain_incr", f"{pool}/cerssd_incr"
    # Untimed: each target gets s1 by a full send of its own method. The plain target is
    # made read-only like cerssd's replicas, so nothing can modify it between receives.
    say("incremental: giving each target the base snapshot (untimed full sends)")
    baseline_send(case, sshd, cipher, plain, snapshot=case.base)
    zfs("set", "readonly=on", plain)
    cerssd_send(daemon, case.base, ours, "full")
    base_label = case.base.partition("@")[2]
    for i in range(1, runs + 1):
        seconds = baseline_send(case, sshd, cipher, plain, base=case.base)
        check_received(case.snapshot, plain)
        rollback(f"{plain}@{base_label}")
        case.baseline.append(seconds)
        say(f"incremental run {i}/{runs}: baseline {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)})")
        seconds, activity = cerssd_send(daemon, case.snapshot, ours, "incremental",
                                        case.stream_bytes)
        check_received(case.snapshot, ours)
        rollback(f"{ours}@{base_label}")
        case.cerssd.append(seconds)
        say(f"incremental run {i}/{runs}: cerssd   {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)}; daemon's elapsed "
            f"{activity['usage']['elapsed_seconds']:.2f} s)")


def rollback(snapshot: str) -> None:
    """Back to the base, destroying the received snapshot, for the next incremental run."""
    volume = snapshot.partition("@")[0]
    later = snapshots_of(volume)
    release_holds(later[later.index(snapshot) + 1:], HOLD_TAGS)
    retry_busy(lambda: zfs("rollback", "-r", snapshot, check=False),
               lambda: snapshots_of(volume)[-1] == snapshot,
               f"{volume} to roll back")


# -- the report --------------------------------------------------------------------------

def report(cases: list[Case], args: argparse.Namespace, info: dict[str, str],
           started: dt.datetime, wall: float) -> str:
    lines = [
        f"### Replication over SSH: cerssd vs `zfs send | ssh | zfs receive` "
        f"({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `python bench/replicate_ssh.py "
        f"--size {args.size} --incr {args.incr} --runs {args.runs} --cipher {args.cipher}` "
        f"({wall:.0f} s in all)",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, {info['zfs_fuse']}, sshd on 127.0.0.1 (same host)",
        f"- data: {args.size} MiB random (full), {args.incr} MiB more (incremental); median of "
        f"{args.runs} run(s), alternating baseline and cerssd; MB = 10^6 bytes of send stream",
        "",
        "| case | stream MB | baseline MB/s | cerssd MB/s | cerssd/baseline | send only MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        mb = case.stream_bytes / 1e6
        base = mb / median(case.baseline)
        ours = mb / median(case.cerssd)
        send_only = mb / case.send_only_seconds
        lines.append(f"| {case.name} | {mb:.1f} | {base:.1f} | {ours:.1f} | "
                     f"{ours / base:.2f} | {send_only:.1f} |")
    lines.append("")
    for case in cases:
        lines.append(f"- {case.name} seconds per run: baseline "
                     f"{seconds_list(case.baseline)}; cerssd {seconds_list(case.cerssd)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time ZFS replication over SSH: cerssd against zfs send | ssh | zfs receive.")
    parser.add_argument("--size", type=int, default=1024, help="MiB of data for the full case")
    parser.add_argument("--incr", type=int, default=256,
                        help="MiB of data added for the incremental case")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: --size 64 --incr 16 --runs 1")
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.incr, args.runs = 64, 16, 1
    for name in ("size", "incr", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[str, Sshd, Daemon]]:
    with announced_stack() as stack:
        scratch = scratch_dir(stack, args.workdir, 3 * (args.size + args.incr) * MIB * 1.1)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 4 * (args.size + args.incr) + 1024)
        sshd = start_sshd(stack)
        daemon = start_daemon(stack, sshd, args.cipher, [SshServer("remote", sshd.port)],
                              args.daemon_log)
        yield pool, sshd, daemon


def benchmark(args: argparse.Namespace) -> str:
    """Both cases, full then incremental, in one environment; returns the report."""
    started = utc_now()
    t0 = time.monotonic()
    with environment(args) as (pool, sshd, daemon):
        src = f"{pool}/src"
        zfs("create", src)
        say(f"writing {args.size} MiB of random data")
        write_random(Path(f"/{src}/data1"), args.size)
        zfs("snapshot", f"{src}@s1")
        full = Case("full", f"{src}@s1", None)
        measure_stream(full)
        bench_full(full, args.runs, pool, sshd, args.cipher, daemon)

        say(f"writing {args.incr} MiB more")
        write_random(Path(f"/{src}/data2"), args.incr)
        zfs("snapshot", f"{src}@s2")
        incr = Case("incremental", f"{src}@s2", f"{src}@s1")
        measure_stream(incr)
        bench_incremental(incr, args.runs, pool, sshd, args.cipher, daemon)
        daemon.check_alive()
    return report([full, incr], args, machine(), started, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("replicate_ssh", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
