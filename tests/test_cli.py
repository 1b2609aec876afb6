"""cerssctl against a real daemon: human tables, --json, control verbs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .conftest import DaemonProcess, write_file, zfs

MiB = 1 << 20


def ctl(d: DaemonProcess | None, *args: str, socket: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    path = socket or str(d.socket_path)  # type: ignore[union-attr]
    return subprocess.run([sys.executable, "-m", "cerssd.cli", "--socket", path, *args],
                          capture_output=True, text=True, timeout=120)


def test_daemon_not_running_is_one_line(tmp_path: Any) -> None:
    for args in (["status"], ["activities"], ["cancel", "abcd"]):
        r = ctl(None, *args, socket=str(tmp_path / "none.sock"))
        assert r.returncode == 1
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach cerssd" in lines[0]
        assert "is the daemon running?" in lines[0]


def test_tables_and_json(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    status = ctl(daemon, "status")
    assert status.returncode == 0 and "local=up" in status.stdout
    assert json.loads(ctl(daemon, "--json", "status").stdout)["pid"] == daemon.proc.pid
    servers = ctl(daemon, "servers").stdout
    assert "local" in servers and "pool version 23" in servers
    caps = ctl(daemon, "capabilities").stdout
    assert any(line.split() == ["incremental_send", "yes"] for line in caps.splitlines())
    assert any(line.split() == ["resumable_send", "no"] for line in caps.splitlines())
    assert f"{pool}/vol" in ctl(daemon, "volumes", "--root", pool).stdout

    created = ctl(daemon, "snapshot", "create", f"{pool}/vol@first")
    assert created.returncode == 0, created.stderr
    assert "succeeded" in created.stdout and "1 of 1 snapshots" in created.stdout
    snaps = ctl(daemon, "snapshots", f"{pool}/vol")
    assert f"{pool}/vol@first" in snaps.stdout
    listed = json.loads(ctl(daemon, "--json", "snapshots", f"{pool}/vol").stdout)
    assert listed["items"][0]["label"] == "first"

    acts = ctl(daemon, "activities").stdout.splitlines()
    assert acts[0].split()[:3] == ["id", "kind", "state"]
    aid = acts[1].split()[0]
    assert len(aid) == 16  # ids are never cut off in tables
    shown = ctl(daemon, "show", aid).stdout
    assert f"id               {aid}" in shown and "status           0 succeeded" in shown

    dup = ctl(daemon, "snapshot", "create", f"{pool}/vol@first")
    assert dup.returncode == 1 and "already exists" in dup.stdout
    gone = ctl(daemon, "snapshot", "destroy", f"{pool}/vol@first")
    assert gone.returncode == 0 and zfs("list", f"{pool}/vol@first", check=False).returncode


def test_errors_are_one_line(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    r = ctl(daemon, "show", "feedface")
    assert r.returncode == 1
    assert r.stderr.strip() == "cerssctl: Unknown Activity: no activity feedface"
    r = ctl(daemon, "snapshot", "create", f"{pool}/vol@bad name")
    assert r.returncode == 1 and "Invalid Name" in r.stderr
    r = ctl(daemon, "snapshot", "create", f"{pool}/vol")
    assert r.returncode == 1 and "pool/volume@name" in r.stderr
    r = ctl(daemon, "replicate", f"{pool}/vol@nope", "local", "local", "--target-volume",
            f"{pool}/copy")
    assert r.returncode == 1 and "Replication Conflict" in r.stderr
    assert "Traceback" not in r.stderr


def test_replicate_and_control_verbs(daemon: DaemonProcess, make_pool: Any) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    dst = make_pool()
    write_file(f"/{pool}/vol/big", 16)
    zfs("snapshot", f"{pool}/vol@s1")
    started = json.loads(ctl(daemon, "--json", "replicate", f"{pool}/vol@s1", "local", "local",
                             "--target-volume", f"{dst}/vol", "--bandwidth-limit",
                             str(4 * MiB)).stdout)
    aid = started["id"]
    daemon.wait_activity(aid, lambda a: a["progress"]["done"] > MiB, what="bytes to flow")
    assert ctl(daemon, "suspend", aid).stdout.strip() == f"{aid} suspended"
    assert ctl(daemon, "resume", aid).stdout.strip() == f"{aid} running"
    assert ctl(daemon, "cancel", aid).stdout.strip() == f"{aid} cancelling"
    assert daemon.wait_done(aid)["state"] == "cancelled"
    waited = ctl(daemon, "replicate", f"{pool}/vol@s1", "local", "local", "--target-volume",
                 f"{dst}/vol", "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "succeeded" in waited.stdout and "state            succeeded" in waited.stdout
    assert zfs("get", "-Hp", "-o", "value", "guid", f"{dst}/vol@s1").stdout == zfs(
        "get", "-Hp", "-o", "value", "guid", f"{pool}/vol@s1").stdout


def test_volumes_pages_and_says_how_many(start_daemon: Any, pool: str) -> None:
    for name in ("a", "b", "c"):
        zfs("create", f"{pool}/{name}")
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\npools = ["{pool}"]\n')
    everything = json.loads(ctl(d, "--json", "volumes").stdout)
    assert [v["name"] for v in everything["items"]] == [pool, f"{pool}/a", f"{pool}/b",
                                                         f"{pool}/c"]
    assert everything["total"] == 4 and everything["roots"] == [pool]
    one = ctl(d, "volumes", "--limit", "1", "--offset", "2")
    assert one.returncode == 0, one.stderr
    assert f"{pool}/b" in one.stdout and f"{pool}/a" not in one.stdout
    assert one.stdout.strip().splitlines()[-1] == f"1 of 4 volumes ({pool})"
    bad = ctl(d, "volumes", "--limit", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr
