"""Benchmark: the generic path (file copy) over SSH, cerssd against plain ``rsync``.

What it measures, on the same machine and the same data, in the same run, rounds
interleaved, each from quiet disks (the other method's writes written out first) and
the baseline first in odd rounds, cerssd in even ones:

* **baseline**: what a script copying the snapshot does (``snapshot_copy``): a clone of
  the snapshot (zfs-fuse has no ``.zfs/snapshot``), ``rsync -a --inplace -e 'ssh -c
  CIPHER ...' CLONE/ root@127.0.0.1:/T/`` into the target, a ``zfs snapshot`` of the
  target (the point in time; it waits for the data to reach the disk, as cerssd's
  snapshot does), timed whole, then the clone destroyed;
* **cerssd**: ``POST /v1/replications`` with ``path = "generic"`` from ``local`` to its
  ``[servers.remote]`` (the same sshd, the same cipher), timed from the POST to the
  terminal state: the snapshot's view (a clone on zfs-fuse), the source's walk (holes,
  m of a first copy), rsync with cerssd's options (``-aHAX --numeric-ids --delete -x
  --inplace``: more than the baseline's; ``--sparse`` only where the source has holes),
  the snapshot with its origin, the read-only fence and the holds.

Two cases: **full** (``--size`` MiB in ``--files`` random files, snapshot, a copy into a
new volume; both targets destroyed after each round) and **incremental** (``--changed``
per cent of the files rewritten, snapshot, a copy onto a target that holds the previous
round's state; each round changes other files, ``--write-gap`` seconds before its
snapshot). The ratio is baseline seconds over cerssd seconds per round (above 1.0:
cerssd faster), median and min-max. The destination is a loop-mounted btrfs
(``--destination btrfs``, the issue's case) or a second zfs-fuse pool.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from btrfs_replicate import SNAPSHOTS
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
    loop_btrfs,
    machine,
    make_pool,
    median,
    retry_busy,
    run,
    say,
    scratch_dir,
    seconds_list,
    settle,
    start_daemon,
    start_sshd,
    utc_now,
    write_random,
    zfs,
)

HOLD_TAGS = ("cerssd:remote",)


class Target(Protocol):
    """Where both methods copy to: the destination driver's volumes, each method its own."""

    @property
    def kind(self) -> str:
        """What the report calls it."""

    def create(self, name: str) -> None: ...
    def path(self, name: str) -> str: ...
    def volume(self, name: str) -> str:
        """The name cerssd's API knows the volume by."""
    def snapshot(self, name: str, label: str) -> None:
        """The baseline's snapshot of its copy (the point in time)."""
    def destroy(self, name: str) -> None: ...
    def quiet(self) -> None:
        """Wait for what the destination does in the background after a destroy."""


@dataclass(frozen=True)
class ZfsTarget:
    """Datasets in the benchmark's zfs-fuse pool (the source's pool too)."""

    pool: str
    kind: str = "ZFS (zfs-fuse)"

    def create(self, name: str) -> None:
        zfs("create", self.volume(name))

    def path(self, name: str) -> str:
        return f"/{self.volume(name)}"

    def volume(self, name: str) -> str:
        return f"{self.pool}/{name}"

    def snapshot(self, name: str, label: str) -> None:
        zfs("snapshot", f"{self.volume(name)}@{label}")

    def destroy(self, name: str) -> None:
        destroy_volume(self.volume(name), HOLD_TAGS)

    def quiet(self) -> None:
        pass  # zfs-fuse frees in its transaction groups: settle's quiet disks cover it


@dataclass(frozen=True)
class BtrfsTarget:
    """Subvolumes under cerssd's btrfs root on a loop-mounted btrfs; the baseline keeps
    its read-only snapshots in a directory of its own beside them."""

    root: Path
    kind: str = "btrfs (loop-mounted)"

    def create(self, name: str) -> None:
        run(["btrfs", "subvolume", "create", self.path(name)])

    def path(self, name: str) -> str:
        return str(self.root / name)

    def volume(self, name: str) -> str:
        return f"{self.root.name}/{name}"

    def snapshot(self, name: str, label: str) -> None:
        (self.root / "baseline-snapshots").mkdir(exist_ok=True)
        run(["btrfs", "subvolume", "snapshot", "-r", self.path(name),
             str(self.root / "baseline-snapshots" / f"{name}@{label}")])

    def destroy(self, name: str) -> None:
        """The volume and every snapshot of it (the baseline's and cerssd's)."""
        snapshots = [*(self.root / "baseline-snapshots").glob(f"{name}@*"),
                     *(self.root / SNAPSHOTS).glob(f"{name}@*/{name}@*")]
        run(["btrfs", "subvolume", "delete", *map(str, snapshots), self.path(name)])
        for directory in (self.root / SNAPSHOTS).glob(f"{name}@*"):
            directory.rmdir()

    def quiet(self) -> None:
        """The deleted subvolumes cleaned up: btrfs's cleaner frees their extents in the
        background otherwise, during the next copy (and the space comes back only then)."""
        run(["btrfs", "subvolume", "sync", str(self.root)])


@dataclass
class Case:
    name: str
    data_bytes: int = 0
    baseline: list[float] = field(default_factory=list)
    cerssd: list[float] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [b / c for b, c in zip(self.baseline, self.cerssd, strict=True)]


def snapshot_copy(sshd: Sshd, cipher: str, snapshot: str, target: Target, name: str,
                  ) -> float:
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
    copying = baseline_rsync(sshd, cipher, f"/{clone}", target.path(name))
    target.snapshot(name, snapshot.partition("@")[2])
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


def in_turn(round_number: int, target: Target, baseline: Callable[[], None],
            ours: Callable[[], None]) -> None:
    """Both methods, each from a quiet destination and quiet disks (``settle``: the
    other's writes are written out first, not during it), the baseline first in odd
    rounds and cerssd in even ones: neither always meets the state the other leaves."""
    for step in (baseline, ours) if round_number % 2 else (ours, baseline):
        target.quiet()
        settle("the next copy")
        step()


def baseline_round(case: Case, sshd: Sshd, cipher: str, src: str, snapshot: str,
                   target: Target, plain: str, what: str) -> None:
    seconds = snapshot_copy(sshd, cipher, snapshot, target, plain)
    same_tree(f"/{src}", target.path(plain))
    case.baseline.append(seconds)
    say(f"{what}: baseline {seconds:.2f} s")


def cerssd_round(case: Case, daemon: Daemon, src: str, snapshot: str, target: Target,
                 ours: str, what: str) -> None:
    seconds, activity = cerssd_copy(daemon, snapshot, target.volume(ours), case.name)
    same_tree(f"/{src}", target.path(ours))
    case.cerssd.append(seconds)
    case.wire.append(activity["usage"]["bytes_on_wire"])
    say(f"{what}: cerssd   {seconds:.2f} s")


def bench_full(case: Case, args: argparse.Namespace, src: str, target: Target, sshd: Sshd,
               daemon: Daemon) -> None:
    for i in range(1, args.runs + 1):
        plain, ours = f"plain_full_{i}", f"cerssd_full_{i}"
        target.create(plain)
        what = f"full round {i}"
        in_turn(i, target,
                partial(baseline_round, case, sshd, args.cipher, src, f"{src}@s0", target,
                        plain, what),
                partial(cerssd_round, case, daemon, src, f"{src}@s0", target, ours, what))
        target.destroy(plain)
        target.destroy(ours)


def bench_incremental(case: Case, args: argparse.Namespace, src: str, target: Target,
                      sshd: Sshd, daemon: Daemon) -> None:
    plain, ours = "plain_incr", "cerssd_incr"
    say("incremental: giving each target the first state (untimed)")
    target.create(plain)
    baseline_rsync(sshd, args.cipher, f"/{src}", target.path(plain))
    target.snapshot(plain, "s0")
    cerssd_copy(daemon, f"{src}@s0", target.volume(ours), "full")
    changed = max(1, args.files * args.changed // 100)
    for i in range(1, args.runs + 1):
        first = ((i - 1) * changed) % args.files
        for n in range(first, first + changed):
            write_random(Path(f"/{src}/f{n % args.files:05d}"), args.size // args.files)
        # Files written within a couple of seconds before a snapshot are ones rsync's
        # quick check cannot trust on zfs-fuse (whole-second mtimes): cerssd compares
        # their contents in the next copy, where the baseline skips them. A schedule
        # snapshots some time after most writes; --write-gap 0 is the worst case.
        time.sleep(args.write_gap)
        zfs("snapshot", f"{src}@s{i}")
        case.data_bytes = changed * (args.size // args.files) * MIB
        what = f"incremental round {i} ({changed} files)"
        in_turn(i, target, partial(baseline_round, case, sshd, args.cipher, src, f"{src}@s{i}",
                           target, plain, what),
                partial(cerssd_round, case, daemon, src, f"{src}@s{i}", target, ours, what))


def report(cases: list[Case], args: argparse.Namespace, info: dict[str, str],
           started: Any, wall: float, load: str, destination: str) -> str:
    lines = [
        f"### Generic path over SSH: cerssd vs `rsync -a --inplace` ({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `python bench/generic_path.py --size "
        f"{args.size} --files {args.files} --changed {args.changed} --runs {args.runs} "
        f"--write-gap {args.write_gap:g} "
        f"--cipher {args.cipher} --destination {args.destination}` ({wall:.0f} s in all); "
        f"load average before: {load}",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, {info['zfs_fuse']}, sshd on 127.0.0.1; ZFS (zfs-fuse) to {destination}",
        f"- data: {args.size} MiB in {args.files} random files; the incremental rewrites "
        f"{args.changed} % of them per round, {args.write_gap:g} s before its snapshot; "
        "rounds interleaved, each copy from quiet "
        "disks (`sync`, then no writes), the baseline first in odd rounds",
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
    parser.add_argument("--destination", choices=("btrfs", "zfs"), default="btrfs",
                        help="the destination driver (the issue's case: btrfs)")
    parser.add_argument("--write-gap", type=float, default=3.0,
                        help="seconds between an incremental round's writes and its "
                             "snapshot (0: the snapshot right after the writes, so the "
                             "next round must compare those files' contents)")
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.files, args.runs = 64, 16, 1
    if min(args.size, args.files, args.runs, args.changed) < 1 or args.size < args.files:
        parser.error("--size, --files, --runs and --changed must be at least 1, and "
                     "--size at least --files")
    return args


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[str, Target, Sshd, Daemon]]:
    """The source pool (zfs-fuse), the destination (``--destination``), the sshd, and a
    daemon whose ``[servers.remote]`` is the destination over that sshd."""
    with announced_stack() as stack:
        scratch = scratch_dir(stack, args.workdir, 5 * args.size * MIB)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 5 * args.size + 1024)
        target: Target = ZfsTarget(pool)
        remote = ""
        if args.destination == "btrfs":
            root = loop_btrfs(stack, scratch, 6 * args.size * MIB + (1 << 30)) / "volumes"
            run(["btrfs", "subvolume", "create", str(root)])
            target, remote = BtrfsTarget(root), f'backend = "btrfs"\nroot = "{root}"\n'
        sshd = start_sshd(stack)
        daemon = start_daemon(stack, sshd, args.cipher,
                              [SshServer("remote", sshd.port, remote)], args.daemon_log)
        yield pool, target, sshd, daemon


def benchmark(args: argparse.Namespace) -> str:
    started = utc_now()
    load = load_average()
    t0 = time.monotonic()
    with environment(args) as (pool, target, sshd, daemon):
        src = f"{pool}/src"
        zfs("create", src)
        say(f"writing {args.size} MiB in {args.files} files")
        for n in range(args.files):
            write_random(Path(f"/{src}/f{n:05d}"), args.size // args.files)
        time.sleep(args.write_gap)  # as before each incremental round's snapshot
        zfs("snapshot", f"{src}@s0")
        full = Case("full", data_bytes=args.files * (args.size // args.files) * MIB)
        bench_full(full, args, src, target, sshd, daemon)
        incr = Case("incremental")
        bench_incremental(incr, args, src, target, sshd, daemon)
        daemon.check_alive()
    return report([full, incr], args, machine(), started, time.monotonic() - t0, load,
                  target.kind)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("generic_path", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
