"""Continuous replication on real zfs-fuse: cycles, fan-out, pause, retention, restarts.

Slaves here are pools of this machine declared as separate ``local`` servers, so
each has its own name, hold tag and transfer, while the tests stay fast; the SSH
and network-fault side is in ``test_relationships_netns``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from .conftest import SLOW, DaemonProcess, post_json, raw_request, wait_until, write_file, zfs
from .test_replicate_local import guid, snapshots

MiB = 1 << 20
LOCAL_SLAVES = '[servers.local]\nkind = "local"\n[servers.a]\nkind = "local"\n' \
               '[servers.b]\nkind = "local"\n'


def relationship_config(name: str, volume: str, slaves: dict[str, str], *,
                        interval: str = "1h", extra: str = "") -> str:
    rows = ", ".join(f'{{server = "{s}", target_volume = "{t}"}}' for s, t in slaves.items())
    return (f'[relationships.{name}]\nvolume = "{volume}"\nmaster = "local"\n'
            f'interval = "{interval}"\nslaves = [{rows}]\n{extra}\n')


def show(d: DaemonProcess, name: str) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", f"/v1/relationships/{name}")
    return result


def slave(d: DaemonProcess, name: str, server: str) -> dict[str, Any]:
    return next(s for s in show(d, name)["slaves"] if s["server"] == server)


def wait_in_sync(d: DaemonProcess, name: str, timeout: float = SLOW) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = show(d, name)
        newest = r["newest_snapshot"]
        ok = newest and all(s["state"] == "in-sync" for s in r["slaves"])
        return r if ok else None

    result: dict[str, Any] = wait_until(check, timeout, interval=0.2,
                                        what=f"every slave of {name} in sync")
    return result


def transfers(d: DaemonProcess, name: str) -> list[dict[str, Any]]:
    items = d.api("GET", "/v1/activities?kind=replicate&limit=1000")["items"]
    return [a for a in items if a["params"].get("relationship") == name]


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}" if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str, str]:
    master, a, b = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    return master, a, b


def start_relationship(start_daemon: Any, pools: tuple[str, str, str], *,
                       interval: str = "1h", extra: str = "",
                       daemon_extra: str = "") -> DaemonProcess:
    master, a, b = pools
    config = LOCAL_SLAVES + relationship_config(
        "web", f"{master}/data", {"a": f"{a}/data", "b": f"{b}/data"}, interval=interval,
        extra=extra)
    d: DaemonProcess = start_daemon(extra=config, daemon_extra=daemon_extra)
    return d


def test_cycles_fan_out_to_both_slaves_and_report_lag(
        start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 16)
    d = start_relationship(start_daemon, pools)
    first = wait_in_sync(d, "web")
    assert first["state"] == "running" and first["cycles"] == 1
    rel = d.api("GET", f"/v1/activities/{first['activity']}")
    assert rel["kind"] == "relationship" and rel["self_restarting"] is True
    assert rel["progress"]["done"] == 0 and rel["progress"]["total"] == 0
    newest = first["newest_snapshot"]
    label = newest.split("@")[1]
    assert label.startswith("cerssd-web-")
    for pool in (a, b):
        assert guid(f"{pool}/data@{label}") == guid(newest)
    done = wait_until(lambda: [t for t in transfers(d, "web") if t["state"] == "succeeded"]
                      if len(transfers(d, "web")) == 2 else None, SLOW, what="two transfers")
    assert {t["params"]["destination"] for t in done} == {"a", "b"}
    assert all(t["params"]["fanout"] == "shared" for t in done), done
    text = d.api("GET", "/metrics")
    assert metric(text, "cerssd_fanout_sends_total") == 1.0
    for s in first["slaves"]:
        assert s["last_snapshot"].endswith(label) and s["lag_seconds"] is not None
        assert s["last_success_at"] and s["last_cycle_bytes"] > 16 * MiB
        assert metric(text, "cerssd_replication_lag_seconds", relationship="web",
                      slave=s["server"]) is not None
        assert metric(text, "cerssd_replication_last_success_timestamp_seconds",
                      relationship="web", slave=s["server"]) is not None
        assert metric(text, "cerssd_replication_slave_state", relationship="web",
                      slave=s["server"], state="in-sync") == 1.0
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr

    write_file(f"/{master}/data/f2", 4)
    assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202
    second = wait_until(lambda: (r := wait_in_sync(d, "web"))["cycles"] == 2 and r, SLOW,
                        what="a second cycle")
    assert second["newest_snapshot"] != newest
    increments = [t for t in transfers(d, "web") if t["params"]["snapshot"]
                  == second["newest_snapshot"]]
    assert len(increments) == 2
    assert all(t["usage"]["bytes_on_wire"] < 8 * MiB for t in increments)  # incremental
    for pool in (a, b):
        assert guid(f"{pool}/data@{second['newest_snapshot'].split('@')[1]}") == \
            guid(second["newest_snapshot"])
        # a standby: received unmounted (mount = false by default), and read-only
        assert zfs("get", "-H", "-o", "value", "mounted", f"{pool}/data").stdout.strip() == "no"
        assert zfs("get", "-H", "-o", "value", "readonly", f"{pool}/data").stdout.strip() == "on"


def limited(name: str, master: str, a: str, b: str, limit_a: int = 4 * MiB,
            limit_b: int | None = 4 * MiB) -> dict[str, Any]:
    """A relationship body whose slaves' streams are slowed, so actions land mid-transfer."""
    slaves: list[dict[str, Any]] = [
        {"server": "a", "target_volume": f"{a}/data", "bandwidth_limit": limit_a},
        {"server": "b", "target_volume": f"{b}/data"}]
    if limit_b is not None:
        slaves[1]["bandwidth_limit"] = limit_b
    return {"name": name, "volume": f"{master}/data", "interval": "1h", "slaves": slaves}


def test_pause_suspends_transfers_and_resume_finishes_them(
        start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 24)
    d = start_daemon(extra=LOCAL_SLAVES)
    created = post_json(d, "/v1/relationships", limited("slow", master, a, b))
    assert created.status == 201, created.body
    wait_until(lambda: all(s["state"] == "syncing" and s["progress"]
                           and s["progress"]["done"] > 2 * MiB for s in show(d, "slow")["slaves"]),
               30, what="both transfers moving")
    paused = post_json(d, "/v1/relationships/slow/pause", {}).body
    assert paused["state"] == "paused"
    ids = [s["activity"] for s in paused["slaves"]]
    wait_until(lambda: all(d.api("GET", f"/v1/activities/{i}")["state"] == "suspended"
                           for i in ids), 60, what="transfers suspended")
    before = [d.api("GET", f"/v1/activities/{i}")["progress"]["done"] for i in ids]
    # A non-event needs a window: no byte may move while a second of its clock passes.
    start = d.api("GET", f"/v1/activities/{ids[0]}")["usage"]["elapsed_seconds"]
    wait_until(lambda: d.api("GET", f"/v1/activities/{ids[0]}")["usage"]["elapsed_seconds"]
               > start + 1, 10, what="time to pass")
    assert post_json(d, "/v1/relationships/slow/sync-now", {}).status == 409
    after = [d.api("GET", f"/v1/activities/{i}")["progress"]["done"] for i in ids]
    assert after == before
    assert post_json(d, "/v1/relationships/slow/resume", {}).body["state"] == "running"
    wait_in_sync(d, "slow")
    for i in ids:
        assert d.wait_done(i)["state"] == "succeeded"


def test_api_validation_and_lifecycle(start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, _, b = pools
    d = start_relationship(start_daemon, pools)
    bad = post_json(d, "/v1/relationships", {"name": "x", "volume": f"{master}/data",
                                             "interval": "5m", "slaves": [{"server": "nope"}]})
    assert bad.status == 422 and bad.body["field"] == "slaves[0].server", bad.body
    assert "nope" in bad.body["detail"]
    bad = post_json(d, "/v1/relationships", {"name": "x", "volume": f"{master}/data",
                                             "slaves": ["a"]})
    assert bad.status == 422 and "interval" in bad.body["detail"]
    bad = post_json(d, "/v1/relationships", {
        "name": "x", "volume": f"{master}/data", "interval": "5m",
        "slaves": [{"server": "a", "receive_set": {"readonly": "off"}}]})
    assert bad.status == 422 and bad.body["field"] == "slaves[0].receive_set.readonly", \
        bad.body
    bad = post_json(d, "/v1/relationships", {"name": "x", "volume": f"{master}/data",
                                             "interval": "5m", "slaves": ["a"],
                                             "receive_exclude": ["share nfs"]})
    assert bad.status == 422 and bad.body["field"] == "receive_exclude[0]", bad.body
    bad = post_json(d, "/v1/relationships", {"name": "x", "volume": "bad name",
                                             "interval": "5m", "slaves": ["a"]})
    assert bad.status == 400 and bad.body["field"] == "volume"  # an invalid name
    bad = post_json(d, "/v1/relationships", {"name": "web", "volume": f"{master}/data",
                                             "interval": "5m", "slaves": ["a"]})
    assert bad.status == 409
    assert raw_request(d.socket_path, "GET", "/v1/relationships/none").status == 404
    conflict = raw_request(d.socket_path, "DELETE", "/v1/relationships/web")
    assert conflict.status == 409 and "config" in conflict.body["detail"]
    made = post_json(d, "/v1/relationships", {
        "name": "api1", "volume": f"{master}/data", "cron": "0 3 * * *",
        "slaves": [{"server": "b", "target_volume": f"{b}/copy"}]})
    assert made.status == 201 and made.body["schedule"] == "cron 0 3 * * *"
    wait_until(lambda: show(d, "api1")["slaves"][0]["state"] == "in-sync", SLOW,
               what="api1 in sync")  # the first cycle runs at once
    names = [r["name"] for r in d.api("GET", "/v1/relationships")["items"]]
    assert names == ["web", "api1"]
    # An API-made relationship survives a restart.
    d.stop()
    d2 = start_daemon(config_path=d.config_path)
    assert show(d2, "api1")["origin"] == "api"
    assert show(d2, "api1")["slaves"][0]["state"] == "in-sync"
    assert raw_request(d2.socket_path, "DELETE", "/v1/relationships/api1").status == 204
    assert raw_request(d2.socket_path, "GET", "/v1/relationships/api1").status == 404
    assert snapshots(f"{b}/copy")  # removing the relationship keeps the snapshots


TERMINAL = ("succeeded", "failed", "cancelled")


def created(snapshot: str) -> int:
    return int(zfs("get", "-Hp", "-o", "value", "creation", snapshot).stdout)


def test_retention_thins_master_and_slaves_but_keeps_bases(
        start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    zfs("snapshot", f"{master}/data@operator-made")
    d = start_relationship(start_daemon, pools, extra='retention = ["1s:all"]\n')
    wait_in_sync(d, "web")
    for n in range(2, 5):
        # Retention keeps a snapshot while it is in the grid's "1s:all" tier: the next
        # cycle starts once the last one has aged out of it, so its pass can thin it.
        last = show(d, "web")["newest_snapshot"]
        wait_until(lambda last=last: time.time() - created(last) > 1.2, 10,
                   what="the last snapshot to age past 1 s")
        assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202
        wait_until(lambda n=n: (r := wait_in_sync(d, "web"))["cycles"] >= n and r, SLOW,
                   what=f"cycle {n}")

    def pruned() -> bool:
        ours = [s for s in snapshots(f"{master}/data") if s.startswith("cerssd-web-")]
        return len(ours) == 1 and all(
            [s for s in snapshots(f"{p}/data") if s.startswith("cerssd-web-")] == ours
            for p in (a, b))

    wait_until(pruned, SLOW, what="retention to leave only the newest (the common base)")
    assert "operator-made" in snapshots(f"{master}/data")  # not ours: never destroyed
    newest = show(d, "web")["newest_snapshot"].split("@")[1]
    assert snapshots(f"{a}/data")[-1] == newest
    # The last pass may still be finishing (its snapshots are gone before it says so).
    prunes = wait_until(lambda: (items := d.api("GET", "/v1/activities?kind=prune&limit=100")[
        "items"]) and all(p["state"] in TERMINAL for p in items) and items, SLOW,
        what="every retention pass to finish")
    assert [p["state"] for p in prunes] == ["succeeded"] * len(prunes), prunes


def test_kill_9_mid_cycle_resumes_and_converges(start_daemon: Any,
                                                pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 24)
    d = start_daemon(extra=LOCAL_SLAVES)
    body = limited("k9", master, a, b, limit_a=6 * MiB, limit_b=None)
    assert post_json(d, "/v1/relationships", body).status == 201
    wait_until(lambda: (s := slave(d, "k9", "a"))["progress"]
               and s["progress"]["done"] > 4 * MiB, 30, what="a's transfer under way")
    taken = show(d, "k9")["newest_snapshot"]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d2 = start_daemon(config_path=d.config_path)
    r = wait_in_sync(d2, "k9")
    assert r["newest_snapshot"] == taken  # the same cycle, not a new snapshot
    assert [s for s in snapshots(f"{master}/data") if s.startswith("cerssd-k9-")] == \
        [taken.split("@")[1]]
    for pool in (a, b):
        assert guid(f"{pool}/data@{taken.split('@')[1]}") == guid(taken)
    per_slave = [t["params"]["destination"] for t in transfers(d2, "k9")]
    assert sorted(per_slave) == ["a", "b"]  # nothing duplicated
    assert all(t["state"] == "succeeded" for t in transfers(d2, "k9"))


def test_cerssctl_relationship_commands(start_daemon: Any,
                                        pools: tuple[str, str, str]) -> None:
    from .test_cli import ctl

    master, a, b = pools
    d = start_relationship(start_daemon, pools)
    wait_in_sync(d, "web")
    listed = ctl(d, "relationships")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("web"))
    assert "running" in row and "every 1h" in row and "a in-sync lag" in row
    shown = ctl(d, "relationship", "show", "web").stdout
    assert "cerssd-web-" in shown and "in-sync" in shown and f"{a}/data" in shown
    status = ctl(d, "status").stdout
    assert "web" in status and "b in-sync lag" in status
    assert "paused" in ctl(d, "relationship", "pause", "web").stdout
    twice = ctl(d, "relationship", "pause", "web")
    assert twice.returncode == 1 and "already paused" in twice.stderr
    refused = ctl(d, "relationship", "sync-now", "web")
    assert refused.returncode == 1 and "paused" in refused.stderr
    assert "running" in ctl(d, "relationship", "resume", "web").stdout
    assert ctl(d, "relationship", "sync-now", "web").returncode == 0
    made = ctl(d, "--json", "relationship", "create", "copy", f"{master}/data",
               "--slave", f"b:{b}/copy", "--interval", "10m", "--retention", "1d:all")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["slaves"][0]["target_volume"] == f"{b}/copy" and doc["retention"] == ["1d:all"]
    bad = ctl(d, "relationship", "create", "x", f"{master}/data", "--slave", "zz",
              "--interval", "1m")
    assert bad.returncode == 1 and "slaves[0].server" in bad.stderr
    wait_until(lambda: slave(d, "copy", "b")["state"] == "in-sync", SLOW, what="copy in sync")
    assert ctl(d, "relationship", "remove", "copy").returncode == 0
    assert "copy" not in ctl(d, "relationships").stdout
    gone = ctl(d, "relationship", "show", "copy")
    assert gone.returncode == 1 and "no relationship copy" in gone.stderr


def test_cancel_stops_the_relationship_and_rolls_back_its_transfers(
        start_daemon: Any, pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 24)
    d = start_daemon(extra=LOCAL_SLAVES)
    rel = post_json(d, "/v1/relationships", limited("c", master, a, b)).body
    wait_until(lambda: all(s["progress"] and s["progress"]["done"] > MiB
                           for s in show(d, "c")["slaves"]), 30, what="transfers moving")
    ids = [s["activity"] for s in show(d, "c")["slaves"]]
    assert post_json(d, f"/v1/activities/{rel['activity']}/cancel", {}).status == 202
    assert d.wait_done(rel["activity"])["state"] == "cancelled"
    for i in ids:
        assert d.wait_done(i)["state"] == "cancelled"
    stopped = show(d, "c")
    assert stopped["state"] == "stopped" and stopped["activity"] is None
    for pool in (a, b):  # the full copies were rolled back: no half-received volume
        assert zfs("list", f"{pool}/data", check=False).returncode != 0
    # A stopped relationship stays stopped across a restart, and resume starts it again.
    d.stop()
    d2 = start_daemon(config_path=d.config_path)
    assert show(d2, "c")["state"] == "stopped"
    assert post_json(d2, "/v1/relationships/c/resume", {}).body["state"] == "running"
    wait_in_sync(d2, "c")  # at once: the slaves are behind, no new cycle needed
    assert show(d2, "c")["cycles"] == 1
