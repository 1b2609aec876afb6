"""Peer daemons: a backup of a remote master's volume, delegated to the cerssd on that node.

The node is a network namespace with its own sshd (``make_netns_sshd``). Its cerssd
(the "peer") is a real daemon with its own config, journal and control socket; the
managing daemon reaches that socket only through its SSH connection to the node's
sshd (a stream-local channel). The peer runs in the host's network namespace beside
the shared zfs-fuse and SeaweedFS (both listen on 127.0.0.1 only): its sends go from
its own processes to the bucket, while everything the managing daemon says to the
node crosses the node's veth pair, whose counters the tests read. A relayed backup
would bring the whole stream across that veth; a delegated one brings control only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cerssd import __version__
from cerssd.config import PeerMode, may_delegate, parse_config
from cerssd.parsing import ConfigError

from .conftest import DaemonProcess, NetnsSshServer, post_json, wait_until, write_file, zfs
from .seaweed import WeedServer
from .sshd import RemoteUser, SshServer
from .test_backups import bucket_keys, open_uploads, store_section

MiB = 1 << 20
FAST_RETRIES = 'retry_max_interval = "2s"\nretry_deadline = "5m"\n'


@dataclass
class Nodes:
    manager: DaemonProcess
    peer: DaemonProcess
    node: NetnsSshServer
    pool: str


def cpu_seconds(pid: int) -> float:
    """CPU the process and its reaped children (its ssh clients) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def host_rx(node: NetnsSshServer, counter: str = "rx_bytes") -> int:
    """Bytes the host received from the node over its veth (the node's sends to us), or
    with ``tx_bytes`` sent to it."""
    return int(Path(f"/sys/class/net/{node.host_veth}/statistics/{counter}").read_text())


@pytest.fixture
def nodes(start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
          make_netns_sshd: Callable[[], NetnsSshServer], s3_server: WeedServer,
          s3_bucket: str, tmp_path: Path) -> Callable[..., Nodes]:
    def make(*, peer_env: dict[str, str] | None = None, mib: int = 32) -> Nodes:
        pool = make_pool("1G")
        zfs("create", f"{pool}/vol")
        write_file(f"/{pool}/vol/f", mib)
        store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
        node = make_netns_sshd()
        peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + store,
                            state_dir=tmp_path / "peer-state", env=peer_env,
                            daemon_extra=FAST_RETRIES)
        manager = start_daemon(
            extra=node.config("nodeA", extra=f'daemon = true\n'
                              f'daemon_socket = "{peer.socket_path}"\n')
            + node.config("plainA") + store,
            state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)
        return Nodes(manager, peer, node, pool)

    return make


def backup(d: DaemonProcess, snapshot: str) -> dict[str, Any]:
    r = post_json(d, "/v1/backups", {"snapshot": snapshot, "server": "nodeA"})
    assert r.status == 202, r.body
    return r.body  # type: ignore[no-any-return]


def child_of(n: Nodes, parent: dict[str, Any]) -> dict[str, Any]:
    a = n.manager.wait_activity(parent["id"], lambda x: x["params"].get("peer_activity"),
                                what="the peer's activity id in the parent")
    child: dict[str, Any] = n.peer.api("GET", f"/v1/activities/{a['params']['peer_activity']}")
    return child


def suspended_backup(n: Nodes, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A delegated backup of a new snapshot ``label``, suspended through its parent once
    the peer's child exists: (parent, child) as they were started."""
    zfs("snapshot", f"{n.pool}/vol@{label}")
    parent = backup(n.manager, f"{n.pool}/vol@{label}")
    child = child_of(n, parent)
    post_json(n.manager, f"/v1/activities/{parent['id']}/suspend", {})
    n.peer.wait_activity(child["id"], lambda x: x["state"] == "suspended", 10,
                         what="the peer's activity suspended")
    return parent, child


def test_delegated_backup_streams_from_the_node_not_through_the_manager(
        nodes: Callable[..., Nodes], s3_server: WeedServer, s3_bucket: str) -> None:
    n = nodes(mib=48)
    zfs("snapshot", f"{n.pool}/vol@one")
    before = host_rx(n.node)
    parent = backup(n.manager, f"{n.pool}/vol@one")
    assert parent["route"] == "delegated" and parent["node"] == "nodeA"
    done = n.manager.wait_done(parent["id"])
    received = host_rx(n.node) - before
    assert done["state"] == "succeeded", done["status"]
    child = n.peer.api("GET", f"/v1/activities/{done['params']['peer_activity']}")
    # Both journals name the other side: the child its parent, the parent its child.
    assert child["state"] == "succeeded" and child["params"]["peer_parent"] == parent["id"]
    assert child["route"] == "local" and child["node"] is None
    raw = child["params"]["raw_size"]
    assert raw > 48 * MiB
    # The parent mirrors the child's progress and usage.
    assert done["progress"]["done"] == child["progress"]["done"] == raw
    assert done["usage"]["bytes_read"] == child["usage"]["bytes_read"]
    assert done["params"]["peer_result"]["manifest_key"] == child["params"]["manifest_key"]
    # The stream never came to the managing node: control traffic only.
    print(f"host received {received} bytes from the node for a {raw}-byte backup")
    assert received < raw / 50
    assert any(k.endswith("manifest.json") for k in bucket_keys(s3_server, s3_bucket))
    listed = n.manager.api("GET", f"/v1/backups?volume={n.pool}/vol")["items"]
    assert [b["snapshot"] for b in listed] == [f"{n.pool}/vol@one"]
    shown = subprocess.run([sys.executable, "-m", "cerssd.cli", "--socket",
                            str(n.manager.socket_path), "show", parent["id"]],
                           capture_output=True, text=True, check=True).stdout
    assert "nodeA (delegated)" in shown, shown


def test_suspend_resume_and_cancel_pass_through_to_the_peer(
        nodes: Callable[..., Nodes], s3_server: WeedServer, s3_bucket: str) -> None:
    n = nodes(mib=160)
    zfs("snapshot", f"{n.pool}/vol@c")
    parent = backup(n.manager, f"{n.pool}/vol@c")
    child = child_of(n, parent)
    metrics = n.manager.api("GET", "/metrics")
    assert 'cerssd_activities_live_by_route{kind="backup",node="nodeA",route="delegated"} 1.0' \
        in metrics, metrics
    assert post_json(n.manager, f"/v1/activities/{parent['id']}/suspend", {}).status == 200
    n.peer.wait_activity(child["id"], lambda x: x["state"] == "suspended", 10,
                         what="the peer's activity suspended")

    def mirrored() -> dict[str, Any] | None:
        theirs = n.peer.api("GET", f"/v1/activities/{child['id']}")["progress"]
        ours: dict[str, Any] = n.manager.api("GET", f"/v1/activities/{parent['id']}")
        return ours if ours["progress"] == theirs else None

    assert wait_until(mirrored, 10, what="the parent to mirror the held child's progress")[
        "state"] == "suspended"
    assert post_json(n.manager, f"/v1/activities/{parent['id']}/resume", {}).status == 200
    n.peer.wait_activity(child["id"], lambda x: x["state"] == "running", 10,
                         what="the peer's activity resumed")
    assert post_json(n.manager, f"/v1/activities/{parent['id']}/cancel", {}).status == 202
    done = n.manager.wait_done(parent["id"])
    assert done["state"] == "cancelled", done["status"]
    # Cancelled here means cancelled and rolled back there, before the parent ended.
    assert n.peer.api("GET", f"/v1/activities/{child['id']}")["state"] == "cancelled"
    assert open_uploads(s3_server, s3_bucket) == []
    assert bucket_keys(s3_server, s3_bucket) == []


def test_kill_9_of_the_peer_mid_backup_is_reported_lost_and_converges(
        nodes: Callable[..., Nodes], start_daemon: Callable[..., DaemonProcess],
        s3_server: WeedServer, s3_bucket: str) -> None:
    n = nodes(mib=128)
    parent, child = suspended_backup(n, "k")
    n.peer.proc.send_signal(signal.SIGKILL)
    n.peer.proc.wait()
    post_json(n.manager, f"/v1/activities/{parent['id']}/resume", {})
    lost = n.manager.wait_activity(parent["id"], lambda x: x["state"] == "retrying", 10,
                                   what="the parent to report the peer lost")
    # Cut mid-request ("broke off") or refused at the socket ("does not answer").
    assert lost["link"]["server"] == "nodeA" and "peer daemon" in lost["link"]["last_error"]
    peer = start_daemon(config_path=n.peer.config_path)
    done = n.manager.wait_done(parent["id"])
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] >= 1
    again = peer.api("GET", f"/v1/activities/{child['id']}")
    assert again["state"] == "succeeded" and again["restarts"] == 1
    # The killed run's upload was aborted by the restarted one (SeaweedFS may list it a
    # moment longer).
    wait_until(lambda: open_uploads(s3_server, s3_bucket) == [], 60,
               what="no multipart upload left")
    assert len([k for k in bucket_keys(s3_server, s3_bucket)
                if k.endswith("manifest.json")]) == 1


def test_a_restarted_manager_reattaches_to_the_peers_activity(
        nodes: Callable[..., Nodes], start_daemon: Callable[..., DaemonProcess]) -> None:
    n = nodes(mib=96)
    parent, child = suspended_backup(n, "r")
    n.manager.proc.send_signal(signal.SIGKILL)
    n.manager.proc.wait()
    manager = start_daemon(config_path=n.manager.config_path)
    back = manager.api("GET", f"/v1/activities/{parent['id']}")
    assert back["restarts"] == 1 and back["state"] == "suspended"
    post_json(manager, f"/v1/activities/{parent['id']}/resume", {})
    done = manager.wait_done(parent["id"])
    assert done["state"] == "succeeded", done["status"]
    assert done["params"]["peer_activity"] == child["id"]  # the same child, not a second
    assert n.peer.api("GET", f"/v1/activities/{child['id']}")["state"] == "succeeded"
    assert n.peer.api("GET", "/v1/activities?kind=backup")["total"] == 1


def test_a_peer_of_another_version_is_refused_naming_both(
        nodes: Callable[..., Nodes], tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import cerssd\ncerssd.__version__ = '0.0.1'\n")
    n = nodes(peer_env={"PYTHONPATH": str(shim)}, mib=1)
    assert n.peer.api("GET", "/v1/status")["version"] == "0.0.1"
    zfs("snapshot", f"{n.pool}/vol@v")
    r = post_json(n.manager, "/v1/backups", {"snapshot": f"{n.pool}/vol@v", "server": "nodeA"})
    assert r.status == 409 and r.body["code"] == "peer-version", r.body
    assert "cerssd 0.0.1" in r.body["detail"] and f"cerssd {__version__}" in r.body["detail"]
    assert n.peer.api("GET", "/v1/activities")["total"] == 0


def test_a_peer_socket_that_refuses_our_ssh_user_is_named(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        sshd: SshServer, remote_user: RemoteUser, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    pool = make_pool()
    zfs("create", f"{pool}/vol")
    zfs("snapshot", f"{pool}/vol@u")
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + store,
                        state_dir=tmp_path / "peer-state")
    manager = start_daemon(
        extra=sshd.config("nodeU", user=remote_user.name,
                          extra=f'sudo = true\ndaemon = true\n'
                                f'daemon_socket = "{peer.socket_path}"\n') + store,
        state_dir=tmp_path / "manager-state")
    body = {"snapshot": f"{pool}/vol@u", "server": "nodeU"}
    # The socket is root's (0660): the SSH user cannot even connect to it.
    r = post_json(manager, "/v1/backups", body)
    assert r.status == 409 and r.body["code"] == "peer-refused", r.body
    assert repr(remote_user.name) in r.body["detail"], r.body
    # Reachable, but the peer's credential check refuses a mutating call from that user.
    peer.socket_path.chmod(0o666)
    r = post_json(manager, "/v1/backups", body)
    assert r.status == 202, r.body
    done = manager.wait_done(r.body["id"])
    assert done["state"] == "failed" and done["status"]["reason"] == "peer", done["status"]
    assert f"refused SSH user {remote_user.name!r}" in done["status"]["message"]
    assert peer.api("GET", "/v1/activities")["total"] == 0


def test_remote_to_remote_replication_is_sent_by_the_masters_node_not_relayed(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], tmp_path: Path) -> None:
    master, slave_pool = make_pool("1G"), make_pool("1G")
    zfs("create", f"{master}/vol")
    write_file(f"/{master}/vol/a", 32)
    zfs("snapshot", f"{master}/vol@one")
    a, b = make_netns_sshd(), make_netns_sshd()
    # The master's node sends to the slave over its own SSH connection: its config has
    # the slave, under the name the managing daemon's config gives it.
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + b.config("nodeB"),
                        state_dir=tmp_path / "peer-state", daemon_extra=FAST_RETRIES)
    manager = start_daemon(
        extra=a.config("nodeA", extra=f'daemon = true\ndaemon_socket = "{peer.socket_path}"\n')
        + a.config("plainA") + b.config("nodeB"),
        state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)
    target = f"{slave_pool}/copy"

    def replicate(source: str, snapshot: str) -> tuple[dict[str, Any], int]:
        before, cpu = host_rx(a), cpu_seconds(manager.proc.pid)
        r = post_json(manager, "/v1/replications", {
            "snapshot": snapshot, "source": source, "destination": "nodeB",
            "target_volume": target})
        assert r.status == 202, r.body
        done = manager.wait_done(r.body["id"])
        assert done["state"] == "succeeded", done["status"]
        print(f"{done['route']}: {done['usage']['elapsed_seconds']:.1f} s, managing daemon "
              f"CPU {cpu_seconds(manager.proc.pid) - cpu:.2f} s")
        return done, host_rx(a) - before

    delegated, through_us = replicate("nodeA", f"{master}/vol@one")
    assert delegated["route"] == "delegated" and delegated["node"] == "nodeA"
    child = peer.api("GET", f"/v1/activities/{delegated['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["params"]["peer_parent"] == delegated["id"]
    assert child["source"] == "local" and child["target"] == f"nodeB:{target}"
    sent = child["usage"]["bytes_on_wire"]
    assert sent > 32 * MiB and delegated["usage"]["bytes_on_wire"] == sent
    assert zfs("get", "-Hp", "-o", "value", "guid", f"{target}@one").stdout \
        == zfs("get", "-Hp", "-o", "value", "guid", f"{master}/vol@one").stdout
    # The same kind of transfer without a peer daemon is relayed: the whole stream comes
    # over the master's link to this node (the counter does see a stream when there is one).
    write_file(f"/{master}/vol/b", 32)
    zfs("snapshot", f"{master}/vol@two")
    relayed, relayed_through_us = replicate("plainA", f"{master}/vol@two")
    assert relayed["route"] == "relayed" and relayed["node"] is None
    print(f"from the master's node to this one: delegated {through_us} bytes for {sent}; "
          f"relayed {relayed_through_us} bytes for {relayed['usage']['bytes_on_wire']}")
    assert through_us < sent / 50
    assert relayed_through_us > 32 * MiB


def test_the_documented_peer_configs_are_valid() -> None:
    """docs/peers.md's two files (the managing daemon's, the peer's) parse as written."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "peers.md").read_text()
    blocks = re.findall(r"^```toml\n(.*?)^```$", page, re.S | re.M)
    assert len(blocks) == 2
    manager, peer = (parse_config(tomllib.loads(b)) for b in blocks)
    assert manager.servers["master"].daemon == PeerMode.YES
    assert may_delegate(manager.servers["master"])
    assert not may_delegate(manager.servers["standby2"])
    assert set(peer.servers) == {"local", "standby2"} and set(peer.stores) == {"s3"}


@pytest.mark.parametrize(("server", "key", "problem"), [
    ('kind = "local"\ndaemon = true', "servers.x.daemon", "only an ssh server"),
    ('host = "h"\nknown_hosts = "/k"\ndaemon = "yes"', "servers.x.daemon",
     'true, false or "auto"'),
    ('host = "h"\nknown_hosts = "/k"\ndaemon = 1', "servers.x.daemon", 'true, false or "auto"'),
    ('kind = "local"\ndaemon = "auto"', "servers.x.daemon", "only an ssh server"),
    ('host = "h"\nknown_hosts = "/k"\ndaemon = "auto"\ndaemon_probe_interval = "0s"',
     "servers.x.daemon_probe_interval", "at least 1s"),
    ('host = "h"\nknown_hosts = "/k"\ndaemon = "auto"\ndaemon_probe_interval = "soon"',
     "servers.x.daemon_probe_interval", "duration"),
    ('host = "h"\nknown_hosts = "/k"\ndaemon_socket = "run/c.sock"', "servers.x.daemon_socket",
     "absolute path"),
    ('host = "h"\nknown_hosts = "/k"\ndaemon_server = "a b"', "servers.x.daemon_server",
     "server"),
])
def test_bad_peer_settings_name_the_key(server: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(f"[servers.x]\n{server}\n"))
    assert err.value.key == key and problem in err.value.problem, err.value


def test_restore_to_the_node_is_fetched_by_its_peer_not_pushed_by_the_manager(
        nodes: Callable[..., Nodes]) -> None:
    n = nodes(mib=24)
    zfs("snapshot", f"{n.pool}/vol@s")
    assert n.manager.wait_done(backup(n.manager, f"{n.pool}/vol@s")["id"])["state"] \
        == "succeeded"

    def restore(server: str, target: str) -> tuple[dict[str, Any], int]:
        before = host_rx(n.node, "tx_bytes")
        r = post_json(n.manager, "/v1/restores", {"snapshot": f"{n.pool}/vol@s",
                                                   "target_volume": target, "server": server})
        assert r.status == 202, r.body
        done = n.manager.wait_done(r.body["id"])
        assert done["state"] == "succeeded", done["status"]
        return done, host_rx(n.node, "tx_bytes") - before

    delegated, to_node = restore("nodeA", f"{n.pool}/restored")
    assert delegated["route"] == "delegated" and delegated["node"] == "nodeA"
    child = n.peer.api("GET", f"/v1/activities/{delegated['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["target"] == "local"
    relayed, relayed_to_node = restore("plainA", f"{n.pool}/pushed")
    assert relayed["route"] == "relayed" and relayed["node"] is None
    original = zfs("get", "-Hp", "-o", "value", "guid", f"{n.pool}/vol@s").stdout
    for copy in ("restored", "pushed"):
        assert zfs("get", "-Hp", "-o", "value", "guid", f"{n.pool}/{copy}@s").stdout \
            == original
    print(f"sent to the node: delegated {to_node} bytes, relayed {relayed_to_node} bytes "
          f"for a {child['progress']['done']}-byte restore")
    assert to_node < 24 * MiB / 50 < 24 * MiB < relayed_to_node
