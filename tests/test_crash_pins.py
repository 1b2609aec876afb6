"""A daemon killed mid incremental replication leaves no snapshot pinned (zfs-fuse).

zfs-fuse's ``zfs send -I`` takes temporary holds on both ends of its range and never
releases them when the sender dies; its ``-i`` takes none. The first test shows that
behaviour of the real zfs-fuse (the premise of ``safe_send_holds``), the second kills the
real daemon mid replication several times and checks that nothing is held beyond
cerssd's own base hold and that the replication converges.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

from cerssd.activity import ActivityRecord
from cerssd.replication.flows.snapshot_prune import PruneWork
from cerssd.storage.zfs import ZfsBackend
from cerssd.transport.runner import LocalRunner

from .conftest import DaemonProcess, wait_until, write_file, zfs
from .conftest import replicate as replicate_between
from .test_cli import ctl

MiB = 1 << 20


def userrefs(volume: str) -> dict[str, int]:
    out = zfs("get", "-Hp", "-r", "-d", "1", "-o", "name,value", "userrefs", volume).stdout
    return {name.split("@")[1]: int(value) for name, value in
            (line.split("\t") for line in out.splitlines()) if "@" in name}


def guids(volume: str) -> dict[str, str]:
    out = zfs("get", "-Hp", "-r", "-d", "1", "-o", "name,value", "guid", volume).stdout
    return {name.split("@")[1]: value for name, value in
            (line.split("\t") for line in out.splitlines()) if "@" in name}


def killed_send(flag: str, base: str, snapshot: str) -> None:
    """``zfs send FLAG BASE SNAPSHOT`` into a pipe nobody reads, killed once blocked."""
    proc = subprocess.Popen(["zfs", "send", flag, base, snapshot], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.read(4096)  # it has started streaming; the pipe fills up behind it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_zfs_fuse_send_I_leaves_holds_when_killed_and_send_i_does_not(pool: str) -> None:
    zfs("create", f"{pool}/v")
    for label in ("a", "b", "c"):
        write_file(f"/{pool}/v/{label}", 2)
        zfs("snapshot", f"{pool}/v@{label}")
    killed_send("-i", f"{pool}/v@a", f"{pool}/v@c")
    assert userrefs(f"{pool}/v") == {"a": 0, "b": 0, "c": 0}
    killed_send("-I", f"{pool}/v@a", f"{pool}/v@c")
    assert sum(userrefs(f"{pool}/v").values()) > 0  # held for ever, under a tag not ours
    backend = ZfsBackend(LocalRunner())
    assert asyncio.run(backend.probe()).safe_send_holds is False


def _slow_incremental(d: DaemonProcess, src: str, dst: str, labels: list[str]) -> str:
    for label in labels:
        write_file(f"/{src}/data/{label}", 4)
        zfs("snapshot", f"{src}/data@{label}")
    r = replicate_between(d, f"{src}/data@{labels[-1]}", "local", "local", f"{dst}/data",
                          intermediates=True, bandwidth_limit=2 * MiB)
    assert r.status == 202, r.body
    return str(r.body["id"])


def test_kill_9_mid_incremental_replication_pins_nothing(
        start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    write_file(f"/{src}/data/base", 1)
    zfs("snapshot", f"{src}/data@s0")
    d = start_daemon()
    first = replicate_between(d, f"{src}/data@s0", "local", "local", f"{dst}/data")
    assert d.wait_done(first.body["id"])["state"] == "succeeded"
    n = 0
    for kill_after in (1 * MiB, 5 * MiB, 9 * MiB):  # in the first, second, third step
        labels = [f"s{n + 1}", f"s{n + 2}", f"s{n + 3}"]
        n += 3
        aid = _slow_incremental(d, src, dst, labels)
        d.wait_activity(aid, lambda a, k=kill_after: a["progress"]["done"] > k,
                        what="bytes to flow", timeout=60)
        d.stop(signal.SIGKILL)
        wait_until(lambda: not _sends_of(src), 30, what="the orphaned zfs send to exit")
        d = start_daemon(config_path=d.config_path)
        done = d.wait_done(aid)
        assert done["state"] == "succeeded", done["status"]
    # Converged: every snapshot, intermediates too, with the master's guids.
    assert guids(f"{dst}/data") == guids(f"{src}/data")
    # Nothing held but cerssd's own base hold (cerssd:local) on the newest snapshot.
    assert userrefs(f"{src}/data") == {f"s{i}": int(i == n) for i in range(n + 1)}
    listed = d.api("GET", f"/v1/volumes/{src}/data/snapshots")["items"]
    assert [(s["label"], s["cerssd_holds"], s["foreign_holds"]) for s in listed][-1] == \
        (f"s{n}", ["cerssd:local"], 0)
    assert all(s["foreign_holds"] == 0 for s in listed)


def _sends_of(pool: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-x", "zfs"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " send " in line and f" {pool}/" in line]


def test_foreign_holds_are_listed_and_named_by_prune(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    for label in ("old", "new"):
        zfs("snapshot", f"{pool}/vol@{label}")
    zfs("hold", "someone-else", f"{pool}/vol@old")
    zfs("hold", "cerssd:local", f"{pool}/vol@old")
    try:
        listed = {s["label"]: s for s in
                  daemon.api("GET", f"/v1/volumes/{pool}/vol/snapshots")["items"]}
        assert (listed["old"]["cerssd_holds"], listed["old"]["foreign_holds"]) == \
            (["cerssd:local"], 1)
        assert (listed["new"]["cerssd_holds"], listed["new"]["foreign_holds"]) == ([], 0)
        assert userrefs(f"{pool}/vol")["old"] == 2  # asking changed nothing
        table = ctl(daemon, "snapshots", f"{pool}/vol").stdout
        assert "2 (1 not cerssd's)" in table
        kept = asyncio.run(_why_kept(f"{pool}/vol@old"))
        assert (kept["snapshot"], kept["foreign_holds"], kept["cerssd_holds"]) == \
            (f"{pool}/vol@old", 1, ["cerssd:local"])
        assert "not cerssd's" in kept["reason"] and "cerssd:local" in kept["reason"]
        assert userrefs(f"{pool}/vol")["old"] == 2
    finally:
        zfs("release", "someone-else", f"{pool}/vol@old", check=False)
        zfs("release", "cerssd:local", f"{pool}/vol@old", check=False)


class _OneServer:
    """The registry a prune reads: the configured names (cerssd's tags) and a backend."""

    def __init__(self, backend: ZfsBackend) -> None:
        self.entries = {"local": None, "standby": None}
        self._backend = backend

    async def backend(self, name: str) -> ZfsBackend:
        return self._backend


async def _why_kept(snapshot: str) -> dict[str, Any]:
    """What a prune's result says of a snapshot ZFS refused to destroy."""
    backend = ZfsBackend(LocalRunner())
    await backend.probe()
    record = ActivityRecord(id="p1", kind="prune", volume=None, source="local", target=None,
                            created_at=0.0,
                            params={"server": "local", "snapshots": [snapshot]})
    work = PruneWork(record, _OneServer(backend))  # type: ignore[arg-type]
    return await work._why_kept(backend, snapshot, "dataset is busy")
