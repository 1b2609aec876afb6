"""Benchmark: ``GET /v1/volumes`` at 1,000 volumes x 10 snapshots against plain ``zfs list``.

The requirement (issue 13, item 2): the volume listing within 1.2x of the cheapest
``zfs list`` that gives the same facts, measured side by side at 1,000 volumes x 10
snapshots.

What it measures, in the same run, on the same pool, rounds interleaved (the order of
the methods rotates from round to round):

* **list**: ``zfs list -H -t filesystem,volume -o name,type,guid,creation,used,
  referenced,readonly,mounted -r POOL``: the same columns, but on zfs-fuse (no ``list
  -p``) rounded for display (a guid as ``5.57E``), so fewer facts than the API gives;
* **exact**: the cheapest commands that give the same exact facts on this zfs. Where
  ``zfs list -p`` exists that is ``zfs list -Hp`` of the same columns; on zfs-fuse it is
  ``zfs list -H -o name`` and one ``zfs get -Hp`` of those names (without ``-r``, so no
  snapshot is visited);
* **api**: ``GET /v1/volumes?limit=1000`` of a real daemon whose ``[servers.local]``
  names the pool in ``pools``: one page of 1,000 volumes with their states, through the
  socket, JSON decoded;
* **cerssctl**: ``cerssctl --json volumes``, a new process that pages through the whole
  listing (1,001 datasets with the pool's root), as an operator runs it.

Before the rounds, once: the command the listing used before (``zfs get -Hp`` of the
properties over every dataset, which on zfs-fuse visits every snapshot), for the record.

The tree: one pool, 1,000 filesystems created with ``canmount=off`` (zfs-fuse cannot
mount many more than 1,000 filesystems, and a mount costs time that is not the
listing's), then 10 rounds of ``zfs snapshot -r POOL@sN``. ``zfs create`` costs 15-35 ms
each here, so the tree is built once per run.

Run as root from the repository, with the venv's python::

    .venv/bin/python bench/volumes.py --volumes 1000 --snapshots 10 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    BenchError,
    Daemon,
    bench_main,
    cleanup,
    command_line,
    ensure_zfs_fuse,
    load_average,
    machine,
    make_pool,
    median,
    say,
    scratch_dir,
    stop_daemon,
    utc_now,
    wait_ready,
    zfs,
)

PROPS = "type,guid,creation,used,referenced,readonly,mounted"


def build_tree(pool: str, volumes: int, snapshots: int) -> None:
    say(f"creating {volumes} filesystems under {pool} (canmount=off)")
    start = time.monotonic()
    for i in range(volumes):
        zfs("create", "-o", "canmount=off", f"{pool}/v{i:05d}")
    say(f"created in {time.monotonic() - start:.1f} s; {snapshots} rounds of zfs snapshot -r")
    for n in range(snapshots):
        zfs("snapshot", "-r", f"{pool}@s{n}")


def parsable_list() -> bool:
    usage = subprocess.run(["zfs"], capture_output=True, text=True, check=False)
    return "list [-rHp" in usage.stdout + usage.stderr


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.monotonic()
    result = action()
    return time.monotonic() - start, result


def plain_list(pool: str) -> int:
    out = zfs("list", "-H", "-t", "filesystem,volume", "-o", f"name,{PROPS}", "-r", pool)
    return len(out.stdout.splitlines())


def exact_facts(pool: str, parsable: bool) -> int:
    if parsable:
        out = zfs("list", "-Hp", "-t", "filesystem,volume", "-o", f"name,{PROPS}", "-r", pool)
        return len(out.stdout.splitlines())
    names = zfs("list", "-H", "-t", "filesystem,volume", "-o", "name", "-r", pool
                ).stdout.split()
    got = zfs("get", "-Hp", "-o", "name,property,value", PROPS, *names)
    return len(got.stdout.splitlines()) // len(PROPS.split(","))


def start_daemon(stack: contextlib.ExitStack, pool: str) -> Daemon:
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-", dir="/tmp"))
    cleanup(stack, lambda: subprocess.run(["rm", "-rf", str(root)], check=False))
    config = root / "cerssd.toml"
    config.write_text("[daemon]\n"
                      f'control_socket = "{root / "control.sock"}"\n'
                      f'state_dir = "{root / "state"}"\n'
                      'metrics_listen = "off"\n\n'
                      f'[servers.local]\nkind = "local"\npools = ["{pool}"]\n')
    log_path = root / "cerssd.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    daemon = Daemon(proc, root, root / "control.sock", log_path)
    cleanup(stack, stop_daemon, daemon, None)
    wait_ready(daemon, ["local"])
    return daemon


def api_page(daemon: Daemon, expected: int) -> int:
    page = daemon.api("GET", f"/v1/volumes?limit={expected}", timeout=600)
    if len(page["items"]) != expected or page["total"] != expected + 1:
        raise BenchError(f"the API listed {len(page['items'])} of {page['total']}")
    if any(v["state"] != "available" for v in page["items"]):
        raise BenchError("a canmount=off filesystem is not 'available'")
    return len(page["items"])


def cerssctl(daemon: Daemon, expected: int) -> int:
    import json

    out = subprocess.run([sys.executable, "-m", "cerssd.cli", "--socket",
                          str(daemon.socket_path), "--json", "volumes"],
                         capture_output=True, text=True, check=False, cwd=REPO)
    if out.returncode != 0:
        raise BenchError(f"cerssctl volumes exited {out.returncode}: {out.stderr.strip()}")
    count = len(json.loads(out.stdout)["items"])
    if count != expected + 1:
        raise BenchError(f"cerssctl listed {count} volumes, not {expected + 1}")
    return count


def spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def body(args: argparse.Namespace) -> str:
    with contextlib.ExitStack() as stack:
        scratch = scratch_dir(stack, args.workdir, 2 << 30)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 4096)
        zfs("set", "canmount=off", pool)
        build_tree(pool, args.volumes, args.snapshots)
        parsable = parsable_list()
        daemon = start_daemon(stack, pool)
        old = None
        if not args.skip_old:
            say("the listing's old command once: zfs get -Hp over every dataset")
            old, _ = timed(lambda: zfs("get", "-Hp", "-o", "name,property,value", PROPS))
        methods: dict[str, Callable[[], Any]] = {
            "list": lambda: plain_list(pool),
            "exact": lambda: exact_facts(pool, parsable),
            "api": lambda: api_page(daemon, args.volumes),
            "cerssctl": lambda: cerssctl(daemon, args.volumes),
        }
        names = list(methods)
        times: dict[str, list[float]] = {m: [] for m in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in order:
                seconds, _ = timed(methods[m])
                times[m].append(seconds)
            say(f"round {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in names))
        load = load_average()
    return report(args, times, old, parsable, load)


def report(args: argparse.Namespace, times: dict[str, list[float]], old: float | None,
           parsable: bool, load: str) -> str:
    m = machine()
    pairs = {"api / exact": ("api", "exact"), "api / list": ("api", "list"),
             "cerssctl / list": ("cerssctl", "list")}
    per_round = {label: [a / b for a, b in zip(times[num], times[den], strict=True)]
                 for label, (num, den) in pairs.items()}
    exact_text = ("zfs list -Hp" if parsable else
                  "zfs list -H -o name + zfs get -Hp of the names (zfs-fuse has no list -p)")
    lines = [
        f"### Volume listing: {args.volumes} volumes x {args.snapshots} snapshots "
        f"({utc_now():%Y-%m-%d})", "",
        f"- date: {utc_now():%Y-%m-%d %H:%M} UTC; `{command_line()}`",
        f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, kernel {m['kernel']}, "
        f"{m['zfs_fuse']}; load average at the end {load}",
        f"- exact facts here: {exact_text}",
        f"- {args.rounds} rounds, methods interleaved (order rotated each round); "
        "seconds as median (min-max)", "",
        "| method | seconds |", "| --- | ---: |",
    ]
    labels = {"list": "`zfs list -H -o name,…` (rounded values)",
              "exact": "cheapest commands with the exact facts",
              "api": f"`GET /v1/volumes?limit={args.volumes}`",
              "cerssctl": "`cerssctl --json volumes` (all pages, new process)"}
    lines += [f"| {labels[k]} | {spread(times[k])} |" for k in labels]
    if old is not None:
        lines.append(f"| before: `zfs get -Hp` over every dataset (once) | {old:.2f} |")
    lines += ["", "| ratio (per round) | median (min-max) |", "| --- | ---: |"]
    lines += [f"| {k} | {spread(v)} |" for k, v in per_round.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-old", action="store_true",
                        help="do not time the old zfs get over every dataset")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    return bench_main("volumes.py", lambda: body(args))


if __name__ == "__main__":
    raise SystemExit(main())
