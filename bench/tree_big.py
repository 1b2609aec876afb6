#!/usr/bin/env python3
"""A big volume in a tree: one member with 1 GiB of new data, cerssd vs the plain pipeline.

Issue 15 asks that trees make nothing slower for big volumes: one cycle of a tree
relationship in which one member received ``--big-mib`` MiB (default 1024) of new random
data since the last cycle, and ``--members`` (default 20) other members nothing, must move
that member at least as fast as the plain pipeline an operator would type::

    zfs send -i BIG@PREV BIG@NEW | ssh -c CIPHER root@127.0.0.1 zfs receive -u TARGET

On zfs-fuse on this host, master -> one slave over the bench's loopback sshd (the slave is
a ``kind = "ssh"`` server; the pools are both local, as the demo's standbys are), with the
demo's relationship settings otherwise (etc/cerssd.toml's retention, ``max_parallel`` at
its default, the cipher both methods use: ``--cipher``, default cerssd's own). Each round
writes the data once into ``tree/big``; then both methods, in an order that rotates every
round, each send exactly that round's data from their own previous snapshot:

* **cerssd**: ``POST .../sync-now`` until the tree summary says every member is in sync on
  the slave (polled every ``--poll`` s): the cycle's snapshot of all members, then the
  steady-state sync (``tree_steady``: one ``send -i | receive -u`` per member, the big one
  and the unchanged ones, ``max_parallel`` at once). The bench checks that the member's
  new snapshot arrived with the master's guid and that no member needed a ``replicate``
  activity of its own (the steady path was the one timed);
* **plain**: ``zfs snapshot BIG@plain-N`` (timed separately), then the pipeline above
  into the plain copy ``SLAVE/plain/big``, a new SSH connection each time as a script
  makes; the received guid is checked.

``--full-rounds`` (default the same as ``--rounds``; 0 leaves it out) adds the first full
send: a new member ``tree/newN`` with ``--big-mib`` MiB appears between cycles; cerssd's
next cycle gives it its own ``replicate`` activity (the first full send, while the others
go the steady path), the plain method a ``zfs send NEW@plain | ssh ... zfs receive -u``.

Every SSH session runs root's login shell, and bash reads ~/.bashrc for sshd: here that
runs ``pyenv init`` (~0.2 s, 0.17 CPU-s per session). The plain pipeline opens one session
per cycle, cerssd one per member (22 here); ``--lean-shell`` makes the bench sshd's
sessions skip it (``SetEnv SHLVL=1``), for both methods, as on a node with a lean root
shell.

Both start from quiet disks (``quiesce``: zfs-fuse writes a receive out after it
returned, and the host its pool files' dirty pages ~30 s later still). Ratios are per
round, plain / cerssd (above 1.0: cerssd is faster), median (min-max), against the
pipeline alone and against snapshot + pipeline (cerssd's cycle takes its snapshot too).

Run as root from the repository::

    .venv/bin/python bench/tree_big.py --rounds 6 --full-rounds 4 > /tmp/big.md
    .venv/bin/python bench/tree_big.py --rounds 6 --full-rounds 4 --lean-shell
    .venv/bin/python bench/tree_big.py --big-mib 64 --rounds 1 --full-rounds 1  # smoke
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MIB,
    BenchError,
    Daemon,
    Sshd,
    announced_stack,
    bash,
    bench_main,
    command_line,
    ensure_zfs_fuse,
    guid,
    load_average,
    machine,
    make_pool,
    say,
    scratch_dir,
    settle,
    snapshots_of,
    start_sshd,
    utc_now,
    write_random,
    zfs,
)
from tree_scale import (
    RETENTION,
    Pools,
    create_members,
    in_sync,
    member,
    relationship,
    start,
    sync_ended,
    sync_now,
    tree_relationship,
)

CIPHER = "aes128-gcm@openssh.com"  # cerssd's default for ssh servers


# -- the two methods -----------------------------------------------------------------------

def ssh_argv(sshd: Sshd, cipher: str, remote: list[str]) -> list[str]:
    return ["ssh", "-c", cipher, "-p", str(sshd.port), "-i", str(sshd.client_key),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={sshd.known_hosts}", "root@127.0.0.1",
            shlex.join(remote)]


def plain(sshd: Sshd, cipher: str, volume: str, label: str, base: str | None,
          target: str) -> tuple[float, float]:
    """``zfs snapshot``, then ``zfs send [-i] | ssh | zfs receive -u``: (snapshot s,
    pipeline s); checks the received guid."""
    t0 = time.perf_counter()
    zfs("snapshot", f"{volume}@{label}")
    t1 = time.perf_counter()
    send = ["zfs", "send", *(["-i", f"@{base}"] if base else []), f"{volume}@{label}"]
    bash(f"{shlex.join(send)} | "
         f"{shlex.join(ssh_argv(sshd, cipher, ['zfs', 'receive', '-u', target]))}")
    t2 = time.perf_counter()
    if guid(f"{target}@{label}") != guid(f"{volume}@{label}"):
        raise BenchError(f"plain: {target}@{label} is not {volume}@{label}")
    return t1 - t0, t2 - t1


def replicates(d: Daemon) -> int:
    """How many ``replicate`` activities the tree has had (a member's own transfer)."""
    items = d.api("GET", "/v1/activities?kind=replicate&relationship=tree&limit=1000",
                  timeout=60)["items"]
    return len(items)


def cerssd(d: Daemon, members: int, poll: float, timeout: float = 3600.0) -> float:
    """One ``sync-now`` until every member is in sync on the slave; wall seconds."""
    sync_ended(d)
    start = time.perf_counter()
    target = sync_now(d)
    deadline = time.monotonic() + timeout
    while True:
        r = relationship(d)
        if in_sync(r, members, target):
            return time.perf_counter() - start
        if r["tree"] and r["tree"]["slaves"]["lab1"].get("failing"):
            raise BenchError(f"members failing: {r['tree']['failing'][:3]}")
        if time.monotonic() > deadline:
            raise BenchError(f"cycle {target} not done after {timeout:.0f} s")
        d.check_alive()
        time.sleep(poll)


def check_cerssd(volume: str, target: str) -> None:
    """The member's newest cerssd snapshot is on the slave with the master's guid."""
    ours = [s for s in snapshots_of(volume) if "@plain" not in s]
    label = ours[-1].partition("@")[2]
    if guid(f"{target}@{label}") != guid(ours[-1]):
        raise BenchError(f"cerssd: {target}@{label} is not {ours[-1]}")


def quiesce(pools: Pools, what: str) -> None:
    """Both pools' data on disk before a method starts: a snapshot of each pool's root
    (outside the tree) ends zfs-fuse's open transaction group, ``sync`` writes the host's
    dirty pages of the pool files (the kernel would do it ~30 s later, in the middle of
    the next measurement), then ``settle`` waits for the disks to quieten."""
    for pool in (pools.master, pools.slave):
        zfs("snapshot", f"{pool}@quiesce")
        zfs("destroy", f"{pool}@quiesce")
    bash("sync")
    settle(what)


# -- the run ---------------------------------------------------------------------------------

@dataclass
class Case:
    cerssd: list[float] = field(default_factory=list)
    pipeline: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)


def benchmark(args: argparse.Namespace) -> str:
    started, clock = utc_now(), time.monotonic()
    load_before = load_average()
    say(f"load average {load_before}")
    steady, full = Case(), Case()
    with announced_stack() as stack:
        size = args.big_mib * (args.rounds + args.full_rounds + 1) + 1024
        scratch = scratch_dir(stack, args.workdir, 3 * size * MIB)
        ensure_zfs_fuse(stack, scratch)
        master = make_pool(stack, scratch, size, "m")
        slave = make_pool(stack, scratch, 2 * size, "s")
        zfs("set", "mountpoint=none", slave)  # the replicas are received unmounted
        root = f"{master}/tree"
        big = f"{root}/big"
        zfs("create", root)
        if args.members:
            # one at a time: concurrent mounting creates in one parent wedged zfs-fuse
            # on this machine's kernel (2026-12-07), twice
            create_members(root, args.members, parallel=1)
        for i in range(args.members):
            write_random(Path(f"/{root}/{member(i)}/seed"), 1)
        zfs("create", big)
        write_random(Path(f"/{big}/seed"), 1)
        members = args.members + 2  # the root, the unchanged members, big
        zfs("create", f"{slave}/plain")
        zfs("snapshot", f"{big}@plain-0")
        bash(f"zfs send {big}@plain-0 | zfs receive -u {slave}/plain/big")
        # SHLVL=1 in the session's environment: bash then takes itself for a nested
        # shell and leaves ~/.bashrc alone (which it otherwise reads for sshd)
        sshd = start_sshd(stack, extra="SetEnv SHLVL=1\n" if args.lean_shell else "")
        pools = Pools(master, slave, sshd)
        run = start(stack, pools, tree_relationship(pools, f"{slave}/cerssd"),
                    args.interval, args.keep_logs, "big")
        d = run.daemon
        say("the initial full cycle and one steady cycle (untimed)")
        cerssd(d, members, 0.5)
        cerssd(d, members, 0.5)
        sync_ended(d)

        for r in range(1, args.rounds + 1):
            say(f"steady round {r}/{args.rounds}: {args.big_mib} MiB into {big} "
                f"(load {load_average()})")
            write_random(Path(f"/{big}/r{r}"), args.big_mib)
            steady.loads.append(load_average())
            own = replicates(d)
            for method in (["cerssd", "plain"] if r % 2 else ["plain", "cerssd"]):
                quiesce(pools, method)
                if method == "plain":
                    snap, pipe = plain(sshd, args.cipher, big, f"plain-{r}",
                                       f"plain-{r - 1}", f"{slave}/plain/big")
                    steady.snapshot.append(snap)
                    steady.pipeline.append(pipe)
                    say(f"plain: snapshot {snap:.2f} s, pipeline {pipe:.2f} s")
                else:
                    steady.cerssd.append(cerssd(d, members, args.poll))
                    check_cerssd(big, f"{slave}/cerssd/big")
                    say(f"cerssd: {steady.cerssd[-1]:.2f} s")
                    sync_ended(d)
            if replicates(d) != own:
                raise BenchError("a member needed a transfer of its own in a steady "
                                 "round: the steady path was not the one timed")

        for r in range(1, args.full_rounds + 1):
            new = f"{root}/new{r}"
            say(f"full round {r}/{args.full_rounds}: a new member {new} with "
                f"{args.big_mib} MiB (load {load_average()})")
            zfs("create", new)
            write_random(Path(f"/{new}/data"), args.big_mib)
            members += 1
            full.loads.append(load_average())
            for method in (["plain", "cerssd"] if r % 2 else ["cerssd", "plain"]):
                quiesce(pools, method)
                if method == "plain":
                    snap, pipe = plain(sshd, args.cipher, new, "plain", None,
                                       f"{slave}/plain/new{r}")
                    full.snapshot.append(snap)
                    full.pipeline.append(pipe)
                    say(f"plain: snapshot {snap:.2f} s, pipeline {pipe:.2f} s")
                else:
                    full.cerssd.append(cerssd(d, members, args.poll))
                    check_cerssd(new, f"{slave}/cerssd/new{r}")
                    say(f"cerssd: {full.cerssd[-1]:.2f} s")
                    sync_ended(d)
        d.check_alive()
    return report(steady, full, args, started, time.monotonic() - clock, load_before)


# -- the report ----------------------------------------------------------------------------

def spread(values: list[float], fmt: str = ".2f") -> str:
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            if values else "-")


def case_lines(name: str, c: Case, mib: int) -> list[str]:
    if not c.cerssd:
        return []
    ratio = [p / x for p, x in zip(c.pipeline, c.cerssd, strict=True)]
    with_snap = [(p + s) / x for p, s, x in zip(c.pipeline, c.snapshot, c.cerssd,
                                                strict=True)]
    mb = mib * MIB / 1e6

    def rate(values: list[float]) -> str:
        return f"{mb / statistics.median(values):.0f}"

    return [f"| {name}: cerssd cycle | {spread(c.cerssd)} | {rate(c.cerssd)} |",
            f"| {name}: plain pipeline | {spread(c.pipeline)} | {rate(c.pipeline)} |",
            f"| {name}: plain snapshot | {spread(c.snapshot)} | |",
            f"| {name}: **plain pipeline / cerssd** | **{spread(ratio)}** | |",
            f"| {name}: (snapshot + pipeline) / cerssd | {spread(with_snap)} | |"]


def report(steady: Case, full: Case, args: argparse.Namespace, started: Any, wall: float,
           load_before: str) -> str:
    m = machine()
    loads = ", ".join(steady.loads + full.loads)
    lines = [f"### A {args.big_mib} MiB member in a tree of {args.members + 2}: cerssd vs "
             f"`zfs send | ssh | zfs receive` ({started:%Y-%m-%d})", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; `{command_line()}` ({wall:.0f} s)",
             f"- machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, {m['ssh']}, "
             f"{m['zfs_fuse']}; load average before: {load_before}; at each round's "
             f"start: {loads}",
             f"- tree `MASTER/tree` (`recursive = true`): the root, {args.members} members "
             f"with nothing new, `big`; master -> one slave over loopback sshd "
             f"(`kind = \"ssh\"`, cipher {args.cipher} for both methods"
             + ("; sessions skip root's ~/.bashrc: `--lean-shell`" if args.lean_shell
                else "; root's ~/.bashrc as it is") + "), retention "
             f"{RETENTION}, `max_parallel` default; {args.big_mib} MiB of new random data "
             f"per round; order rotating; seconds and ratios per round, median (min-max); "
             "MB/s = 10^6 bytes of data per second of the median", "",
             "| figure | seconds / ratio | MB/s |", "| --- | ---: | ---: |",
             *case_lines("steady (incremental)", steady, args.big_mib),
             *case_lines("new member (full)", full, args.big_mib), "",
             f"- steady seconds per round: cerssd {', '.join(f'{x:.2f}' for x in steady.cerssd)};"
             f" pipeline {', '.join(f'{x:.2f}' for x in steady.pipeline)}"]
    if full.cerssd:
        lines.append(f"- full seconds per round: cerssd "
                     f"{', '.join(f'{x:.2f}' for x in full.cerssd)}; pipeline "
                     f"{', '.join(f'{x:.2f}' for x in full.pipeline)}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/tree_big.py", description=__doc__.splitlines()[0])
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--members", type=int, default=20, help="unchanged members besides big")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--full-rounds", type=int, default=None,
                   help="rounds of the first full send of a new member (default: --rounds)")
    p.add_argument("--cipher", default=CIPHER)
    p.add_argument("--interval", default="1h",
                   help="the relationship's interval: long, so no cycle of its own starts "
                   "during a plain run")
    p.add_argument("--poll", type=float, default=0.1,
                   help="seconds between GETs of the relationship while a cycle runs")
    p.add_argument("--lean-shell", action="store_true",
                   help="the bench sshd's sessions skip root's ~/.bashrc (SetEnv SHLVL=1), "
                   "as on a node whose root login shell starts in a few ms; here it runs "
                   "pyenv init, ~0.2 s per SSH session, which cerssd pays once per member")
    p.add_argument("--keep-logs", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args(argv)
    if args.full_rounds is None:
        args.full_rounds = args.rounds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    return bench_main("bench/tree_big.py", lambda: benchmark(args))


if __name__ == "__main__":
    raise SystemExit(main())
