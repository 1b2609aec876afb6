"""What a relationship cycle asks ZFS, counted on a real daemon and real zfs-fuse.

At a node's real load (50 relationships at one cycle a minute, each to two slaves) every
listing of a volume's snapshots costs zfs-fuse about 1 ms of CPU per snapshot kept, and
a cycle that listed the master 15 times and each slave 7 times, with a ``zpool list`` of
every pool per plan, saturated two CPUs once retention kept a dozen snapshots a volume
(bench/RESULTS.md, activity history). Each server's ``zfs`` here is the real one behind
a wrapper (``zfs_command``) that logs its arguments, so the test counts what cycles ask:
a bounded number of listings per cycle and server, none that walks more than the one
volume, and the same number whatever the number of snapshots the volume keeps.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .conftest import DaemonProcess, raw_request, wait_until, write_file, zfs

SERVERS = ("local", "lab1", "lab2")
#: A cycle's listings of the master's snapshots: the cycle's own (snapshot name, retention,
#: fan-out plans), each transfer's (newest snapshot and plan: one each), and retention once
#: the last stream ended (once, even when both end at the same moment). Before: 15.
MASTER_LISTINGS = 5
#: Per slave: the fan-out plan, the transfer's plan, the slave's retention. Before: 7.
SLAVE_LISTINGS = 3


def logging_zfs(root: Path, server: str) -> Path:
    """The real ``zfs`` behind a wrapper that appends its arguments to ``<server>.log``."""
    command = root / f"zfs-{server}"
    command.write_text(f'#!/bin/sh\necho "$*" >> {root}/{server}.log\n'
                       f'exec {shutil.which("zfs")} "$@"\n')
    command.chmod(0o755)
    return command


def commands(root: Path, server: str) -> list[str]:
    log = root / f"{server}.log"
    return log.read_text().splitlines() if log.exists() else []


def listings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("get ") and " -d 1 " in line]


def cycles(d: DaemonProcess, root: Path, n: int) -> dict[str, list[str]]:
    """The commands of ``n`` cycles started by sync-now, each server's separately."""
    quiet(root)  # the previous cycle's retention follows its in-sync moment: not counted here
    for server in SERVERS:
        (root / f"{server}.log").unlink(missing_ok=True)
    for _ in range(n):
        before = d.api("GET", "/v1/relationships/web")["cycles"]
        assert raw_request(d.socket_path, "POST", "/v1/relationships/web/sync-now").status \
            == 202
        wait_until(lambda b=before: in_sync(d, b + 1), 120, what="the cycle's transfers")
    quiet(root)
    return {server: commands(root, server) for server in SERVERS}


def in_sync(d: DaemonProcess, cycle: int) -> bool:
    rel = d.api("GET", "/v1/relationships/web")
    newest = rel["newest_snapshot"]
    return rel["cycles"] >= cycle and newest is not None and all(
        s["activity"] is None and s["last_snapshot"] is not None
        and s["last_snapshot"].split("@")[1] == newest.split("@")[1] for s in rel["slaves"])


def quiet(root: Path, still: float = 2.0) -> None:
    """Until no server has run a command for ``still`` seconds: the cycle's retention,
    which follows its transfers, has finished asking."""
    def sizes() -> tuple[int, ...]:
        return tuple(len(commands(root, s)) for s in SERVERS)

    last: list[Any] = [sizes(), time.monotonic()]

    def settled() -> bool:
        now = sizes()
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= still

    wait_until(settled, 60, interval=0.2, what="the cycles' last commands")


def test_a_cycle_lists_each_volume_a_bounded_number_of_times_whatever_it_keeps(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    src, dst1, dst2 = make_pool(), make_pool(), make_pool()
    zfs("create", f"{src}/data")
    write_file(f"/{src}/data/f", 1)
    root = tmp_path / "zfs"
    root.mkdir()
    servers = "".join(f'[servers.{s}]\nkind = "local"\nzfs_command = "{logging_zfs(root, s)}"\n'
                      for s in SERVERS)
    d = start_daemon(extra=(
        servers + f'[relationships.web]\nvolume = "{src}/data"\ninterval = "1h"\n'
        'retention = ["1h:all"]\n'
        f'slaves = [{{server = "lab1", target_volume = "{dst1}/data"}}, '
        f'{{server = "lab2", target_volume = "{dst2}/data"}}]\n'))
    wait_until(lambda: in_sync(d, 1), 120, what="the first cycle (full copies)")

    few = cycles(d, root, 2)
    for i in range(30):  # snapshots the volume keeps (not the relationship's own)
        zfs("snapshot", f"{src}/data@kept-{i}")
    cycles(d, root, 1)  # sends them to the slaves (intermediates), one -i step each here
    many = cycles(d, root, 2)

    for seen in (few, many):
        per_cycle = {s: len(listings(seen[s])) / 2 for s in SERVERS}
        assert per_cycle["local"] <= MASTER_LISTINGS, seen["local"]
        assert per_cycle["lab1"] <= SLAVE_LISTINGS and per_cycle["lab2"] <= SLAVE_LISTINGS, seen
        for server, lines in seen.items():
            # every get and list names the one dataset or snapshot; nothing recursive
            walks = [line for line in lines if line.split()[0] in ("get", "list")
                     and (" -r " in f" {line} " or ("@" not in line and "/data" not in line))]
            assert walks == [], (server, walks)
    # The number of commands does not grow with the snapshots kept: 30 more, same count.
    for server in SERVERS:
        before = Counter(line.split()[0] for line in few[server])
        after = Counter(line.split()[0] for line in many[server])
        assert after == before, (server, few[server], many[server])
