"""A tree relationship whose master runs cerssd: its members' transfers to a remote slave
and its backups run on the master's node (docs/peers.md, docs/trees.md).

Set up as tests/test_peer_relationships.py: nodes are network namespaces with their own
sshd; the master's peer daemon runs beside the shared zfs-fuse and SeaweedFS, so what it
sends to the slave's node and to the bucket never crosses the master node's veth, whose
counters show what came to the managing node from it. The first sync sends each member
by a delegated transfer of its own (as a local tree's first sync does); the syncs after
it stream every member on by one delegated batch (``member-streams``); each cycle's
backup is one batch on the peer (``member-backups``), one chain per member.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import (
    SLOW,
    DaemonProcess,
    NetnsSshServer,
    make_writable,
    wait_until,
    write_file,
    zfs,
)
from .seaweed import WeedServer
from .test_backups import guid, listed, store_section
from .test_peer_relationships import master_daemon, peer_master
from .test_peers import FAST_RETRIES, MiB, host_rx
from .test_trees import rel, sync_now

MEMBERS = ("a", "a/x", "b", "c")
TERMINAL = ("succeeded", "failed", "cancelled")


def tree(name: str, root: str, master: str, slave: str, target: str, extra: str = "") -> str:
    return (f'[relationships.{name}]\nvolume = "{root}"\nmaster = "{master}"\n'
            f'recursive = true\ninterval = "1h"\nmax_parallel = 2\n'
            f'slaves = [{{server = "{slave}", target_volume = "{target}"}}]\n{extra}\n')


def activities(d: DaemonProcess, kind: str, name: str) -> list[dict[str, Any]]:
    items = d.api("GET", f"/v1/activities?kind={kind}&limit=1000")["items"]
    return sorted((x for x in items if x["params"].get("relationship") == name),
                  key=lambda x: x["created_at"])


def in_sync(d: DaemonProcess, name: str, slave: str, members: int, cycles: int) -> bool:
    """Every member in sync and no sync or transfer of the relationship live."""
    r = rel(d, name)
    t = r["tree"]
    return (r["cycles"] >= cycles and t is not None and t["members"] == members
            and t["slaves"][slave]["in_sync"] == members
            and all(x["state"] in TERMINAL for kind in ("tree-sync", "replicate",
                                                         "member-streams")
                    for x in activities(d, kind, name)))


def backed_up(d: DaemonProcess, name: str, cycles: int, members: int) -> bool:
    r = rel(d, name)
    return (r["cycles"] >= cycles and r["tree"]["stores"]["s3"]["backed_up"] == members
            and all(x["state"] in TERMINAL for x in activities(d, "tree-backup", name)))


def same_guids(root: str, target: str, label: str) -> None:
    for m in ("", *MEMBERS):
        src = f"{root}/{m}".rstrip("/")
        dst = f"{target}/{m}".rstrip("/")
        assert guid(f"{dst}@{label}") == guid(f"{src}@{label}"), m


def newest_label(d: DaemonProcess, name: str) -> str:
    items = d.api("GET", f"/v1/relationships/{name}/volumes")["items"]
    return str(items[0]["newest_snapshot"].split("@")[1])


def test_a_peer_masters_tree_is_sent_and_backed_up_from_its_node(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], s3_server: WeedServer,
        s3_bucket: str, tmp_path: Path) -> None:
    master, slave_pool = make_pool("1G"), make_pool("1G")
    root, target = f"{master}/cinder", f"{slave_pool}/standby"
    zfs("create", root)
    for m in MEMBERS:
        zfs("create", f"{root}/{m}")
        write_file(f"/{root}/{m}/f", 4)
    a, b = make_netns_sshd(), make_netns_sshd()
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
    peer = master_daemon(start_daemon, b, store, tmp_path)
    before = host_rx(a)
    d = start_daemon(
        extra=peer_master(a, peer) + b.config("nodeB") + store
        + tree("cinder", root, "nodeA", "nodeB", target, 'stores = ["s3"]'),
        state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)
    members = 1 + len(MEMBERS)

    # -- cycle 1: each member's first copy by a delegated transfer of its own ----------
    wait_until(lambda: in_sync(d, "cinder", "nodeB", members, 1), SLOW,
               what="the tree's first sync")
    wait_until(lambda: backed_up(d, "cinder", 1, members), SLOW, what="the first backups")
    label = newest_label(d, "cinder")
    same_guids(root, target, label)
    (sync,) = activities(d, "tree-sync", "cinder")
    assert sync["route"] == "delegated" and sync["node"] == "nodeA", sync
    sent = activities(d, "replicate", "cinder")
    assert len(sent) == members and {(t["route"], t["node"], t["state"]) for t in sent} \
        == {("delegated", "nodeA", "succeeded")}, sent
    child = peer.api("GET", f"/v1/activities/{sent[0]['params']['peer_activity']}")
    assert child["source"] == "local" and child["target"].startswith("nodeB:")
    assert child["params"]["peer_parent"] == sent[0]["id"]
    # the backups: one tree-backup, delegated, whose child on the peer backed up every
    # member, a chain each in the bucket
    (b1,) = activities(d, "tree-backup", "cinder")
    assert b1["route"] == "delegated" and b1["node"] == "nodeA", b1
    assert b1["progress"]["done"] == members and b1["params"]["full"] == members, b1
    batch = peer.api("GET", f"/v1/activities/{b1['params']['peer_activity']}")
    assert batch["kind"] == "member-backups" and batch["state"] == "succeeded"
    assert batch["params"]["peer_parent"] == b1["id"] and batch["source"] == "local"
    names = [root] + [f"{root}/{m}" for m in MEMBERS]
    assert all([x["kind"] for x in listed(d, n)] == ["full"] for n in names)
    through_us = host_rx(a) - before
    data = sum(t["usage"]["bytes_on_wire"] for t in sent)
    print(f"cycle 1: {through_us} bytes from the master's node to the managing one for "
          f"{data} bytes sent to the slave and {batch['usage']['bytes_on_wire']} to the "
          "bucket")
    assert data > 16 * MiB and batch["usage"]["bytes_on_wire"] > 16 * MiB
    assert through_us < data / 10  # control only: a relayed tree brings it all

    # -- cycle 2: every member streamed on by one delegated batch; backups incremental --
    for m in MEMBERS:
        write_file(f"/{root}/{m}/g", 2)
    before = host_rx(a)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: in_sync(d, "cinder", "nodeB", members, cycle), SLOW,
               what="the second sync")
    wait_until(lambda: backed_up(d, "cinder", cycle, members)
               and len(activities(d, "tree-backup", "cinder")) == 2, SLOW,
               what="the second backups")
    label = newest_label(d, "cinder")
    same_guids(root, target, label)
    assert len(activities(d, "replicate", "cinder")) == members, "no transfer of its own"
    (streams,) = activities(d, "member-streams", "cinder")
    assert streams["route"] == "delegated" and streams["node"] == "nodeA", streams
    assert streams["state"] == "succeeded" and streams["params"]["parent"] \
        == activities(d, "tree-sync", "cinder")[-1]["id"]
    child = peer.api("GET", f"/v1/activities/{streams['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["progress"]["done"] == members
    assert child["params"]["failed"] == 0 and len(child["params"]["results"]) == members
    moved = child["usage"]["bytes_on_wire"]
    b2 = activities(d, "tree-backup", "cinder")[-1]
    assert b2["route"] == "delegated" and b2["params"]["incremental"] == members, b2
    assert all([x["kind"] for x in listed(d, n)] == ["full", "incremental"] for n in names)
    chain = listed(d, f"{root}/a")
    assert chain[1]["parent_guid"] == chain[0]["guid"] and chain[1]["snapshot"].endswith(label)
    through_us = host_rx(a) - before
    print(f"cycle 2: {through_us} bytes from the master's node for {moved} streamed on")
    assert moved > 8 * MiB and through_us < moved / 10

    # -- cycle 3: a member written on the slave fails alone, named; the others go on ----
    replica = f"{target}/b"
    make_writable(replica)
    zfs("mount", replica, check=False)  # received unmounted
    write_file(f"/{replica}/local-change", 1)
    for m in ("a", "b"):
        write_file(f"/{root}/{m}/h", 1)
    cycle = sync_now(d, "cinder")

    def degraded() -> dict[str, Any] | None:
        r = rel(d, "cinder")
        done = all(x["state"] in TERMINAL for x in activities(d, "tree-sync", "cinder"))
        ok = (r["cycles"] >= cycle and done and r["state"] == "degraded"
              and r["tree"]["slaves"]["nodeB"]["in_sync"] == members - 1)
        return r if ok else None
    shown = wait_until(degraded, SLOW, what="the others in sync, b failing")
    failing = shown["tree"]["failing"]
    assert [f["member"] for f in failing] == [f"{root}/b"], failing
    assert "modified" in failing[0]["error"], failing
    label = newest_label(d, "cinder")
    for m in ("", "a", "a/x", "c"):
        assert guid(f"{target}/{m}@{label}".replace("/@", "@")) \
            == guid(f"{root}/{m}@{label}".replace("/@", "@"))
    # b's stream failed in the batch and its own (delegated) transfer named why
    mine = [t for t in activities(d, "replicate", "cinder") if t["params"].get("member") == "b"]
    assert mine[-1]["state"] == "failed" and mine[-1]["route"] == "delegated", mine[-1]
    streams = activities(d, "member-streams", "cinder")[-1]
    child = peer.api("GET", f"/v1/activities/{streams['params']['peer_activity']}")
    assert child["params"]["failed"] == 1 and child["params"]["results"][replica], child
