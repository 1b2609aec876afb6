#!/usr/bin/env python3
"""Tree relationships at scale: what a tree of N members costs the daemon (issue 15).

On zfs-fuse on this host, one daemon per size (``--members``, default 100 and 1000) keeps
a tree ``MASTER/tree`` of that many flat members (``vol0000`` ...) replicated to one slave
(``--transport local``: a second ``kind = "local"`` server on another pool, as
tests/test_trees.py does; ``ssh``: the bench's loopback sshd), with the demo's settings
otherwise (etc/cerssd.toml: a 5-minute interval, retention ``1h:all, 1d:1h, 1w:1d``,
metrics on TCP). zfs-fuse mounts ~1,000 filesystems at most, so both pools carry
``mountpoint=none`` and every member inherits it: the master's members are never mounted
(``zfs snapshot -r`` and ``zfs send`` do not need them mounted) and the slave receives
unmounted anyway.

After the initial full cycle and one warm-up cycle, with nothing changed since, each of
``--rounds`` rounds measures:

* cycle wall time: ``POST .../sync-now`` until the relationship's cycle count has moved
  and the tree summary says every member is in sync on the slave (target < 60 s at 1,000);
* p50/p99 of ``GET /v1/relationships/tree`` and ``GET .../volumes?limit=100`` asked in
  turn, one request every 50 ms, while that cycle runs (target < 100 ms);
* daemon CPU (its own, from /proc/PID/stat; its children's separately) during the cycle
  and over ``--idle-seconds`` (>= 60) idle after it (target < 2 % of one core);
* RSS at the end of the idle period and its peak (VmHWM) (target < 250 MiB);
* the size of a ``/metrics`` scrape (TCP), compared with the same daemon config holding
  one single-volume relationship instead of the tree (must not grow with members).

``--change-members`` (default 200; 0 leaves it out) members, mounted, each given
``--change-mib`` MiB of new random data per round: one cerssd cycle vs a serial loop of
plain ``zfs send -i PREV NEW | zfs receive -u`` per member (what syncoid and
zfs-autobackup do, one member after another), in the same run, rounds interleaved (the
order alternates); every round writes the data once and both methods send exactly that
since their own previous snapshot. Ratio plain / cerssd per round, median (min-max).

Run as root from the repository::

    .venv/bin/python bench/tree_scale.py --members 100 1000 --rounds 3 > /tmp/scale.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MIB,
    REPO,
    BenchError,
    Daemon,
    Sshd,
    announced_stack,
    bash,
    bench_main,
    cleanup,
    command_line,
    ensure_zfs_fuse,
    free_port,
    load_average,
    machine,
    make_pool,
    say,
    scratch_dir,
    settle,
    start_sshd,
    stop_daemon,
    utc_now,
    wait_ready,
    wait_until,
    write_random,
    zfs,
)
from history import TICK, memory_mib, pct

REL = "tree"


@dataclass
class Shim:
    """``--count-zfs``: a ``zfs`` that logs its subcommand before running the real one."""

    command: str | None = None
    log: Path | None = None

    def install(self, stack: contextlib.ExitStack) -> None:
        where = Path(tempfile.mkdtemp(prefix="cerssd-scale-shim-", dir="/tmp"))
        cleanup(stack, shutil.rmtree, where, ignore_errors=True)
        self.log = where / "calls"
        self.log.touch()
        shim = where / "zfs"
        real = shutil.which("zfs")
        shim.write_text(f'#!/bin/sh\necho "$1" >> {self.log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
        self.command = str(shim)

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log else []


ZFS_SHIM = Shim()
RETENTION = '["1h:all", "1d:1h", "1w:1d"]'  # etc/cerssd.toml's, the demo's


def member(i: int) -> str:
    return f"vol{i:04d}"


# -- /proc -------------------------------------------------------------------------------

def cpu_times(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return ((int(fields[11]) + int(fields[12])) / TICK,
            (int(fields[13]) + int(fields[14])) / TICK)


# -- the environment ---------------------------------------------------------------------

@dataclass(frozen=True)
class Pools:
    master: str
    slave: str
    sshd: Sshd | None


def create_members(root: str, count: int, parallel: int = 4) -> None:
    """``count`` members under ``root``; a few ``zfs create`` at once (one each is slow)."""
    names = "\n".join(f"{root}/{member(i)}" for i in range(count))
    bash(f"xargs -P {parallel} -n 1 zfs create <<'EOF'\n{names}\nEOF")


def server_config(pools: Pools, zfs_command: str | None) -> str:
    """``[servers.local]`` and the slave ``lab1``; ``zfs_command``: e.g. a counting shim."""
    extra = f'zfs_command = "{zfs_command}"\n' if zfs_command else ""
    text = '[servers.local]\nkind = "local"\n' + extra
    if pools.sshd is None:
        return text + '[servers.lab1]\nkind = "local"\n' + extra
    return text + (f'[servers.lab1]\nkind = "ssh"\nhost = "127.0.0.1"\n'
                   f'port = {pools.sshd.port}\nuser = "root"\n'
                   f'identity_file = "{pools.sshd.client_key}"\n'
                   f'known_hosts = "{pools.sshd.known_hosts}"\n' + extra)


def config_text(root: Path, pools: Pools, metrics_port: int, relationship: str,
                interval: str, zfs_command: str | None = None) -> str:
    return ("[daemon]\n"
            f'control_socket = "{root / "control.sock"}"\n'
            f'state_dir = "{root / "state"}"\n'
            f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
            'log_level = "info"\nshutdown_timeout = "10s"\n\n'
            + server_config(pools, zfs_command) + relationship
            .replace("INTERVAL", interval))


def tree_relationship(pools: Pools, target: str, extra: str = "") -> str:
    return (f'\n[relationships.{REL}]\nvolume = "{pools.master}/tree"\nrecursive = true\n'
            f'master = "local"\ninterval = "INTERVAL"\nretention = {RETENTION}\n{extra}'
            f'slaves = [{{ server = "lab1", target_volume = "{target}" }}]\n')


def single_relationship(pools: Pools) -> str:
    return (f'\n[relationships.single]\nvolume = "{pools.master}/single"\n'
            f'master = "local"\ninterval = "INTERVAL"\nretention = {RETENTION}\n'
            f'slaves = [{{ server = "lab1", target_volume = "{pools.slave}/single" }}]\n')


@dataclass
class Running:
    daemon: Daemon
    metrics_port: int

    def metrics_size(self) -> int:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return len(response.read())


def start(stack: contextlib.ExitStack, pools: Pools, relationship: str, interval: str,
          keep: Path | None, tag: str) -> Running:
    root = Path(tempfile.mkdtemp(prefix="cerssd-scale-", dir="/tmp"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    (root / "state").mkdir()
    port = free_port()
    config = root / "cerssd.toml"
    config.write_text(config_text(root, pools, port, relationship, interval, ZFS_SHIM.command))
    log_path = root / "cerssd.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env,
                                start_new_session=True)
    daemon = Daemon(proc, root, root / "control.sock", log_path)
    cleanup(stack, stop_daemon, daemon, keep / f"{tag}.log" if keep else None)
    say(f"cerssd started (pid {proc.pid}), state in {root}")
    wait_ready(daemon, ["local", "lab1"])
    return Running(daemon, port)


# -- the tree's state ----------------------------------------------------------------------

def relationship(d: Daemon, name: str = REL) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", f"/v1/relationships/{name}", timeout=60)
    return result


def in_sync(r: dict[str, Any], members: int, cycles: int) -> bool:
    tree = r.get("tree")
    return (r["cycles"] >= cycles and tree is not None and tree["members"] == members
            and tree["slaves"]["lab1"]["in_sync"] == members)


def wait_cycle(d: Daemon, members: int, cycles: int, timeout: float) -> None:
    def done() -> bool:
        d.check_alive()
        r = relationship(d)
        if r["tree"] and r["tree"]["slaves"]["lab1"].get("failing"):
            raise BenchError(f"members failing: {r['tree']['failing'][:3]}")
        return in_sync(r, members, cycles)
    wait_until(done, timeout, f"cycle {cycles}: all {members} members in sync", interval=0.5)


def sync_ended(d: Daemon) -> None:
    """Until the last cycle's tree-sync activity is over, not only its members in sync: a
    cycle started while it still finishes (its slave retention) skips the slave, and its
    snapshot would then wait for the next interval (see bench/RESULTS.md)."""
    def ended() -> bool:
        live = d.api("GET", f"/v1/activities?kind=tree-sync&relationship={REL}&limit=5",
                     timeout=60)["items"]
        return all(a["state"] in ("succeeded", "failed", "cancelled") for a in live)
    wait_until(ended, 300, "the tree sync to end", interval=0.5)


def sync_now(d: Daemon) -> int:
    sync_ended(d)
    before: int = relationship(d)["cycles"]
    d.api("POST", f"/v1/relationships/{REL}/sync-now")
    return before + 1


# -- the scale figures ---------------------------------------------------------------------

@dataclass
class Round:
    wall: float
    cpu_cycle: float  # daemon's own CPU seconds during the cycle
    children_cycle: float  # its waited-for children's (zfs, ssh) during the cycle
    latency: dict[str, list[float]]
    #: zfs subcommands the cycle ran (``--count-zfs``), by subcommand.
    commands: dict[str, int]
    cpu_idle_pct: float
    rss_mib: float
    peak_rss_mib: float


@dataclass
class Scale:
    members: int
    initial: float = 0.0
    metrics_bytes: int = 0
    single_metrics_bytes: int = 0
    rounds: list[Round] = field(default_factory=list)


QUERIES = {"relationship": f"/v1/relationships/{REL}",
           "volumes?limit=100": f"/v1/relationships/{REL}/volumes?limit=100"}


def timed_cycle(d: Daemon, members: int, timeout: float
                ) -> tuple[float, float, float, dict[str, list[float]], dict[str, int]]:
    """One sync-now until every member is in sync, the two endpoints asked in turn every
    50 ms meanwhile (their answers also tell when the cycle is done)."""
    latency: dict[str, list[float]] = {k: [] for k in QUERIES}
    sync_ended(d)
    own0, kids0 = cpu_times(d.proc.pid)
    calls0 = len(ZFS_SHIM.calls())
    start = time.perf_counter()
    target = sync_now(d)
    deadline = time.monotonic() + timeout
    while True:
        done = False
        for name, path in QUERIES.items():
            t0 = time.perf_counter()
            answer = d.api("GET", path, timeout=60)
            latency[name].append((time.perf_counter() - t0) * 1000)
            if name == "relationship":
                done = in_sync(answer, members, target)
            time.sleep(0.05)
        if done:
            break
        d.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"cycle {target} not done after {timeout:.0f}s")
    wall = time.perf_counter() - start
    own1, kids1 = cpu_times(d.proc.pid)
    time.sleep(3)  # the cycle's trailing retention
    commands: dict[str, int] = {}
    for sub in ZFS_SHIM.calls()[calls0:]:
        commands[sub] = commands.get(sub, 0) + 1
    return wall, own1 - own0, kids1 - kids0, latency, commands


def scale_run(stack: contextlib.ExitStack, scratch: Path, n: int,
              args: argparse.Namespace) -> Scale:
    master = make_pool(stack, scratch, args.pool_mib, "m")
    slave = make_pool(stack, scratch, args.pool_mib, "s")
    for pool in (master, slave):
        zfs("set", "mountpoint=none", pool)  # members inherit it: never mounted
    zfs("create", f"{master}/tree")
    zfs("create", f"{master}/single")
    say(f"creating {n} members")
    t0 = time.monotonic()
    create_members(f"{master}/tree", n)
    say(f"{n} members created in {time.monotonic() - t0:.0f} s")
    sshd = start_sshd(stack) if args.transport == "ssh" else None
    pools = Pools(master, slave, sshd)
    result = Scale(n)

    # the same config with one single-volume relationship instead of the tree
    with announced_stack() as inner:
        single = start(inner, pools, single_relationship(pools), args.interval,
                       args.keep_logs, f"single-{n}")
        wait_until(lambda: relationship(single.daemon, "single")["slaves"][0]["state"]
                   == "in-sync", 300, "the single volume in sync", interval=0.5)
        result.single_metrics_bytes = single.metrics_size()

    run = start(stack, pools, tree_relationship(pools, f"{slave}/tree"), args.interval,
                args.keep_logs, f"tree-{n}")
    d = run.daemon
    t0 = time.monotonic()
    wait_cycle(d, n + 1, 1, args.initial_timeout)
    result.initial = time.monotonic() - t0
    say(f"{n}: initial full cycle done in {result.initial:.0f} s; a warm-up cycle")
    wait_cycle(d, n + 1, sync_now(d), args.initial_timeout)
    time.sleep(5)  # the cycle's trailing retention
    for r in range(args.rounds):
        say(f"{n} members, round {r + 1}/{args.rounds} (load {load_average()})")
        wall, own, kids, latency, commands = timed_cycle(d, n + 1, args.initial_timeout)
        say(f"cycle {wall:.1f} s, daemon CPU {own:.1f} s, children {kids:.1f} s; "
            f"idle for {args.idle_seconds:.0f} s" + (f"; zfs commands {commands}"
                                                     if commands else ""))
        own0 = cpu_times(d.proc.pid)[0]
        t_idle = time.monotonic()
        time.sleep(args.idle_seconds)
        idle = 100 * (cpu_times(d.proc.pid)[0] - own0) / (time.monotonic() - t_idle)
        rss, peak = memory_mib(d.proc.pid)
        result.rounds.append(Round(wall, own, kids, latency, commands, idle, rss, peak))
        say(f"idle CPU {idle:.2f} %, RSS {rss:.0f} MiB (peak {peak:.0f})")
    result.metrics_bytes = run.metrics_size()
    return result


# -- the changed-data line -------------------------------------------------------------------

@dataclass
class Change:
    cerssd: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)


def change_run(stack: contextlib.ExitStack, scratch: Path, args: argparse.Namespace
               ) -> Change:
    n = args.change_members
    need = n * args.change_mib * (args.rounds + 2) * 3 + 1024
    master = make_pool(stack, scratch, need, "m")
    slave = make_pool(stack, scratch, need, "s")
    zfs("set", "mountpoint=none", slave)
    root = f"{master}/tree"
    zfs("create", root)
    say(f"creating {n} mounted members")
    create_members(root, n)
    for i in range(n):
        write_random(Path(f"/{root}/{member(i)}/seed"), args.change_mib)
    zfs("create", f"{slave}/plain")
    zfs("snapshot", "-r", f"{root}@plain-0")
    say("seeding the plain loop's copy")
    bash(f"zfs send -R {root}@plain-0 | zfs receive -u {slave}/plain/tree")
    sshd = start_sshd(stack) if args.transport == "ssh" else None
    pools = Pools(master, slave, sshd)
    run = start(stack, pools, tree_relationship(pools, f"{slave}/cerssd"),
                "1h", args.keep_logs, f"change-{n}")
    d = run.daemon
    wait_cycle(d, n + 1, 1, args.initial_timeout)
    out = Change()
    prev = 0

    def plain(k: int) -> float:
        nonlocal prev
        start = time.perf_counter()
        zfs("snapshot", "-r", f"{root}@plain-{k}")
        script = "".join(
            f"zfs send -i @plain-{prev} {root}/{member(i)}@plain-{k} | "
            f"zfs receive -u {slave}/plain/tree/{member(i)}\n" for i in range(n))
        bash(script.replace("\n", " && ") + "true")
        prev = k
        return time.perf_counter() - start

    def cerssd() -> float:
        start = time.perf_counter()
        wait_cycle(d, n + 1, sync_now(d), args.initial_timeout)
        return time.perf_counter() - start

    for r in range(1, args.rounds + 1):
        say(f"change round {r}/{args.rounds}: {args.change_mib} MiB into each of {n} "
            f"members (load {load_average()})")
        for i in range(n):
            write_random(Path(f"/{root}/{member(i)}/r{r}"), args.change_mib)
        order = ["cerssd", "plain"] if r % 2 else ["plain", "cerssd"]
        for method in order:
            settle(method)
            if method == "plain":
                out.plain.append(plain(r))
            else:
                out.cerssd.append(cerssd())
            say(f"{method}: {(out.plain if method == 'plain' else out.cerssd)[-1]:.1f} s")
    return out


# -- the report ---------------------------------------------------------------------------

def spread(values: list[float], fmt: str = ".1f") -> str:
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            if values else "-")


def report(scales: list[Scale], change: Change | None, args: argparse.Namespace,
           started: Any, wall: float, loads: list[str]) -> str:
    m = machine()
    lines = [f"### Tree relationships at scale ({started:%Y-%m-%d})", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; `{command_line()}` ({wall:.0f} s)",
             f"- machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, "
             f"{m['zfs_fuse']}; load average before each part: {', '.join(loads)} "
             "(other helpers share the CPUs)",
             f"- config: the demo's (interval {args.interval}, retention {RETENTION}, metrics "
             f"on TCP), one tree relationship `recursive = true`, master -> one slave "
             f"({args.transport}: " + ("a second `kind = \"local\"` server on another pool"
                                       if args.transport == "local"
                                       else "loopback sshd") + "), members flat and "
             "unmounted; after the initial full cycle and one warm-up cycle, nothing "
             f"changed; {args.rounds} cycles per size; median (min-max)", "",
             "| figure | " + " | ".join(f"{s.members:,} members" for s in scales)
             + (" | growth" if len(scales) == 2 else "") + " |",
             "| --- |" + " ---: |" * (len(scales) + (len(scales) == 2))]

    if not scales:  # only the changed-data line was asked for
        del lines[-2:]

    def row(name: str, values: list[list[float]], fmt: str = ".1f") -> None:
        if not scales:
            return
        cells = [spread(v, fmt) for v in values]
        if len(values) == 2:
            low, high = (statistics.median(v) if v else 0.0 for v in values)
            cells.append(f"{high / low:.1f}x" if low else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("initial full cycle s", [[s.initial] for s in scales], ".0f")
    row("cycle wall s (target < 60)", [[r.wall for r in s.rounds] for s in scales])
    row("daemon CPU s per cycle", [[r.cpu_cycle for r in s.rounds] for s in scales])
    row("children CPU s per cycle (zfs)", [[r.children_cycle for r in s.rounds]
                                           for s in scales])
    for q in QUERIES:
        for p in (0.5, 0.99):
            row(f"GET {q} p{int(p * 100)} ms during a cycle"
                + (" (target < 100)" if p == 0.99 else ""),
                [[pct(r.latency[q], p) for r in s.rounds] for s in scales])
    if args.count_zfs:
        subs = sorted({k for s in scales for r in s.rounds for k in r.commands})
        row("zfs commands per cycle (shim)", [[sum(r.commands.values()) for r in s.rounds]
                                              for s in scales], ".0f")
        for sub in subs:
            row(f"- zfs {sub}", [[r.commands.get(sub, 0) for r in s.rounds]
                                 for s in scales], ".0f")
    row(f"daemon CPU % idle over {args.idle_seconds:.0f} s (target < 2)",
        [[r.cpu_idle_pct for r in s.rounds] for s in scales], ".2f")
    row("RSS MiB after idle (target < 250)", [[r.rss_mib for r in s.rounds] for s in scales])
    row("peak RSS MiB", [[r.peak_rss_mib for r in s.rounds] for s in scales])
    row("/metrics bytes, tree", [[s.metrics_bytes] for s in scales], ".0f")
    row("/metrics bytes, one single volume instead", [[s.single_metrics_bytes]
                                                      for s in scales], ".0f")
    if change is not None:
        ratios = [p / c for p, c in zip(change.plain, change.cerssd, strict=True)]
        lines += ["", f"{args.change_members} members (mounted), {args.change_mib} MiB of new "
                  "random data in each per round; one cerssd cycle vs a serial loop of "
                  "`zfs send -i PREV NEW | zfs receive -u` per member (after one `zfs "
                  "snapshot -r`), same run, order alternating per round:", "",
                  "| method | wall s, median (min-max) |", "| --- | ---: |",
                  f"| cerssd cycle | {spread(change.cerssd)} |",
                  f"| serial send/receive loop | {spread(change.plain)} |",
                  f"| ratio loop / cerssd | {spread(ratios, '.2f')} |"]
    return "\n".join(lines) + "\n"


def benchmark(args: argparse.Namespace) -> str:
    started, clock = utc_now(), time.monotonic()
    scales: list[Scale] = []
    change = None
    loads: list[str] = []
    shim_stack = contextlib.ExitStack()
    if args.count_zfs:
        ZFS_SHIM.install(shim_stack)
    for n in args.members:
        with announced_stack() as stack:
            scratch = scratch_dir(stack, args.workdir, 2 * args.pool_mib * MIB)
            ensure_zfs_fuse(stack, scratch)
            loads.append(f"{load_average()} ({n})")
            say(f"load average {loads[-1]}")
            scales.append(scale_run(stack, scratch, n, args))
    if args.change_members:
        with announced_stack() as stack:
            scratch = scratch_dir(stack, args.workdir, 4096 * MIB)
            ensure_zfs_fuse(stack, scratch)
            loads.append(f"{load_average()} (change)")
            change = change_run(stack, scratch, args)
    shim_stack.close()
    return report(scales, change, args, started, time.monotonic() - clock, loads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/tree_scale.py", description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--interval", default="5m", help="the relationship's interval (demo: 5m)")
    p.add_argument("--transport", choices=["local", "ssh"], default="local")
    p.add_argument("--change-members", type=int, default=200)
    p.add_argument("--change-mib", type=int, default=1)
    p.add_argument("--pool-mib", type=int, default=2048)
    p.add_argument("--initial-timeout", type=float, default=3600.0)
    p.add_argument("--count-zfs", action="store_true",
                   help="count the zfs commands of each cycle through a logging shim "
                   "(zfs_command; adds a shell per command, so not for the timings)")
    p.add_argument("--keep-logs", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    return bench_main("bench/tree_scale.py", lambda: benchmark(args))


if __name__ == "__main__":
    raise SystemExit(main())
