"""Benchmark: the generic path (file copy) over SSH, cerssd against plain ``rsync``.

What it measures, on the same machine and the same data, in the same run, rounds
interleaved (baseline, cerssd, baseline, cerssd...):

* **baseline**: what a script copying the snapshot does (``snapshot_copy``): a clone of
  the snapshot (zfs-fuse has no ``.zfs/snapshot``), ``rsync -a --inplace -e 'ssh -c
  CIPHER ...' CLONE/ root@127.0.0.1:/T/`` into the target, a ``zfs snapshot`` of the
  target (the point in time; it waits for the data to reach the disk, as cerssd's
  snapshot does), timed whole, then the clone destroyed;
* **cerssd**: ``POST /v1/replications`` with ``path = "generic"`` from ``local`` to its
  ``[servers.remote]`` (the same sshd, the same cipher), timed from the POST to the
  terminal state: the snapshot's view (a clone on zfs-fuse), the dry run for m, rsync
  with cerssd's options (``-aHAX --numeric-ids --sparse --delete -x``: more than the
  baseline's), the snapshot with its origin, the read-only fence and the holds.

Two cases: **full** (``--size`` MiB in ``--files`` random files, snapshot, a copy into a
new volume; both targets destroyed after each round) and **incremental** (``--changed``
per cent of the files rewritten, snapshot, a copy onto a target that holds the previous
round's state; each round changes other files). The ratio is baseline seconds over
cerssd seconds per round (above 1.0: cerssd faster), median and min-max. The destination
driver is ZFS (zfs-fuse) here; btrfs when that driver is configured.

Run as root from the repository::

    python bench/generic_path.py                  # 1 GiB in 256 files, 5 %, 3 rounds
    python bench/generic_path.py --quick          # 64 MiB, 1 round: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
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
    common_arguments,
    destroy_volume,
    ensure_zfs_fuse,
    load_average,
    machine,
    make_pool,
    median,
    retry_busy,
    say,
    scratch_dir,
    seconds_list,
    start_daemon,
    start_sshd,
    utc_now,
    write_random,
    zfs,
)

HOLD_TAGS = ("cerssd:remote",)


@dataclass
class Case:
    name: str
    data_bytes: int = 0
    baseline: list[float] = field(default_factory=list)
    cerssd: list[float] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [b / c for b, c in zip(self.baseline, self.cerssd, strict=True)]


def snapshot_copy(sshd: Sshd, cipher: str, snapshot: str, target: str) -> float:
    """What a script copying a snapshot's files has to do on zfs-fuse, which has no
    ``.zfs/snapshot``: clone it, rsync from the clone, snapshot the target (the point in
    time, and the data on disk), destroy the clone; timed whole. Reading the snapshot
    rather than the live filesystem matters: the live one's pages were just written and
    are still in the kernel's cache, a snapshot's are read through zfs-fuse."""
    pool = snapshot.partition("/")[0]
    clone = f"{pool}/baseline-view"
    start = time.monotonic()
    zfs("clone", "-o", "readonly=on", snapshot, clone)
    cloned = time.monotonic()
    copying = baseline_rsync(sshd, cipher, f"/{clone}", f"/{target}")
    zfs("snapshot", f"{target}@{snapshot.partition('@')[2]}")
    seconds = time.monotonic() - start
    say(f"baseline: clone {cloned - start:.2f} s, rsync {copying:.2f} s, snapshot "
        f"{seconds - copying - (cloned - start):.2f} s")
    retry_busy(lambda: zfs("destroy", clone, check=False),
               lambda: zfs("list", clone, check=False).returncode != 0, "the baseline's clone")
    return seconds


def baseline_rsync(sshd: Sshd, cipher: str, source: str, target: str) -> float:
    ssh = shlex.join(["ssh", "-c", cipher, "-p", str(sshd.port), "-i", str(sshd.client_key),
                      "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                      "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-l", "root"])
    start = time.monotonic()
    bash(shlex.join(["rsync", "-a", "--inplace", "-e", ssh, f"{source}/",
                     f"127.0.0.1:{target}/"]))
    return time.monotonic() - start


def cerssd_copy(daemon: Daemon, snapshot: str, target: str, mode: str,
                ) -> tuple[float, dict[str, Any]]:
    body = {"snapshot": snapshot, "source": "local", "destination": "remote",
            "target_volume": target, "path": "generic"}
    start = time.monotonic()
    activity: dict[str, Any] = daemon.api("POST", "/v1/replications", body)
    if (activity.get("plan"), activity.get("path")) != (mode, "generic"):
        raise BenchError(f"cerssd planned {activity.get('plan')}/{activity.get('path')} "
                         f"for {snapshot} -> {target}, expected {mode}/generic")
    activity = daemon.wait_activity(activity["id"])
    elapsed = time.monotonic() - start
    if activity["state"] != "succeeded":
        raise BenchError(f"cerssd copy {snapshot} -> {target} ended {activity['state']}: "
                         f"{(activity.get('status') or {}).get('message')}\n"
                         f"{daemon.log_tail()}")
    return elapsed, activity


def same_tree(a: str, b: str) -> None:
    """Both trees hold the same bytes (``diff -r``), or the run is void."""
    if subprocess.run(["diff", "-rq", a, b], capture_output=True).returncode != 0:
        raise BenchError(f"{b} differs from {a} after the copy")


def bench_full(case: Case, args: argparse.Namespace, pool: str, src: str, sshd: Sshd,
               daemon: Daemon) -> None:
    for i in range(1, args.runs + 1):
        plain, ours = f"{pool}/plain_full_{i}", f"{pool}/cerssd_full_{i}"
        zfs("create", plain)
        seconds = snapshot_copy(sshd, args.cipher, f"{src}@s0", plain)
        same_tree(f"/{src}", f"/{plain}")
        case.baseline.append(seconds)
        say(f"full round {i}: baseline {seconds:.2f} s")
        seconds, activity = cerssd_copy(daemon, f"{src}@s0", ours, "full")
        same_tree(f"/{src}", f"/{ours}")
        case.cerssd.append(seconds)
        case.wire.append(activity["usage"]["bytes_on_wire"])
        say(f"full round {i}: cerssd   {seconds:.2f} s")
        destroy_volume(plain, HOLD_TAGS)
        destroy_volume(ours, HOLD_TAGS)


def bench_incremental(case: Case, args: argparse.Namespace, pool: str, src: str,
                      sshd: Sshd, daemon: Daemon) -> None:
    plain, ours = f"{pool}/plain_incr", f"{pool}/cerssd_incr"
    say("incremental: giving each target the first state (untimed)")
    zfs("create", plain)
    baseline_rsync(sshd, args.cipher, f"/{src}", f"/{plain}")
    zfs("snapshot", f"{plain}@s0")
    cerssd_copy(daemon, f"{src}@s0", ours, "full")
    changed = max(1, args.files * args.changed // 100)
    for i in range(1, args.runs + 1):
        first = ((i - 1) * changed) % args.files
        for n in range(first, first + changed):
            write_random(Path(f"/{src}/f{n % args.files:05d}"), args.size // args.files)
        zfs("snapshot", f"{src}@s{i}")
        case.data_bytes = changed * (args.size // args.files) * MIB
        seconds = snapshot_copy(sshd, args.cipher, f"{src}@s{i}", plain)
        same_tree(f"/{src}", f"/{plain}")
        case.baseline.append(seconds)
        say(f"incremental round {i}: baseline {seconds:.2f} s ({changed} files)")
        seconds, activity = cerssd_copy(daemon, f"{src}@s{i}", ours, "incremental")
        same_tree(f"/{src}", f"/{ours}")
        case.cerssd.append(seconds)
        case.wire.append(activity["usage"]["bytes_on_wire"])
        say(f"incremental round {i}: cerssd   {seconds:.2f} s")


def report(cases: list[Case], args: argparse.Namespace, info: dict[str, str],
           started: Any, wall: float, load: str) -> str:
    lines = [
        f"### Generic path over SSH: cerssd vs `rsync -a --inplace` ({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `python bench/generic_path.py --size "
        f"{args.size} --files {args.files} --changed {args.changed} --runs {args.runs} "
        f"--cipher {args.cipher}` ({wall:.0f} s in all); load average before: {load}",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, {info['zfs_fuse']}, sshd on 127.0.0.1; ZFS (zfs-fuse) to ZFS",
        f"- data: {args.size} MiB in {args.files} random files; the incremental rewrites "
        f"{args.changed} % of them per round; rounds interleaved (baseline, then cerssd)",
        "",
        "| case | MiB moved | baseline s (median) | cerssd s (median) | "
        "baseline/cerssd median (min-max) | cerssd wire MB (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        r = case.ratios()
        lines.append(f"| {case.name} | {case.data_bytes / MIB:.0f} | "
                     f"{median(case.baseline):.2f} | {median(case.cerssd):.2f} | "
                     f"{median(r):.2f} ({min(r):.2f}-{max(r):.2f}) | "
                     f"{median(case.wire) / 1e6:.1f} |")
    lines.append("")
    for case in cases:
        lines.append(f"- {case.name} seconds per round: baseline "
                     f"{seconds_list(case.baseline)}; cerssd {seconds_list(case.cerssd)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the generic path: cerssd against rsync -a --inplace over ssh.")
    parser.add_argument("--size", type=int, default=1024, help="MiB of files")
    parser.add_argument("--files", type=int, default=256, help="how many files")
    parser.add_argument("--changed", type=int, default=5, help="per cent changed per round")
    parser.add_argument("--runs", type=int, default=3, help="rounds per case")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 16 files, 1 round")
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.files, args.runs = 64, 16, 1
    if min(args.size, args.files, args.runs, args.changed) < 1 or args.size < args.files:
        parser.error("--size, --files, --runs and --changed must be at least 1, and "
                     "--size at least --files")
    return args


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[str, Sshd, Daemon]]:
    with announced_stack() as stack:
        scratch = scratch_dir(stack, args.workdir, 5 * args.size * MIB)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 5 * args.size + 1024)
        sshd = start_sshd(stack)
        daemon = start_daemon(stack, sshd, args.cipher, [SshServer("remote", sshd.port)],
                              args.daemon_log)
        yield pool, sshd, daemon


def benchmark(args: argparse.Namespace) -> str:
    started = utc_now()
    load = load_average()
    t0 = time.monotonic()
    with environment(args) as (pool, sshd, daemon):
        src = f"{pool}/src"
        zfs("create", src)
        say(f"writing {args.size} MiB in {args.files} files")
        for n in range(args.files):
            write_random(Path(f"/{src}/f{n:05d}"), args.size // args.files)
        zfs("snapshot", f"{src}@s0")
        full = Case("full", data_bytes=args.files * (args.size // args.files) * MIB)
        bench_full(full, args, pool, src, sshd, daemon)
        incr = Case("incremental")
        bench_incremental(incr, args, pool, src, sshd, daemon)
        daemon.check_alive()
    return report([full, incr], args, machine(), started, time.monotonic() - t0, load)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("generic_path", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
