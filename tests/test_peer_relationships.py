"""A relationship whose master runs cerssd: its cycles' backups and remote slave transfers
are delegated to the master's peer daemon (docs/peers.md).

Set up as tests/test_peers.py: nodes are network namespaces with their own sshd; the
master's peer daemon runs beside the shared zfs-fuse and SeaweedFS, so its sends to the
bucket and to the slave's node never cross the master node's veth, whose counters show
what came to the managing node from it. A relayed transfer brings the whole stream
across that veth; a delegated one control only.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.parsing import ConfigError

from .conftest import SLOW, DaemonProcess, NetnsSshServer, post_json, wait_until, write_file, zfs
from .seaweed import WeedServer
from .test_backups import guid, listed, store_section
from .test_peers import FAST_RETRIES, MiB, host_rx
from .test_relationships import show, transfers, wait_in_sync


def master_daemon(start_daemon: Callable[..., DaemonProcess], slave: NetnsSshServer,
                  store: str, tmp_path: Path) -> DaemonProcess:
    """The master node's own cerssd: its storage is local; the slave (``nodeB``) and the
    store under the names the managing daemon gives them (docs/peers.md); no
    relationship of its own."""
    return start_daemon(extra='[servers.local]\nkind = "local"\n' + slave.config("nodeB")
                        + store, state_dir=tmp_path / "peer-state", daemon_extra=FAST_RETRIES)


def peer_master(node: NetnsSshServer, peer: DaemonProcess) -> str:
    """``[servers.nodeA]``: the master node, whose own cerssd is ``peer``."""
    return node.config("nodeA", extra=f'daemon = true\ndaemon_socket = "{peer.socket_path}"\n')


def relationship(name: str, volume: str, master: str, slave: str, target: str,
                 extra: str = "") -> str:
    return (f'[relationships.{name}]\nvolume = "{volume}"\nmaster = "{master}"\n'
            f'interval = "1h"\nslaves = [{{server = "{slave}", target_volume = "{target}"}}]\n'
            f"{extra}\n")


def backups_done(d: DaemonProcess, name: str, n: int) -> list[dict[str, Any]] | None:
    items = [x for x in d.api("GET", "/v1/activities?kind=backup&limit=100")["items"]
             if x["params"].get("relationship") == name]
    done = [x for x in items if x["state"] == "succeeded"]
    return sorted(done, key=lambda x: x["created_at"]) \
        if len(done) >= n and len(items) == len(done) else None


def test_a_peer_masters_cycles_back_up_and_send_from_its_node(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], s3_server: WeedServer,
        s3_bucket: str, tmp_path: Path) -> None:
    master, slave_pool = make_pool("1G"), make_pool("1G")
    for vol in ("data", "other"):
        zfs("create", f"{master}/{vol}")
    write_file(f"/{master}/data/f", 32)
    write_file(f"/{master}/other/f", 8)
    a, b = make_netns_sshd(), make_netns_sshd()
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
    peer = master_daemon(start_daemon, b, store, tmp_path)
    before = host_rx(a)
    d = start_daemon(
        extra=peer_master(a, peer) + a.config("plainA") + b.config("nodeB") + store
        + relationship("rel", f"{master}/data", "nodeA", "nodeB", f"{slave_pool}/data",
                       'stores = ["s3"]')
        + relationship("plain", f"{master}/other", "plainA", "nodeB", f"{slave_pool}/other"),
        state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)

    first = wait_in_sync(d, "rel")
    (b1,) = wait_until(lambda: backups_done(d, "rel", 1), SLOW, what="the first backup")
    wait_in_sync(d, "plain")
    # The peer's own activities did the work; the managing daemon's are their parents.
    assert b1["route"] == "delegated" and b1["node"] == "nodeA", b1
    child = peer.api("GET", f"/v1/activities/{b1['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["params"]["peer_parent"] == b1["id"]
    assert child["route"] == "local" and child["source"] == "local"
    raw = child["params"]["raw_size"]
    assert raw > 32 * MiB
    (t1,) = transfers(d, "rel")
    assert t1["route"] == "delegated" and t1["node"] == "nodeA", t1
    sent = peer.api("GET", f"/v1/activities/{t1['params']['peer_activity']}")
    assert sent["target"] == f"nodeB:{slave_pool}/data" and sent["state"] == "succeeded"
    # The relationship's replicas are received unmounted, as a relayed one would be.
    assert zfs("get", "-H", "-o", "value", "mounted", f"{slave_pool}/data").stdout.strip() \
        == "no"
    assert guid(f"{slave_pool}/data@{first['newest_snapshot'].split('@')[1]}") \
        == guid(first["newest_snapshot"])
    (plain,) = transfers(d, "plain")
    assert plain["route"] == "relayed" and plain["node"] is None, plain
    # A relationship's bookkeeping is as for a local master: the store's base is known.
    assert show(d, "rel")["backups"][0]["last_backup_guid"] == guid(first["newest_snapshot"])
    through_us = host_rx(a) - before
    relayed = plain["usage"]["bytes_on_wire"]
    print(f"from the master's node to the managing one: {through_us} bytes for a "
          f"{raw}-byte backup and a {sent['usage']['bytes_on_wire']}-byte delegated "
          f"transfer, and a {relayed}-byte relayed one")
    assert relayed > 8 * MiB
    assert through_us < relayed + raw / 20  # the relayed stream plus control, no more

    # The second cycle's backup is incremental from the first, and still delegated.
    write_file(f"/{master}/data/g", 2)
    before = host_rx(a)
    assert post_json(d, "/v1/relationships/rel/sync-now", {}).status == 202
    b2 = wait_until(lambda: backups_done(d, "rel", 2), SLOW, what="the second backup")[1]
    second = wait_in_sync(d, "rel")
    assert b2["route"] == "delegated" and b2["params"]["base_guid"] == guid(
        first["newest_snapshot"]), b2["params"]
    items = listed(d, f"{master}/data")
    assert [m["kind"] for m in items] == ["full", "incremental"]
    assert items[1]["snapshot"] == second["newest_snapshot"]
    assert items[1]["parent_guid"] == guid(first["newest_snapshot"])
    assert show(d, "rel")["backups"][0]["last_backup_guid"] == guid(second["newest_snapshot"])
    assert [t["route"] for t in transfers(d, "rel")] == ["delegated", "delegated"]
    print(f"second cycle: {host_rx(a) - before} bytes from the master's node")
    assert host_rx(a) - before < 2 * MiB


def test_after_a_failover_to_a_peer_the_relationships_backups_are_delegated(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], s3_server: WeedServer,
        s3_bucket: str, tmp_path: Path) -> None:
    """The recommended layout's failover: the managing node's master fails over to a
    node running cerssd, and the next cycle's backup runs there, not here."""
    home, standby = make_pool("1G"), make_pool("1G")
    zfs("create", f"{home}/data")
    write_file(f"/{home}/data/f", 4)
    a = make_netns_sshd()
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + store,
                        state_dir=tmp_path / "peer-state", daemon_extra=FAST_RETRIES)
    d = start_daemon(
        extra=a.config("nodeA", extra=f'daemon = true\ndaemon_socket = "{peer.socket_path}"\n')
        + '[servers.local]\nkind = "local"\n' + store
        + relationship("rel", f"{home}/data", "local", "nodeA", f"{standby}/data",
                       'stores = ["s3"]'),
        state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)
    wait_in_sync(d, "rel")
    (b1,) = wait_until(lambda: backups_done(d, "rel", 1), SLOW, what="the first backup")
    assert b1["route"] == "local" and b1["node"] is None
    r = post_json(d, "/v1/relationships/rel/failover", {"to": "nodeA"})
    assert r.status == 202, r.body
    done = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert show(d, "rel")["master"] == "nodeA"
    # The new master's relationship first catches its store up: a backup of the
    # failover's final snapshot. A store busy when a cycle starts sits that cycle out (as
    # with a local master), so let that backup end first. Waiting for "no backup running"
    # alone could pass before it had started (local CI, 2026-12-07: the sync-now's cycle
    # then found the store busy, and nothing was left to back up its snapshot).
    wait_until(lambda: backups_done(d, "rel", 2), SLOW,
               what="the catch-up backup of the failover's snapshot")
    write_file(f"/{standby}/data/g", 1)
    assert post_json(d, "/v1/relationships/rel/sync-now", {}).status == 202

    def cycled() -> str | None:
        newest: str = wait_in_sync(d, "rel")["newest_snapshot"]
        return None if "-failover-" in newest else newest

    newest = wait_until(cycled, SLOW, what="the cycle the sync-now started")
    assert newest.startswith(f"{standby}/data@")

    def backed_up() -> list[dict[str, Any]] | None:
        done = backups_done(d, "rel", 2)
        return done if done and done[-1]["params"]["snapshot"] == newest else None

    # Every backup since the failover is delegated.
    after = wait_until(backed_up, 120, what="the new master's snapshot backed up")[1:]
    assert {(b["route"], b["node"]) for b in after} == {("delegated", "nodeA")}, after
    child = peer.api("GET", f"/v1/activities/{after[-1]['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["source"] == "local"
    assert [m["snapshot"] for m in listed(d, f"{standby}/data")][-1] == newest
    assert show(d, "rel")["backups"][0]["last_backup_guid"] == guid(newest)


STORE = '[stores.s3]\nbucket = "bucket"\n'
NODE = 'kind = "ssh"\nhost = "h"\nknown_hosts = "/k"\n'


@pytest.mark.parametrize(("extra", "problem"), [
    ("", "a relationship copies"),
    ('recursive = true\n', "a tree relationship copies"),
])
def test_stores_on_a_master_that_cannot_send_to_them_are_refused(
        extra: str, problem: str) -> None:
    text = (f"[servers.peer]\n{NODE}daemon = true\n[servers.plain]\n{NODE}"
            "[servers.local]\nkind = \"local\"\n" + STORE
            + relationship("r", "tank/v", "plain", "local", "tank/copy",
                           'stores = ["s3"]\n' + extra))
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert err.value.key == "relationships.r.stores" and problem in err.value.problem
    assert "or one that runs cerssd itself" in err.value.problem


@pytest.mark.parametrize("extra", ["", "recursive = true\n"])
def test_stores_on_a_peer_master_are_accepted(extra: str) -> None:
    """A single volume's and a tree's backups alike are delegated to the peer."""
    text = (f"[servers.peer]\n{NODE}daemon = true\n[servers.local]\nkind = \"local\"\n"
            + STORE + relationship("r", "tank/v", "peer", "local", "tank/copy",
                                   'stores = ["s3"]\n' + extra))
    rel = parse_config(tomllib.loads(text)).relationships["r"]
    assert rel.stores == ("s3",) and rel.is_tree == bool(extra)


def test_a_replications_receive_properties_are_checked_as_a_relationships(
        start_daemon: Callable[..., DaemonProcess]) -> None:
    """What a delegating daemon sends for its relationship's slave is refused (422,
    naming the field) when it could not be in a relationship's config either."""
    d = start_daemon()
    body = {"snapshot": "tank/v@s", "source": "local", "destination": "local",
            "target_volume": "tank/copy"}
    for extra, name, problem in [
            ({"receive_exclude": ["readonly"]}, "receive_exclude", "readonly cannot be named"),
            ({"receive_set": {"cerssd:x": "1"}}, "receive_set", "cerssd's own"),
            ({"receive_exclude": ["atime"], "receive_set": {"atime": "off"}}, "receive_set",
             "also in receive_exclude")]:
        r = post_json(d, "/v1/replications", {**body, **extra})
        assert r.status == 422 and r.body["field"] == name, r.body
        assert problem in r.body["detail"], r.body
