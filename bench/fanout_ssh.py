"""Benchmark: one full send fanned out to three slaves over SSH, against three pipelines.

The requirement: a relationship whose first cycle sends a 1 GiB volume to three slaves
must take at most 0.7x the wall time of three sequential plain
``zfs send | ssh | zfs receive`` pipelines, measured in the same run. The point of a
fan-out is that one ``zfs send`` feeds all slaves and the three SSH streams run at once;
this measures whether that pays on a real machine, with everything else equal.

What it measures, on the same machine and the same data, in the same run:

* **baseline**: for each slave in turn,
  ``zfs send POOL/data@snap | ssh -c CIPHER -p PORT ... root@127.0.0.1 zfs receive TARGET``,
  run by ``bash -c`` with ``set -o pipefail``; the wall time of the three together;
* **cerssd**: a real ``cerssd`` daemon with ``[servers.local]`` and three ``kind = "ssh"``
  servers ``r1``, ``r2``, ``r3`` (same cipher, known_hosts and key as the baseline), driven
  through its control socket: ``POST /v1/relationships`` with the three slaves and
  ``interval = "1h"``. Its first cycle starts at once: it takes a snapshot, plans each
  slave, and feeds the three receives from ONE ``zfs send``. Timed from the POST until all
  three child ``replicate`` activities have succeeded, so cerssd's time includes work the
  baseline does not do (the snapshot, planning, holds, read-only replicas, guid checks).

Each cerssd run is checked: every child succeeded, ``cerssd_fanout_sends_total`` on
``GET /metrics`` rose by exactly 1, and every slave's received snapshot has the master
snapshot's guid. Whether every child has ``params.fanout == "shared"`` is reported per
run rather than fatal: a slave that fell behind and was split off (it then sends on its
own, from the start where receives cannot resume) is something cerssd did in that run,
and its time counts. Between runs the relationship is deleted, the targets and cerssd's
snapshot destroyed, and the next run uses a new relationship name, so every run is a
first, full cycle.

The children are found in ``GET /v1/relationships/NAME`` (``slaves[].activity``, polled
only until they exist, i.e. before the stream starts) and then long-polled with
``GET /v1/activities/{id}?wait=300``: polling the daemon fast during a transfer costs
throughput on a small machine (bench/RESULTS.md).

Fairness choices, the same for both methods:

* **Target pools**: one pool per slave by default (``--target-pools per-slave``), as three
  slaves have a pool each; both methods receive into the same three pools. zfs-fuse runs
  every pool in one userspace daemon, so the three concurrent receives of cerssd still
  share one zfs-fuse process (and this machine's CPUs); ``--target-pools shared`` puts all
  targets in one pool, to see whether one pool's transaction groups are the limit.
* **SSH connections**: the sshd listens on one port per slave by default
  (``--ssh-ports per-slave``). OpenSSH multiplexes streams to the same host, port and user
  over one ControlMaster connection, so three servers on one port would put cerssd's
  three streams through one ssh client and one sshd process, which three real hosts
  would not; the baseline uses the same port per slave. ``--ssh-ports shared`` measures
  that case. cerssd opens its master connections in its first run (the baseline pays one
  handshake per pipeline, every run).
* **Warm-up**: the pools live on sparse files, and the first write into a file's holes
  is much slower (the filesystem allocates blocks): the first round measured ~27 s for
  the baseline against ~18 s afterwards. Whichever method ran first would pay that, so
  ``--warmup`` (default 1) untimed rounds of both methods come first; they are shown in
  the report but not in the medians.
* **Quiet disks**: zfs-fuse writes a pool's data out after ``zfs receive`` returned and
  frees destroyed datasets in the background; every timed run starts once the disks
  are quiet, so no method pays for the one before it.

Medians of ``--runs`` runs, alternating baseline and cerssd; MB = 10^6 bytes of the send
stream (``zfs send | wc -c``); "delivered" is slaves x stream bytes per second.

For finding a bottleneck: ``--parallel-baseline`` also times the three plain pipelines
run at once (three ``zfs send``), which is what this machine can do with three
concurrent streams without cerssd; ``--fanout-buffer`` sets the relationship's
per-slave buffer before a lagging slave is split off; ``--cpu`` adds where the CPU time
went, per process, from /proc (sampled every 0.1 s, in every method). The sampler and
the extra method cost time and CPU themselves, so the headline figures are best taken
without them.

Everything is set up here and removed afterwards, also on error or Ctrl-C, by pid (see
bench/common.py): zfs-fuse only if ``zpool list`` fails, pools on sparse files, one
private sshd on 127.0.0.1, the daemon with its own socket and state.

Run as root from the repository, with the venv's python (cerssd and its dependencies)::

    .venv/bin/python bench/fanout_ssh.py              # 1 GiB, 3 slaves, 3 runs
    .venv/bin/python bench/fanout_ssh.py --quick      # 64 MiB, 1 run: a smoke test
    .venv/bin/python bench/fanout_ssh.py --cpu --parallel-baseline   # why
    .venv/bin/python bench/fanout_ssh.py --workdir /dev/shm           # pools in RAM

Progress goes to stderr; the report (machine, date, table) is Markdown on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MIB,
    TERMINAL,
    ApiError,
    BenchError,
    CpuSampler,
    CpuUse,
    Daemon,
    Sshd,
    SshServer,
    announced_stack,
    bash,
    bench_main,
    check_received,
    command_line,
    common_arguments,
    cpu_table,
    destroy_snapshot,
    destroy_volume,
    ensure_zfs_fuse,
    guid,
    load_average,
    machine,
    make_pool,
    median,
    pids_named,
    plain_pipeline,
    rate,
    say,
    scratch_dir,
    seconds_list,
    settle,
    ssh_command,
    start_daemon,
    start_sshd,
    stream_size,
    utc_now,
    wait_until,
    write_random,
    zfs,
)

TARGET = 0.70  # the requirement: cerssd's time at most this share of the baseline's
METRIC = "cerssd_fanout_sends_total"


@dataclass(frozen=True)
class Slave:
    """One slave as both methods see it: a cerssd server name, an sshd port, a pool."""

    server: str
    port: int
    pool: str

    def target(self, method: str, run: str) -> str:
        # Named by server too: with --target-pools shared all targets are in one pool.
        return f"{self.pool}/{method}_{self.server}_{run}"


@dataclass(frozen=True)
class Setup:
    """The environment both methods share: same master snapshot, slaves, sshd."""

    master_pool: str
    volume: str  # the master's filesystem, POOL/data
    snapshot: str  # the baseline's snapshot of it
    slaves: tuple[Slave, ...]
    sshd: Sshd
    daemon: Daemon
    named_pids: dict[int, str]  # for the CPU sampler

    @property
    def hold_tags(self) -> list[str]:
        """cerssd holds each slave's common snapshot as ``cerssd:<destination>``."""
        return [f"cerssd:{s.server}" for s in self.slaves]


@dataclass
class CerssdRun:
    """One cerssd run: its time, and what the daemon says happened (for the report)."""

    seconds: float
    span: float  # first child's start to last child's end, by the daemon's clock
    bytes_read: list[int]
    fanout: dict[str, str]  # slave -> how it was fed: "shared", or "split-off", "missed"...

    @property
    def shared(self) -> bool:
        """Every slave was fed by the one shared send (none split off or sent alone)."""
        return all(how == "shared" for how in self.fanout.values())


@dataclass
class Results:
    """Every figure of the timed runs (a second instance collects the warm-up's)."""

    stream_bytes: int = 0
    send_only_seconds: float = 0.0
    baseline: list[float] = field(default_factory=list)
    pipelines: list[list[float]] = field(default_factory=list)  # per run, per slave
    parallel: list[float] = field(default_factory=list)  # --parallel-baseline
    fanout_buffer: int = 0  # as the daemon reported it
    cerssd: list[CerssdRun] = field(default_factory=list)
    cpu: dict[str, CpuUse] = field(default_factory=dict)


@contextlib.contextmanager
def sampled(setup: Setup, results: Results, method: str, enabled: bool) -> Iterator[None]:
    """Account the CPU time of the block to ``method`` when --cpu is on; else nothing."""
    if not enabled:
        yield
        return
    with CpuSampler(setup.named_pids, roots=[setup.sshd.pid],
                    markers=[str(setup.daemon.root)]) as sampler:
        yield
    results.cpu.setdefault(method, CpuUse()).add(sampler.result)


# -- the baseline ------------------------------------------------------------------------

def run_baseline(setup: Setup, cipher: str, run: str, results: Results, cpu: bool) -> float:
    """Three pipelines, one after the other, as a script would run them."""
    targets = [slave.target("plain", run) for slave in setup.slaves]
    each: list[float] = []
    settle(f"baseline run {run}")
    with sampled(setup, results, "baseline", cpu):
        start = time.monotonic()
        for slave, target in zip(setup.slaves, targets, strict=True):
            each.append(plain_pipeline(setup.snapshot, setup.sshd, cipher, target,
                                       port=slave.port))
        seconds = time.monotonic() - start
    for target in targets:
        check_received(setup.snapshot, target)
        destroy_volume(target)
    results.baseline.append(seconds)
    results.pipelines.append(each)
    return seconds


def run_parallel(setup: Setup, cipher: str, run: str, results: Results, cpu: bool) -> float:
    """A reference, not the requirement's baseline: the three pipelines at once (three
    ``zfs send``). It shows what this machine can do with three concurrent streams at all,
    which tells a slow fan-out from a saturated machine."""
    targets = [slave.target("par", run) for slave in setup.slaves]
    pipelines = [
        f"( {shlex.join(['zfs', 'send', setup.snapshot])} | "
        f"{shlex.join(ssh_command(setup.sshd, cipher, ['zfs', 'receive', t], slave.port))} ) "
        f"& p{i}=$!"
        for i, (slave, t) in enumerate(zip(setup.slaves, targets, strict=True))]
    waits = " ".join(f"wait $p{i} || rc=1;" for i in range(len(pipelines)))
    settle(f"parallel run {run}")
    with sampled(setup, results, "parallel", cpu):
        start = time.monotonic()
        bash("; ".join(pipelines) + f"; rc=0; {waits} exit $rc")
        seconds = time.monotonic() - start
    for target in targets:
        check_received(setup.snapshot, target)
        destroy_volume(target)
    results.parallel.append(seconds)
    return seconds


# -- cerssd ------------------------------------------------------------------------------

def find_children(daemon: Daemon, name: str, slaves: int,
                  timeout: float = 120.0) -> list[str]:
    """The ids of the cycle's child transfers, one per slave.

    ``slaves[].activity`` names a slave's *live* transfer, so it is polled (briefly,
    before the stream starts: the shared send waits for every receiver to attach) until
    each slave has one. A transfer that ended before a poll saw it is found in the
    activity list instead, once the relationship counts its first cycle.
    """

    def found() -> list[str] | None:
        daemon.check_alive()
        rel = daemon.api("GET", f"/v1/relationships/{name}")
        ids = [s["activity"] for s in rel["slaves"] if s["activity"]]
        if len(ids) == slaves:
            return ids
        if rel["last_error"]:
            raise BenchError(f"relationship {name}: {rel['last_error']}")
        if rel["cycles"] < 1:
            return None
        listed = daemon.api("GET", "/v1/activities?kind=replicate&limit=1000")["items"]
        ids = [a["id"] for a in listed if a["params"].get("relationship") == name]
        return ids if len(ids) == slaves else None

    children: list[str] = wait_until(found, timeout, f"the transfers of {name}",
                                     interval=0.05)
    return children


def run_cerssd(setup: Setup, run: str, results: Results, cpu: bool,
               fanout_buffer: str | None = None) -> CerssdRun:
    """One relationship, one first cycle, fanned out; timed from the POST to the last
    child's success, then verified and removed."""
    daemon = setup.daemon
    name = f"fanout-{run}-{secrets.token_hex(3)}"
    targets = [slave.target("cerssd", run) for slave in setup.slaves]
    body = {"name": name, "volume": setup.volume, "master": "local", "interval": "1h",
            "slaves": [{"server": slave.server, "target_volume": target}
                       for slave, target in zip(setup.slaves, targets, strict=True)]}
    if fanout_buffer is not None:
        body["fanout_buffer"] = fanout_buffer
    settle(f"cerssd run {run}")
    sends_before = daemon.metric(METRIC)
    try:
        with sampled(setup, results, "cerssd", cpu):
            start = time.monotonic()
            created = daemon.api("POST", "/v1/relationships", body)
            children = find_children(daemon, name, len(setup.slaves))
            records = [daemon.wait_activity(child) for child in children]
            seconds = time.monotonic() - start
        verify_cerssd_run(setup, name, targets, records, sends_before)
        span = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records)
        outcome = CerssdRun(seconds, span, [r["usage"]["bytes_read"] for r in records],
                            {r["params"]["destination"]: str(r["params"].get("fanout"))
                             for r in records})
    except Exception:
        try:  # tidy up for the report's sake; the pools go at the end anyway
            remove_cerssd_run(setup, name, targets)
        except Exception as exc:
            say(f"removing relationship {name} after the failure failed too: {exc}")
        raise
    remove_cerssd_run(setup, name, targets)
    results.fanout_buffer = int(created["fanout_buffer"])
    if any(n != results.stream_bytes for n in outcome.bytes_read):
        say(f"note: cerssd's children counted {outcome.bytes_read} bytes; zfs send | wc -c "
            f"of the baseline's snapshot gave {results.stream_bytes}")
    results.cerssd.append(outcome)
    return outcome


def verify_cerssd_run(setup: Setup, name: str, targets: list[str],
                      records: list[dict[str, Any]], sends_before: float) -> None:
    """Succeeded, one zfs send for the group, and the very snapshot on every slave.

    Whether each slave stayed on the shared send (``params.fanout == "shared"``) is
    warned about here and reported per run, not fatal: see CerssdRun.shared.
    """
    daemon = setup.daemon
    for record in records:
        status = record.get("status") or {}
        if record["state"] != "succeeded":
            raise BenchError(f"transfer {record['id']} to {record['params']['destination']} "
                             f"ended {record['state']}: {status.get('message')}\n"
                             f"{daemon.log_tail()}")
        if record["params"].get("fanout") != "shared":
            # Kept, not fatal: a slave that fell behind and was split off is what cerssd
            # did in that run, and its time counts; the report says so.
            say(f"warning: transfer {record['id']} to {record['params']['destination']} "
                f"was not fed by the shared send (fanout = "
                f"{record['params'].get('fanout')!r})")
    sends = daemon.metric(METRIC) - sends_before
    if sends != 1:
        raise BenchError(f"{METRIC} rose by {sends:g} in relationship {name}'s cycle, "
                         "expected exactly 1 (one zfs send for all slaves)")
    snapshot = daemon.api("GET", f"/v1/relationships/{name}")["newest_snapshot"]
    if not snapshot:
        raise BenchError(f"relationship {name} reports no snapshot")
    label = snapshot.partition("@")[2]
    for target in targets:
        check_received(snapshot, target, label)


def remove_cerssd_run(setup: Setup, name: str, targets: list[str]) -> None:
    """Leave nothing for the next run: no relationship, targets, or cerssd snapshot."""
    daemon = setup.daemon
    with contextlib.suppress(ApiError):  # a failed POST made nothing to delete
        daemon.api("DELETE", f"/v1/relationships/{name}")

    def settled() -> bool:  # retention and refreshes run after the transfers end
        items = daemon.api("GET", "/v1/activities?limit=1000")["items"]
        return all(a["state"] in TERMINAL for a in items)

    wait_until(settled, 120, "cerssd's activities to end", interval=0.2)
    for target in targets:
        if zfs("list", "-H", target, check=False).returncode == 0:
            destroy_volume(target, setup.hold_tags)
    ours = [s for s in zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r",
                           setup.volume).stdout.split()
            if s.partition("@")[2].startswith(f"cerssd-{name}-")]
    for snapshot in ours:
        destroy_snapshot(snapshot, setup.hold_tags)


# -- the environment ---------------------------------------------------------------------

@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Setup]:
    """Pools, sshd and daemon for both methods; all removed on the way out, by pid."""
    n = args.slaves
    with announced_stack() as stack:
        # Sparse files: what they take is about one copy per pool at a time, plus metadata.
        scratch = scratch_dir(stack, args.workdir, (n + 1) * args.size * MIB * 1.2)
        ensure_zfs_fuse(stack, scratch)
        pool_mib = 2 * args.size + 512
        master = make_pool(stack, scratch, pool_mib, "m")
        if args.target_pools == "per-slave":
            pools = [make_pool(stack, scratch, pool_mib, f"t{i}") for i in range(1, n + 1)]
        else:
            pools = [make_pool(stack, scratch, (n + 1) * args.size + 512, "t")] * n
        sshd = start_sshd(stack, ports=n if args.ssh_ports == "per-slave" else 1)
        ports = sshd.ports if args.ssh_ports == "per-slave" else (sshd.port,) * n
        slaves = tuple(Slave(f"r{i}", port, pool)
                       for i, (port, pool) in enumerate(zip(ports, pools, strict=True), 1))
        daemon = start_daemon(stack, sshd, args.cipher,
                              [SshServer(s.server, s.port) for s in slaves], args.daemon_log)
        named = {daemon.proc.pid: "cerssd", os.getpid(): "benchmark script"}
        named.update({pid: "zfs-fuse" for pid in pids_named("zfs-fuse")})
        volume = f"{master}/data"
        yield Setup(master, volume, f"{volume}@snap", slaves, sshd, daemon, named)


def benchmark(args: argparse.Namespace) -> str:
    """Warm-up rounds, then the timed rounds, each baseline first; returns the report."""
    started = utc_now()
    t0 = time.monotonic()
    load_before = load_average()
    results, warm = Results(), Results()
    with environment(args) as setup:
        zfs("create", setup.volume)
        say(f"writing {args.size} MiB of random data to {setup.volume}")
        write_random(Path(f"/{setup.volume}/data"), args.size)
        zfs("snapshot", setup.snapshot)
        results.stream_bytes, results.send_only_seconds = stream_size(setup.snapshot)
        say(f"stream {results.stream_bytes / 1e6:.1f} MB; zfs send | wc -c "
            f"{results.send_only_seconds:.2f} s "
            f"({rate(results.stream_bytes, results.send_only_seconds)}); "
            f"snapshot guid {guid(setup.snapshot)}")
        warm.stream_bytes = results.stream_bytes
        delivered = len(setup.slaves) * results.stream_bytes
        rounds = [(f"w{i}", warm) for i in range(1, args.warmup + 1)]
        rounds += [(str(i), results) for i in range(1, args.runs + 1)]
        for run, into in rounds:
            what = f"warm-up {run[1:]}/{args.warmup}" if into is warm \
                else f"run {run}/{args.runs}"
            cpu = args.cpu and into is results
            seconds = run_baseline(setup, args.cipher, run, into, cpu)
            say(f"{what}: baseline {seconds:.2f} s ({seconds_list(into.pipelines[-1])}; "
                f"{rate(delivered, seconds)} delivered)")
            if args.parallel_baseline:
                par = run_parallel(setup, args.cipher, run, into, cpu)
                say(f"{what}: parallel {par:.2f} s ({rate(delivered, par)} delivered)")
            outcome = run_cerssd(setup, run, into, cpu, args.fanout_buffer)
            say(f"{what}: cerssd   {outcome.seconds:.2f} s (transfers "
                f"{outcome.span:.2f} s; {rate(delivered, outcome.seconds)} delivered"
                f"{'' if outcome.shared else f'; NOT all shared: {outcome.fanout}'}); "
                f"ratio {outcome.seconds / seconds:.2f}; load {load_average()}")
        setup.daemon.check_alive()
    return report(results, warm, args, setup, started, time.monotonic() - t0,
                  (load_before, load_average()))


# -- the report --------------------------------------------------------------------------

def report(results: Results, warm: Results, args: argparse.Namespace, setup: Setup,
           started: dt.datetime, wall: float, loads: tuple[str, str]) -> str:
    """Markdown for bench/RESULTS.md: what ran where, the table, the ratio, the checks."""
    info = machine()
    n = len(setup.slaves)
    mb = results.stream_bytes / 1e6
    base = median(results.baseline)
    ours = median([r.seconds for r in results.cerssd])
    ratio = ours / base
    verdict = "meets" if ratio <= TARGET else "misses"
    pools = ("one pool per slave" if args.target_pools == "per-slave"
             else "one pool for all targets")
    ports = ("one sshd port per slave (a connection each)" if args.ssh_ports == "per-slave"
             else "one sshd port for all slaves (cerssd multiplexes them on one connection)")
    lines = [
        f"### Fan-out to {n} slaves over SSH: cerssd vs {n} sequential "
        f"`zfs send | ssh | zfs receive` ({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `{command_line()}` "
        f"(= `--size {args.size} --runs {args.runs} --slaves {n} --cipher {args.cipher} "
        f"--target-pools {args.target_pools} --ssh-ports {args.ssh_ports} --warmup "
        f"{args.warmup}`; relationship fanout_buffer {results.fanout_buffer / MIB:g} MiB; "
        f"{wall:.0f} s in all; load average {loads[0]} before, {loads[1]} after)",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, {info['zfs_fuse']}; master, slaves and sshd on this host",
        f"- setup: master pool plus {pools}, all in the one zfs-fuse; sshd on 127.0.0.1 "
        f"with {ports}; cipher {args.cipher} for both methods",
        f"- data: {args.size} MiB random, full stream {mb:.1f} MB (MB = 10^6 bytes; "
        f"`zfs send | wc -c` alone {rate(results.stream_bytes, results.send_only_seconds)}); "
        f"median of {args.runs} run(s), alternating baseline and cerssd, after "
        f"{args.warmup} untimed warm-up round(s) of both; delivered = {n} x stream per "
        "second",
        "",
        "| method | median s | delivered MB/s | per slave MB/s | seconds per run |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| baseline: {n} sequential pipelines | {base:.2f} | {n * mb / base:.1f} | "
        f"{mb / base:.1f} | {seconds_list(results.baseline)} |",
        f"| cerssd: one cycle, one shared send | {ours:.2f} | {n * mb / ours:.1f} | "
        f"{mb / ours:.1f} | {seconds_list(r.seconds for r in results.cerssd)} |",
        *([f"| reference: {n} plain pipelines at once | {median(results.parallel):.2f} | "
           f"{n * mb / median(results.parallel):.1f} | {mb / median(results.parallel):.1f} | "
           f"{seconds_list(results.parallel)} |"] if results.parallel else []),
        "",
        f"**cerssd / baseline = {ratio:.2f}** (target ≤ {TARGET:.2f}: {verdict} it); "
        f"speedup {base / ours:.2f}x.",
        "",
        "- baseline pipelines per run (s): " + "; ".join(
            seconds_list(each) for each in results.pipelines),
        "- cerssd transfers per run (first child's start to last child's end, daemon's "
        "clock, s): " + seconds_list(r.span for r in results.cerssd)
        + "; the rest of cerssd's time is the POST, snapshot, planning and checks",
        f"- checked in every cerssd run: all {n} children succeeded, `{METRIC}` +1, each "
        f"slave's snapshot guid = the master's; all {n} children `params.fanout == "
        f"\"shared\"` in {sum(r.shared for r in results.cerssd)} of {len(results.cerssd)} "
        f"run(s)" + "".join(
            f"; run {i}: " + ", ".join(f"{k} {v}" for k, v in r.fanout.items())
            for i, r in enumerate(results.cerssd, 1) if not r.shared),
        "- before every timed run the disks were let quieten (zfs-fuse writes a pool's "
        "data out after the receive returned and frees destroyed datasets in the background)",
    ]
    if warm.baseline:
        lines.append("- warm-up (untimed, not in the medians; the first writes into a pool's "
                     f"sparse file are slower): baseline {seconds_list(warm.baseline)}; "
                     f"cerssd {seconds_list(r.seconds for r in warm.cerssd)}"
                     + (f"; parallel {seconds_list(warm.parallel)}" if warm.parallel else ""))
    if results.cpu:
        lines += ["", "CPU time of an average run (`--cpu`: /proc sampled every 0.1 s, a "
                  "process that exits loses up to its last 0.1 s; \"machine busy\" counts "
                  "everything; zfs-fuse also serves anyone else's pools):", ""]
        lines += cpu_table({method: use.scaled(1 / args.runs)
                            for method, use in results.cpu.items()}, top=10)
        for method, use in results.cpu.items():
            for name, values in sorted(use.threads.items()):
                if name not in ("cerssd", "zfs-fuse"):
                    continue
                top = sorted(values, reverse=True)[:6]
                lines.append(f"- {method}: busiest {name} threads (CPU-s per run): "
                             + ", ".join(f"{v / args.runs:.2f}" for v in top)
                             + f" ({len(values)} threads seen)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a fan-out of one full send to several slaves over SSH: cerssd "
                    "against sequential zfs send | ssh | zfs receive pipelines.")
    parser.add_argument("--size", type=int, default=1024, help="MiB of data (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per method (median)")
    parser.add_argument("--slaves", type=int, default=3, help="slaves (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: --size 64 --runs 1")
    parser.add_argument("--target-pools", choices=("per-slave", "shared"), default="per-slave",
                        help="a pool per slave (default), or one pool for all targets")
    parser.add_argument("--ssh-ports", choices=("per-slave", "shared"), default="per-slave",
                        help="an sshd port (so a connection) per slave (default), or one")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds of both methods first (default 1, with --quick 0)")
    parser.add_argument("--parallel-baseline", action="store_true",
                        help="also time the three plain pipelines run at once (a reference)")
    parser.add_argument("--fanout-buffer", default=None, metavar="SIZE",
                        help="the relationship's fanout_buffer, e.g. 256MiB (default: "
                             "cerssd's own default)")
    parser.add_argument("--cpu", action="store_true",
                        help="also report where the CPU time went, per process")
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.runs = 64, 1
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    for name in ("size", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.slaves < 2:
        parser.error("--slaves must be at least 2 (one slave is no fan-out)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("fanout_ssh", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
