"""Chaos as a repeatable benchmark: faults injected into a real cerssd, then checks.

A real ``cerssd`` daemon process runs with a configuration shaped like the demo's
(scripts/sandbox): a local zfs-fuse master ``MASTER/data``, two standbys reached over
SSH (``standby1`` behind a private sshd on 127.0.0.1, ``standby2`` behind an sshd inside
a network namespace, so its link can be cut), a SeaweedFS bucket as the object store,
and one relationship that replicates the master's volume to both standbys and backs it
up to the bucket (one ``zfs send`` for all three). A writer process keeps writing files
on the master volume for the whole run. Three scenarios, each ``N`` trials:

* ``kill``: ``sync-now``, then, after a random delay within a typical cycle's length,
  ``kill -9`` of the daemon, then SIGKILL of whatever is left in its cgroup (its
  ``zfs send``, ssh, zstd: what systemd does with the unit's cgroup after the main
  process died), then the daemon is started again on the same config and state;
* ``cut``: once a random 1-16 MiB of a cycle's stream has gone to ``standby2``, its link
  is cut (``ip link set … down`` on the host side of the veth pair) and brought up
  again after a random 2-15 s (shorter or longer than the 10 s ``stall_timeout``: a
  short cut may be ridden out by TCP without a retry, a long one must be reported and
  retried);
* ``store``: SeaweedFS is killed (SIGKILL) and started again after a random 1-6 s,
  alternately mid-backup (the relationship's backup of a cycle) and mid-restore (a
  ``POST /v1/restores`` of a complete backup into a new volume on the master), once a
  random 0.25-16 MiB of the backup's stream or 5-70 % of the restore's has passed.

After each trial the benchmark waits for convergence: a cycle started after the fault
was healed (``sync-now``, again whenever the relationship is idle with an older newest
snapshot) has its snapshot on every slave and in the store. Then it checks:

* convergence: every slave's newest snapshot has the guid of the master's newest cycle
  snapshot (``zfs get -Hp -o value guid``), and the store's newest backup is it;
* no stray datasets on any pool: nothing but the pool, its ``data`` volume and that
  volume's snapshots, and no ``%recv`` partial receive;
* no pinned snapshots: ``zfs get -Hp -o name,value -r userrefs POOL`` shows no hold
  beyond cerssd's own. cerssd holds with the tag ``cerssd:<destination>`` only the
  newest common snapshot of each destination (``ReplicateFlow._move_hold``), so once
  converged the master's newest snapshot has at most one hold per slave, each slave's
  newest at most one, and nothing else is held (zfs-fuse's ``zfs holds`` cannot list
  tags, so this counts references);
* no incomplete backup visible: every backup directory in the bucket has its
  ``manifest.json``, ``GET /v1/backups`` lists exactly the backups with a manifest, and
  ``list-multipart-uploads`` lists nothing;
* journal integrity: ``PRAGMA integrity_check`` of the state directory's
  ``journal.sqlite3`` is ``ok``, and no activity is left non-terminal unless it is
  self-restarting or the relationship's own live activity;
* the work the fault hit (the transfers, backup or restore running just before it)
  succeeded in the end, by retrying or by restarting from the journal, rather than
  failing and leaving it to the next cycle.

A pinned snapshot or stray dataset that persists is reported once, by the trial that
made it; later trials name it as carried over but do not fail for it again.

Every random choice comes from one ``random.Random(SEED)``; the seed is printed at the
start and ``--seed`` replays the same choices (the machine's timing still varies).
Everything it makes (pools, sshds, the namespace, weed, the daemon, the writer) is
removed again on the way out, also on error, Ctrl-C or SIGTERM, by pid or name it made.
Traffic goes to 127.0.0.1 and to the namespace's 192.0.2.0/24 addresses only.

Run as root from the repository, with the venv's python::

    .venv/bin/python bench/chaos.py --kills 20 --cuts 20 --store-kills 20
    .venv/bin/python bench/chaos.py --kills 2 --cuts 2 --store-kills 2 --seed 1234

Progress goes to stderr; the report (Markdown) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MIB,
    REPO,
    TERMINAL,
    ApiError,
    BenchError,
    Daemon,
    DaemonUnreachable,
    announced_stack,
    bench_main,
    cleanup,
    command_line,
    ensure_zfs_fuse,
    load_average,
    machine,
    make_pool,
    run,
    say,
    scratch_dir,
    start_sshd,
    utc_now,
    wait_until,
    write_random,
    zfs,
)

sys.path.insert(0, str(REPO))
from tests.seaweed import WeedServer  # the repository is on sys.path now
from tests.sshd import NetnsSshServer, create_netns_sshd, remove_netns_sshd

RELATIONSHIP = "data"
STANDBYS = ("standby1", "standby2")
CUT_STANDBY = "standby2"  # the one behind the network namespace
STORE = "s3"
BUCKET = "cerssd-chaos"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
HOLD_TAG_PREFIX = "cerssd:"  # storage.zfs.names.hold_tag: one per destination


# -- the environment -----------------------------------------------------------------

@dataclass
class Env:
    """What the run made, and the daemon running on it now."""

    root: Path
    config: Path
    master: str
    slaves: dict[str, str]  # server name -> target volume
    weed: WeedServer
    netns: NetnsSshServer
    cgroup: Path
    daemon: Daemon | None = None

    @property
    def volume(self) -> str:
        return f"{self.master}/data"

    @property
    def pools(self) -> list[str]:
        return [self.master, *(v.split("/")[0] for v in self.slaves.values())]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
        if self.daemon is None:
            raise BenchError("the daemon is not running")
        return self.daemon.api(method, path, body, timeout=timeout)

    def relationship(self) -> dict[str, Any]:
        rel: dict[str, Any] = self.api("GET", f"/v1/relationships/{RELATIONSHIP}")
        return rel

    def s3(self) -> Any:
        return self.weed.client(connect_timeout=2, read_timeout=10)


def daemon_config(root: Path, master: str, slaves: dict[str, str], sshd_port: int,
                  sshd_key: Path, sshd_known: Path, netns: NetnsSshServer, weed: WeedServer,
                  limit: int) -> str:
    """The demo's config (scripts/sandbox), on this run's pools, sshds and bucket.

    Two differences: ``interval = "1h"`` (the benchmark starts every cycle itself with
    ``sync-now``, so a trial knows which cycle it hits) and a bandwidth limit on
    ``standby2`` (so a transfer to it lasts long enough to be cut in the middle).
    """
    creds = root / "s3.key"
    creds.write_text(f'access_key_id = "{weed.s3.access_key}"\n'
                     f'secret_access_key = "{weed.s3.secret_key}"\n')
    creds.chmod(0o600)
    return f"""# Written by bench/chaos.py: the demo's shape (scripts/sandbox).
[daemon]
control_socket = "{root / 'control.sock'}"
state_dir = "{root / 'state'}"
metrics_listen = "off"
log_level = "info"
stall_timeout = "10s"
retry_max_interval = "5s"
shutdown_timeout = "10s"

[servers.local]
kind = "local"

[servers.standby1]
kind = "ssh"
host = "127.0.0.1"
port = {sshd_port}
user = "root"
identity_file = "{sshd_key}"
known_hosts = "{sshd_known}"

[servers.standby2]
kind = "ssh"
host = "{netns.address}"
port = {netns.port}
user = "root"
identity_file = "{netns.client_key}"
known_hosts = "{netns.known_hosts}"

[stores.{STORE}]
endpoint = "{weed.s3.endpoint}"
bucket = "{BUCKET}"
credentials_file = "{creds}"
compression = "zstd"

[relationships.{RELATIONSHIP}]
volume = "{master}/data"
master = "local"
interval = "1h"
retention = ["10m:all", "1d:10m"]
slaves = [
    {{ server = "standby1", target_volume = "{slaves['standby1']}" }},
    {{ server = "standby2", target_volume = "{slaves['standby2']}", bandwidth_limit = {limit} }},
]
stores = ["{STORE}"]
"""


def make_cgroup(stack: contextlib.ExitStack) -> Path:
    """A cgroup (v2) of our own for the daemon and everything it starts, so that a
    crash can be followed by what systemd does: kill what is left in the unit's cgroup."""
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        raise BenchError(f"no cgroup v2 hierarchy at {CGROUP_ROOT}")
    path = Path(tempfile.mkdtemp(prefix="cerssd-chaos-", dir=CGROUP_ROOT))

    def remove() -> None:
        kill_cgroup(path)
        path.rmdir()

    cleanup(stack, remove)
    return path


def cgroup_pids(path: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    return []


def kill_cgroup(path: Path) -> None:
    """SIGKILL every process in our cgroup (cgroup.kill) and wait until it is empty."""
    if not path.exists():
        return
    (path / "cgroup.kill").write_text("1")
    wait_until(lambda: not cgroup_pids(path), 30, "the daemon's cgroup to empty")


def spawn_daemon(env: Env) -> Daemon:
    """Start cerssd on the run's config inside the run's cgroup; wait until it answers
    and has probed every server."""
    log_path = env.root / "cerssd.log"
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process_env.pop("NOTIFY_SOCKET", None)
    procs = str(env.cgroup / "cgroup.procs")

    def join_cgroup() -> None:  # in the child, before exec: its children inherit it
        with open(procs, "w") as f:
            f.write("0")

    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(env.config)],
                                stdout=log, stderr=subprocess.STDOUT, env=process_env,
                                cwd=REPO, start_new_session=True, preexec_fn=join_cgroup)
    daemon = Daemon(proc, env.root, env.root / "control.sock", log_path)
    env.daemon = daemon

    def ready() -> bool:
        daemon.check_alive()
        try:
            status = daemon.api("GET", "/v1/status", timeout=10)
        except (DaemonUnreachable, ApiError):
            return False
        except BenchError:  # a timeout while it starts on a busy machine
            return False
        return all(status["servers"].get(n) for n in ("local", *STANDBYS))

    wait_until(ready, 120, "cerssd to answer with every server available", interval=0.2)
    return daemon


def stop_daemon(env: Env) -> None:
    daemon, env.daemon = env.daemon, None
    if daemon is None:
        return
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(60)
        except subprocess.TimeoutExpired:
            say(f"cerssd (pid {daemon.proc.pid}) did not stop within 60 s; killing it")
            daemon.proc.kill()
            daemon.proc.wait()
    kill_cgroup(env.cgroup)  # its ssh ControlMasters, if any outlived it


def crash_daemon(env: Env) -> None:
    """kill -9 of the daemon, then SIGKILL of what is left in its cgroup."""
    daemon, env.daemon = env.daemon, None
    if daemon is None:
        raise BenchError("no daemon to kill")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    kill_cgroup(env.cgroup)


@contextlib.contextmanager
def writer(volume_dir: Path, rate_mib: float) -> Iterator[subprocess.Popen[bytes]]:
    """A process that keeps writing files (1 MiB each, 32 of them in turn, so the
    volume does not grow for ever) at about ``rate_mib`` MiB/s."""
    code = ("import os, sys, time\n"
            "d, rate = sys.argv[1], float(sys.argv[2])\n"
            "os.makedirs(d, exist_ok=True)\n"
            "i = 0\n"
            "while True:\n"
            "    with open(os.path.join(d, f'w{i % 32:02d}.bin'), 'wb') as f:\n"
            "        f.write(os.urandom(1 << 20))\n"
            "    i += 1\n"
            "    time.sleep(1 / rate)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(volume_dir), str(rate_mib)],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# -- ZFS facts ---------------------------------------------------------------------------

def zfs_value(prop: str, name: str) -> str:
    return zfs("get", "-Hp", "-o", "value", prop, name).stdout.strip()


def newest_snapshot(volume: str) -> str | None:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1",
              volume, check=False).stdout.split()
    return out[-1] if out else None


def datasets(pool: str) -> list[str]:
    out = zfs("list", "-H", "-o", "name", "-t", "filesystem,volume,snapshot", "-r", pool)
    return out.stdout.split()


def userrefs(pool: str) -> dict[str, int]:
    """Snapshots of ``pool`` with user holds, and how many (zfs-fuse's ``zfs get`` has
    no ``-t``: filesystems answer ``-`` and are skipped by name)."""
    out = zfs("get", "-Hp", "-o", "name,value", "-r", "userrefs", pool)
    held = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition("\t")
        if "@" in name and value.strip() not in ("0", "-", ""):
            held[name] = int(value)
    return held


# -- convergence -----------------------------------------------------------------------

@dataclass
class Converger:
    """Waits until a cycle started after ``healed_at`` is on every slave and in the store."""

    env: Env
    healed_at: float
    extra: Callable[[], str | None] | None = None  # another condition: None when met
    _asked: float = 0.0
    _facts: dict[str, tuple[str, int]] = field(default_factory=dict)

    def master_facts(self, snapshot: str) -> tuple[str, int]:
        if snapshot not in self._facts:
            self._facts[snapshot] = (zfs_value("guid", snapshot),
                                     int(zfs_value("creation", snapshot)))
        return self._facts[snapshot]

    def pending(self) -> str | None:
        """What is still missing (None: converged)."""
        try:
            rel = self.env.relationship()
        except BenchError as exc:
            return f"relationship not readable: {exc}"
        newest = rel.get("newest_snapshot")
        idle = (all(s["activity"] is None for s in rel["slaves"])
                and all(b.get("backup") is None for b in rel.get("backups", [])))
        if newest is None:
            return self._ask(idle, "no snapshot yet")
        guid, created = self.master_facts(newest)
        if created < int(self.healed_at):
            return self._ask(idle, f"newest {newest} is from before the fault was healed")
        for s in rel["slaves"]:
            if s["state"] != "in-sync" or s["activity"] is not None:
                return f"{s['server']} {s['state']}"
            if (s["last_snapshot"] or "").partition("@")[2] != newest.partition("@")[2]:
                return f"{s['server']} has {s['last_snapshot']}, not {newest}"
        for b in rel.get("backups", []):
            if b.get("backup") is not None or b.get("last_backup_guid") != guid:
                return f"store {b['store']} has not got {newest}"
        if self.extra is not None and (missing := self.extra()) is not None:
            return missing
        return None

    def _ask(self, idle: bool, why: str) -> str:
        """A new cycle: sync-now when the relationship is idle (at most every 5 s)."""
        if idle and time.monotonic() - self._asked > 5:
            self._asked = time.monotonic()
            with contextlib.suppress(ApiError):
                self.env.api("POST", f"/v1/relationships/{RELATIONSHIP}/sync-now")
        return why

    def wait(self, timeout: float) -> float:
        """Seconds from ``healed_at`` until converged; BenchError on timeout."""
        deadline = time.monotonic() + timeout
        last = "nothing checked yet"
        while time.monotonic() < deadline:
            missing = self.pending()
            if missing is None:
                return time.time() - self.healed_at
            last = missing
            time.sleep(0.5)
        raise BenchError(f"not converged within {timeout:.0f}s: {last}")


def sync_now(env: Env) -> None:
    """Start a cycle now (the relationship may still be finishing one: then retry)."""
    def ask() -> bool:
        try:
            env.api("POST", f"/v1/relationships/{RELATIONSHIP}/sync-now")
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    wait_until(ask, 60, "sync-now to be accepted", interval=0.5)


# -- checks ----------------------------------------------------------------------------

@dataclass
class Known:
    """Leftovers seen before: reported once, by the trial that made them."""

    pinned: set[str] = field(default_factory=set)
    strays: set[str] = field(default_factory=set)


def check_all(env: Env, known: Known) -> tuple[list[str], list[str]]:
    """(failures, notes) after convergence."""
    failures: list[str] = []
    notes: list[str] = []
    rel = env.relationship()
    newest = rel["newest_snapshot"]
    label = newest.partition("@")[2]
    master_guid = zfs_value("guid", newest)

    # convergence: every slave's newest snapshot is the master's newest cycle snapshot
    for server, target in env.slaves.items():
        theirs = newest_snapshot(target)
        if theirs is None or theirs.partition("@")[2] != label:
            failures.append(f"{server}'s newest snapshot is {theirs}, not @{label}")
        elif zfs_value("guid", theirs) != master_guid:
            failures.append(f"{theirs} has guid {zfs_value('guid', theirs)}, "
                            f"master's {newest} {master_guid}")

    # stray datasets, partial receives
    strays: set[str] = set()
    for pool in env.pools:
        volume = env.volume if pool == env.master else env.slaves[
            next(s for s, t in env.slaves.items() if t.split("/")[0] == pool)]
        for name in datasets(pool):
            if name not in (pool, volume) and not name.startswith(f"{volume}@"):
                strays.add(name)
        partial = f"{volume}/%recv"
        if zfs("list", "-H", "-o", "name", partial, check=False).returncode == 0:
            strays.add(partial)
    new = strays - known.strays
    if new:
        failures.append(f"stray datasets: {', '.join(sorted(new))}")
    if strays & known.strays:
        notes.append(f"{len(strays & known.strays)} stray dataset(s) carried over")
    known.strays |= strays

    # pinned snapshots: only cerssd's hold per destination on the newest common snapshot
    pinned: dict[str, str] = {}
    for pool in env.pools:
        allowed = len(env.slaves) if pool == env.master else 1
        for snap, refs in userrefs(pool).items():
            if snap.partition("@")[2] != label:
                pinned[snap] = f"{snap} ({refs} hold(s), not the newest common snapshot)"
            elif refs > allowed:
                pinned[snap] = f"{snap} ({refs} holds, cerssd's are at most {allowed})"
    new_pins = {k: v for k, v in pinned.items() if k not in known.pinned}
    if new_pins:
        failures.append(f"pinned snapshots: {'; '.join(sorted(new_pins.values()))}")
    if set(pinned) & known.pinned:
        notes.append(f"{len(set(pinned) & known.pinned)} pinned snapshot(s) carried over")
    known.pinned |= set(pinned)

    failures += check_store(env)
    failures += check_journal(env, rel)
    return failures, notes


def check_store(env: Env) -> list[str]:
    """No backup without its manifest, the API lists exactly the complete ones, and no
    multipart upload is left."""
    failures = []
    s3 = env.s3()
    dirs: dict[str, set[str]] = {}
    token: dict[str, str] = {}
    while True:
        page = s3.list_objects_v2(Bucket=BUCKET, **token)
        for obj in page.get("Contents", []):
            directory, _, leaf = obj["Key"].rpartition("/")
            dirs.setdefault(directory, set()).add(leaf)
        if not page.get("IsTruncated"):
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    incomplete = sorted(d for d, leaves in dirs.items() if "manifest.json" not in leaves)
    if incomplete:
        failures.append(f"backups without a manifest in the bucket: {', '.join(incomplete)}")
    complete = {d.rpartition(".")[2] for d, leaves in dirs.items() if "manifest.json" in leaves}
    listed = env.api("GET", f"/v1/backups?store={STORE}")["items"]
    listed_guids = {item["guid"] for item in listed}
    if listed_guids != complete:
        failures.append(f"GET /v1/backups lists {len(listed_guids)} backups, the bucket "
                        f"has {len(complete)} with a manifest (only listed: "
                        f"{sorted(listed_guids - complete)}, only stored: "
                        f"{sorted(complete - listed_guids)})")
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if uploads:
        failures.append(f"{len(uploads)} multipart upload(s) left: "
                        + ", ".join(u["Key"] for u in uploads[:5]))
    return failures


def check_journal(env: Env, rel: dict[str, Any]) -> list[str]:
    """The journal's integrity, and nothing non-terminal that nobody will finish."""
    path = env.root / "state" / "journal.sqlite3"
    failures = []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        result = [row[0] for row in db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            failures.append(f"journal integrity_check: {'; '.join(result[:5])}")
        marks = ",".join("?" * len(TERMINAL))
        rows = db.execute(f"SELECT id, kind, state, record FROM activities "
                          f"WHERE state NOT IN ({marks})", TERMINAL).fetchall()
    finally:
        db.close()
    live = {rel.get("activity")}
    for activity_id, kind, state, record in rows:
        if activity_id in live or json.loads(record).get("self_restarting"):
            continue
        failures.append(f"activity {activity_id} ({kind}) left {state} in the journal, "
                        "not self-restarting")
    return failures


# -- trials ----------------------------------------------------------------------------

@dataclass
class Trial:
    scenario: str
    number: int
    passed: bool = False
    converge_seconds: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    point: str = ""  # where the fault hit
    hit: list[str] = field(default_factory=list)  # activities running when it hit
    effects: list[str] = field(default_factory=list)  # what became of them

    @property
    def interrupted(self) -> bool:
        """Whether the fault visibly interrupted work (a retry or a restart)."""
        return any(re.search(r"(retried|restarted) [1-9]", e) for e in self.effects)


@dataclass
class Plan:
    args: argparse.Namespace
    rng: random.Random
    cycle_seconds: float = 5.0  # a typical cycle's length, measured at warm-up
    known: Known = field(default_factory=lambda: Known())
    before_faults: list[str] = field(default_factory=list)  # check failures at warm-up


def phase(env: Env, trial: Trial) -> str:
    """Where a cycle is, in a few words (read just before a fault); the activities it
    runs are remembered, to find out after convergence whether the fault hit them."""
    try:
        rel = env.api("GET", f"/v1/relationships/{RELATIONSHIP}", timeout=5)
    except BenchError:
        return "relationship unreadable"
    parts = []
    trial.hit += [s["activity"] for s in rel["slaves"] if s.get("activity")]
    trial.hit += [b["backup"]["id"] for b in rel.get("backups", []) if b.get("backup")]
    for s in rel["slaves"]:
        progress = s.get("progress") or {}
        done = progress.get("done")
        frac = f" {done / MIB:.1f} MiB sent" if done is not None else ""
        parts.append(f"{s['server']} {s['state']}{frac}")
    for b in rel.get("backups", []):
        parts.append(f"{b['store']} {'backing up' if b.get('backup') else 'idle'}")
    return ", ".join(parts)


Progress = tuple[int, int]  # bytes done, bytes in all (0: not known yet)


def progress_of(record: dict[str, Any] | None) -> Progress:
    progress = (record or {}).get("progress") or {}
    return int(progress.get("done") or 0), int(progress.get("total") or 0)


def slave_progress(env: Env, server: str) -> Progress:
    rel = env.relationship()
    return progress_of(next(x for x in rel["slaves"] if x["server"] == server))


class Missed(Exception):
    """The work a fault was meant for ended before it could be caught in the middle."""


def wait_moving(probe: Callable[[], Progress], at: float, timeout: float, what: str,
                exact_total: bool = False) -> bool:
    """Poll fast until ``probe`` says ``at`` bytes are done (or, with ``exact_total``,
    the fraction ``at`` of the total); False if it never got there. A replication's or
    backup's total is an estimate on zfs-fuse (no ``send -nvP``), raised as bytes pass
    it, so only a restore's (from its manifests) serves as a fraction."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, total = probe()
            if done > (at * total if exact_total else at) and (total or not exact_total):
                return True
        except Missed:
            say(f"{what} ended before it could be caught in the middle")
            return False
        except (BenchError, StopIteration):
            pass
        time.sleep(0.05)
    say(f"no bytes seen for {what} within {timeout:.0f}s")
    return False


def burst(env: Env, mib: int) -> None:
    """Extra data on the master, so the next cycle has something to move for a while."""
    write_random(Path(f"/{env.volume}") / "burst.bin", mib)


def trial_kill(env: Env, plan: Plan, trial: Trial) -> float:
    delay = plan.rng.uniform(0, plan.cycle_seconds)
    sync_now(env)
    time.sleep(delay)
    trial.point = f"{delay:.1f}s into the cycle: {phase(env, trial)}"
    crash_daemon(env)
    spawn_daemon(env)
    return time.time()


def trial_cut(env: Env, plan: Plan, trial: Trial) -> float:
    down_for = plan.rng.uniform(2, 15)
    at = plan.rng.uniform(1, 16) * MIB
    for attempt in range(3):
        burst(env, 32 << attempt)
        sync_now(env)
        if wait_moving(lambda: slave_progress(env, CUT_STANDBY), at, 60,
                       f"{CUT_STANDBY}'s transfer"):
            break
    else:
        raise BenchError(f"never caught a transfer to {CUT_STANDBY} in the middle")
    trial.point = f"{phase(env, trial)}; down {down_for:.1f}s"
    env.netns.cut()
    try:
        time.sleep(down_for)
    finally:
        env.netns.restore()
    return time.time()


def backup_progress(env: Env) -> Progress:
    rel = env.relationship()
    return progress_of(rel["backups"][0].get("backup"))  # the running backup, if any


def kill_store(env: Env, plan: Plan, trial: Trial) -> float:
    down_for = plan.rng.uniform(1, 6)
    trial.point += f"; store down {down_for:.1f}s"
    env.weed.stop()  # SIGKILL of its process group
    time.sleep(down_for)
    env.weed.start(timeout=120)
    return time.time()


def trial_store_backup(env: Env, plan: Plan, trial: Trial) -> float:
    at = plan.rng.uniform(0.25, 16) * MIB
    for attempt in range(3):
        burst(env, 32 << attempt)
        sync_now(env)
        if wait_moving(lambda: backup_progress(env), at, 60, "the backup"):
            break
    else:
        raise BenchError("never caught a backup in the middle")
    trial.point = f"mid-backup: {phase(env, trial)}"
    return kill_store(env, plan, trial)


def restore_chain_start(env: Env) -> dict[str, Any]:
    """The backup to restore: the newest full one's first incremental (a short chain,
    so a restore takes about the same time whatever the trial number), else the full."""
    items = env.api("GET", f"/v1/backups?store={STORE}&volume={env.volume}")["items"]
    fulls = [i for i, item in enumerate(items) if item["kind"] == "full"]
    if not fulls:
        raise BenchError("no full backup in the store to restore")
    start = fulls[-1]
    if start + 1 < len(items) and items[start + 1]["parent_guid"] == items[start]["guid"]:
        return dict(items[start + 1])
    return dict(items[start])


def trial_store_restore(env: Env, plan: Plan,
                        trial: Trial) -> tuple[float, Callable[[], str | None]]:
    at = plan.rng.uniform(0.05, 0.7)
    for attempt in range(3):
        backup = restore_chain_start(env)
        target = f"{env.master}/restored{trial.number}x{attempt}"
        answer = env.api("POST", "/v1/restores", {"snapshot": backup["snapshot"],
                                                  "store": STORE, "server": "local",
                                                  "target_volume": target})
        restore_id = answer["id"]

        def progress(rid: str = restore_id) -> Progress:
            record = env.api("GET", f"/v1/activities/{rid}")
            if record["state"] in TERMINAL:
                raise Missed(rid)
            return progress_of(record)

        if wait_moving(progress, at, 60, "the restore", exact_total=True):
            break
        finish_restore(env, restore_id, target, backup, timeout=120)
    else:
        raise BenchError("never caught a restore in the middle")
    trial.hit.append(restore_id)
    trial.point = (f"mid-restore of {backup['snapshot'].partition('@')[2]} "
                   f"({len(answer.get('chain') or [])} in its chain)")
    healed = kill_store(env, plan, trial)
    outcome: dict[str, str | None] = {}

    def restored() -> str | None:
        if "done" not in outcome:
            record = env.api("GET", f"/v1/activities/{restore_id}")
            if record["state"] not in TERMINAL:
                return f"restore {restore_id} {record['state']}"
            outcome["done"] = finish_restore(env, restore_id, target, backup, timeout=0)
        if outcome["done"] is not None:
            raise BenchError(outcome["done"])
        return None

    return healed, restored


def finish_restore(env: Env, restore_id: str, target: str, backup: dict[str, Any],
                   timeout: float) -> str | None:
    """Check a finished restore (its guid), then remove what it made; the failure."""
    if timeout:
        wait_until(lambda: env.api("GET", f"/v1/activities/{restore_id}")["state"]
                   in TERMINAL, timeout, f"restore {restore_id} to end")
    record = env.api("GET", f"/v1/activities/{restore_id}")
    problem = None
    if record["state"] != "succeeded":
        problem = f"restore {record['state']}: {record.get('status')}"
    else:
        restored = f"{target}@{backup['snapshot'].partition('@')[2]}"
        got = zfs("get", "-Hp", "-o", "value", "guid", restored, check=False).stdout.strip()
        if got != backup["guid"]:
            problem = f"restored {restored} has guid {got or '(none)'}, backup {backup['guid']}"
    if zfs("list", "-H", target, check=False).returncode == 0:
        with contextlib.suppress(BenchError):
            wait_until(lambda: zfs("destroy", "-r", target, check=False).returncode == 0,
                       30, f"{target} to be destroyed", interval=0.5)
    return problem


def log_events(env: Env, since: int) -> dict[str, int]:
    """How often the daemon logged a stall or a lost link after byte ``since`` of its log
    (a stall stops the ``zfs send``, which on zfs-fuse may leave holds behind)."""
    counts = {"stalled": 0, "link lost": 0}
    with contextlib.suppress(OSError), open(env.root / "cerssd.log", "rb") as f:
        f.seek(since)
        for line in f:
            if b'"link lost; retrying"' in line:
                counts["link lost"] += 1
            if b"(stalled)" in line and b'"replication interrupted; retrying"' in line:
                counts["stalled"] += 1
    return counts


def run_trial(env: Env, plan: Plan, scenario: str, number: int, known: Known) -> Trial:
    trial = Trial(scenario, number)
    log_start = (env.root / "cerssd.log").stat().st_size
    timeout = plan.args.converge_timeout
    try:
        extra: Callable[[], str | None] | None = None
        if scenario == "kill":
            healed = trial_kill(env, plan, trial)
        elif scenario == "cut":
            healed = trial_cut(env, plan, trial)
        elif number % 2 == 1:
            healed = trial_store_backup(env, plan, trial)
        else:
            healed, extra = trial_store_restore(env, plan, trial)
        trial.converge_seconds = Converger(env, healed, extra).wait(timeout)
        trial.failures, trial.notes = check_all(env, known)
        trial.effects, failed = effects(env, trial.hit)
        trial.failures += failed
    except Exception as exc:  # a trial's failure is a finding; the run goes on
        trial.failures.append(str(exc) if isinstance(exc, BenchError)
                              else f"unexpected {type(exc).__name__}: {exc}")
        recover(env)
    events = log_events(env, log_start)
    if events["stalled"]:
        trial.notes.append(f"{events['stalled']} transfer(s) interrupted as stalled, "
                           f"{events['link lost']} link loss(es) logged")
    trial.passed = not trial.failures
    verdict = "passed" if trial.passed else "FAILED: " + " | ".join(trial.failures)
    took = f"{trial.converge_seconds:.1f}s" if trial.converge_seconds is not None else "-"
    say(f"{scenario} #{number}: {verdict} (converged in {took}; {trial.point}; "
        f"{'; '.join(trial.effects) or 'no activity hit'})")
    return trial


def effects(env: Env, ids: list[str]) -> tuple[list[str], list[str]]:
    """What became of the activities a fault hit (their end, retries and restarts), and
    which of them did not succeed: a transfer, backup or restore must ride out the fault
    (retry, or restart from the journal), not leave it to the next cycle."""
    found, failed = [], []
    for activity_id in dict.fromkeys(ids):
        try:
            a = env.api("GET", f"/v1/activities/{activity_id}")
        except BenchError as exc:
            found.append(f"{activity_id}: {exc}")
            continue
        found.append(f"{a['kind']} to {a.get('target')} {a['state']}, retried "
                     f"{(a.get('usage') or {}).get('retries', 0)}x, restarted "
                     f"{a.get('restarts', 0)}x")
        if a["state"] != "succeeded":
            failed.append(f"{a['kind']} {activity_id} to {a.get('target')} hit by the "
                          f"fault ended {a['state']}: {(a.get('status') or {}).get('message')}")
    return found, failed


def recover(env: Env) -> None:
    """After a failed trial: whatever the fault left down is brought back up, and a
    restore's target that was left behind is removed (once the restore has ended)."""
    env.netns.restore()
    if not env.weed.running:
        env.weed.start(timeout=120)
    if env.daemon is None or env.daemon.proc.poll() is not None:
        env.daemon = None
        kill_cgroup(env.cgroup)
        spawn_daemon(env)
    for name in datasets(env.master):
        if name.startswith(f"{env.master}/restored") and "@" not in name:
            with contextlib.suppress(BenchError):
                wait_until(lambda n=name: zfs("destroy", "-r", n, check=False).returncode
                           == 0, 120, f"{name} to be destroyed", interval=1)


# -- the run ---------------------------------------------------------------------------

def build(stack: contextlib.ExitStack, args: argparse.Namespace) -> Env:
    scratch = scratch_dir(stack, args.workdir, 3 * args.pool_mib * MIB)
    ensure_zfs_fuse(stack, scratch)
    master = make_pool(stack, scratch, args.pool_mib, "m")
    slaves = {name: f"{make_pool(stack, scratch, args.pool_mib, f's{i}')}/data"
              for i, name in enumerate(STANDBYS, 1)}
    zfs("create", f"{master}/data")
    write_random(Path(f"/{master}/data/payload.bin"), args.payload_mib)
    sshd = start_sshd(stack)
    netns = create_netns_sshd()
    cleanup(stack, remove_netns_sshd, netns)
    say(f"standby2's sshd in namespace {netns.namespace} at {netns.address}")
    root = Path(tempfile.mkdtemp(prefix="cerssd-chaos-", dir="/tmp"))
    cleanup(stack, run_rm, root, args.keep_logs)
    weed = WeedServer(root / "weed")
    weed.start()
    cleanup(stack, weed.stop)
    weed.create_bucket(BUCKET)
    config = root / "cerssd.toml"
    config.write_text(daemon_config(root, master, slaves, sshd.port, sshd.client_key,
                                    sshd.known_hosts, netns, weed, args.limit_mib * MIB))
    env = Env(root, config, master, slaves, weed, netns, make_cgroup(stack))
    cleanup(stack, stop_daemon, env)
    spawn_daemon(env)
    say(f"cerssd is up (pid {env.daemon.proc.pid if env.daemon else '?'}), state in {root}")
    return env


def run_rm(root: Path, keep_logs: Path | None) -> None:
    """Remove the run's directory; the logs are copied out first if asked."""
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for name, path in (("cerssd.log", root / "cerssd.log"),
                           ("weed.log", root / "weed" / "weed.log")):
            if path.exists():
                (keep_logs / name).write_bytes(path.read_bytes())
        say(f"logs copied to {keep_logs}")
    run(["rm", "-rf", str(root)])


def warm_up(env: Env, plan: Plan) -> None:
    """The first (full) cycle, then one incremental cycle timed: the kill window."""
    Converger(env, time.time() - 3600).wait(plan.args.converge_timeout)
    start = time.time()
    sync_now(env)
    Converger(env, start).wait(plan.args.converge_timeout)
    plan.cycle_seconds = max(1.0, time.time() - start)
    plan.before_faults, _ = check_all(env, plan.known)
    if plan.before_faults:  # a finding too: the trials report only what is new
        say(f"the checks fail before any fault: {' | '.join(plan.before_faults)}")
    say(f"warm-up done: an incremental cycle takes {plan.cycle_seconds:.1f}s")


def body(args: argparse.Namespace) -> str:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    say(f"seed {seed} (replay with --seed {seed})")
    plan = Plan(args, random.Random(seed))
    started = utc_now()
    load_before = load_average()
    trials: list[Trial] = []
    not_run: dict[str, int] = {}
    deadline = time.monotonic() + args.max_minutes * 60
    with announced_stack() as stack:
        env = build(stack, args)
        with writer(Path(f"/{env.volume}") / "writer", args.write_mib):
            warm_up(env, plan)
            known = plan.known
            for scenario, count in (("kill", args.kills), ("cut", args.cuts),
                                    ("store", args.store_kills)):
                for number in range(1, count + 1):
                    if time.monotonic() > deadline:
                        not_run[scenario] = not_run.get(scenario, 0) + 1
                        continue
                    trials.append(run_trial(env, plan, scenario, number, known))
    return report(args, seed, started, load_before, trials, not_run, plan.before_faults)


# -- the report ------------------------------------------------------------------------

SCENARIOS = {"kill": "kill -9 of the daemon mid-cycle (writer running), restart",
             "cut": f"link cut to {CUT_STANDBY} mid-transfer (netns, ip link down/up)",
             "store": "SeaweedFS kill -9 and restart, mid-backup (odd) / mid-restore (even)"}


def report(args: argparse.Namespace, seed: int, started: Any, load_before: str,
           trials: list[Trial], not_run: dict[str, int], before_faults: list[str]) -> str:
    m = machine()
    lines = [f"### Chaos: {args.kills} daemon kills, {args.cuts} link cuts, "
             f"{args.store_kills} store kills ({started:%Y-%m-%d})", "",
             f"- date: {started:%Y-%m-%d %H:%M} UTC to {utc_now():%H:%M} UTC; "
             f"`{command_line()}`; seed {seed}",
             f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, kernel {m['kernel']}, "
             f"{m['zfs_fuse']}; load average {load_before} before, {load_average()} after",
             "", "| scenario | trials | passed | fault interrupted work | converge median s "
             "| converge max s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, text in SCENARIOS.items():
        mine = [t for t in trials if t.scenario == key]
        times = [t.converge_seconds for t in mine if t.converge_seconds is not None]
        med = f"{statistics.median(times):.1f}" if times else "-"
        top = f"{max(times):.1f}" if times else "-"
        skipped = f" ({not_run[key]} not run: time limit)" if not_run.get(key) else ""
        lines.append(f"| {key}: {text} | {len(mine)}{skipped} | "
                     f"{sum(t.passed for t in mine)} | {sum(t.interrupted for t in mine)} "
                     f"| {med} | {top} |")
    if before_faults:
        lines += ["", "Before any fault (after the warm-up cycles): "
                  + " | ".join(before_faults)]
    failed = [t for t in trials if not t.passed]
    lines += ["", "Failures:" if failed else "Failures: none."]
    for t in failed:
        lines.append(f"- {t.scenario} #{t.number} ({t.point}): " + " | ".join(t.failures))
    notes = [t for t in trials if t.notes]
    if notes:
        lines += ["", "Notes:"]
        lines += [f"- {t.scenario} #{t.number}: {'; '.join(t.notes)}" for t in notes]
    lines += ["", "Fault points (first few per scenario):"]
    for key in SCENARIOS:
        for t in [t for t in trials if t.scenario == key][:5]:
            lines.append(f"- {key} #{t.number}: {t.point}; then: "
                         f"{'; '.join(t.effects) or 'no activity hit'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="daemon kill -9 trials")
    parser.add_argument("--cuts", type=int, default=20, help="link cut trials")
    parser.add_argument("--store-kills", type=int, default=20,
                        help="SeaweedFS kill trials (odd: mid-backup, even: mid-restore)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's choices")
    parser.add_argument("--converge-timeout", type=float, default=300.0,
                        help="seconds a trial may take to converge after the fault")
    parser.add_argument("--max-minutes", type=float, default=150.0,
                        help="start no trial after this many minutes")
    parser.add_argument("--payload-mib", type=int, default=48,
                        help="data on the master volume at the start")
    parser.add_argument("--write-mib", type=float, default=0.5,
                        help="the writer's rate on the master volume, MiB/s")
    parser.add_argument("--limit-mib", type=int, default=4,
                        help="bandwidth limit to standby2, MiB/s (so a cut lands mid-stream)")
    parser.add_argument("--pool-mib", type=int, default=4096,
                        help="each pool's size (sparse): the demo's retention keeps every "
                        "snapshot for 10 min, and each cycle rewrites ~50 MiB")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the pools' sparse files go")
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="copy cerssd's and weed's logs here before cleaning up")
    args = parser.parse_args()
    return bench_main("chaos", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
