"""Failover, failback and fencing on real zfs-fuse, with servers behind real links.

The managing daemon runs on a third node or a slave (the master is an sshd in a
network namespace), as the operator guide recommends for hot standby: so the
master can be cut off (``ip link set … down``) while the daemon carries on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    SLOW,
    DaemonProcess,
    NetnsSshServer,
    post_json,
    wait_until,
    write_file,
    zfs,
)
from .test_cli import ctl
from .test_relationships import metric, show, wait_in_sync
from .test_replicate_local import guid, snapshots

MiB = 1 << 20
FAST_RETRIES = 'stall_timeout = "5s"\nretry_max_interval = "2s"\nretry_deadline = "5m"\n'


def readonly(volume: str) -> bool:
    return zfs("get", "-H", "-o", "value", "readonly", volume).stdout.strip() == "on"


class Writer(threading.Thread):
    """A client writing to the master until the fence stops it: every chunk is a new
    file (create, write, fsync, close) and counts only once all of that succeeded.

    New files, because zfs-fuse enforces ``readonly=on`` only on creation (appends to
    an existing file still pass; OpenZFS refuses those too): docs/failover.md.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.acknowledged: dict[str, str] = {}
        self.refused: OSError | None = None
        self.started_writing = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while self.refused is None and not self.stop.is_set():
            chunk = f"{n:08d}".encode() * 8192  # 64 KiB, each chunk distinct
            name = f"chunk-{n:06d}"
            try:
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    os.write(fd, chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.refused = exc
                return
            self.acknowledged[name] = hashlib.sha256(chunk).hexdigest()
            n += 1
            if n == 16:
                self.started_writing.set()
            self.stop.wait(0.01)  # a client's rate, not a flood that fills the test pool


def sha256_of(path: str) -> tuple[str, int]:
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


@pytest.fixture
def cluster(start_daemon: Any, make_pool: Any,
            make_netns_sshd: Callable[[], NetnsSshServer]) -> Callable[..., Any]:
    """Master ``m`` (netns), slaves ``local`` (the daemon's own node) and ``s2`` (netns)."""

    def make(*, limit: int | None = None, mib: int = 4, extra: str = "",
             ) -> tuple[DaemonProcess, dict[str, str], dict[str, NetnsSshServer]]:
        pools = {"m": make_pool(), "local": make_pool(), "s2": make_pool()}
        zfs("create", f"{pools['m']}/data")
        write_file(f"/{pools['m']}/data/f1", mib)
        m, s2 = make_netns_sshd(), make_netns_sshd()
        bw = f", bandwidth_limit = {limit}" if limit else ""
        config = (m.config("m") + s2.config("s2") + '[servers.local]\nkind = "local"\n'
                  + f'[relationships.hot]\nmaster = "m"\nvolume = "{pools["m"]}/data"\n'
                  'interval = "1h"\n'
                  f'slaves = [{{server = "local", target_volume = "{pools["local"]}/data"'
                  f'{bw}}}, {{server = "s2", target_volume = "{pools["s2"]}/data"}}]\n'
                  + extra)
        d = start_daemon(extra=config, daemon_extra=FAST_RETRIES)
        return d, pools, {"m": m, "s2": s2}

    return make


def failover(d: DaemonProcess, to: str, **extra: Any) -> Any:
    return post_json(d, "/v1/relationships/hot/failover", {"to": to, **extra})


def slaves_of(r: dict[str, Any]) -> list[str]:
    return sorted(s["server"] for s in r["slaves"])


def test_planned_failover_loses_no_write_and_failback_restores_roles(
        cluster: Callable[..., Any]) -> None:
    d, pools, _ns = cluster()
    wait_in_sync(d, "hot")
    m_vol, new_vol = f"{pools['m']}/data", f"{pools['local']}/data"
    writer = Writer(Path(f"/{m_vol}"))
    writer.start()
    try:
        assert writer.started_writing.wait(30)
        started = failover(d, "local")
        assert started.status == 202, started.body
        assert show(d, "hot")["replication_status"] == "failing-over"
        done = d.wait_done(started.body["id"])
        writer.join(30)
    finally:  # a writer left running would keep the test pool busy at teardown
        writer.stop.set()
        writer.join()
    assert done["state"] == "succeeded", done["status"]
    assert done["progress"]["done"] == done["progress"]["total"] == 6
    assert done["params"]["result"]["slaves"] == ["m", "s2"]
    assert done["params"]["result"]["data_loss"] is None
    # The fence stopped the writer, and the promoted slave has every acknowledged byte.
    assert writer.refused is not None and writer.refused.errno == errno.EROFS
    on_new = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in Path(f"/{new_vol}").glob("chunk-*")}
    assert len(writer.acknowledged) > 16 and on_new == writer.acknowledged
    assert readonly(m_vol) and not readonly(new_vol)
    r = show(d, "hot")
    assert (r["master"], r["volume"], r["home_master"]) == ("local", new_vol, "m")
    assert r["replication_status"] == "failed-over" and r["state"] == "running"
    assert slaves_of(r) == ["m", "s2"]
    text = d.api("GET", "/metrics")
    assert metric(text, "cerssd_relationship_replication_status", relationship="hot",
                  status="failed-over") == 1.0
    assert metric(text, "cerssd_relationship_active_server", home="false",
                  relationship="hot", server="local") == 1.0
    # The old master and the other slave follow the new master.
    write_file(f"/{new_vol}/after-failover", 1)
    assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
    r = wait_in_sync(d, "hot")
    label = r["newest_snapshot"].split("@")[1]
    for vol in (m_vol, f"{pools['s2']}/data"):
        assert guid(f"{vol}@{label}") == guid(r["newest_snapshot"])
    assert readonly(m_vol)  # a slave stays read-only
    # Failback: the same steps back to the home master.
    back = failover(d, "m")
    assert back.status == 202, back.body
    assert show(d, "hot")["replication_status"] == "failing-back"
    assert d.wait_done(back.body["id"])["state"] == "succeeded"
    r = show(d, "hot")
    assert (r["master"], r["replication_status"]) == ("m", "enabled")
    assert slaves_of(r) == ["local", "s2"]
    assert not readonly(m_vol) and readonly(new_vol)
    assert sha256_of(f"/{m_vol}/after-failover") == sha256_of(f"/{new_vol}/after-failover")


def test_unplanned_failover_needs_force_fences_the_old_master_and_rejoins_with_consent(
        cluster: Callable[..., Any]) -> None:
    d, pools, ns = cluster()
    synced = wait_in_sync(d, "hot")
    m_vol, new_vol = f"{pools['m']}/data", f"{pools['local']}/data"
    # The master takes writes the slaves never see, then drops off the network.
    write_file(f"/{m_vol}/unseen", 1)
    zfs("snapshot", f"{m_vol}@diverged")
    ns["m"].cut()
    refused = failover(d, "local")
    assert refused.status == 409 and "force" in refused.body["detail"]
    assert show(d, "hot")["master"] == "m"
    forced = failover(d, "local", force=True)
    assert forced.status == 202, forced.body
    done = d.wait_done(forced.body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert done["params"]["planned"] is False
    assert done["params"]["result"]["master"] == "local"
    assert done["params"]["result"]["fenced"] == ["m"]
    r = show(d, "hot")
    assert (r["master"], r["replication_status"]) == ("local", "failed-over")
    assert slaves_of(r) == ["s2"]
    loss = r["failover"]["data_loss"]
    assert loss["snapshot"] == f"{new_vol}@{synced['newest_snapshot'].split('@')[1]}"
    assert loss["window_seconds"] >= 0
    assert [(f["server"], f["applied_at"]) for f in r["failover"]["fenced"]] == [("m", None)]
    assert not readonly(new_vol)
    assert metric(d.api("GET", "/metrics"), "cerssd_relationship_fenced", applied="0",
                  relationship="hot", server="m") == 1.0
    shown = ctl(d, "relationship", "show", "hot")
    assert shown.returncode == 0, shown.stderr
    assert "failed-over (home master m)" in shown.stdout
    assert "data-loss window" in shown.stdout and "fenced" in shown.stdout
    # Cut off, the old master still believes it is one: writable.
    assert not readonly(m_vol)
    ns["m"].restore()
    assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
    wait_until(lambda: show(d, "hot")["failover"]["fenced"][0]["applied_at"], SLOW,
               what="the returning old master fenced")
    assert readonly(m_vol)
    with pytest.raises(OSError) as refused_write:
        Path(f"/{m_vol}/split-brain").write_text("no")
    assert refused_write.value.errno == errno.EROFS
    not_a_slave = failover(d, "m")
    assert not_a_slave.status == 409 and "rejoin" in not_a_slave.body["detail"]
    # Rejoin: a dry run says what goes, consent is needed, then it follows the new master.
    dry = post_json(d, "/v1/relationships/hot/rejoin", {"server": "m"})
    assert dry.status == 200 and dry.body["rejoined"] is False
    assert dry.body["destroys_snapshots"] == [f"{m_vol}@diverged"]
    dry_cli = ctl(d, "relationship", "rejoin", "hot", "m")
    assert dry_cli.returncode == 0, dry_cli.stderr
    assert "dry run (nothing changed)" in dry_cli.stdout
    assert f"would destroy {m_vol}@diverged" in dry_cli.stdout
    assert "diverged" in snapshots(m_vol)
    no_consent = post_json(d, "/v1/relationships/hot/rejoin",
                           {"server": "m", "dry_run": False})
    assert no_consent.status == 409 and "rollback" in no_consent.body["detail"]
    assert "diverged" in snapshots(m_vol)
    done_rejoin = ctl(d, "--json", "relationship", "rejoin", "hot", "m", "--rollback")
    assert done_rejoin.returncode == 0, done_rejoin.stderr
    assert json.loads(done_rejoin.stdout)["rejoined"] is True
    assert "diverged" not in snapshots(m_vol)
    assert not Path(f"/{m_vol}/unseen").exists()
    assert slaves_of(show(d, "hot")) == ["m", "s2"]
    r = wait_in_sync(d, "hot")
    assert guid(f"{m_vol}@{r['newest_snapshot'].split('@')[1]}") == guid(r["newest_snapshot"])
    assert show(d, "hot")["failover"]["fenced"] == []


def test_daemon_killed_mid_failover_completes_it_on_restart(
        cluster: Callable[..., Any], start_daemon: Any) -> None:
    d, pools, _ns = cluster(limit=2 * MiB)
    wait_in_sync(d, "hot")
    m_vol, new_vol = f"{pools['m']}/data", f"{pools['local']}/data"
    write_file(f"/{m_vol}/more", 12)
    started = failover(d, "local")
    assert started.status == 202, started.body
    # Killed while the final snapshot is on its way to the slave.
    d.wait_activity(started.body["id"], lambda a: a["params"].get("current_step") == "sync"
                    and a["params"].get("sync_activity"), 60, what="final sync under way")
    child = d.api("GET", "/v1/activities/" + d.api(
        "GET", f"/v1/activities/{started.body['id']}")["params"]["sync_activity"])
    d.wait_activity(child["id"], lambda a: a["progress"]["done"] > MiB, 60,
                    what="bytes of the final sync flowing")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    assert readonly(m_vol) and readonly(new_vol)  # fenced, not yet promoted
    d2 = start_daemon(config_path=d.config_path)
    done = d2.wait_done(started.body["id"])
    assert done["state"] == "succeeded" and done["restarts"] >= 1
    assert readonly(m_vol) and not readonly(new_vol)  # never two writable masters
    final = done["params"]["final_snapshot"].split("@")[1]
    assert guid(f"{new_vol}@{final}") == guid(done["params"]["final_snapshot"])
    assert [s for s in snapshots(m_vol) if "failover" in s] == [final]  # made once
    assert sha256_of(f"/{new_vol}/more") == sha256_of(f"/{m_vol}/more")
    r = show(d2, "hot")
    assert (r["master"], r["replication_status"]) == ("local", "failed-over")


def test_cancelled_or_failed_failover_rolls_back_the_fence(
        cluster: Callable[..., Any]) -> None:
    d, pools, ns = cluster(extra='retry_deadline = "15s"\n')
    wait_in_sync(d, "hot")
    m_vol = f"{pools['m']}/data"
    ns["s2"].kill_sshd()  # the final sync to s2 cannot get through
    started = failover(d, "s2")
    assert started.status == 202, started.body
    running = d.wait_activity(started.body["id"], lambda a: a["params"].get("sync_activity"),
                              what="final sync started")
    assert running["params"]["fenced"] is True and readonly(m_vol)
    d.wait_activity(running["params"]["sync_activity"], lambda a: a["state"] == "retrying",
                    what="final sync retrying")
    assert post_json(d, f"/v1/activities/{started.body['id']}/cancel", {}).status == 202
    done = d.wait_done(started.body["id"])
    assert done["state"] == "cancelled", done["status"]
    assert d.api("GET", f"/v1/activities/{running['params']['sync_activity']}")["state"] \
        == "cancelled"
    assert not readonly(m_vol)  # the fence is lifted: the master takes writes again
    r = show(d, "hot")
    assert (r["master"], r["replication_status"], r["state"]) == ("m", "enabled", "running")
    # The same failover left to fail (the retry deadline passes) reports failover-error.
    failed = failover(d, "s2")
    assert failed.status == 202, failed.body
    done = d.wait_done(failed.body["id"])
    assert done["state"] == "failed"
    r = show(d, "hot")
    assert (r["master"], r["replication_status"]) == ("m", "failover-error")
    assert "sync" in r["failover"]["error"]
    assert not readonly(m_vol)
    assert metric(d.api("GET", "/metrics"), "cerssd_relationship_replication_status",
                  relationship="hot", status="failover-error") == 1.0
