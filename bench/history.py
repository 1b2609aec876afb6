#!/usr/bin/env python3
"""A week of activity history: does the daemon stay quick and small? (issue 13, item 1)

The same daemon and config run twice per round, rounds interleaved: once with an empty
journal (the baseline) and once with a journal holding ``--records`` finished activities
(500,000 = a week of 50 relationships at one cycle a minute). The config is the demo's
shape at the issue's scale: a local zfs-fuse master with ``--relationships`` volumes, each
a relationship replicating every minute to two standbys behind their own sshd ports.

For each run it records:

* ready: seconds from spawn to READY=1 on the notify socket (as systemd sees it);
* latency p50/p99 of ``GET /v1/activities?limit=100`` unfiltered and with each filter,
  ``GET /v1/relationships`` and a ``/metrics`` scrape, while the relationships cycle
  (from when every relationship is in sync, has run its first cycle and none waits for
  its turn: not during the start-up burst of all first cycles);
* CPU (% of a core) while cycling and while idle (all relationships paused);
* RSS (VmRSS at the end, VmHWM peak);
* relationships in sync (every slave ``in-sync`` or ``syncing`` with lag under two
  intervals) at the end, and the largest lag;
* stop: seconds from SIGTERM to exit.

The filled journal is built once and cached in ``--cache`` (rebuilt when older than a day,
so its records stay inside the default 7-day retention).

``--baseline-code DIR`` also runs, in each round and interleaved with the others, the daemon
of another checkout (a directory holding its ``cerssd`` package, e.g. ``git archive main
cerssd | tar -x -C DIR``) on the same pools, and reports each figure's ratio baseline /
this code per round: what a change did, measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MIB,
    REPO,
    Daemon,
    Sshd,
    announced_stack,
    bench_main,
    command_line,
    ensure_zfs_fuse,
    free_port,
    machine,
    make_pool,
    say,
    scratch_dir,
    start_sshd,
    utc_now,
    wait_until,
    zfs,
)

from cerssd.journal import Journal

DAY = 86400.0
TICK = os.sysconf("SC_CLK_TCK")
#: The pool the filled history names: fixed, so the cached journal serves every run (the
#: bench's own pools have random names); the cost of a query is the same.
HISTORY_POOL = "tank"
ACTIVITY_QUERIES = {
    "activities": "/v1/activities?limit=100",
    "activities state": "/v1/activities?limit=100&state=succeeded",
    "activities kind": "/v1/activities?limit=100&kind=replicate",
    "activities relationship": "/v1/activities?limit=100&relationship=vol007",
    "activities volume+kind":
        f"/v1/activities?limit=100&kind=replicate&volume={HISTORY_POOL}/vol007",
}


# -- the journal -------------------------------------------------------------------------

def filled_journal(cache: Path, records: int, relationships: int,
                   pool: str = HISTORY_POOL) -> Path:
    """A journal holding ``records`` finished replications spread over the last 7 days."""
    path = cache / f"history-{records}-{relationships}.sqlite3"
    if path.exists() and time.time() - path.stat().st_mtime < DAY:
        say(f"using the cached journal {path}")
        return path
    cache.mkdir(parents=True, exist_ok=True)
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    Journal(building).close()  # the daemon's own schema
    say(f"filling a journal with {records} finished activities (once; cached in {cache})")
    db = sqlite3.connect(building)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    now = time.time()
    step = 7 * DAY / records
    db.execute("BEGIN")
    batch = []
    for i in range(records):
        rel = f"vol{i % relationships:03d}"
        created = now - 7 * DAY + i * step
        batch.append(_row(uuid.uuid4().hex[:16], rel, f"{pool}/{rel}", created))
        if len(batch) == 10_000:
            _insert(db, batch)
            batch = []
    _insert(db, batch)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    building.rename(path)
    return path


def _row(activity_id: str, rel: str, volume: str, created: float) -> tuple[Any, ...]:
    moved = 1_234_567
    record = {
        "id": activity_id, "kind": "replicate", "volume": volume, "source": "local",
        "target": "standby1", "created_at": created, "state": "succeeded",
        "started_at": created + 0.01, "finished_at": created + 6.0,
        "progress": {"done": moved, "total": moved, "unit": "bytes", "estimated": True,
                     "text": f"{moved} of {moved}"},
        "status": {"code": 0, "message": "succeeded", "reason": None},
        "usage": {"elapsed_seconds": 6.0, "bytes_read": moved, "bytes_on_wire": moved,
                  "retries": 0, "rate_bytes_per_second": 205761.2},
        "self_restarting": True,
        "link": {"server": "standby1", "state": "up", "since": None, "attempt": 0,
                 "next_try_at": None, "last_error": None},
        "params": {"relationship": rel, "snapshot": f"{volume}@cerssd-{rel}-20261201T000000Z",
                   "destination": "standby1", "target_volume": f"standby1/{rel}",
                   "mode": "incremental"},
        "restarts": 0,
    }
    return (activity_id, "replicate", "succeeded", volume, rel, created, created + 6.0,
            json.dumps(record))


def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    db.executemany("INSERT INTO activities(id, kind, state, volume, relationship, created_at, "
                   "finished_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


# -- the environment ---------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    master: str
    standbys: tuple[str, ...]
    sshd: Sshd
    relationships: int


def config_text(root: Path, setup: Setup, metrics_port: int) -> str:
    """The demo's daemon settings and servers, ``relationships`` of its relationship."""
    text = ("[daemon]\n"
            f'control_socket = "{root / "control.sock"}"\n'
            f'state_dir = "{root / "state"}"\n'
            f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
            'log_level = "info"\n'
            'shutdown_timeout = "10s"\n\n'
            '[servers.local]\nkind = "local"\n')
    for i, _ in enumerate(setup.standbys):
        text += (f'\n[servers.standby{i + 1}]\nkind = "ssh"\nhost = "127.0.0.1"\n'
                 f'port = {setup.sshd.ports[i]}\nuser = "root"\n'
                 f'identity_file = "{setup.sshd.client_key}"\n'
                 f'known_hosts = "{setup.sshd.known_hosts}"\n')
    for n in range(setup.relationships):
        rel = f"vol{n:03d}"
        slaves = ", ".join(f'{{ server = "standby{i + 1}", target_volume = "{pool}/{rel}" }}'
                           for i, pool in enumerate(setup.standbys))
        text += (f'\n[relationships.{rel}]\nvolume = "{setup.master}/{rel}"\n'
                 'master = "local"\ninterval = "1m"\n'
                 'retention = ["10m:all", "1d:10m"]\n'
                 f"slaves = [{slaves}]\n")
    return text


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Any:
    with announced_stack() as stack:
        scratch = scratch_dir(stack, args.workdir, 3 * 1024 * MIB)
        ensure_zfs_fuse(stack, scratch)
        # Never mounted: zfs-fuse mounts ~1,000 filesystems at most (make_pool).
        master = make_pool(stack, scratch, 1024, "master", mounted=False)
        standbys = tuple(make_pool(stack, scratch, 1024, f"sb{i}", mounted=False)
                         for i in (1, 2))
        say(f"creating {args.relationships} volumes")
        for n in range(args.relationships):
            zfs("create", f"{master}/vol{n:03d}")
        sshd = start_sshd(stack, ports=2)
        yield stack, Setup(master, standbys, sshd, args.relationships)



# -- one run -----------------------------------------------------------------------------

@dataclass
class Run:
    variant: str
    #: Which daemon ran: "" for this checkout, "baseline" for ``--baseline-code``.
    code: str = ""
    ready: float = 0.0
    latency: dict[str, list[float]] = field(default_factory=dict)
    cpu_cycling: float = 0.0
    cpu_idle: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    in_sync: int = 0
    max_lag: float = 0.0
    stop: float = 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mib(pid: int) -> tuple[float, float]:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def cpu_share(pid: int, seconds: float) -> float:
    """% of one core the process used over the next ``seconds``."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def sync_state(daemon: Daemon, interval: float = 60.0) -> tuple[int, float]:
    """How many relationships have every slave in sync (lag under two intervals)."""
    rels = daemon.api("GET", "/v1/relationships", timeout=60)["items"]
    good, worst = 0, 0.0
    for rel in rels:
        lags = [s.get("lag_seconds") for s in rel["slaves"]]
        worst = max([worst, *(lag or 0.0 for lag in lags)])
        if all(s["state"] in ("in-sync", "syncing") and s.get("lag_seconds") is not None
               and s["lag_seconds"] < 2 * interval for s in rel["slaves"]):
            good += 1
    return good, worst


def steady(daemon: Daemon, relationships: int) -> bool:
    """Every relationship in sync and past its first cycle, and no cycle waiting its turn."""
    rels = daemon.api("GET", "/v1/relationships", timeout=60)["items"]
    return sync_state(daemon)[0] == relationships and all(
        r["cycles"] >= 1 and r["cycle_waiting_since"] is None for r in rels)


def one_run(stack: contextlib.ExitStack, setup: Setup, variant: str, journal: Path | None,
            args: argparse.Namespace, code: Path | None = None) -> Run:
    """One daemon's life on ``variant``'s journal; ``code``: a checkout to run it from."""
    root = Path(tempfile.mkdtemp(prefix="cerssd-hist-", dir="/tmp"))
    (root / "state").mkdir()
    if journal is not None:
        shutil.copyfile(journal, root / "state" / "journal.sqlite3")
    metrics_port = free_port()
    config = root / "cerssd.toml"
    config.write_text(config_text(root, setup, metrics_port))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify.sock"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(root / "notify.sock")}
    result = Run(variant, "baseline" if code is not None else "")
    start = time.monotonic()
    with open(root / "cerssd.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=code or REPO,
                                start_new_session=True)
    daemon = Daemon(proc, root, root / "control.sock", root / "cerssd.log")
    try:
        notify.settimeout(120)
        while b"READY=1" not in notify.recv(4096):
            pass
        result.ready = time.monotonic() - start
        say(f"{variant}: ready in {result.ready:.2f} s; waiting for every relationship to sync")
        # In sync is not enough: the standbys still hold the previous run's snapshots, so
        # later runs are in sync at once, while all relationships' first cycles queue at
        # the cycle gate (a start-up burst of ~45 s here); the figures are for cycling.
        wait_until(lambda: steady(daemon, setup.relationships), args.warmup,
                   "every relationship in sync, its first cycle done and none queued")
        say(f"{variant}: in sync; measuring")
        result.latency = latencies(daemon, metrics_port, args.latency_seconds)
        result.cpu_cycling = cpu_share(proc.pid, args.cpu_seconds)
        result.in_sync, result.max_lag = sync_state(daemon)
        for n in range(setup.relationships):
            daemon.api("POST", f"/v1/relationships/vol{n:03d}/pause")
        time.sleep(2)  # the pauses' last transfers end
        result.cpu_idle = cpu_share(proc.pid, args.idle_seconds)
        result.rss_mib, result.peak_rss_mib = memory_mib(proc.pid)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        result.stop = time.monotonic() - stopping
    except BaseException:
        say(f"{variant}: failed; the daemon's log ends:\n{daemon.log_tail()}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        if args.keep_logs:
            shutil.copyfile(root / "cerssd.log", args.keep_logs
                            / f"{variant}{'-' + result.code if result.code else ''}"
                              f"-{int(start)}.log")
        shutil.rmtree(root, ignore_errors=True)
    return result


#: A request slower than this is printed with its time (the p99 of ~100 samples is one).
SLOW_MS = 50.0


def latencies(daemon: Daemon, metrics_port: int, seconds: float) -> dict[str, list[float]]:
    """Each endpoint asked in turn, one request every 50 ms, for ``seconds``."""
    def get(path: str) -> Callable[[], Any]:
        return lambda: daemon.api("GET", path)

    calls = {name: get(path) for name, path in ACTIVITY_QUERIES.items()}
    calls["relationships"] = lambda: daemon.api("GET", "/v1/relationships")
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    calls["metrics"] = lambda: urllib.request.urlopen(url, timeout=30).read()
    out: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, call in calls.items():
            started = time.time()
            took = timed(call)
            out[name].append(took)
            if took >= SLOW_MS:  # when, to find in the daemon's log what it was doing
                say(f"slow: {name} {took:.0f} ms at "
                    f"{time.strftime('%H:%M:%S', time.gmtime(started))}"
                    f".{int(started % 1 * 1000):03d}Z")
            time.sleep(0.05)
    return out


# -- the report ---------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(run: Run) -> dict[str, float]:
    out = {"ready s": run.ready, "RSS MiB": run.rss_mib, "peak RSS MiB": run.peak_rss_mib,
           "CPU % cycling": run.cpu_cycling, "CPU % idle": run.cpu_idle,
           "in sync": run.in_sync, "max lag s": run.max_lag, "stop s": run.stop}
    for name, values in run.latency.items():
        out[f"{name} p50 ms"] = pct(values, 0.5)
        out[f"{name} p99 ms"] = pct(values, 0.99)
    return out


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
            if values else "-")


def label(run: Run) -> str:
    return f"{run.variant} journal" + (f", {run.code}" if run.code else "")


def report(runs: list[Run], args: argparse.Namespace, started: Any, seconds: float) -> str:
    m = machine()
    labels = list(dict.fromkeys(label(r) for r in sorted(
        runs, key=lambda r: (r.code, r.variant))))
    by_label = {name: [figures(r) for r in runs if label(r) == name] for name in labels}
    keys = list(figures(runs[0]))
    baseline = f"; baseline: the daemon of {args.baseline_code}" if args.baseline_code else ""
    lines = [f"### Activity history: a journal of {args.records:,} finished activities vs "
             f"an empty one ({started:%Y-%m-%d})", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; `{command_line()}` ({seconds:.0f} s)",
             f"- machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, {m['zfs_fuse']}",
             f"- config: the demo's shape: {args.relationships} relationships at a 1-minute "
             "interval, each to two standbys over SSH (two sshd ports), metrics on TCP; "
             f"{args.rounds} rounds, all runs of a round interleaved{baseline}; "
             "median (min-max)", "",
             "| figure | " + " | ".join(labels) + " |",
             "| --- |" + " ---: |" * len(labels)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(spread([f[key] for f in by_label[name]])
                                                 for name in labels) + " |")
    if args.baseline_code:
        lines += ["", "Baseline / this code, per round (median (min-max) of the rounds):", "",
                  "| figure | " + " | ".join(args.variants) + " |",
                  "| --- |" + " ---: |" * len(args.variants)]
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(
                spread(ratios(runs, variant, key)) for variant in args.variants) + " |")
    return "\n".join(lines) + "\n"


def ratios(runs: list[Run], variant: str, key: str) -> list[float]:
    """baseline / this code for ``key``, round by round (runs are appended in rounds)."""
    ours = [figures(r)[key] for r in runs if r.variant == variant and not r.code]
    theirs = [figures(r)[key] for r in runs if r.variant == variant and r.code]
    return [b / a for a, b in zip(ours, theirs, strict=False) if a]


def benchmark(args: argparse.Namespace) -> str:
    started, clock = utc_now(), time.monotonic()
    runs: list[Run] = []
    with environment(args) as (stack, setup):
        journal = filled_journal(args.cache, args.records, args.relationships)
        codes: list[Path | None] = [None] + ([args.baseline_code] if args.baseline_code
                                             else [])
        for round_no in range(args.rounds):
            order = [(v, c) for c in codes for v in ("empty", "filled") if v in args.variants]
            if round_no % 2:
                order.reverse()
            for variant, code in order:
                say(f"round {round_no + 1}/{args.rounds}: {variant} journal"
                    + (f", the daemon of {code}" if code else ""))
                runs.append(one_run(stack, setup, variant,
                                    journal if variant == "filled" else None, args, code))
                say(f"{label(runs[-1])}: {figures(runs[-1])}")
    return report(runs, args, started, time.monotonic() - clock)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/history.py", description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=500_000)
    p.add_argument("--relationships", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=600.0,
                   help="seconds to wait for every relationship's first sync")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--cpu-seconds", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument("--variants", nargs="+", choices=["empty", "filled"],
                   default=["empty", "filled"], help="which journals to run (both: the "
                   "comparison; one: to profile it)")
    p.add_argument("--baseline-code", type=Path, default=None,
                   help="a directory holding another cerssd package (e.g. main's, from "
                   "git archive) whose daemon runs interleaved with this one, for ratios")
    p.add_argument("--cache", type=Path, default=Path("/var/tmp/cerssd-bench"))
    p.add_argument("--keep-logs", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_code is not None:
        args.baseline_code = args.baseline_code.resolve()
        if not (args.baseline_code / "cerssd" / "__main__.py").exists():
            raise SystemExit(f"{args.baseline_code} holds no cerssd package")
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    return bench_main("bench/history.py", lambda: benchmark(args))


if __name__ == "__main__":
    raise SystemExit(main())
