"""btrfs -> btrfs replication through the daemon: a local btrfs master, a btrfs slave behind
an sshd in a network namespace (the same loop-mounted filesystem, another root), every
command and stream over SSH. The trees' sha256 must match; a cancel, a kill -9 of the
daemon and a link cut leave nothing half-received; a relationship runs its cycles.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .btrfs_fs import btrfs
from .conftest import DaemonProcess, replicate, replicate_ok, wait_until, write_file
from .sshd import NetnsSshServer

MiB = 1 << 20
FAST_RETRIES = 'stall_timeout = "5s"\nretry_max_interval = "2s"\nretry_deadline = "5m"\n'


def tree_sha256(path: Path) -> str:
    """Names and contents of every file below ``path``, in order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def received_uuid(path: Path) -> str:
    out = btrfs("subvolume", "show", str(path)).stdout
    return next(line.split()[2] for line in out.splitlines() if "Received UUID" in line)


def own_uuid(path: Path) -> str:
    out = btrfs("subvolume", "show", str(path)).stdout
    return next(line.split()[1] for line in out.splitlines() if line.strip().startswith("UUID"))


def leftovers(root: Path) -> list[str]:
    """Whatever a receive left in a volume's receive directory (a partial subvolume; the
    directory itself stays for the next receive)."""
    top = root / ".cerssd-receiving"
    return sorted(str(p.relative_to(top)) for p in top.glob("*@/*"))


class Setup:
    def __init__(self, d: DaemonProcess, master: Path, slave: Path, ns: NetnsSshServer):
        self.d, self.master, self.slave, self.ns = d, master, slave, ns
        self.mpool, self.spool = master.name, slave.name

    def snap(self, volume: str, label: str) -> None:
        snapshot = self.master / ".cerssd-snapshots" / f"{volume}@{label}"
        snapshot.mkdir(parents=True)
        btrfs("subvolume", "snapshot", "-r", str(self.master / volume),
              str(snapshot / f"{volume}@{label}"))

    def snapshots(self, volume: str) -> list[str]:
        top = self.slave / ".cerssd-snapshots"
        return sorted(p.name.partition("@")[2] for p in top.glob(f"{volume}@*"))


@pytest.fixture
def setup(start_daemon: Any, make_btrfs_root: Callable[[], Path],
          netns_sshd: NetnsSshServer) -> Callable[..., Setup]:
    def make(extra: Callable[[str, str], str] | None = None) -> Setup:
        master, slave = make_btrfs_root(), make_btrfs_root()
        btrfs("subvolume", "create", str(master / "data"))
        write_file(master / "data" / "f0", 1)
        config = (netns_sshd.config("remote", extra=f'backend = "btrfs"\nroot = "{slave}"\n')
                  + f'[servers.local]\nkind = "local"\nbackend = "btrfs"\nroot = "{master}"\n'
                  + (extra(master.name, slave.name) if extra else ""))
        d = start_daemon(extra=config, daemon_extra=FAST_RETRIES)
        return Setup(d, master, slave, netns_sshd)
    return make


def test_full_and_incremental_over_ssh_keep_the_tree_and_identity(
        setup: Callable[..., Setup]) -> None:
    s = setup()
    servers = {x["name"]: x for x in s.d.api("GET", "/v1/servers")["items"]}
    assert servers["remote"]["available"] and servers["remote"]["backend"] == "btrfs"
    assert "holds" not in servers["remote"]["capabilities"]
    assert s.d.api("GET", "/v1/capabilities")["remote"]["incremental_send"] is True
    write_file(s.master / "data" / "f1", 8)
    (s.master / "data" / "dir").mkdir()
    write_file(s.master / "data" / "dir" / "f2", 2)
    s.snap("data", "s1")
    done = replicate_ok(s.d, f"{s.mpool}/data@s1", "local", "remote", f"{s.spool}/copy")
    assert done["result"]["mode"] == "full" if "result" in done else True
    assert tree_sha256(s.slave / "copy") == tree_sha256(s.master / "data")
    got = s.slave / ".cerssd-snapshots" / "copy@s1" / "copy@s1"
    assert received_uuid(got) == own_uuid(s.master / ".cerssd-snapshots" / "data@s1" / "data@s1")
    assert btrfs("property", "get", "-ts", str(s.slave / "copy"), "ro").stdout.strip() \
        == "ro=true"  # a replica is read-only

    write_file(s.master / "data" / "f3", 4)
    (s.master / "data" / "f1").unlink()
    s.snap("data", "s2")
    s.snap("data", "s3")
    replicate_ok(s.d, f"{s.mpool}/data@s3", "local", "remote", f"{s.spool}/copy",
                 intermediates=True)
    assert s.snapshots("copy") == ["s1", "s2", "s3"]
    assert tree_sha256(s.slave / "copy") == tree_sha256(s.master / "data")
    listed = s.d.api("GET", f"/v1/volumes/{s.spool}/copy/snapshots?server=remote")["items"]
    source = s.d.api("GET", f"/v1/volumes/{s.mpool}/data/snapshots?server=local")["items"]
    assert [x["guid"] for x in listed] == [x["guid"] for x in source]
    assert leftovers(s.slave) == []


def test_cancel_mid_transfer_leaves_nothing_half_received(setup: Callable[..., Setup]) -> None:
    s = setup()
    s.snap("data", "s1")
    replicate_ok(s.d, f"{s.mpool}/data@s1", "local", "remote", f"{s.spool}/copy")
    before = tree_sha256(s.slave / "copy")
    write_file(s.master / "data" / "big", 24)
    s.snap("data", "s2")
    aid = replicate(s.d, f"{s.mpool}/data@s2", "local", "remote", f"{s.spool}/copy",
                    bandwidth_limit=4 * MiB).body["id"]
    s.d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    s.d.api("POST", f"/v1/activities/{aid}/cancel")
    assert s.d.wait_done(aid)["state"] == "cancelled"
    assert s.snapshots("copy") == ["s1"]
    assert tree_sha256(s.slave / "copy") == before
    wait_until(lambda: leftovers(s.slave) == [], 30, what="the partial receive deleted")


def test_kill_9_mid_transfer_then_the_restarted_daemon_finishes(
        setup: Callable[..., Setup], start_daemon: Any) -> None:
    s = setup()
    write_file(s.master / "data" / "big", 24)
    s.snap("data", "s1")
    aid = replicate(s.d, f"{s.mpool}/data@s1", "local", "remote", f"{s.spool}/copy",
                    bandwidth_limit=4 * MiB).body["id"]
    s.d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    os.kill(s.d.proc.pid, signal.SIGKILL)
    s.d.proc.wait()
    # The receive lost its input with the daemon: it fails and deletes its partial copy.
    wait_until(lambda: leftovers(s.slave) == [], 60, what="the partial receive deleted")
    assert not (s.slave / "copy").exists()
    d2 = start_daemon(config_path=s.d.config_path)
    done = d2.wait_done(aid)
    assert done["state"] == "succeeded", done["status"]
    assert tree_sha256(s.slave / "copy") == tree_sha256(s.master / "data")


def test_a_link_cut_is_reported_and_retried(setup: Callable[..., Setup]) -> None:
    s = setup()
    write_file(s.master / "data" / "big", 24)
    s.snap("data", "s1")
    aid = replicate(s.d, f"{s.mpool}/data@s1", "local", "remote", f"{s.spool}/copy",
                    bandwidth_limit=3 * MiB).body["id"]
    s.d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB, what="bytes to flow")
    s.ns.cut()
    s.d.wait_activity(aid, lambda a: a["state"] == "retrying", what="the loss reported",
                      timeout=30)
    s.ns.restore()
    done = s.d.wait_done(aid)
    assert done["state"] == "succeeded", done["status"]
    assert tree_sha256(s.slave / "copy") == tree_sha256(s.master / "data")
    assert leftovers(s.slave) == []


def test_a_relationship_keeps_a_btrfs_slave_over_ssh(setup: Callable[..., Setup]) -> None:
    s = setup(extra=lambda m, t: f'[relationships.bt]\nvolume = "{m}/data"\n'
              f'interval = "1h"\nslaves = [{{server = "remote", target_volume = "{t}/copy"}}]\n')
    wait_until(lambda: s.snapshots("copy"), 120, what="the first cycle's snapshot")
    write_file(s.master / "data" / "f2", 2)
    s.d.api("POST", "/v1/relationships/bt/sync-now")
    wait_until(lambda: len(s.snapshots("copy")) >= 2, 120, what="a second cycle")
    # The snapshot is in place a moment before the volume is swapped for it: wait for it.
    want = tree_sha256(s.master / "data")
    wait_until(lambda: (s.slave / "copy").exists() and tree_sha256(s.slave / "copy") == want,
               60, what="the slave's volume at the second snapshot")
