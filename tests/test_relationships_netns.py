"""Continuous replication to slaves behind real network links, with real faults.

Each slave is an sshd in a network namespace the test makes (veth pair,
192.0.2.0/24); the slave's link is cut with ``ip link set … down`` on the host
side, or its sshd (and every process in the namespace) is killed and restarted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import DaemonProcess, NetnsSshServer, post_json, wait_until, write_file, zfs
from .test_relationships import metric, show, slave, transfers, wait_in_sync
from .test_replicate_local import guid, snapshots

MiB = 1 << 20
#: Quick retries; detection (keepalives, stall_timeout) is left at the shipped defaults.
FAST_RETRIES = 'retry_max_interval = "2s"\nretry_deadline = "5m"\n'


@pytest.fixture
def setup(start_daemon: Any, make_pool: Any,
          make_netns_sshd: Callable[[], NetnsSshServer]) -> Callable[..., Any]:
    def make(*, limit: int | None = 3 * MiB, extra: str = "",
             mib: int = 24) -> tuple[DaemonProcess, str, dict[str, NetnsSshServer], str, str]:
        master, p1, p2 = make_pool(), make_pool(), make_pool()
        zfs("create", f"{master}/data")
        write_file(f"/{master}/data/f1", mib)
        s1, s2 = make_netns_sshd(), make_netns_sshd()
        bw = f", bandwidth_limit = {limit}" if limit else ""
        config = (s1.config("s1") + s2.config("s2") + '[servers.local]\nkind = "local"\n'
                  + f'[relationships.hot]\nvolume = "{master}/data"\ninterval = "1h"\n'
                  f'slaves = [{{server = "s1", target_volume = "{p1}/data"{bw}}}, '
                  f'{{server = "s2", target_volume = "{p2}/data"{bw}}}]\n{extra}\n')
        d = start_daemon(extra=config, daemon_extra=FAST_RETRIES)
        return d, master, {"s1": s1, "s2": s2}, p1, p2

    return make


def link(d: DaemonProcess, server: str) -> dict[str, Any]:
    return next(x for x in d.api("GET", "/v1/links")["items"] if x["server"] == server)


def moving(d: DaemonProcess, server: str, at_least: int) -> bool:
    s = slave(d, "hot", server)
    return bool(s["progress"] and s["progress"]["done"] > at_least)


def fault_mid_transfer(d: DaemonProcess, server: str, fault: Callable[[], None]) -> float:
    """Apply ``fault`` once bytes flow to ``server``; it must be reported lost within
    10 s. Returns when the fault happened (monotonic)."""
    wait_until(lambda: moving(d, server, 3 * MiB), 30, what=f"bytes flowing to {server}")
    fault()
    at = time.monotonic()
    wait_until(lambda: slave(d, "hot", server)["state"] == "lost", 20,
               what=f"{server} reported lost")
    print(f"{server} reported lost {time.monotonic() - at:.1f} s after the fault")
    assert time.monotonic() - at < 10
    return at


def test_cut_slave_is_reported_others_carry_on_and_it_recovers(setup: Any) -> None:
    d, _master, ns, p1, p2 = setup()
    cut_at = fault_mid_transfer(d, "s1", ns["s1"].cut)
    s1 = slave(d, "hot", "s1")
    child = d.api("GET", f"/v1/activities/{s1['activity']}")
    wait_until(lambda: d.api("GET", f"/v1/activities/{s1['activity']}")["state"]
               == "retrying", 10 - (time.monotonic() - cut_at), what="s1's transfer retrying")
    assert link(d, "s1")["state"] in ("lost", "retrying")
    assert metric(d.api("GET", "/metrics"), "cerssd_link_up", server="s1") == 0.0
    assert metric(d.api("GET", "/metrics"), "cerssd_replication_slave_state",
                  relationship="hot", slave="s1", state="lost") == 1.0
    # The other slave is not held back by the lost one.
    wait_until(lambda: slave(d, "hot", "s2")["state"] == "in-sync", 60, what="s2 in sync")
    newest = show(d, "hot")["newest_snapshot"]
    assert guid(f"{p2}/data@{newest.split('@')[1]}") == guid(newest)
    ns["s1"].restore()
    wait_in_sync(d, "hot", timeout=120)
    done = d.wait_done(child["id"])
    assert done["state"] == "succeeded" and done["usage"]["retries"] >= 1
    assert guid(f"{p1}/data@{newest.split('@')[1]}") == guid(newest)
    assert link(d, "s1")["state"] == "up"
    assert metric(d.api("GET", "/metrics"), "cerssd_link_up", server="s1") == 1.0


def test_killed_and_restarted_sshd_is_lost_then_recovers(setup: Any) -> None:
    d, _master, ns, p1, p2 = setup()
    fault_mid_transfer(d, "s2", ns["s2"].kill_sshd)
    assert link(d, "s2")["state"] in ("lost", "retrying")
    wait_until(lambda: slave(d, "hot", "s1")["state"] == "in-sync", 60, what="s1 in sync")
    ns["s2"].start_sshd()
    post_json(d, "/v1/relationships/hot/sync-now", {})  # no need to wait for the back-off
    r = wait_in_sync(d, "hot", timeout=120)
    label = r["newest_snapshot"].split("@")[1]
    for pool in (p1, p2):
        assert guid(f"{pool}/data@{label}") == guid(r["newest_snapshot"])
    assert link(d, "s2")["state"] == "up"


def test_offline_slave_catches_up_in_one_incremental_and_keeps_its_base(setup: Any) -> None:
    d, master, ns, p1, _p2 = setup(limit=None, mib=8, extra='retention = ["1s:all"]\n')
    first = wait_in_sync(d, "hot")
    base = first["newest_snapshot"].split("@")[1]
    ns["s1"].cut()
    for n in range(2, 5):
        write_file(f"/{master}/data/f{n}", 1)
        assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
        wait_until(lambda n=n: (r := show(d, "hot"))["cycles"] >= n
                   and slave(d, "hot", "s2")["state"] == "in-sync" and r, 90,
                   what=f"cycle {n} on s2")
        assert slave(d, "hot", "s1")["state"] == "lost"
    # Retention ran on the master meanwhile, but s1's base (its newest common) is kept.
    assert base in snapshots(f"{master}/data")
    away = [t for t in transfers(d, "hot") if t["params"]["destination"] == "s1"
            and t["state"] not in ("succeeded", "failed", "cancelled")]
    assert len(away) == 1  # one transfer waits for s1, not one per missed cycle
    missed = show(d, "hot")["newest_snapshot"].partition("@")[2]  # the last cycle s1 missed
    ns["s1"].restore()
    assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
    done = d.wait_done(away[0]["id"], timeout=120)
    assert done["state"] == "succeeded", done["status"]
    # Straight to the newest at its start, in one stream: past every missed cycle (the
    # sync-now's own snapshot may be taken just before or just after it starts).
    sent = done["params"]["snapshot"]
    assert sent.partition("@")[2] >= missed
    assert done["usage"]["bytes_on_wire"] < 6 * MiB  # 3 MiB new: not the 11 MiB full copy
    assert guid(f"{p1}/data@{sent.split('@')[1]}") == guid(sent)
    wait_in_sync(d, "hot")


def test_relationship_retry_deadline_gives_up_and_the_next_cycle_tries_again(
        setup: Any) -> None:
    d, _master, ns, p1, _p2 = setup(limit=None, mib=2, extra='retry_deadline = "4s"\n')
    wait_in_sync(d, "hot")
    ns["s1"].cut()
    assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
    s1 = wait_until(lambda: (s := slave(d, "hot", "s1"))["activity"] and s, 30,
                    what="a transfer for s1")
    failed = d.wait_done(s1["activity"], timeout=60)
    assert failed["state"] == "failed" and failed["status"]["code"] == 6  # LINK
    assert "gave up after retrying for 4 s" in failed["status"]["message"]
    ns["s1"].restore()
    assert post_json(d, "/v1/relationships/hot/sync-now", {}).status == 202
    r = wait_in_sync(d, "hot", timeout=90)
    assert slave(d, "hot", "s1")["error"] is None
    label = r["newest_snapshot"].split("@")[1]
    assert guid(f"{p1}/data@{label}") == guid(r["newest_snapshot"])
