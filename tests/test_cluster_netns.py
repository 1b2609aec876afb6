"""Clustered managing daemons on nodes of their own: each runs in a network namespace
and reaches the real 3-member etcd over its own veth link (the members also serve
clients on the host side of each link). The leader's node loses its link mid-cycle:
not a process kill but a partition, where the old leader lives on, cut off from etcd.

The relationship's master and slaves are zfs-fuse pools of this machine (``local``
servers, as in ``test_cluster``): both managers reach them, so the partitioned old
leader could go on acting on them; what stops it is the cluster's protocol alone
(it steps down before its lease can have expired, and every decision it tries to
commit fails).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    DaemonProcess,
    RawResponse,
    post_json,
    raw_request,
    wait_until,
    write_file,
    zfs,
)
from .etcd_cluster import EtcdCluster, start_cluster
from .sshd import NetnsSshServer
from .test_cluster import TTL, cluster, cluster_config, cycle_snapshots, leader, leads
from .test_relationships import show, wait_in_sync
from .test_replicate_local import guid

MiB = 1 << 20


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str, str]:
    master, a, b = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    return master, a, b


@pytest.fixture
def nodes(make_netns_sshd: Any) -> tuple[NetnsSshServer, NetnsSshServer]:
    """Two nodes: namespaces with a veth link each (their sshd is not used here)."""
    return make_netns_sshd(), make_netns_sshd()


@pytest.fixture
def node_etcd(nodes: tuple[NetnsSshServer, NetnsSshServer]) -> Iterator[EtcdCluster]:
    """An etcd cluster of its own, serving clients on each node's link too."""
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="cerssd-etcd-")),
                            client_hosts=tuple(n.host_address for n in nodes))
    yield cluster
    cluster.stop()


def in_node(node: NetnsSshServer) -> list[str]:
    # The network namespace only (as the test sshds): zfs-fuse mounts stay visible.
    return ["nsenter", f"--net=/run/netns/{node.namespace}"]


def transfer_done(d: DaemonProcess, server: str) -> int:
    s = next(s for s in show(d, "web")["slaves"] if s["server"] == server)
    return int(s["progress"]["done"]) if s["progress"] else 0


def test_the_leaders_node_loses_its_link_mid_cycle_the_other_leads_and_the_old_cannot_act(
        start_daemon: Any, tmp_path: Path, nodes: tuple[NetnsSshServer, NetnsSshServer],
        node_etcd: EtcdCluster, pools: tuple[str, str, str]) -> None:
    master, a, b = pools
    write_file(f"/{master}/data/f1", 16)
    prefix = f"/n{uuid.uuid4().hex[:8]}/"

    def manager(node: NetnsSshServer, name: str) -> DaemonProcess:
        config = cluster_config(node_etcd.endpoints_on(node.host_address), name, prefix,
                                pools, limit=4 * MiB)
        d: DaemonProcess = start_daemon(extra=config, state_dir=tmp_path / name,
                                        wrap=in_node(node))
        return d

    one = manager(nodes[0], "one")
    wait_until(lambda: leads(one), 30, interval=0.1, what="one leads web")
    two = manager(nodes[1], "two")
    wait_until(lambda: leader(two) == "one", 30, interval=0.1, what="two sees one leading")
    wait_until(lambda: transfer_done(one, "a") > 2 * MiB, 60, what="a's transfer under way")
    taken = show(one, "web")["newest_snapshot"]
    label = taken.split("@")[1]

    nodes[0].cut()
    cut = time.monotonic()
    # The old leader is asked to fail over at once, while it still believes it leads:
    # its decision cannot reach etcd, so nothing may happen.
    answers: list[RawResponse] = []
    asking = threading.Thread(target=lambda: answers.append(post_json(
        one, "/v1/relationships/web/failover", {"to": "b", "force": True})))
    asking.start()
    wait_until(lambda: leads(two), TTL + TTL / 3 + 10, interval=0.05, what="two leads web")
    takeover = time.monotonic() - cut
    print(f"takeover after the leader's link went down: {takeover:.2f} s "
          f"(lease_ttl {TTL} s, rounds every {TTL / 3:.0f} s)")
    assert takeover <= TTL + TTL / 3 + 2
    asking.join(60)
    assert answers and answers[0].status == 409, answers
    # Asked while it still led (its lease renewed under a second before the cut), it
    # tried to commit and could not; asked later, it had already stepped down.
    detail = answers[0].body["detail"]
    print(f"the old leader's failover: {answers[0].status} {detail}")
    assert "lost the lead" in detail or "does not lead" in detail, detail

    # The old leader stepped down by itself, cut off as it is.
    wait_until(lambda: not leads(one), 3 * TTL, interval=0.1, what="one steps down")
    status = cluster(one)
    assert not status["etcd_reachable"] and status["leaderships_lost"] == 1
    assert "lease not renewed in time; stepping down" in one.log()

    # The relationship carries on under two: the same cycle first, then a new one.
    r = wait_in_sync(two, "web")
    assert r["newest_snapshot"] == taken
    assert raw_request(two.socket_path, "POST", "/v1/relationships/web/sync-now").status == 202
    second = wait_until(lambda: (n := show(two, "web")["newest_snapshot"]) != taken and n, 60,
                        what="two's cycle")
    r = wait_in_sync(two, "web")
    labels = [label, second.split("@")[1]]
    assert sorted(cycle_snapshots(master)) == sorted(labels)  # each cycle once
    for pool in (a, b):
        for each in labels:
            assert guid(f"{pool}/data@{each}") == guid(f"{master}/data@{each}")
    # Nor did the old leader's failover act: roles, master and fences as they were.
    assert r["active_server"] == "local" and r["failover"]["fenced"] == []
    assert [s["server"] for s in r["slaves"]] == ["a", "b"]
    assert zfs("get", "-H", "-o", "value", "readonly", f"{master}/data").stdout.strip() == "off"
    assert two.api("GET", "/v1/activities?kind=failover")["items"] == []
    tried = one.api("GET", "/v1/activities?kind=failover")["items"]
    assert [f["state"] for f in tried] == (["cancelled"] if "lost the lead" in detail else [])

    # Its link back, the old leader finds two leading and stays a follower.
    nodes[0].restore()
    wait_until(lambda: cluster(one)["etcd_reachable"] and leader(one) == "two", 30,
               interval=0.1, what="one sees two lead")
    assert not leads(one)
    assert raw_request(one.socket_path, "POST", "/v1/relationships/web/sync-now").status == 409
