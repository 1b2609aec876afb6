#!/usr/bin/env python3
"""Tree cycle vs peers: one cycle of a tree of volumes, cerssd vs syncoid vs zfs-autobackup.

Issue 15's first benchmark: a tree of ``--members`` volumes (default 200) on a master
pool, each with ``--change-mib`` MiB (default 1) of new random data since the last cycle,
replicated master -> one slave over SSH; the wall time of one run of each method on the
same tree, in the same run, rounds interleaved (the order rotates every round):

* **syncoid** (Debian's ``sanoid`` package): ``syncoid --recursive master/tree
  root@127.0.0.1:slave/syncoid``, pushing, with its defaults (it takes its own snapshot of
  every member, and uses pv, lzop and mbuffer, which the package depends on);
* **zfs-autobackup** (PyPI): the tree selected by its user property
  (``autobackup:bench=true`` set on ``master/tree``, inherited by every member),
  ``zfs-autobackup --ssh-target root@127.0.0.1 --strip-path 1 bench slave/zab``, pushing,
  with its defaults;
* **cerssd**: one cycle of a tree relationship ``master/tree`` (``recursive = true``) ->
  ``slave/cerssd``, the daemon running in the guest like the peers (:mod:`guest_cerssd`:
  master ``kind = "local"``, slave ``kind = "ssh"`` to root@127.0.0.1), triggered with
  ``sync-now`` and timed until every member is in sync on the slave (:class:`Cerssd`);
  ``--peers-only`` leaves it out.

Each method replicates into its own slave tree; the initial full copies are made untimed
before the rounds. After every timed run the bench checks that every member's newest
snapshot of that method arrived (same guid on the slave), so a method that skipped a
member cannot look fast.

Where it runs: neither peer works against zfs-fuse 0.7 (``zfs get -t`` is refused; see
bench/RESULTS.md), so both pools live in the OpenZFS guest of bench/guest.py, and the peers
run in the guest, reaching the slave through the guest's own sshd on 127.0.0.1: the
master -> slave path is SSH over loopback, as the issue asks, inside one machine. The
guest runs under QEMU (software emulation where KVM does not work), so absolute times are
slower than on hardware; the ratios compare methods on the same guest.

Also, ``--big-mib`` (default 1024) MiB of random data in one volume ``master/big``: the
plain pipeline ``zfs send master/big@b1 | ssh root@127.0.0.1 zfs receive slave/plain-big``
in the guest, vs cerssd's single-volume replication (issue 15: >= 1.0x the pipeline), full
sends into a fresh target, rounds interleaved.

Run as root from the repository::

    .venv/bin/python bench/tree_cycle.py --members 20 --rounds 3 --big-mib 256
    .venv/bin/python bench/tree_cycle.py --peers-only --members 20 --rounds 3
    .venv/bin/python bench/tree_cycle.py --peers-only --rounds 3      # 200 members
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guest_cerssd
from common import (
    BenchError,
    announced_stack,
    bench_main,
    command_line,
    load_average,
    machine,
    say,
    utc_now,
)
from guest import Guest, attach, boot, install_debs, install_python, loopback_ssh

MASTER_POOL = "master"
SLAVE_POOL = "slave"
TREE = f"{MASTER_POOL}/tree"
ZAB_DIR = "/opt/zfs-autobackup"
ZAB_VERSION = "3.3"
ZAB_NAME = "bench"  # zfs-autobackup's backup name: property autobackup:bench
CERSSD_RELATIONSHIP = "bench"


@dataclass(frozen=True)
class Env:
    """The guest and the tree every method replicates."""

    guest: Guest
    members: int

    @property
    def datasets(self) -> list[str]:
        """The tree's datasets: its root and every member volume."""
        return [TREE, *(member_name(i) for i in range(self.members))]


def member_name(i: int) -> str:
    return f"{TREE}/v{i:04d}"


# -- the methods -------------------------------------------------------------------------

class Method:
    """One way to bring ``master/tree`` up to date on the slave, into ``slave_root``."""

    name = ""
    snapshot_prefix = ""  # the method's own snapshots on the master start so

    def __init__(self, env: Env) -> None:
        self.env = env
        self.slave_root = f"{SLAVE_POOL}/{self.name}"

    def seed(self) -> None:
        """Untimed: the initial full copy of every member into ``slave_root``."""
        self.run()

    def run(self) -> None:
        """Timed: one incremental run over the whole tree."""
        raise NotImplementedError

    def target_of(self, dataset: str) -> str:
        """Where ``dataset`` of the master tree lands on the slave."""
        return self.slave_root + dataset.removeprefix(TREE)


class Syncoid(Method):
    name = "syncoid"
    snapshot_prefix = "syncoid_"

    def run(self) -> None:
        self.env.guest.sh(f"syncoid --quiet --recursive {TREE} "
                          f"root@127.0.0.1:{self.slave_root}")


class ZfsAutobackup(Method):
    name = "zab"
    snapshot_prefix = f"{ZAB_NAME}-"

    def seed(self) -> None:
        self.env.guest.sh(f"zfs set autobackup:{ZAB_NAME}=true {TREE} && "
                          f"zfs create -p {self.slave_root}")
        self.run()

    def run(self) -> None:
        # zfs-autobackup names its snapshots to the second; two runs in one second would
        # collide, which a real schedule never does
        time.sleep(1.0)
        self.env.guest.sh(f"PYTHONPATH={ZAB_DIR} python3 -c {shlex.quote(ZAB_CLI)} "
                          f"--ssh-target root@127.0.0.1 --strip-path 1 --no-progress "
                          # the slave pool is in the same guest and its replicas receive
                          # autobackup:bench: without this, zab also backs up its own
                          # replicas (slave/zab/tree -> slave/zab/zab/tree ...) every run
                          f"--exclude-received "
                          f"{ZAB_NAME} {self.slave_root}")


    def target_of(self, dataset: str) -> str:
        # --strip-path 1 drops the pool's name only: master/tree/v0001 -> ROOT/tree/v0001
        return f"{self.slave_root}/{dataset.split('/', 1)[1]}"


ZAB_CLI = "import sys; from zfs_autobackup.ZfsAutobackup import cli; sys.exit(cli())"


class Cerssd(Method):
    """One cycle of a cerssd tree relationship, the daemon running in the guest.

    Like the peers, cerssd runs in the guest (:mod:`guest_cerssd`): master ``kind =
    "local"``, slave ``kind = "ssh"`` to root@127.0.0.1 through the guest's sshd. The
    relationship ``bench`` is ``volume = "master/tree"``, ``recursive = true``, one slave
    with target root ``slave/cerssd``, ``max_parallel`` as configured (default: cerssd's
    own), and an interval of a day, so no cycle starts behind the bench's back.

    * :meth:`seed` starts the daemon; a new relationship's first cycle starts at once
      (full copies), waited for until every member is in sync;
    * :meth:`run` posts ``sync-now`` and waits, in the guest, until the relationship has
      counted one more cycle and its tree summary has every member in sync on the slave
      and none behind, sending or failing (a failing member stops the bench).
    """

    name = "cerssd"
    snapshot_prefix = f"cerssd-{CERSSD_RELATIONSHIP}-"

    def __init__(self, env: Env, max_parallel: int | None = None) -> None:
        super().__init__(env)
        self.max_parallel = max_parallel
        self.last: dict[str, Any] = {}

    def seed(self) -> None:
        guest_cerssd.install(self.env.guest)
        extra = "" if self.max_parallel is None else f"max_parallel = {self.max_parallel}\n"
        guest_cerssd.start(self.env.guest, (
            f"[relationships.{CERSSD_RELATIONSHIP}]\nvolume = \"{TREE}\"\n"
            f"recursive = true\ninterval = \"24h\"\n{extra}"
            f"slaves = [{{ server = \"standby\", target_volume = \"{self.slave_root}\" }}]\n"))
        self._cycle(trigger=False)

    def run(self) -> None:
        self._cycle(trigger=True)

    def _cycle(self, *, trigger: bool) -> None:
        args = ["cycle", CERSSD_RELATIONSHIP, "standby", "7200"]
        self.last = guest_cerssd.client(self.env.guest, *args,
                                        *([] if trigger else ["--no-trigger"]))
        if self.last["tree"]["members"] != len(self.env.datasets):
            raise BenchError(f"cerssd's tree has {self.last['tree']['members']} members, "
                             f"expected {len(self.env.datasets)}")


# -- the environment ---------------------------------------------------------------------

def install_peers(guest: Guest) -> None:
    """syncoid from Debian's sanoid package, zfs-autobackup from PyPI, into the guest."""
    install_debs(guest, ["sanoid", "python3", "acct"],
                 mask_units=["sanoid.timer", "sanoid-prune.service", "acct.service"])
    install_python(guest, [f"zfs-autobackup=={ZAB_VERSION}"], ZAB_DIR)
    say("guest: " + guest.sh(
        f"syncoid --version 2>&1 | head -n1; PYTHONPATH={ZAB_DIR} python3 -c "
        f"{shlex.quote(ZAB_CLI)} --version 2>&1 | head -n1").stdout.replace("\n", "; "))


def reset(guest: Guest) -> None:
    """An attached guest as a fresh one: no cerssd daemon, no pools, no daemon state."""
    guest.sh(f"set -e; if test -e {guest_cerssd.PIDFILE}; then "
             f"kill -9 $(cat {guest_cerssd.PIDFILE}) 2>/dev/null || true; fi; "
             f"for p in {MASTER_POOL} {SLAVE_POOL}; do "
             "if zpool list $p >/dev/null 2>&1; then zpool destroy -f $p; fi; done; "
             f"rm -rf {guest_cerssd.STATE_DIR} {guest_cerssd.PIDFILE}")


def build_tree(guest: Guest, members: int, big_mib: int) -> None:
    say(f"creating pools and {members} member volumes in the guest")
    start = time.monotonic()
    guest.sh(f"set -e; zpool create -f {MASTER_POOL} {guest.disks[0]}; "
             f"zpool create -f {SLAVE_POOL} {guest.disks[1]}; zfs create {TREE}; "
             f"for i in $(seq -f %04g 0 {members - 1}); do zfs create {TREE}/v$i; done")
    say(f"created in {time.monotonic() - start:.0f} s")
    if big_mib:
        say(f"writing {big_mib} MiB of random data into {MASTER_POOL}/big")
        guest.sh(f"set -e; zfs create {MASTER_POOL}/big; "
                 f"head -c {big_mib}M /dev/urandom > /{MASTER_POOL}/big/data; "
                 f"zfs snapshot {MASTER_POOL}/big@b1")


def write_changes(env: Env, round_no: int, mib: int) -> None:
    """``mib`` MiB of new random data in every member, one new file each (untimed)."""
    start = time.monotonic()
    env.guest.sh(f"set -e; for d in /{TREE}/v*; do "
                 f"head -c {mib}M /dev/urandom > $d/round{round_no}; done; sync")
    say(f"wrote {mib} MiB into each of {env.members} members in "
        f"{time.monotonic() - start:.0f} s")


def quiesce(guest: Guest) -> None:
    """Everything written so far on disk, so a run does not pay for the previous one."""
    guest.sh(f"sync; zpool sync {MASTER_POOL} {SLAVE_POOL}")


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Env]:
    with announced_stack() as stack:
        # master: the tree's data for every round plus the big volume; slave: a copy each
        per_method = (args.members + 1) * (args.rounds + 1) * args.change_mib
        disk = max(4096, 2 * args.big_mib + 3 * per_method + 2048)
        if args.attach:
            guest = attach(args.attach)
            reset(guest)
        else:
            guest = boot(stack, disk_mib=disk, accel=args.accel)
        loopback_ssh(guest)
        install_peers(guest)
        build_tree(guest, args.members, args.big_mib)
        yield Env(guest, args.members)


# -- checks ------------------------------------------------------------------------------

def snapshots(guest: Guest, root: str) -> dict[str, list[tuple[str, str]]]:
    """dataset -> [(snapshot label, guid)], oldest first, from one listing of ``root``."""
    out = guest.sh(f"zfs list -H -p -t snapshot -o name,guid -s createtxg -r {root}").stdout
    found: dict[str, list[tuple[str, str]]] = {}
    for line in out.splitlines():
        name, snap_guid = line.split("\t")
        dataset, _, label = name.partition("@")
        found.setdefault(dataset, []).append((label, snap_guid))
    return found


def check_arrived(env: Env, method: Method) -> None:
    """Every member's newest snapshot of ``method`` is on the slave, with the same guid."""
    master = snapshots(env.guest, TREE)
    slave = snapshots(env.guest, method.slave_root)
    missing = []
    for dataset in env.datasets:
        own = [s for s in master.get(dataset, []) if s[0].startswith(method.snapshot_prefix)]
        if not own:
            missing.append(f"{dataset} (no {method.name} snapshot on the master)")
            continue
        if own[-1] not in slave.get(method.target_of(dataset), []):
            missing.append(f"{dataset}@{own[-1][0]}")
    if missing:
        raise BenchError(f"{method.name}: {len(missing)} of {len(env.datasets)} datasets "
                         f"lack their newest snapshot on the slave, e.g. {missing[:3]}")


# -- what each method runs -----------------------------------------------------------

def traced_run(env: Env, method: Method) -> tuple[float, dict[str, int]]:
    """One more (untimed) run under BSD process accounting: processes started, by name.

    Both ends are in the guest, so this counts the master's and the slave's commands
    (``zfs`` on either side, ``ssh`` clients, the slave's shells and sshd sessions) and
    the helpers of the pipelines; divided by the datasets it tells what a method pays
    per member. Returns the run's wall seconds (accounting costs one record per process
    exit) and the counts.
    """
    guest = env.guest
    guest.sh("rm -f /var/tmp/pacct; touch /var/tmp/pacct; accton /var/tmp/pacct")
    try:
        start = time.monotonic()
        method.run()
        seconds = time.monotonic() - start
    finally:
        guest.sh("accton off")
    check_arrived(env, method)
    out = guest.sh("lastcomm -f /var/tmp/pacct | awk '{print $1}' | sort | uniq -c").stdout
    counts = {}
    for line in out.splitlines():
        number, name = line.split()
        counts[name] = int(number)
    return seconds, counts


# -- the big volume ----------------------------------------------------------------------

def plain_big(env: Env, round_no: int) -> float:
    """``zfs send master/big@b1 | ssh root@127.0.0.1 zfs receive`` into a fresh target."""
    target = f"{SLAVE_POOL}/plain-big"
    quiesce(env.guest)
    start = time.monotonic()
    env.guest.sh(f"set -o pipefail; zfs send {MASTER_POOL}/big@b1 | "
                 f"ssh -o BatchMode=yes root@127.0.0.1 zfs receive -u {target}")
    seconds = time.monotonic() - start
    same = env.guest.sh(f"zfs get -H -p -o value guid {MASTER_POOL}/big@b1 {target}@b1")
    if len(set(same.stdout.split())) != 1:
        raise BenchError(f"{target}@b1 does not have the guid of {MASTER_POOL}/big@b1")
    env.guest.sh(f"zfs destroy -r {target}")
    return seconds


def cerssd_big(env: Env, round_no: int) -> float:
    """cerssd's single-volume replication of ``master/big@b1`` into a fresh target on the
    slave (the daemon of :class:`Cerssd`, in the guest): from the POST to the activity's
    end, waited for in the guest; the plan must be full, the guid the source's."""
    target = f"{SLAVE_POOL}/cerssd-big"
    quiesce(env.guest)
    body = {"snapshot": f"{MASTER_POOL}/big@b1", "source": "local",
            "destination": "standby", "target_volume": target}
    start = time.monotonic()
    record = guest_cerssd.client(env.guest, "replicate", json.dumps(body), "3600")
    seconds = time.monotonic() - start
    status = record.get("status") or {}
    if record["state"] != "succeeded" or record["plan"] != "full":
        raise BenchError(f"cerssd replication of {MASTER_POOL}/big@b1 ended "
                         f"{record['state']} (plan {record['plan']}): {status.get('message')}")
    same = env.guest.sh(f"zfs get -H -p -o value guid {MASTER_POOL}/big@b1 {target}@b1")
    if len(set(same.stdout.split())) != 1:
        raise BenchError(f"{target}@b1 does not have the guid of {MASTER_POOL}/big@b1")
    # cerssd holds the snapshots it keeps as bases; released, as an operator would
    env.guest.sh(f"for s in $(zfs list -H -o name -t snapshot -r {target}); do "
                 "for t in $(zfs holds -H $s | cut -f2); do zfs release $t $s; done; done; "
                 f"zfs destroy -r {target}; "
                 # and the bookmark it made of the sent snapshot: the next round's full
                 # send of the same snapshot fails on "bookmark exists" otherwise
                 f"for b in $(zfs list -H -o name -t bookmark {MASTER_POOL}/big); do "
                 "zfs destroy $b; done")
    return seconds


# -- the rounds --------------------------------------------------------------------------

@dataclass
class Results:
    tree: dict[str, list[float]] = field(default_factory=dict)
    big: dict[str, list[float]] = field(default_factory=dict)
    seed: dict[str, float] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    processes: dict[str, dict[str, int]] = field(default_factory=dict)


def rotated(items: list[str], round_no: int) -> list[str]:
    k = round_no % len(items)
    return items[k:] + items[:k]


def benchmark(args: argparse.Namespace) -> str:
    started, clock = utc_now(), time.monotonic()
    results = Results()
    results.loads.append(load_average())
    with environment(args) as env:
        chosen: list[Method] = [Syncoid(env)]
        if not args.without_zab:
            chosen.append(ZfsAutobackup(env))
        if not args.peers_only:
            chosen.append(Cerssd(env, args.max_parallel))
        methods = {m.name: m for m in chosen}
        for name, method in methods.items():
            say(f"seeding {name} (full copies, untimed)")
            start = time.monotonic()
            method.seed()
            check_arrived(env, method)
            results.seed[name] = time.monotonic() - start
            say(f"{name} seeded in {results.seed[name]:.0f} s")
        for round_no in range(args.rounds):
            write_changes(env, round_no, args.change_mib)
            for name in rotated(list(methods), round_no):
                quiesce(env.guest)
                start = time.monotonic()
                methods[name].run()
                seconds = time.monotonic() - start
                check_arrived(env, methods[name])
                results.tree.setdefault(name, []).append(seconds)
                say(f"round {round_no + 1}/{args.rounds}: {name} {seconds:.1f} s "
                    f"(load {load_average()})")
            results.loads.append(load_average())
        if args.trace:
            write_changes(env, args.rounds, args.change_mib)
            for name, method in methods.items():
                seconds, results.processes[name] = traced_run(env, method)
                say(f"{name} (traced run, {seconds:.1f} s) started "
                    f"{sum(results.processes[name].values())} processes")
        if args.big_mib:
            big = {"plain": plain_big} | ({} if args.peers_only else {"cerssd": cerssd_big})
            for round_no in range(args.rounds):
                for name in rotated(list(big), round_no):
                    seconds = big[name](env, round_no)
                    results.big.setdefault(name, []).append(seconds)
                    say(f"big round {round_no + 1}/{args.rounds}: {name} {seconds:.1f} s")
            results.loads.append(load_average())
    return report(results, args, started, time.monotonic() - clock, env)


# -- the report --------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def ratio(slow: list[float], fast: list[float]) -> str:
    """slow/fast per round (same round, so the same noise), median (min-max)."""
    per_round = [s / f for s, f in zip(slow, fast, strict=True)]
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def report(results: Results, args: argparse.Namespace, started: object, wall: float,
           env: Env) -> str:
    m = machine()
    lines = [f"### Tree cycle: {args.members} members x {args.change_mib} MiB changed, "
             f"{'peers only' if args.peers_only else 'cerssd vs peers'} "
             f"({started:%Y-%m-%d})", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; `{command_line()}` ({wall:.0f} s)",
             f"- machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}; load average "
             f"(1/5/15 min) at the start and after each round: {' → '.join(results.loads)}",
             f"- where: OpenZFS guest under QEMU ({env.guest.accel}), both pools in the guest, "
             "every method run in the guest over SSH to root@127.0.0.1 (the guest's sshd); "
             f"{args.members} member volumes plus the tree's root; {args.rounds} rounds, "
             "order rotated each round; seconds are wall time, median (min-max)"
             + ("; the guest was booted earlier by another process (`--attach`), its pools "
                "destroyed and made anew for this run" if args.attach else ""),
             "- cerssd: the daemon in the guest like the peers (master `kind = \"local\"`, "
             "slave `kind = \"ssh\"` to root@127.0.0.1, cipher chacha20-poly1305 as "
             "OpenSSH's default), relationship `recursive = true`, `max_parallel = "
             f"{args.max_parallel or 'default (4)'}`; a run is from `sync-now` to every member "
             "in sync on the slave (the tree summary, polled every 0.5 s in the guest)", "",
             "| method | seed (full) s | one incremental run s |", "| --- | ---: | ---: |"]
    for name, values in results.tree.items():
        lines.append(f"| {name} | {results.seed[name]:.0f} | {spread(values)} |")
    lines.append("")
    tree = results.tree
    if "syncoid" in tree and "zab" in tree:
        lines.append("- zfs-autobackup / syncoid, per round: "
                     f"{ratio(tree['zab'], tree['syncoid'])}")
    if "cerssd" in tree:
        for peer in ("syncoid", "zab")[:1 if args.without_zab else 2]:
            lines.append(f"- {peer} / cerssd, per round: {ratio(tree[peer], tree['cerssd'])}")
        if "zab" in tree:
            faster = [min(a, b) for a, b in zip(tree["syncoid"], tree["zab"], strict=True)]
            lines.append(f"- **the faster peer / cerssd** (target >= 5x), per round: "
                         f"{ratio(faster, tree['cerssd'])}")
    if results.processes:
        lines += ["", f"Processes started by one more run (BSD process accounting in the guest, "
                  f"master and slave ends together; per dataset = / {len(env.datasets)}):", "",
                  "| process | " + " | ".join(results.processes) + " |",
                  "| --- |" + " ---: |" * len(results.processes)]
        names = sorted({n for c in results.processes.values() for n in c},
                       key=lambda n: -max(c.get(n, 0) for c in results.processes.values()))
        for row in ["(all)", *names[:12]]:
            cells = []
            for counts in results.processes.values():
                value = sum(counts.values()) if row == "(all)" else counts.get(row, 0)
                cells.append(f"{value} ({value / len(env.datasets):.1f})")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if results.big:
        lines += ["", f"1 volume, {args.big_mib} MiB random, full send into a fresh target:", "",
                  "| method | seconds | MB/s |", "| --- | ---: | ---: |"]
        for name, values in results.big.items():
            mb = args.big_mib * (1 << 20) / 1e6
            lines.append(f"| {name} | {spread(values)} | {mb / statistics.median(values):.1f} |")
        if "cerssd" in results.big:
            lines.append("\n- plain / cerssd: "
                         f"{ratio(results.big['plain'], results.big['cerssd'])}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/tree_cycle.py", description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=200, help="member volumes in the tree")
    p.add_argument("--change-mib", type=int, default=1,
                   help="MiB of new random data per member per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--big-mib", type=int, default=1024,
                   help="MiB in the single big volume (0: leave that case out)")
    p.add_argument("--peers-only", action="store_true",
                   help="syncoid and zfs-autobackup only, without cerssd")
    p.add_argument("--without-zab", action="store_true",
                   help="leave zfs-autobackup out (in every run so far it took 3.8-4.4x "
                   "syncoid's time: syncoid is the faster peer)")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="the cerssd relationship's max_parallel (default: cerssd's own)")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="leave out the extra run that counts each method's processes")
    p.add_argument("--attach", type=Path, default=None,
                   help="use the guest described in this file (`python bench/guest.py FILE` "
                   "keeps one up) instead of booting one: its pools are destroyed first")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="tcg",
                   help="QEMU accelerator for the guest (on this machine KVM starts QEMU "
                   "but the guest's kernel never prints a line; the tests use TCG too)")
    args = p.parse_args(argv)
    for name in ("members", "change_mib", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("bench/tree_cycle.py", lambda: benchmark(args))


if __name__ == "__main__":
    raise SystemExit(main())
