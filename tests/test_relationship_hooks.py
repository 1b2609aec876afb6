"""Hooks around a relationship's snapshots on real zfs-fuse: ordering (a marker the pre
hook writes is in the snapshot, one the post hook writes is not), a failing pre that
skips the cycle visibly, ``continue``, a timeout, a restart that must not run hooks
again, a tree, and the config errors (``cerssd.hooks``, docs/hooks.md)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import EX_CONFIG

from .conftest import SLOW, DaemonProcess, post_json, wait_until, zfs
from .test_hooks import gone, script
from .test_relationships import (
    LOCAL_SLAVES,
    metric,
    relationship_config,
    show,
    wait_in_sync,
)
from .test_replicate_local import guid, snapshots


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str, str]:
    master, a, b = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    return master, a, b


def ours(volume: str, name: str = "web") -> list[str]:
    return [s for s in snapshots(volume) if s.startswith(f"cerssd-{name}-")]


def hooks_line(pre: str | None = None, post: str | None = None, **more: str) -> str:
    parts = [f"{k} = {json.dumps([v])}" for k, v in (("pre", pre), ("post", post)) if v]
    parts += [f"{k} = {json.dumps(v)}" for k, v in more.items()]
    return f"hooks = {{ {', '.join(parts)} }}\n"


def start(start_daemon: Any, pools: tuple[str, str, str], hooks: str) -> DaemonProcess:
    master, a, b = pools
    config = LOCAL_SLAVES + relationship_config(
        "web", f"{master}/data", {"a": f"{a}/data", "b": f"{b}/data"}, extra=hooks)
    d: DaemonProcess = start_daemon(extra=config)
    return d


def skipped(d: DaemonProcess, n: int) -> dict[str, Any]:
    result: dict[str, Any] = wait_until(
        lambda: (r := show(d, "web"))["skipped_cycles"] >= n and r, SLOW,
        what=f"{n} skipped cycles")
    return result


def sync_now(d: DaemonProcess) -> None:
    assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202


def kill_in_post(d: Any, post_pid: Path, release: Path) -> None:
    """SIGKILL the daemon while its post hook (which wrote ``post_pid`` and waits for
    ``release``) runs; then let the orphaned hook end."""
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    release.touch()
    pid = int(post_pid.read_text())
    wait_until(lambda: gone(pid), 10, what="the orphaned post hook to end")
    post_pid.unlink()


def test_pre_runs_before_the_snapshot_and_post_after(
        start_daemon: Any, pools: tuple[str, str, str], tmp_path: Path) -> None:
    master, a, _ = pools
    pre = script(tmp_path, "pre", f'echo "$CERSSD_STAGE $CERSSD_VOLUME '
                 f'$CERSSD_SNAPSHOT_LABEL $CERSSD_SERVER" > /{master}/data/marker\n'
                 'echo frozen\n')
    post = script(tmp_path, "post", f"echo after > /{master}/data/after\necho thawed >&2\n")
    d = start(start_daemon, pools, hooks_line(pre, post, timeout="20s"))
    r = wait_in_sync(d, "web")
    label = r["newest_snapshot"].split("@")[1]
    # what the snapshot holds: pre's marker (it ran before), not post's file (after)
    zfs("clone", f"{master}/data@{label}", f"{master}/check")
    assert Path(f"/{master}/check/marker").read_text() == \
        f"pre {master}/data {label} local\n"
    assert not Path(f"/{master}/check/after").exists()
    assert Path(f"/{master}/data/after").read_text() == "after\n"
    assert guid(f"{a}/data@{label}") == guid(r["newest_snapshot"])
    last = r["last_hooks"]
    assert (last["label"], last["outcome"]) == (label, "taken")
    assert [(x["stage"], x["exit_status"], x["output"]) for x in last["runs"]] == [
        ("pre", 0, "frozen\n"), ("post", 0, "thawed\n")]
    assert r["hooks"] == {"pre": [pre], "post": [post], "timeout": 20.0,
                          "on_pre_failure": "skip"}
    assert r["skipped_cycles"] == 0 and r["last_error"] is None
    activity = d.api("GET", f"/v1/activities/{r['activity']}")
    assert activity["params"]["last_hooks"]["runs"] == last["runs"]
    logged = [json.loads(line) for line in d.log().splitlines()
              if '"snapshot hook ran"' in line]
    assert [(e["stage"], e["output"]) for e in logged] == [("pre", "frozen\n"),
                                                           ("post", "thawed\n")]


def test_a_failing_pre_skips_the_cycle_and_the_slaves_keep_the_last_snapshot(
        start_daemon: Any, pools: tuple[str, str, str], tmp_path: Path) -> None:
    master, a, b = pools
    flag, posts = tmp_path / "busy", tmp_path / "posts"
    pre = script(tmp_path, "pre", f'if [ -e {flag} ]; then echo "database busy" >&2; '
                 'exit 2; fi\n')
    post = script(tmp_path, "post", f"echo $CERSSD_SNAPSHOT_LABEL >> {posts}\n")
    d = start(start_daemon, pools, hooks_line(pre, post))
    first = wait_in_sync(d, "web")["newest_snapshot"]
    flag.touch()
    sync_now(d)
    r = skipped(d, 1)
    assert r["newest_snapshot"] == first and ours(f"{master}/data") == [first.split("@")[1]]
    last = r["last_hooks"]
    assert last["outcome"] == "skipped" and last["label"] != first.split("@")[1]
    pre_run, post_run = last["runs"]
    assert (pre_run["exit_status"], pre_run["output"]) == (2, "database busy\n")
    assert post_run["stage"] == "post" and post_run["exit_status"] == 0
    assert posts.read_text().split() == [first.split("@")[1], last["label"]]
    assert r["last_error"].startswith("snapshot skipped: pre hook")
    assert "database busy" in r["last_error"]
    assert r["state"] == "running" and r["cycles"] == 1
    assert d.api("GET", f"/v1/activities/{r['activity']}")["state"] == "running"
    assert all(s["state"] == "in-sync" for s in r["slaves"])
    assert "relationship cycle skipped its snapshot" in d.log()
    assert metric(d.api("GET", "/metrics"), "cerssd_relationship_skipped_cycles_total",
                  relationship="web") == 1.0
    cli = subprocess.run([sys.executable, "-m", "cerssd.cli", "--socket", str(d.socket_path),
                          "relationship", "show", "web"], capture_output=True, text=True)
    assert re.search(r"last hooks +snapshot skipped at .*: pre exit 2; post exit 0",
                     cli.stdout) and re.search(r"skipped cycles +1\n", cli.stdout), \
        cli.stdout + cli.stderr
    # the operator fixes it: the next cycle snapshots again and the error clears
    flag.unlink()
    sync_now(d)
    r = wait_until(lambda: (x := show(d, "web"))["cycles"] == 2 and x, SLOW,
                   what="a second cycle")
    r = wait_in_sync(d, "web")
    assert r["newest_snapshot"] != first and r["last_error"] is None
    assert r["last_hooks"]["outcome"] == "taken" and r["skipped_cycles"] == 1
    for pool in (a, b):
        assert ours(f"{pool}/data") == ours(f"{master}/data")


def test_a_failing_pre_with_continue_takes_the_snapshot(
        start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master = pools[0]
    d = start(start_daemon, pools, hooks_line("/bin/false", on_pre_failure="continue"))
    r = wait_in_sync(d, "web")
    assert ours(f"{master}/data") == [r["newest_snapshot"].split("@")[1]]
    assert r["last_hooks"]["outcome"] == "taken" and r["skipped_cycles"] == 0
    assert [(x["stage"], x["exit_status"]) for x in r["last_hooks"]["runs"]] == [("pre", 1)]


def test_a_pre_that_times_out_is_killed_with_its_children_and_skips(
        start_daemon: Any, pools: tuple[str, str, str], tmp_path: Path) -> None:
    master = pools[0]
    pids = tmp_path / "pids"
    pre = script(tmp_path, "pre", f"""
(trap '' TERM; echo $(exec sh -c 'echo $PPID') >> {pids}; exec sleep 300) &
echo $$ >> {pids}
echo waiting for the database
sleep 300
""")
    d = start(start_daemon, pools, hooks_line(pre, timeout="1s"))
    r = skipped(d, 1)
    pre_run = r["last_hooks"]["runs"][0]
    assert pre_run["timed_out"] and pre_run["exit_status"] is None
    assert pre_run["output"] == "waiting for the database\n"
    assert "timed out after" in r["last_error"]
    assert ours(f"{master}/data") == [] and r["newest_snapshot"] is None
    started = [int(x) for x in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:
        wait_until(lambda p=pid: gone(p), 10, what=f"hook process {pid} to be killed")


def test_a_cycle_resumed_after_its_snapshot_runs_no_hook_again(
        start_daemon: Any, pools: tuple[str, str, str], tmp_path: Path) -> None:
    """The daemon is killed while post runs (the snapshot made): the restarted daemon
    finishes that cycle with the same snapshot and runs neither hook again."""
    master, a, b = pools
    pres, post_pid, release = tmp_path / "pres", tmp_path / "post.pid", tmp_path / "release"
    pre = script(tmp_path, "pre", f"echo $CERSSD_SNAPSHOT_LABEL >> {pres}\n")
    post = script(tmp_path, "post", f"echo $$ > {post_pid}\n"
                  f"while [ ! -e {release} ]; do sleep 0.1; done\n")
    d = start(start_daemon, pools, hooks_line(pre, post, timeout="5m"))
    wait_until(lambda: post_pid.exists() and post_pid.read_text().strip(), SLOW,
               what="the post hook to run")
    taken = ours(f"{master}/data")
    assert len(taken) == 1 and pres.read_text().split() == taken
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    release.touch()  # the orphaned post hook ends
    pid = int(post_pid.read_text())
    wait_until(lambda: gone(pid), 10, what="the orphaned post hook to end")
    post_pid.unlink()
    d2 = start_daemon(config_path=d.config_path)
    r = wait_in_sync(d2, "web")
    assert r["newest_snapshot"] == f"{master}/data@{taken[0]}"
    assert ours(f"{master}/data") == taken
    assert pres.read_text().split() == taken and not post_pid.exists()
    for pool in (a, b):
        assert ours(f"{pool}/data") == taken


def test_a_tree_runs_its_hooks_around_one_snapshot_of_every_member(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    master, slave = make_pool(), make_pool()
    root = f"{master}/t"
    for name in ("", "/a", "/b"):
        zfs("create", root + name)
    flag = tmp_path / "busy"
    pre = script(tmp_path, "pre", f"[ ! -e {flag} ] || exit 1\n"
                 f'echo "$CERSSD_VOLUMES" > /{root}/a/marker\n')
    config = ('[servers.local]\nkind = "local"\n[servers.s]\nkind = "local"\n'
              f'[relationships.t]\nvolume = "{root}"\nrecursive = true\ninterval = "1h"\n'
              f'slaves = [{{server = "s", target_volume = "{slave}/t"}}]\n'
              + hooks_line(pre))
    d = start_daemon(extra=config)
    r = wait_until(lambda: (x := d.api("GET", "/v1/relationships/t"))["cycles"] == 1
                   and x["tree"]["slaves"]["s"]["in_sync"] == 3 and x, SLOW,
                   what="the tree's first cycle")
    label = r["last_hooks"]["label"]
    assert r["last_hooks"]["outcome"] == "taken"
    zfs("clone", f"{root}/a@{label}", f"{master}/check")
    assert Path(f"/{master}/check/marker").read_text().split() == \
        [root, f"{root}/a", f"{root}/b"]
    flag.touch()
    assert post_json(d, "/v1/relationships/t/sync-now", {}).status == 202
    r = wait_until(lambda: (x := d.api("GET", "/v1/relationships/t"))["skipped_cycles"] == 1
                   and x, SLOW, what="a skipped tree cycle")
    assert r["last_hooks"]["outcome"] == "skipped" and r["cycles"] == 1
    for name in ("", "/a", "/b"):
        assert [s for s in snapshots(root + name) if s.startswith("cerssd-t-")] == [label]


def test_a_tree_cycle_resumed_after_its_snapshot_runs_no_hook_again(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    master, slave = make_pool(), make_pool()
    root = f"{master}/t"
    for name in ("", "/a"):
        zfs("create", root + name)
    pres, post_pid, release = tmp_path / "pres", tmp_path / "post.pid", tmp_path / "release"
    pre = script(tmp_path, "pre", f"echo $CERSSD_SNAPSHOT_LABEL >> {pres}\n")
    post = script(tmp_path, "post", f"echo $$ > {post_pid}\n"
                  f"while [ ! -e {release} ]; do sleep 0.1; done\n")
    config = ('[servers.local]\nkind = "local"\n[servers.s]\nkind = "local"\n'
              f'[relationships.t]\nvolume = "{root}"\nrecursive = true\ninterval = "1h"\n'
              f'slaves = [{{server = "s", target_volume = "{slave}/t"}}]\n'
              + hooks_line(pre, post, timeout="5m"))
    d = start_daemon(extra=config)
    wait_until(lambda: post_pid.exists() and post_pid.read_text().strip(), SLOW,
               what="the post hook to run")
    label = pres.read_text().strip()
    kill_in_post(d, post_pid, release)
    d2 = start_daemon(config_path=d.config_path)
    wait_until(lambda: (x := d2.api("GET", "/v1/relationships/t"))["cycles"] == 1
               and x["tree"]["slaves"]["s"]["in_sync"] == 2, SLOW,
               what="the resumed cycle to finish")
    assert pres.read_text().split() == [label] and not post_pid.exists()
    for name in ("", "/a"):
        assert [s for s in snapshots(root + name) if s.startswith("cerssd-t-")] == [label]
        assert guid(f"{slave}/t{name}@{label}") == guid(f"{root}{name}@{label}")


def test_a_hook_command_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(LOCAL_SLAVES + relationship_config(
        "web", "tank/data", {"a": "other/data"},
        extra=hooks_line("/usr/sbin/no-such-fsfreeze")))
    result = subprocess.run([sys.executable, "-m", "cerssd", "--config", str(config),
                             "--check-config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == EX_CONFIG
    assert "relationships.web.hooks.pre: /usr/sbin/no-such-fsfreeze does not exist" in \
        result.stderr, result.stderr


def test_the_api_cannot_define_hooks(start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, a, _ = pools
    d = start_daemon(extra=LOCAL_SLAVES)
    made = post_json(d, "/v1/relationships", {
        "name": "api1", "volume": f"{master}/data", "interval": "1h",
        "slaves": [{"server": "a", "target_volume": f"{a}/data"}],
        "hooks": {"pre": ["/bin/true"]}})
    assert made.status in (400, 422) and "hooks" in json.dumps(made.body), made.body


# -- the PostgreSQL example of docs/hooks.md, against a real server -------------------

def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL's server is needed (scripts/setup installs postgresql)"
    return found[-1].parent


def as_postgres(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/sbin/runuser", "-u", "postgres", "--", *map(str, argv)],
                          capture_output=True, text=True, check=check, timeout=120)


def lsn(text: str) -> int:
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) | int(low, 16)


class Postgres:
    """A PostgreSQL server on a data directory, reached by its own socket directory."""

    def __init__(self, data: Path, sockets: Path) -> None:
        self.data, self.sockets = data, sockets
        self.bin = postgres_bin()

    def start(self) -> None:
        as_postgres(self.bin / "pg_ctl", "-D", self.data, "-l", self.sockets / "log", "-w",
                    "-o", f"-k {self.sockets} -h ''", "start")

    def stop(self) -> None:
        as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop",
                    check=False)

    def psql_argv(self, sql: str) -> list[str]:
        return ["/usr/sbin/runuser", "-u", "postgres", "--", "/usr/bin/psql", "-X", "-q",
                "-At", "-h", str(self.sockets), "-d", "postgres", "-c", sql]

    def sql(self, sql: str) -> str:
        return subprocess.run(self.psql_argv(sql), capture_output=True, text=True,
                              check=True, timeout=120).stdout.strip()


def socket_dir() -> Path:
    """Short (a socket path has at most 107 bytes), owned by postgres."""
    path = Path(tempfile.mkdtemp(prefix="cerssd-pg-"))
    shutil.chown(path, "postgres")
    return path


def test_the_postgresql_checkpoint_hook_runs_before_the_snapshot(
        start_daemon: Any, make_pool: Any) -> None:
    """docs/hooks.md's PostgreSQL example: CHECKPOINT as pre. The snapshot's control file
    names a checkpoint after the last insert (without the hook none would have run for
    five minutes), and a server started on a clone of the snapshot has the row."""
    master, slave = make_pool(), make_pool()
    zfs("create", f"{master}/pg")
    shutil.chown(f"/{master}/pg", "postgres")
    data = Path(f"/{master}/pg/data")
    as_postgres(postgres_bin() / "initdb", "-D", data, "-A", "trust", "--no-sync")
    servers = [Postgres(data, socket_dir())]
    try:
        pg = servers[0]
        pg.start()
        pg.sql("CREATE TABLE t (x int)")
        pg.sql("INSERT INTO t VALUES (42)")
        written = lsn(pg.sql("SELECT pg_current_wal_insert_lsn()"))
        hooks = f"hooks = {{ pre = {json.dumps(pg.psql_argv('CHECKPOINT'))}, " \
            'on_pre_failure = "continue", timeout = "5m" }\n'
        config = '[servers.local]\nkind = "local"\n[servers.s]\nkind = "local"\n' + \
            relationship_config("pg", f"{master}/pg", {"s": f"{slave}/pg"}, extra=hooks)
        d = start_daemon(extra=config)
        r = wait_until(lambda: (x := d.api("GET", "/v1/relationships/pg"))["newest_snapshot"]
                       and x, SLOW, what="the first snapshot")
        assert [x["exit_status"] for x in r["last_hooks"]["runs"]] == [0], r["last_hooks"]
        label = r["newest_snapshot"].split("@")[1]
        zfs("clone", f"{master}/pg@{label}", f"{master}/restored")
        restored = Path(f"/{master}/restored/data")
        control = as_postgres(postgres_bin() / "pg_controldata", restored).stdout
        redo = next(line for line in control.splitlines()
                    if line.startswith("Latest checkpoint's REDO location:"))
        assert lsn(redo.split(":", 1)[1]) >= written, (control, hex(written))
        (restored / "postmaster.pid").unlink()  # the clone's copy names the live server
        servers.append(Postgres(restored, socket_dir()))
        servers[1].start()
        assert servers[1].sql("SELECT x FROM t") == "42"
    finally:
        for server in reversed(servers):
            server.stop()
            shutil.rmtree(server.sockets, ignore_errors=True)
