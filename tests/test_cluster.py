"""Clustered managing daemons on a real 3-member etcd cluster and real zfs-fuse pools.

Two cerssd daemons share one relationship's config (master and slaves are pools of
this machine declared as ``local`` servers, as in ``test_relationships``): one leads it
and runs its cycles, the other waits; a killed or paused leader is replaced within the
lease TTL, the relationship carries on from the facts the leader shared in etcd, and a
leader that comes back after its lease expired has its writes refused and steps down.
"""

from __future__ import annotations

import re
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cerssd.cluster.config import ClusterConfig
from cerssd.cluster.etcd import EtcdClient
from cerssd.cluster.member import ClusterMember
from cerssd.config import parse_config
from cerssd.parsing import ConfigError
from cerssd.replication.logic.auto_failover_rule import AutoFailover, decide
from cerssd.replication.logic.slave_status import SlaveStatus

from .conftest import DaemonProcess, post_json, raw_request, wait_until, write_file, zfs
from .etcd_cluster import EtcdCluster, start_cluster
from .sshd import NetnsSshServer
from .test_cli import ctl
from .test_relationships import LOCAL_SLAVES, show, wait_in_sync
from .test_relationships_netns import FAST_RETRIES
from .test_replicate_local import guid, snapshots

MiB = 1 << 20
TTL = 3


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="cerssd-etcd-")))
    yield cluster
    cluster.stop()


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str, str]:
    master, a, b = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    return master, a, b


def cluster_config(endpoints: list[str], node: str, prefix: str, pools: tuple[str, str, str],
                   *, limit: int | None = None) -> str:
    master, a, b = pools
    limited = f", bandwidth_limit = {limit}" if limit else ""
    etcd = ", ".join(f'"{e}"' for e in endpoints)
    return (f'[cluster]\netcd = [{etcd}]\nnode = "{node}"\nlease_ttl = "{TTL}s"\n'
            f'prefix = "{prefix}"\n' + LOCAL_SLAVES +
            f'[relationships.web]\nvolume = "{master}/data"\nmaster = "local"\n'
            f'interval = "1h"\nslaves = [{{server = "a", target_volume = "{a}/data"{limited}}}, '
            f'{{server = "b", target_volume = "{b}/data"}}]\n')


def cluster(d: DaemonProcess) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", "/v1/status")["cluster"]
    return result


def leader(d: DaemonProcess) -> str | None:
    node: str | None = cluster(d)["relationships"]["web"]["node"]
    return node


def leads(d: DaemonProcess) -> bool:
    return bool(cluster(d)["relationships"]["web"]["leading"])


def cycle_snapshots(master: str) -> list[str]:
    return [s for s in snapshots(f"{master}/data") if s.startswith("cerssd-web-")]


def start_pair(start_daemon: Any, tmp_path: Path, endpoints: list[str],
               pools: tuple[str, str, str], *, limit: int | None = None,
               ) -> tuple[DaemonProcess, DaemonProcess]:
    prefix = f"/t{uuid.uuid4().hex[:8]}/"
    one = start_daemon(extra=cluster_config(endpoints, "one", prefix, pools, limit=limit),
                       state_dir=tmp_path / "one")
    wait_until(lambda: leads(one), 30, interval=0.1, what="one leads web")
    two = start_daemon(extra=cluster_config(endpoints, "two", prefix, pools, limit=limit),
                       state_dir=tmp_path / "two")
    wait_until(lambda: leader(two) == "one", 30, interval=0.1, what="two sees one leading")
    return one, two


@pytest.mark.parametrize(("table", "key"), [
    ({"etcd": "http://127.0.0.1:2379"}, "cluster.etcd"),
    ({"etcd": ["127.0.0.1:2379"]}, "cluster.etcd"),
    ({"etcd": ["http://127.0.0.1:2379/v3"]}, "cluster.etcd"),
    ({"etcd": ["http://127.0.0.1:2379"], "lease_ttl": "1s"}, "cluster.lease_ttl"),
    ({"etcd": ["http://127.0.0.1:2379"], "lease_ttl": "2.5"}, "cluster.lease_ttl"),
    ({"etcd": ["http://127.0.0.1:2379"], "node": "a b"}, "cluster.node"),
    ({"etcd": ["http://127.0.0.1:2379"], "prefix": "cerssd"}, "cluster.prefix"),
    ({"etcd": ["http://127.0.0.1:2379"], "leader": "x"}, "cluster.leader"),
])
def test_invalid_cluster_config_names_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"cluster": table})
    assert exc.value.key == key


def test_without_cluster_table_the_daemon_runs_alone() -> None:
    assert parse_config({}).cluster is None
    c = parse_config({"cluster": {"etcd": ["http://127.0.0.1:2379"], "node": "n1"}}).cluster
    assert c is not None and (c.node, c.lease_ttl, c.prefix) == ("n1", 10, "/cerssd/")


def test_one_leads_the_other_waits_and_refuses_verbs(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    master = pools[0]
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    wait_in_sync(one, "web")
    assert not leads(two)
    assert len(cycle_snapshots(master)) == 1  # the follower made none
    r = raw_request(two.socket_path, "POST", "/v1/relationships/web/sync-now")
    assert r.status == 409 and "one does" in r.body["detail"]
    status = cluster(one)
    assert status["etcd_reachable"] and status["lease_expires_at"] > time.time()
    seen = cluster(two)["relationships"]["web"]
    assert seen["node"] == "one" and time.time() < seen["lease_expires_at"] <= time.time() + TTL
    shown = ctl(two, "status")
    assert shown.returncode == 0, shown.stderr
    assert "following" in shown.stdout and "reachable" in shown.stdout
    # The first keepalive comes a third of the TTL after the grant: the sync may beat it.
    keepalive = re.compile(r'cerssd_cluster_etcd_requests_total\{call="lease/keepalive",'
                           r'node="one"\} [1-9]')
    wait_until(lambda: keepalive.search(raw_request(one.socket_path, "GET", "/metrics").body),
               TTL, interval=0.1, what="one's first lease keepalive counted")
    text = raw_request(one.socket_path, "GET", "/metrics").body
    assert 'cerssd_cluster_leading{node="one",relationship="web"} 1.0' in text
    assert 'cerssd_cluster_etcd_up{node="one"} 1.0' in text
    text = raw_request(two.socket_path, "GET", "/metrics").body
    assert 'cerssd_cluster_leading{node="two",relationship="web"} 0.0' in text
    assert 'cerssd_cluster_has_leader{node="two",relationship="web"} 1.0' in text


def test_kill_9_of_the_leader_mid_transfer_another_takes_over_within_the_ttl(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 16)
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools, limit=4 * MiB)
    wait_until(lambda: (s := next(s for s in show(one, "web")["slaves"]
                                  if s["server"] == "a"))["progress"]
               and s["progress"]["done"] > 2 * MiB, 30, what="a's transfer under way")
    taken = show(one, "web")["newest_snapshot"]
    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait()
    killed = time.monotonic()
    wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
    takeover = time.monotonic() - killed
    print(f"takeover after kill -9: {takeover:.2f} s (lease_ttl {TTL} s)")
    assert takeover <= TTL + TTL / 3 + 1
    r = wait_in_sync(two, "web")
    assert r["newest_snapshot"] == taken  # the same cycle carried on, not a new one
    assert cycle_snapshots(master) == [taken.split("@")[1]]
    for pool in (a, b):
        assert guid(f"{pool}/data@{taken.split('@')[1]}") == guid(taken)
    assert r["failover"]["fenced"] == []


def test_a_paused_leader_past_its_lease_cannot_write_and_steps_down(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    master = pools[0]
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    first = wait_in_sync(one, "web")["newest_snapshot"]
    one.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
        assert raw_request(two.socket_path, "POST",
                           "/v1/relationships/web/sync-now").status == 202
        second = wait_until(lambda: (n := show(two, "web")["newest_snapshot"]) != first and n,
                            60, what="two's cycle")
    finally:
        one.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: not leads(one) and cluster(one)["leaderships_lost"] == 1, 3 * TTL,
               interval=0.1, what="one steps down")
    wait_until(lambda: leader(one) == "two", 3 * TTL, interval=0.1, what="one sees two lead")
    r = raw_request(one.socket_path, "POST", "/v1/relationships/web/sync-now")
    assert r.status == 409
    wait_in_sync(two, "web")
    assert sorted(cycle_snapshots(master)) == sorted(
        [first.split("@")[1], second.split("@")[1]])  # one cycle each, none twice
    assert "stepping down from relationship" in one.log()


def test_etcd_without_quorum_at_start_the_daemon_serves_and_leads_once_it_has_one(
        start_daemon: Any, tmp_path: Path, pools: tuple[str, str, str]) -> None:
    master = pools[0]
    own = start_cluster(Path(tempfile.mkdtemp(prefix="cerssd-etcd-")))
    try:
        for m in own.members[1:]:
            own.stop_member(m)
        d = start_daemon(extra=cluster_config(own.endpoints, "solo", "/q/", pools),
                         state_dir=tmp_path / "solo")
        wait_until(lambda: cluster(d)["last_error"], 30, interval=0.1, what="etcd error")
        status = cluster(d)
        assert not status["etcd_reachable"] and not status["relationships"]["web"]["leading"]
        assert cycle_snapshots(master) == []
        r = raw_request(d.socket_path, "POST", "/v1/relationships/web/sync-now")
        assert r.status == 409 and "etcd unreachable" in r.body["detail"]
        for m in own.members[1:]:
            own.start_member(m)
        wait_until(lambda: leads(d), 60, interval=0.1, what="solo leads once etcd has a quorum")
        wait_in_sync(d, "web")
        assert len(cycle_snapshots(master)) == 1
    finally:
        own.stop()


# -- what a round costs etcd ---------------------------------------------------------------


def round_member(etcd: EtcdCluster, node: str, prefix: str, names: list[str]) -> ClusterMember:
    config = ClusterConfig(etcd=tuple(etcd.endpoints), node=node, lease_ttl=TTL, prefix=prefix)
    return ClusterMember(config, EtcdClient(config.etcd), lambda: names)


async def round_cost(member: ClusterMember, rounds: int = 3) -> dict[str, float]:
    """Requests per round, by call, over ``rounds`` rounds."""
    before = Counter(member.client.requests)
    for _ in range(rounds):
        await member.run_round()
    return {call: n / rounds for call, n in (member.client.requests - before).items()}


@pytest.mark.parametrize("n", [1, 50])
async def test_a_round_costs_etcd_the_same_with_1_or_50_relationships(
        etcd: EtcdCluster, n: int) -> None:
    names = [f"r{i}" for i in range(n)]
    prefix = f"/r{uuid.uuid4().hex[:8]}/"
    one, two = (round_member(etcd, node, prefix, names) for node in ("one", "two"))
    try:
        await one.run_round()  # takes every lock: one transaction each
        assert all(one.leads(name) for name in names)
        assert one.client.requests["kv/txn"] == n
        await two.run_round()  # finds every lock held: no transaction
        assert not any(two.leads(name) for name in names)
        assert two.client.requests["kv/txn"] == 0
        leading, following = await round_cost(one), await round_cost(two)
        print(f"{n} relationships: leader {sum(leading.values()):g} requests per round "
              f"{leading}, follower {sum(following.values()):g} {following}")
        # One keepalive, one range read; the follower also asks the leader's lease's
        # time to live (once per other manager, not per relationship).
        assert leading == {"lease/keepalive": 1, "kv/range": 1}
        assert following == {"lease/keepalive": 1, "kv/range": 1, "lease/timetolive": 1}
        assert one.lease is not None
        await one.client.revoke(one.lease)  # as if its lease expired: every lock freed
        before = two.client.requests["kv/txn"]
        await two.run_round()
        assert all(two.leads(name) for name in names)
        assert two.client.requests["kv/txn"] - before == n  # only the locks changing hands
        assert await round_cost(two) == {"lease/keepalive": 1, "kv/range": 1}
    finally:
        await one.close()
        await two.close()


# -- automatic failover ------------------------------------------------------------------


def test_auto_failover_rule_picks_the_newest_slave_within_max_data_loss() -> None:
    policy = AutoFailover(after=30, max_data_loss=120)
    slaves = {"a": SlaveStatus("a", "p/a", last_snapshot_created=900.0),
              "b": SlaveStatus("b", "p/b", last_snapshot_created=950.0),
              "c": SlaveStatus("c", "p/c")}
    assert decide(policy, slaves, (), down_since=1000.0).promote == "b"
    assert decide(policy, slaves, ("b",), down_since=1000.0).promote == "a"
    refused = decide(policy, slaves, (), down_since=1100.0 + 50)
    assert refused.promote is None and "b would lose up to 200 s" in refused.reason
    assert decide(policy, {"c": slaves["c"]}, (), 1000.0).promote is None


@pytest.mark.parametrize(("table", "key"), [
    ({"auto_failover": "yes"}, "relationships.web.auto_failover"),
    ({"auto_failover": True, "failover_after": "0s"}, "relationships.web.failover_after"),
    ({"auto_failover": True, "max_data_loss": "soon"}, "relationships.web.max_data_loss"),
    ({"auto_failover": True}, "relationships.web.auto_failover"),  # no [cluster]
    ({"auto_failover": True, "recursive": True}, "relationships.web.auto_failover"),
])
def test_invalid_auto_failover_config_names_the_key(table: dict[str, Any], key: str) -> None:
    data: dict[str, Any] = {
        "servers": {"local": {"kind": "local"}, "s": {"kind": "local"}},
        "relationships": {"web": {"volume": "tank/data", "interval": "1h",
                                  "slaves": [{"server": "s", "target_volume": "p/data"}],
                                  **table}}}
    if "recursive" in table:
        data["cluster"] = {"etcd": ["http://127.0.0.1:2379"]}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert exc.value.key == key


def auto_config(endpoints: list[str], master: NetnsSshServer, pools: tuple[str, str, str],
                *, max_data_loss: str, node: str = "solo", prefix: str | None = None) -> str:
    mpool, a, b = pools
    etcd = ", ".join(f'"{e}"' for e in endpoints)
    prefix = prefix or f"/a{uuid.uuid4().hex[:8]}/"
    return (f'[cluster]\netcd = [{etcd}]\nnode = "{node}"\nlease_ttl = "{TTL}s"\n'
            f'prefix = "{prefix}"\n' + master.config("m")
            + '[servers.a]\nkind = "local"\n[servers.b]\nkind = "local"\n'
            f'[relationships.web]\nvolume = "{mpool}/data"\nmaster = "m"\ninterval = "1h"\n'
            f'slaves = [{{server = "a", target_volume = "{a}/data"}}, '
            f'{{server = "b", target_volume = "{b}/data"}}]\n'
            f'auto_failover = true\nfailover_after = "3s"\nmax_data_loss = "{max_data_loss}"\n')


def auto_watch(d: DaemonProcess) -> dict[str, Any]:
    """The leader's watch of the master ({} until its first probe has answered)."""
    watch: dict[str, Any] = show(d, "web")["auto_failover"]["watch"] or {}
    return watch


def auto_daemon(start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
                pools: tuple[str, str, str], netns_sshd: NetnsSshServer,
                max_data_loss: str) -> DaemonProcess:
    """One clustered manager of relationship ``web`` (its master behind ``netns_sshd``)
    with automatic failover bounded by ``max_data_loss``."""
    d: DaemonProcess = start_daemon(
        extra=auto_config(etcd.endpoints, netns_sshd, pools, max_data_loss=max_data_loss),
        state_dir=tmp_path / "solo", daemon_extra=FAST_RETRIES)
    return d


def test_auto_failover_promotes_a_slave_when_the_master_namespace_goes_down(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster, pools: tuple[str, str, str],
        netns_sshd: NetnsSshServer) -> None:
    d = auto_daemon(start_daemon, tmp_path, etcd, pools, netns_sshd, "1h")
    taken = wait_in_sync(d, "web")["newest_snapshot"]
    wait_until(lambda: auto_watch(d).get("state") == "watching", 30, interval=0.2,
               what="the leader watching the master")
    netns_sshd.cut()
    cut = time.time()
    wait_until(lambda: show(d, "web")["active_server"] != "m", 60, interval=0.2,
               what="a slave promoted")
    promoted = time.time() - cut
    watch = auto_watch(d)
    print(f"master link down -> seen down {watch['master_down_since'] - cut:.1f} s, "
          f"failover decided {watch['at'] - cut:.1f} s, slave promoted {promoted:.1f} s "
          "(failover_after 3 s)")
    assert watch["at"] - watch["master_down_since"] >= 3
    r = show(d, "web")
    assert r["active_server"] == "a"  # tie on the same snapshot: the first listed
    failover = d.api("GET", f"/v1/activities/{auto_watch(d)['activity']}")
    assert failover["kind"] == "failover" and failover["params"]["force"] is True
    d.wait_done(failover["id"])
    r = show(d, "web")
    assert [f["server"] for f in r["failover"]["fenced"]] == ["m"]
    assert r["failover"]["data_loss"]["snapshot"].split("@")[1] == taken.split("@")[1]
    assert [s["server"] for s in r["slaves"]] == ["b"]
    fails = d.api("GET", "/v1/activities?kind=failover")["items"]
    assert len(fails) == 1  # decided once


def test_auto_failover_refused_when_the_best_slave_lags_past_max_data_loss(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster, pools: tuple[str, str, str],
        netns_sshd: NetnsSshServer) -> None:
    d = auto_daemon(start_daemon, tmp_path, etcd, pools, netns_sshd, "2s")
    wait_in_sync(d, "web")
    created = min(s["last_snapshot_created"] for s in show(d, "web")["slaves"])
    wait_until(lambda: time.time() - created > 4, 10, interval=0.2,
               what="the slaves' snapshot older than max_data_loss")
    netns_sshd.cut()
    wait_until(lambda: auto_watch(d).get("state") == "refused", 60, interval=0.2,
               what="automatic failover refused")
    assert "over max_data_loss" in auto_watch(d)["reason"]
    assert show(d, "web")["active_server"] == "m"
    assert d.api("GET", "/v1/activities?kind=failover")["items"] == []
    text = raw_request(d.socket_path, "GET", "/metrics").body
    assert 'cerssd_cluster_auto_failover_refused{node="solo",relationship="web"} 1.0' in text
    assert "automatic failover refused" in d.log()


def test_two_managers_fail_over_once_and_the_next_leader_keeps_the_new_roles(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster, pools: tuple[str, str, str],
        netns_sshd: NetnsSshServer) -> None:
    prefix = f"/a{uuid.uuid4().hex[:8]}/"
    one = start_daemon(extra=auto_config(etcd.endpoints, netns_sshd, pools, node="one",
                                         prefix=prefix, max_data_loss="1h"),
                       state_dir=tmp_path / "one", daemon_extra=FAST_RETRIES)
    wait_until(lambda: leads(one), 30, interval=0.1, what="one leads web")
    two = start_daemon(extra=auto_config(etcd.endpoints, netns_sshd, pools, node="two",
                                         prefix=prefix, max_data_loss="1h"),
                       state_dir=tmp_path / "two", daemon_extra=FAST_RETRIES)
    wait_until(lambda: leader(two) == "one", 30, interval=0.1, what="two sees one leading")
    wait_in_sync(one, "web")
    assert show(two, "web")["auto_failover"]["watch"] is None  # only the leader watches
    netns_sshd.cut()
    wait_until(lambda: show(one, "web")["active_server"] == "a", 60, interval=0.2,
               what="one promotes a")
    # The failover activity from the journal: the watch names it only until its next
    # probe finds the new master answering (then it watches that one, afresh), which
    # under load came before this test looked (local CI, 2026-12-07).
    (failover,) = one.api("GET", "/v1/activities?kind=failover")["items"]
    assert one.wait_done(failover["id"])["state"] == "succeeded"
    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait()
    wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
    r = wait_until(lambda: (x := show(two, "web"))["active_server"] == "a" and x, 30,
                   interval=0.2, what="two runs web under the new roles")
    assert [f["server"] for f in r["failover"]["fenced"]] == ["m"]
    assert [s["server"] for s in r["slaves"]] == ["b"]
    assert two.api("GET", "/v1/activities?kind=failover")["items"] == []  # no second one
    wait_in_sync(two, "web")  # a (the new master) to b, led by two


def test_a_leader_stopped_cleanly_hands_over_before_its_lease_would_expire(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    wait_in_sync(one, "web")
    one.proc.send_signal(signal.SIGTERM)
    assert one.proc.wait(timeout=60) == 0
    stopped = time.monotonic()
    wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
    handover = time.monotonic() - stopped
    print(f"handover after SIGTERM: {handover:.2f} s (lease_ttl {TTL} s)")
    assert handover < TTL  # the lease was revoked, not left to expire


def test_cluster_alert_rules_use_only_metrics_a_clustered_daemon_exports(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    from .test_monitoring import RULES, alert_expressions, exported_names, metric_names

    config = cluster_config(etcd.endpoints, "solo", f"/m{uuid.uuid4().hex[:8]}/", pools)
    d = start_daemon(extra=config + "auto_failover = true\n", state_dir=tmp_path / "solo")
    wait_until(lambda: leads(d) and show(d, "web")["auto_failover"]["watch"], 30,
               interval=0.1, what="solo leads and watches web")
    exported, sampled = exported_names(raw_request(d.socket_path, "GET", "/metrics").body)
    used = {name: metric_names(expr) for name, expr in
            alert_expressions(RULES.read_text()).items() if "cerssd_cluster_" in expr}
    assert len(used) == 4, used
    for name, names in used.items():
        assert names <= exported and names <= sampled, (name, names - sampled)


def test_a_reload_that_removes_the_relationship_gives_its_lead_to_another_manager(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    wait_in_sync(one, "web")
    text = one.config_path.read_text()
    one.config_path.write_text(text[:text.index("[relationships.web]")])
    one.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: leads(two), 4 * TTL, interval=0.1, what="two leads web")
    assert "web" not in cluster(one)["relationships"]
    assert "gave back the lead" in one.log()


def test_a_relationship_stopped_on_the_leader_stays_stopped_under_the_next_one(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    first = wait_in_sync(one, "web")["newest_snapshot"]
    activity = show(one, "web")["activity"]
    assert raw_request(one.socket_path, "POST", f"/v1/activities/{activity}/cancel").status \
        == 202
    wait_until(lambda: show(one, "web")["state"] == "stopped", 30, what="web stopped")
    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait()
    wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
    wait_until(lambda: show(two, "web")["state"] == "stopped", 30,
               what="web stopped under two")
    assert raw_request(two.socket_path, "POST", "/v1/relationships/web/resume").status == 200
    r = wait_in_sync(two, "web")
    assert r["newest_snapshot"] == first  # resumed: caught up, no cycle due before 1h
    # one's own journal says stopped; the shared facts say running: they win.
    two.proc.send_signal(signal.SIGKILL)
    two.proc.wait()
    again = start_daemon(config_path=one.config_path)
    wait_until(lambda: leads(again), 3 * TTL, interval=0.05, what="one leads web again")
    wait_until(lambda: show(again, "web")["state"] == "running", 30, what="web runs on one")
    assert raw_request(again.socket_path, "POST",
                       "/v1/relationships/web/sync-now").status == 202
    wait_until(lambda: show(again, "web")["newest_snapshot"] != first, 60,
               what="a cycle on one")


def test_a_pause_holds_under_the_next_leader_and_so_does_a_resume(
        start_daemon: Any, tmp_path: Path, etcd: EtcdCluster,
        pools: tuple[str, str, str]) -> None:
    master = pools[0]
    one, two = start_pair(start_daemon, tmp_path, etcd.endpoints, pools)
    first = wait_in_sync(one, "web")["newest_snapshot"]
    refused = post_json(two, "/v1/relationships/web/pause", {})
    assert refused.status == 409 and "one does" in refused.body["detail"]
    paused = post_json(one, "/v1/relationships/web/pause", {})
    assert paused.status == 200 and paused.body["state"] == "paused"
    one.proc.send_signal(signal.SIGKILL)
    one.proc.wait()
    wait_until(lambda: leads(two), 3 * TTL, interval=0.05, what="two leads web")
    wait_until(lambda: show(two, "web")["state"] == "paused", 30, interval=0.1,
               what="web paused under two")
    activity = two.api("GET", f"/v1/activities/{show(two, 'web')['activity']}")
    assert activity["state"] == "suspended"
    r = raw_request(two.socket_path, "POST", "/v1/relationships/web/sync-now")
    assert r.status == 409 and "is paused" in r.body["detail"]
    assert cycle_snapshots(master) == [first.split("@")[1]]  # two ran no cycle
    resumed = post_json(two, "/v1/relationships/web/resume", {})
    assert resumed.status == 200 and resumed.body["state"] == "running"
    # one's own journal says its activity is suspended; the shared facts say resumed.
    two.proc.send_signal(signal.SIGKILL)
    two.proc.wait()
    again = start_daemon(config_path=one.config_path)
    wait_until(lambda: leads(again), 3 * TTL, interval=0.05, what="one leads web again")
    wait_until(lambda: show(again, "web")["state"] == "running", 30, interval=0.1,
               what="web runs under one")
    assert raw_request(again.socket_path, "POST",
                       "/v1/relationships/web/sync-now").status == 202
    r = wait_until(lambda: (x := show(again, "web"))["newest_snapshot"] != first and x, 60,
                   what="a cycle on one")
    assert len(cycle_snapshots(master)) == 2


def test_the_watch_header_says_who_leads_and_whether_etcd_answers() -> None:
    from cerssd.cli.watch import cluster_line

    c = {"node": "two", "etcd_reachable": True, "last_error": None,
         "relationships": {"web": {"node": "one", "leading": False},
                           "db": {"node": "two", "leading": True},
                           "logs": {"node": None, "leading": False}}}
    assert cluster_line(c) == ("cluster node two, etcd reachable, leading 1 of 3 "
                               "(db: two, logs: NO LEADER, web: one)")
    c.update(etcd_reachable=False, last_error="http://10.0.0.1:2379: refused")
    assert "etcd UNREACHABLE (http://10.0.0.1:2379: refused)" in cluster_line(c)
