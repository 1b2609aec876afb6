#!/usr/bin/env python3
"""Benchmark: a tree's listing and snapshot in one command vs one command per member.

Issue 15 reads each server's tree once per cycle (``StorageBackend.tree``: one
``zfs get -r``, snapshots included) and takes one instant's snapshot of the members
(``snapshot_tree``). This measures both on zfs-fuse against the way a single-volume
relationship does it, one command per member, in the same run, on the same tree, rounds
interleaved (the order rotates each round):

Listing (``--volumes`` filesystems under one root, ``--snapshots`` snapshots each):

* **tree**: ``backend.tree(root)``: one ``zfs get -r -Hp`` of the whole tree;
* **tree+selector**: the same with a user property asked for (set on the root, inherited);
* **per volume**: ``backend.volumes([root])`` then ``backend.snapshots(v)`` for each.

Snapshot of every member (the root and every volume), then the same for the root and
half of the volumes (every other one), each label
destroyed again with one ``zfs destroy -r`` after it was counted:

* **snapshot_tree all**: zfs-fuse has no multi-name snapshot, so ``zfs snapshot -r`` of
  the root and a listing (nothing to destroy);
* **snapshot_tree half**: the same, then one ``zfs destroy`` per non-member;
* **per volume**: ``backend.create_snapshot(v, label)`` for each member (not one
  instant: the baseline a tree must not be slower than by much).

Each method's result is checked (datasets and snapshots counted) so that a fast wrong
answer cannot pass. Run as root from the repository::

    .venv/bin/python bench/tree_listing.py --volumes 200 --snapshots 10 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    BenchError,
    bench_main,
    command_line,
    ensure_zfs_fuse,
    load_average,
    machine,
    make_pool,
    median,
    say,
    scratch_dir,
    utc_now,
    zfs,
)

from cerssd.storage.zfs import ZfsBackend
from cerssd.transport.runner import LocalRunner

PROPERTY = "bench:replicate"


def build_tree(root: str, volumes: int, snapshots: int) -> list[str]:
    say(f"creating {volumes} filesystems under {root} (canmount=off)")
    start = time.monotonic()
    zfs("create", "-o", "canmount=off", root)
    names = [f"{root}/v{i:04d}" for i in range(volumes)]
    for name in names:
        zfs("create", "-o", "canmount=off", name)
    say(f"created in {time.monotonic() - start:.1f} s; {snapshots} x zfs snapshot -r")
    for n in range(snapshots):
        zfs("snapshot", "-r", f"{root}@s{n}")
    zfs("set", f"{PROPERTY}=on", root)
    return names


async def listing_tree(backend: ZfsBackend, root: str, selector: str | None,
                       expected: tuple[int, int]) -> None:
    listing = await backend.tree(root, selector=selector)
    got = (len(listing.datasets), sum(len(d.snapshots) for d in listing.datasets))
    if got != expected or (selector and any(d.selector != "on" for d in listing.datasets)):
        raise BenchError(f"tree listed {got}, expected {expected}")


async def listing_per_volume(backend: ZfsBackend, root: str, expected: tuple[int, int]) -> None:
    page = await backend.volumes([root])
    counted = 0
    for volume in page.items:
        counted += len(await backend.snapshots(volume.name))
    if (len(page.items), counted) != expected:
        raise BenchError(f"per volume listed {(len(page.items), counted)}, expected {expected}")


class Labels:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"t{self.n}"


async def snap_tree(backend: ZfsBackend, root: str, members: list[str], label: str) -> None:
    await backend.snapshot_tree(root, label, members)


async def snap_each(backend: ZfsBackend, members: list[str], label: str) -> None:
    for member in members:
        await backend.create_snapshot(member, label)


def check_and_drop(root: str, members: list[str], label: str, one_txg: bool) -> None:
    out = zfs("get", "-r", "-Hp", "-o", "name,value", "createtxg", root).stdout
    taken = {line.split("\t")[0].partition("@")[0]: line.split("\t")[1]
             for line in out.splitlines() if line.split("\t")[0].endswith(f"@{label}")}
    if set(taken) != set(members):
        raise BenchError(f"{label}: {len(taken)} snapshots, {len(members)} members")
    if one_txg and len(set(taken.values())) != 1:
        raise BenchError(f"{label}: {len(set(taken.values()))} txgs, expected one")
    zfs("destroy", "-r", f"{root}@{label}")


async def timed(action: Callable[[], Awaitable[None]]) -> float:
    start = time.monotonic()
    await action()
    return time.monotonic() - start


def spread(values: list[float]) -> str:
    return f"{median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


async def measure(args: argparse.Namespace, root: str, names: list[str]
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    backend = ZfsBackend(LocalRunner("bench"))
    await backend.probe()
    expected = (len(names) + 1, (len(names) + 1) * args.snapshots)
    listing: dict[str, Callable[[], Awaitable[float]]] = {
        "tree": lambda: timed(lambda: listing_tree(backend, root, None, expected)),
        "tree+selector": lambda: timed(lambda: listing_tree(backend, root, PROPERTY,
                                                            expected)),
        "per volume": lambda: timed(lambda: listing_per_volume(backend, root, expected)),
    }
    every, half = [root, *names], [root, *names[::2]]  # the root in both, for destroy -r
    labels = Labels()

    def snapshot_method(members: list[str], tree: bool) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            label = labels.next()
            seconds = await timed(lambda: snap_tree(backend, root, members, label) if tree
                                  else snap_each(backend, members, label))
            check_and_drop(root, members, label, one_txg=tree)  # not timed
            return seconds
        return run

    snapping = {"snapshot_tree all": snapshot_method(every, True),
                "snapshot_tree half": snapshot_method(half, True),
                "create_snapshot each": snapshot_method(every, False)}
    results = []
    for methods in (listing, snapping):
        times: dict[str, list[float]] = {m: [] for m in methods}
        order = list(methods)
        for r in range(args.rounds):
            for m in order[r % len(order):] + order[:r % len(order)]:
                times[m].append(await methods[m]())
            say(f"round {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.3f} s" for m in order))
        results.append(times)
    return results[0], results[1]


def body(args: argparse.Namespace) -> str:
    with contextlib.ExitStack() as stack:
        scratch = scratch_dir(stack, args.workdir, 1 << 30)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 2048)
        zfs("set", "canmount=off", pool)
        root = f"{pool}/tree"
        names = build_tree(root, args.volumes, args.snapshots)
        load_before = load_average()
        listing, snapping = asyncio.run(measure(args, root, names))
        load_after = load_average()
    return report(args, listing, snapping, load_before, load_after)


def report(args: argparse.Namespace, listing: dict[str, list[float]],
           snapping: dict[str, list[float]], before: str, after: str) -> str:
    m = machine()
    lines = [
        f"### Tree listing and snapshot: {args.volumes} volumes x {args.snapshots} snapshots "
        f"({utc_now():%Y-%m-%d})", "",
        f"- date: {utc_now():%Y-%m-%d %H:%M} UTC; `{command_line()}`",
        f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, kernel {m['kernel']}, "
        f"{m['zfs_fuse']}; load average before {before}, after {after}",
        f"- {args.rounds} rounds, methods interleaved (order rotated each round); "
        "seconds as median (min-max)", "",
        "| method | seconds |", "| --- | ---: |"]
    lines += [f"| {k} | {spread(v)} |" for k, v in (listing | snapping).items()]
    ratios = {
        "per volume / tree (listing)": (listing["per volume"], listing["tree"]),
        "per volume / tree+selector (listing)": (listing["per volume"],
                                                 listing["tree+selector"]),
        "create_snapshot each / snapshot_tree all": (snapping["create_snapshot each"],
                                                     snapping["snapshot_tree all"]),
        "snapshot_tree half / snapshot_tree all": (snapping["snapshot_tree half"],
                                                   snapping["snapshot_tree all"]),
    }
    lines += ["", "| ratio (per round) | median (min-max) |", "| --- | ---: |"]
    lines += [f"| {k} | {spread([a / b for a, b in zip(n, d, strict=True)])} |"
              for k, (n, d) in ratios.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    return bench_main("tree_listing.py", lambda: body(args))


if __name__ == "__main__":
    raise SystemExit(main())
