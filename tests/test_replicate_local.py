"""snapshot_replicate between two local pools on real zfs-fuse, as controllable activities.

Streams are slowed with the bandwidth limit so that suspend, cancel and kill -9
land mid-transfer for certain.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import DaemonProcess, make_writable, write_file, zfs
from .conftest import replicate as replicate_between

MiB = 1 << 20


def guid(name: str) -> str:
    return zfs("get", "-Hp", "-o", "value", "guid", name).stdout.strip()


def snapshots(volume: str) -> list[str]:
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", volume, check=False).stdout
    return [line.split("@")[1] for line in out.splitlines() if line.startswith(volume + "@")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zfs_streams(pools: tuple[str, ...]) -> list[str]:
    """The zfs send/receive processes on these pools (other tests and benchmarks may run)."""
    out = subprocess.run(["pgrep", "-a", "-x", "zfs"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if (" send " in line or " receive " in line)
            and any(f" {pool}/" in line or f" {pool}@" in line for pool in pools)]


def replicate(d: DaemonProcess, snapshot: str, target: str, **extra: Any) -> Any:
    """Between two pools of the local server."""
    return replicate_between(d, snapshot, "local", "local", target, **extra)


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str]:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    return src, dst


def test_full_then_incremental_with_guid_and_content(start_daemon: Any,
                                                     pools: tuple[str, str]) -> None:
    src, dst = pools
    write_file(f"/{src}/data/a", 8)
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon()
    r = replicate(d, f"{src}/data@s1", f"{dst}/data")
    assert r.status == 202 and r.body["plan"] == "full" and r.body["self_restarting"]
    done = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert guid(f"{dst}/data@s1") == guid(f"{src}/data@s1")
    assert done["progress"]["done"] == done["progress"]["total"] > 8 * MiB
    assert done["usage"]["bytes_on_wire"] == done["progress"]["done"]
    usage = done["usage"]
    assert usage["rate_bytes_per_second"] == pytest.approx(
        usage["bytes_read"] / usage["elapsed_seconds"], rel=0.01)
    assert digest(Path(f"/{dst}/data/a")) == digest(Path(f"/{src}/data/a"))

    write_file(f"/{src}/data/b", 4)
    zfs("snapshot", f"{src}/data@s2")
    r = replicate(d, f"{src}/data@s2", f"{dst}/data")
    assert r.body["plan"] == "incremental"
    done = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert guid(f"{dst}/data@s2") == guid(f"{src}/data@s2")
    assert 4 * MiB < done["usage"]["bytes_read"] < 6 * MiB  # only the delta went
    assert digest(Path(f"/{dst}/data/b")) == digest(Path(f"/{src}/data/b"))

    again = replicate(d, f"{src}/data@s2", f"{dst}/data")
    assert again.body["plan"] == "up-to-date"
    assert d.wait_done(again.body["id"])["state"] == "succeeded"


def test_intermediates_are_carried(start_daemon: Any, pools: tuple[str, str]) -> None:
    src, dst = pools
    for label in ("s1", "s2", "s3"):
        write_file(f"/{src}/data/{label}", 1)
        zfs("snapshot", f"{src}/data@{label}")
    d = start_daemon()
    d.wait_done(replicate(d, f"{src}/data@s1", f"{dst}/data").body["id"])
    r = replicate(d, f"{src}/data@s3", f"{dst}/data", intermediates=True)
    assert d.wait_done(r.body["id"])["state"] == "succeeded"
    assert snapshots(f"{dst}/data") == ["s1", "s2", "s3"]
    assert guid(f"{dst}/data@s2") == guid(f"{src}/data@s2")


def test_conflicts_answer_409_and_touch_nothing(start_daemon: Any,
                                               pools: tuple[str, str]) -> None:
    src, dst = pools
    zfs("snapshot", f"{src}/data@s1")
    zfs("create", f"{dst}/other")
    zfs("snapshot", f"{dst}/other@mine")
    d = start_daemon()
    cases = [
        (f"{src}/data@nope", f"{dst}/x", "source-snapshot-missing", "does not exist"),
        (f"{src}/data@s1", "nopool/x", "target-pool-missing", "pool nopool does not exist"),
        (f"{src}/data@s1", f"{dst}/no/parent", "target-pool-missing", "parent dataset"),
        (f"{src}/data@s1", f"{dst}/other", "no-common-snapshot", "shares no snapshot"),
    ]
    for snapshot, target, code, text in cases:
        r = replicate(d, snapshot, target)
        assert r.status == 409, r.body
        assert r.body["code"] == code and text in r.body["detail"]
    assert snapshots(f"{dst}/other") == ["mine"]
    r = replicate(d, f"{src}/data@s1", f"{dst}/other", force_full_copy=True)
    assert r.status == 409 and r.body["code"] == "target-exists"
    # diverged: the target took a snapshot of its own after the common base
    d.wait_done(replicate(d, f"{src}/data@s1", f"{dst}/data").body["id"])
    zfs("snapshot", f"{dst}/data@local-change")
    zfs("snapshot", f"{src}/data@s2")
    r = replicate(d, f"{src}/data@s2", f"{dst}/data")
    assert r.status == 409 and r.body["code"] == "target-diverged"
    assert "local-change" in r.body["detail"]
    assert snapshots(f"{dst}/data") == ["s1", "local-change"]
    assert zfs_streams(pools) == []


def test_modified_target_fails_with_conflict_and_keeps_data(start_daemon: Any,
                                                           pools: tuple[str, str]) -> None:
    src, dst = pools
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon()
    d.wait_done(replicate(d, f"{src}/data@s1", f"{dst}/data").body["id"])
    with pytest.raises(OSError, match="Read-only file system"):  # the replica is read-only
        write_file(f"/{dst}/data/local-write", 1)
    make_writable(f"{dst}/data")  # an operator writes on the replica anyway
    write_file(f"/{dst}/data/local-write", 1)
    write_file(f"/{src}/data/new", 1)
    zfs("snapshot", f"{src}/data@s2")
    done = d.wait_done(replicate(d, f"{src}/data@s2", f"{dst}/data").body["id"])
    assert done["state"] == "failed" and done["status"]["code"] == 4
    assert "was modified" in done["status"]["message"]
    assert Path(f"/{dst}/data/local-write").exists()
    assert snapshots(f"{dst}/data") == ["s1"]


def slow_stream(start_daemon: Any, pools: tuple[str, str], mib: int = 24) -> tuple[
        DaemonProcess, str, str]:
    src, dst = pools
    write_file(f"/{src}/data/big", mib)
    zfs("snapshot", f"{src}/data@s1")
    return start_daemon(), src, dst


def test_suspend_stops_bytes_and_resume_completes(start_daemon: Any,
                                                  pools: tuple[str, str]) -> None:
    d, src, dst = slow_stream(start_daemon, pools)
    aid = replicate(d, f"{src}/data@s1", f"{dst}/data",
                    bandwidth_limit=4 * MiB).body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    assert d.api("POST", f"/v1/activities/{aid}/suspend")["state"] == "suspended"
    paused = d.api("GET", f"/v1/activities/{aid}")["progress"]["done"]
    waited = time.monotonic()
    still = d.api("GET", f"/v1/activities/{aid}?wait=2")  # long-poll times out: 2 s window
    assert time.monotonic() - waited >= 1.9
    assert still["state"] == "suspended"
    assert still["progress"]["done"] - paused <= 1 * MiB  # at most one chunk in flight
    assert len(zfs_streams(pools)) == 2  # the sender is blocked, not killed
    metrics = d.api("GET", "/metrics")
    labels = f'id="{aid}",kind="replicate",unit="bytes",volume="{src}/data"'
    assert f"cerssd_activity_suspended{{{labels}}} 1.0" in metrics
    done_line = next(line for line in metrics.splitlines()
                     if line.startswith(f"cerssd_activity_progress_done{{{labels}}}"))
    assert float(done_line.split()[-1]) == still["progress"]["done"]
    assert d.api("POST", f"/v1/activities/{aid}/resume")["state"] == "running"
    done = d.wait_done(aid)
    assert done["state"] == "succeeded", done["status"]
    assert guid(f"{dst}/data@s1") == guid(f"{src}/data@s1")


def test_cancel_mid_transfer_leaves_target_at_previous_snapshot(
        start_daemon: Any, pools: tuple[str, str]) -> None:
    src, dst = pools
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon()
    d.wait_done(replicate(d, f"{src}/data@s1", f"{dst}/data").body["id"])
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s2")
    aid = replicate(d, f"{src}/data@s2", f"{dst}/data",
                    bandwidth_limit=4 * MiB).body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    assert d.api("POST", f"/v1/activities/{aid}/cancel")["state"] == "cancelling"
    done = d.wait_done(aid)
    assert done["state"] == "cancelled" and done["status"]["code"] == 2
    assert snapshots(f"{dst}/data") == ["s1"]
    assert not Path(f"/{dst}/data/big").exists()
    assert zfs_streams(pools) == []


def test_cancel_of_a_full_copy_leaves_no_target(start_daemon: Any,
                                                pools: tuple[str, str]) -> None:
    d, src, dst = slow_stream(start_daemon, pools)
    aid = replicate(d, f"{src}/data@s1", f"{dst}/data",
                    bandwidth_limit=4 * MiB).body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    d.api("POST", f"/v1/activities/{aid}/cancel")
    assert d.wait_done(aid)["state"] == "cancelled"
    assert zfs("list", f"{dst}/data", check=False).returncode != 0
    assert zfs_streams(pools) == []


def test_kill_9_mid_transfer_then_restart_completes(start_daemon: Any,
                                                    pools: tuple[str, str]) -> None:
    d, src, dst = slow_stream(start_daemon, pools, mib=16)
    aid = replicate(d, f"{src}/data@s1", f"{dst}/data",
                    bandwidth_limit=4 * MiB).body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    d.stop(signal.SIGKILL)
    d2 = start_daemon(config_path=d.config_path)
    again = d2.api("GET", f"/v1/activities/{aid}")
    assert again["restarts"] == 1 and again["state"] in ("pending", "running")
    done = d2.wait_done(aid)
    assert done["state"] == "succeeded", done["status"]
    assert guid(f"{dst}/data@s1") == guid(f"{src}/data@s1")
    assert '"activity restarted after daemon restart"' in d2.log()
