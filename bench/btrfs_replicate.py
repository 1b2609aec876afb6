"""Benchmark: replicating a btrfs snapshot over SSH, cerssd against a plain shell pipeline.

Same shape as bench/replicate_ssh.py, on btrfs (the driver in cerssd/storage/btrfs):

* **baseline**: ``btrfs send [-p BASE] SNAP | ssh -c CIPHER ... root@127.0.0.1 btrfs receive
  DIR``, run by ``bash -c`` with ``set -o pipefail``, timed wall clock;
* **baseline + sync**: the same ending with ``sync -f`` on the target, since cerssd's
  receive ends with the data on disk (btrfs flushes a subvolume before snapshotting it,
  and the volume is a writable snapshot of the received one), the plain receive in the
  page cache;
* **cerssd**: a real daemon whose ``[servers.local]`` and ``[servers.remote]`` (``kind =
  "ssh"``, this benchmark's own sshd) are ``backend = "btrfs"`` with roots on one
  loop-mounted btrfs; ``POST /v1/replications`` to the terminal state, timed wall clock.
  cerssd does what the driver always does on top of the receive: checks the received
  snapshot, moves it into place and makes the volume a writable snapshot of it.

Cases: **full** (``--size`` MiB random, snapshot ``s1``) and **incremental** (``--incr`` MiB
more, ``s2`` on ``s1``, into a target holding ``s1``: each method's target gets ``s1`` by
an untimed send of its own, and the received ``s2`` is deleted after each run). Each
round runs the three methods, each from a quiet filesystem (deleted subvolumes cleaned
up, the last method's writes written out), starting with another one each round; the
report gives the median rates and the ratio of each round's pair with its min-max.
Random data does not compress, so cerssd's ``--compressed-data`` streams (chosen from
both ends' capabilities) carry the same bytes.

Run as root from the repository::

    python bench/btrfs_replicate.py              # 1 GiB full, 256 MiB incremental, 3 runs
    python bench/btrfs_replicate.py --quick      # 64 MiB, 16 MiB, 1 run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
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
    common_arguments,
    load_average,
    loop_btrfs,
    machine,
    median,
    rate,
    run,
    say,
    scratch_dir,
    seconds_list,
    settle,
    ssh_command,
    start_daemon,
    start_sshd,
    utc_now,
    write_random,
)

SNAPSHOTS = ".cerssd-snapshots"


def btrfs(*args: str, check: bool = True) -> str:
    return run(["btrfs", *args], check=check).stdout


def snapshot_path(root: Path, volume: str, label: str) -> Path:
    """Where the driver keeps ``pool/volume@label`` (docs/drivers.md)."""
    return root / SNAPSHOTS / f"{volume}@{label}" / f"{volume}@{label}"


def take_snapshot(root: Path, volume: str, label: str) -> Path:
    path = snapshot_path(root, volume, label)
    path.parent.mkdir(parents=True)
    btrfs("subvolume", "snapshot", "-r", str(root / volume), str(path))
    return path


def uuid_of(path: Path, field_name: str = "UUID:") -> str:
    for line in btrfs("subvolume", "show", str(path)).splitlines():
        words = line.split()
        if words and " ".join(words[:-1]) == field_name:
            return words[-1]
    raise BenchError(f"no {field_name} in btrfs subvolume show {path}")


def check_received(source: Path, received: Path) -> None:
    if uuid_of(received, "Received UUID:") != uuid_of(source):
        raise BenchError(f"{received} is not a copy of {source}")


def delete(*paths: Path) -> None:
    """Subvolumes (and a driver's snapshot directory, once empty)."""
    for path in paths:
        if path.exists():
            btrfs("subvolume", "delete", str(path))
        if path.parent.name.startswith(path.name.partition("@")[0]) and \
                path.parent.parent.name == SNAPSHOTS:
            path.parent.rmdir()


@dataclass
class Case:
    name: str
    snapshot: Path
    base: Path | None
    stream_bytes: int = 0
    send_only_seconds: float = 0.0
    baseline: list[float] = field(default_factory=list)
    synced: list[float] = field(default_factory=list)
    cerssd: list[float] = field(default_factory=list)

    def send(self, snapshot: Path | None = None, base: Path | None = None) -> list[str]:
        base = base if snapshot else self.base
        return ["btrfs", "send", "-q", *(["-p", str(base)] if base else []),
                str(snapshot or self.snapshot)]

    def ratios(self, against: list[float]) -> list[float]:
        return [b / c for b, c in zip(against, self.cerssd, strict=True)]


def measure_stream(case: Case) -> None:
    start = time.monotonic()
    out = bash(f"{shlex.join(case.send())} | wc -c")
    case.send_only_seconds = time.monotonic() - start
    case.stream_bytes = int(out.stdout.strip())
    say(f"{case.name}: stream {case.stream_bytes / 1e6:.1f} MB, btrfs send | wc -c "
        f"{case.send_only_seconds:.2f} s ({rate(case.stream_bytes, case.send_only_seconds)})")


def plain(case: Case, sshd: Sshd, cipher: str, into: Path, snapshot: Path | None = None,
          base: Path | None = None, synced: bool = False) -> float:
    """The plain pipeline; ``synced`` ends it with ``sync -f`` on the target (what cerssd's
    receive pays for making the volume a writable snapshot of the received one: btrfs
    flushes a subvolume's data before it snapshots it)."""
    into.mkdir(parents=True, exist_ok=True)
    receive = ["btrfs", "receive", str(into)]
    remote = ["sh", "-c", 'btrfs receive "$1" && sync -f "$1"', "sh", str(into)] if synced \
        else receive
    script = (f"{shlex.join(case.send(snapshot, base))} | "
              f"{shlex.join(ssh_command(sshd, cipher, remote))}")
    start = time.monotonic()
    bash(script)
    return time.monotonic() - start


def ours(daemon: Daemon, snapshot: str, target: str, mode: str) -> float:
    body = {"snapshot": snapshot, "source": "local", "destination": "remote",
            "target_volume": target}
    start = time.monotonic()
    activity: dict[str, Any] = daemon.api("POST", "/v1/replications", body)
    if activity.get("plan", mode) != mode:
        raise BenchError(f"cerssd planned {activity['plan']!r}, expected {mode!r}")
    activity = daemon.wait_activity(activity["id"])
    elapsed = time.monotonic() - start
    if activity["state"] != "succeeded":
        raise BenchError(f"cerssd replication ended {activity['state']}: "
                         f"{(activity.get('status') or {}).get('message')}\n{daemon.log_tail()}")
    return elapsed


def in_turn(round_number: int, dst: Path, steps: list[Callable[[], None]]) -> None:
    """The methods of one round, each from a quiet filesystem: the subvolumes the last
    one deleted cleaned up (``btrfs subvolume sync``: the cleaner frees their extents in
    the background otherwise) and its writes written out (``settle``), and each round
    starting with another method: none always meets the state another leaves."""
    shift = (round_number - 1) % len(steps)
    for step in steps[shift:] + steps[:shift]:
        btrfs("subvolume", "sync", str(dst))
        settle("the next method")
        step()


def bench_full(case: Case, runs: int, src: Path, dst: Path, sshd: Sshd, cipher: str,
               daemon: Daemon) -> None:
    received = dst / "plain_full" / case.snapshot.name
    for i in range(1, runs + 1):
        in_turn(i, dst, [partial(full_plain, case, sshd, cipher, received, i, synced=False),
                         partial(full_plain, case, sshd, cipher, received, i, synced=True),
                         partial(full_ours, case, src, dst, daemon, i)])


def full_plain(case: Case, sshd: Sshd, cipher: str, received: Path, i: int, *,
               synced: bool) -> None:
    seconds = plain(case, sshd, cipher, received.parent, synced=synced)
    check_received(case.snapshot, received)
    delete(received)
    received.parent.rmdir()
    (case.synced if synced else case.baseline).append(seconds)
    say(f"full {i}: {'synced  ' if synced else 'baseline'} {seconds:.2f} s "
        f"({rate(case.stream_bytes, seconds)})")


def full_ours(case: Case, src: Path, dst: Path, daemon: Daemon, i: int) -> None:
    target = f"cerssd_full_{i}"
    seconds = ours(daemon, f"{src.name}/data@s1", f"{dst.name}/{target}", "full")
    got = snapshot_path(dst, target, "s1")
    check_received(case.snapshot, got)
    delete(got, dst / target)
    case.cerssd.append(seconds)
    say(f"full {i}: cerssd   {seconds:.2f} s ({rate(case.stream_bytes, seconds)})")


def bench_incremental(case: Case, runs: int, src: Path, dst: Path, sshd: Sshd, cipher: str,
                      daemon: Daemon) -> None:
    assert case.base is not None
    into = dst / "plain_incr"
    say("incremental: giving each target s1 (untimed)")
    plain(case, sshd, cipher, into, snapshot=case.base)
    ours(daemon, f"{src.name}/data@s1", f"{dst.name}/cerssd_incr", "full")
    for i in range(1, runs + 1):
        in_turn(i, dst, [partial(incremental_plain, case, sshd, cipher, into, i, synced=False),
                         partial(incremental_plain, case, sshd, cipher, into, i, synced=True),
                         partial(incremental_ours, case, src, dst, daemon, i)])


def incremental_plain(case: Case, sshd: Sshd, cipher: str, into: Path, i: int, *,
                      synced: bool) -> None:
    seconds = plain(case, sshd, cipher, into, synced=synced)
    received = into / case.snapshot.name
    check_received(case.snapshot, received)
    delete(received)
    (case.synced if synced else case.baseline).append(seconds)
    say(f"incremental {i}: {'synced  ' if synced else 'baseline'} {seconds:.2f} s "
        f"({rate(case.stream_bytes, seconds)})")


def incremental_ours(case: Case, src: Path, dst: Path, daemon: Daemon, i: int) -> None:
    seconds = ours(daemon, f"{src.name}/data@s2", f"{dst.name}/cerssd_incr", "incremental")
    got = snapshot_path(dst, "cerssd_incr", "s2")
    check_received(case.snapshot, got)
    delete(got)
    case.cerssd.append(seconds)
    say(f"incremental {i}: cerssd   {seconds:.2f} s ({rate(case.stream_bytes, seconds)})")


def report(cases: list[Case], args: argparse.Namespace, info: dict[str, str],
           started: dt.datetime, wall: float, load: str) -> str:
    version = run(["btrfs", "--version"], check=False).stdout.strip()
    lines = [
        f"### btrfs replication over SSH: cerssd vs `btrfs send | ssh | btrfs receive` "
        f"({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `python bench/btrfs_replicate.py "
        f"--size {args.size} --incr {args.incr} --runs {args.runs} --cipher {args.cipher}` "
        f"({wall:.0f} s in all); load average before: {load}",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, {version}, one loop-mounted btrfs, sshd on 127.0.0.1",
        f"- data: {args.size} MiB random (full), {args.incr} MiB more (incremental); "
        f"{args.runs} round(s), baseline and cerssd alternating; MB = 10^6 stream bytes",
        "",
        "| case | stream MB | baseline MB/s | baseline + sync MB/s | cerssd MB/s | "
        "cerssd/baseline per round: median (min-max) | cerssd/(baseline + sync) | "
        "send only MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        mb = case.stream_bytes / 1e6
        r, rs = case.ratios(case.baseline), case.ratios(case.synced)
        lines.append(f"| {case.name} | {mb:.1f} | {mb / median(case.baseline):.1f} | "
                     f"{mb / median(case.synced):.1f} | {mb / median(case.cerssd):.1f} | "
                     f"{median(r):.2f} ({min(r):.2f}-{max(r):.2f}) | "
                     f"{median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f}) | "
                     f"{mb / case.send_only_seconds:.1f} |")
    lines.append("")
    lines.append("MB/s columns are medians; each round runs baseline, baseline + sync and "
                 "cerssd, each from a quiet filesystem, starting with another each round.")
    for case in cases:
        lines.append(f"- {case.name} seconds per round: baseline "
                     f"{seconds_list(case.baseline)}; baseline + sync "
                     f"{seconds_list(case.synced)}; cerssd {seconds_list(case.cerssd)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time btrfs replication over SSH: cerssd "
                                     "against btrfs send | ssh | btrfs receive.")
    parser.add_argument("--size", type=int, default=1024, help="MiB for the full case")
    parser.add_argument("--incr", type=int, default=256, help="MiB added for the incremental")
    parser.add_argument("--runs", type=int, default=3, help="rounds per case")
    parser.add_argument("--quick", action="store_true", help="--size 64 --incr 16 --runs 1")
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.incr, args.runs = 64, 16, 1
    return args


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[Path, Path, Sshd, Daemon]]:
    with announced_stack() as stack:
        need = 4 * (args.size + args.incr) * MIB + (1 << 30)
        scratch = scratch_dir(stack, args.workdir, need * 1.1)
        mnt = loop_btrfs(stack, scratch, need)
        src, dst = mnt / "src", mnt / "dst"
        btrfs("subvolume", "create", str(src))
        btrfs("subvolume", "create", str(dst))
        sshd = start_sshd(stack)
        daemon = start_daemon(
            stack, sshd, args.cipher,
            [SshServer("remote", sshd.port, f'backend = "btrfs"\nroot = "{dst}"\n')],
            args.daemon_log, local_extra=f'backend = "btrfs"\nroot = "{src}"\n')
        yield src, dst, sshd, daemon


def benchmark(args: argparse.Namespace) -> str:
    started, load = utc_now(), load_average()
    say(f"load average: {load}")
    t0 = time.monotonic()
    with environment(args) as (src, dst, sshd, daemon):
        btrfs("subvolume", "create", str(src / "data"))
        say(f"writing {args.size} MiB of random data")
        write_random(src / "data" / "data1", args.size)
        full = Case("full", take_snapshot(src, "data", "s1"), None)
        measure_stream(full)
        bench_full(full, args.runs, src, dst, sshd, args.cipher, daemon)
        say(f"writing {args.incr} MiB more")
        write_random(src / "data" / "data2", args.incr)
        incr = Case("incremental", take_snapshot(src, "data", "s2"), full.snapshot)
        measure_stream(incr)
        bench_incremental(incr, args.runs, src, dst, sshd, args.cipher, daemon)
        daemon.check_alive()
    return report([full, incr], args, machine(), started, time.monotonic() - t0, load)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("btrfs_replicate", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
