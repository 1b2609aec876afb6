"""Peer daemons found by probing (``daemon = "auto"``), not only named.

The setting is ``tests/test_peers.py``'s: a node is a network namespace with its own
sshd, its cerssd (the "peer") a real daemon whose socket the managing daemon reaches
only through its SSH connection to that node. With ``daemon = "auto"`` the managing
daemon asks the socket for its version when it probes the server and again every
``daemon_probe_interval``; ``GET /v1/servers`` (and ``cerssctl servers``) says what it
found, and work is delegated only while a daemon of this version answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cerssd import __version__
from cerssd.config import parse_config
from cerssd.peers.client import PeerClient, PeerUnavailable, PeerVersionMismatch
from cerssd.servers import ServerRegistry

from .conftest import DaemonProcess, NetnsSshServer, post_json, wait_until, write_file, zfs
from .fakes.storage import FakeBackend
from .seaweed import WeedServer
from .sshd import RemoteUser, SshServer
from .test_backups import store_section
from .test_peers import FAST_RETRIES

#: Probed again every second here (the default is a minute).
AUTO = 'daemon = "auto"\ndaemon_probe_interval = "1s"\n'
MISSING = "/run/cerssd-test-nobody/control.sock"
#: A probe goes over SSH to a node on a shared 2-CPU machine: generous.
PROBED = 60


def server(d: DaemonProcess, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in d.api("GET", "/v1/servers")["items"]
                                 if s["name"] == name)
    return found


def peer_fact(d: DaemonProcess, name: str, test: Callable[[dict[str, Any]], bool],
              what: str) -> dict[str, Any]:
    """The server's ``peer`` once it passes ``test`` (probes are periodic)."""
    def probed() -> dict[str, Any] | None:
        peer = server(d, name)["peer"]
        return peer if peer is not None and peer["probed_at"] and test(peer) else None

    found: dict[str, Any] = wait_until(probed, PROBED, interval=0.2, what=what)
    return found


def servers_table(d: DaemonProcess) -> str:
    return subprocess.run([sys.executable, "-m", "cerssd.cli", "--socket", str(d.socket_path),
                           "servers"], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "400"}).stdout


def replicate(d: DaemonProcess, source: str, snapshot: str, target: str) -> dict[str, Any]:
    r = post_json(d, "/v1/replications", {"snapshot": snapshot, "source": source,
                                          "destination": "nodeB", "target_volume": target})
    assert r.status == 202, r.body
    done: dict[str, Any] = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    return done


def test_a_probed_peer_is_used_until_its_daemon_goes_and_a_plain_node_is_relayed(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], s3_server: WeedServer,
        s3_bucket: str, tmp_path: Path) -> None:
    pool, slave = make_pool("1G"), make_pool("1G")
    zfs("create", f"{pool}/vol")
    write_file(f"/{pool}/vol/f", 4)
    zfs("snapshot", f"{pool}/vol@one")
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")
    node = make_netns_sshd()
    # The peer sends to nodeB over its own SSH connection: its config names it as ours does.
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + store
                        + node.config("nodeB"),
                        state_dir=tmp_path / "peer-state", daemon_extra=FAST_RETRIES)
    manager = start_daemon(
        extra=node.config("nodeA", extra=AUTO + f'daemon_socket = "{peer.socket_path}"\n')
        + node.config("plainA", extra=AUTO + f'daemon_socket = "{MISSING}"\n')
        + node.config("nodeB") + store,
        state_dir=tmp_path / "manager-state", daemon_extra=FAST_RETRIES)

    # Found: the probe's answer is published, and work on that node is delegated.
    found = peer_fact(manager, "nodeA", lambda p: p["delegates"], "nodeA's peer found")
    assert found == {"mode": "auto", "delegates": True, "version": __version__,
                     "reason": None, "probed_at": found["probed_at"]}
    r = post_json(manager, "/v1/backups", {"snapshot": f"{pool}/vol@one", "server": "nodeA"})
    assert r.status == 202 and r.body["route"] == "delegated" and r.body["node"] == "nodeA"
    done = manager.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    child = peer.api("GET", f"/v1/activities/{done['params']['peer_activity']}")
    assert child["state"] == "succeeded" and child["params"]["peer_parent"] == done["id"]
    delegated = replicate(manager, "nodeA", f"{pool}/vol@one", f"{slave}/a")
    assert delegated["route"] == "delegated" and delegated["node"] == "nodeA"

    # A node without cerssd (no socket there) is probed as plain: relayed, and says why.
    plain = peer_fact(manager, "plainA", lambda p: True, "plainA probed")
    assert not plain["delegates"] and plain["version"] is None
    assert MISSING in plain["reason"] and "it does not exist" in plain["reason"], plain
    relayed = replicate(manager, "plainA", f"{pool}/vol@one", f"{slave}/b")
    assert relayed["route"] == "relayed" and relayed["node"] is None
    r = post_json(manager, "/v1/backups", {"snapshot": f"{pool}/vol@one", "server": "plainA"})
    assert r.status == 409 and "does not exist" in r.body["detail"], r.body
    table = servers_table(manager)
    print(table)
    assert f"delegated: cerssd {__version__} answers (probed)" in table, table
    assert "not used: peer daemon socket" in table, table

    # The peer's daemon goes: the next probe says so, and the next transfer is relayed.
    peer.proc.send_signal(signal.SIGKILL)
    peer.proc.wait()
    gone = peer_fact(manager, "nodeA", lambda p: not p["delegates"],
                     "the next probe to find nodeA's daemon gone")
    assert "nobody listens on it" in gone["reason"] and gone["version"] is None, gone
    write_file(f"/{pool}/vol/g", 1)
    zfs("snapshot", f"{pool}/vol@two")
    after = replicate(manager, "nodeA", f"{pool}/vol@two", f"{slave}/a")
    assert after["route"] == "relayed" and after["node"] is None
    assert after["params"].get("peer_activity") is None
    assert zfs("get", "-Hp", "-o", "value", "guid", f"{slave}/a@two").stdout \
        == zfs("get", "-Hp", "-o", "value", "guid", f"{pool}/vol@two").stdout

    # It comes back: found again at the next probe.
    start_daemon(config_path=peer.config_path)
    peer_fact(manager, "nodeA", lambda p: p["delegates"], "nodeA's restarted peer found")


def test_a_probed_peer_of_another_version_is_not_used_and_both_versions_are_named(
        start_daemon: Callable[..., DaemonProcess], make_pool: Callable[..., str],
        make_netns_sshd: Callable[[], NetnsSshServer], tmp_path: Path) -> None:
    pool = make_pool("1G")
    zfs("create", f"{pool}/vol")
    zfs("snapshot", f"{pool}/vol@v")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import cerssd\ncerssd.__version__ = '0.0.1'\n")
    node = make_netns_sshd()
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n' + node.config("nodeB"),
                        state_dir=tmp_path / "peer-state", env={"PYTHONPATH": str(shim)})
    manager = start_daemon(
        extra=node.config("nodeA", extra=AUTO + f'daemon_socket = "{peer.socket_path}"\n')
        + node.config("nodeB"), state_dir=tmp_path / "manager-state")
    fact = peer_fact(manager, "nodeA", lambda p: True, "nodeA probed")
    assert not fact["delegates"] and fact["version"] == "0.0.1", fact
    assert "cerssd 0.0.1" in fact["reason"] and f"cerssd {__version__}" in fact["reason"]
    assert "0.0.1" in servers_table(manager)
    done = replicate(manager, "nodeA", f"{pool}/vol@v", f"{pool}/copy")
    assert done["route"] == "relayed"
    assert peer.api("GET", "/v1/activities")["total"] == 0


def test_a_probed_peer_socket_that_refuses_our_ssh_user_is_not_used(
        start_daemon: Callable[..., DaemonProcess], sshd: SshServer,
        remote_user: RemoteUser, tmp_path: Path) -> None:
    peer = start_daemon(extra='[servers.local]\nkind = "local"\n',
                        state_dir=tmp_path / "peer-state")
    manager = start_daemon(
        extra=sshd.config("nodeU", user=remote_user.name,
                          extra='sudo = true\n' + AUTO
                                + f'daemon_socket = "{peer.socket_path}"\n'),
        state_dir=tmp_path / "manager-state")
    # The socket is root's (0660): the SSH user cannot connect to it.
    fact = peer_fact(manager, "nodeU", lambda p: True, "nodeU probed")
    assert not fact["delegates"], fact
    assert f"refused SSH user {remote_user.name!r}" in fact["reason"], fact


# -- the routing decision itself, on the fake backend (fast) ----------------------------


def _registry(tmp_path: Path, daemon: str) -> ServerRegistry:
    cfg = parse_config(tomllib.loads(
        f'[servers.n]\nhost = "192.0.2.9"\nknown_hosts = "/k"\ndaemon = {daemon}\n'
        'daemon_probe_interval = "1s"\n'))
    return ServerRegistry(cfg.servers, tmp_path / "ssh",
                          backend_factory=lambda c, r: FakeBackend(c.name, tmp_path))


def test_delegation_follows_the_last_probe_and_a_plain_or_named_peer_is_not_probed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[BaseException | str] = [__version__, PeerUnavailable("nobody listens"),
                                          PeerVersionMismatch("runs 0.0.1", "0.0.1")]

    async def check_version(self: PeerClient) -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(PeerClient, "check_version", check_version)

    async def walk() -> None:
        reg = _registry(tmp_path, '"auto"')
        assert not reg.delegates("n")  # not probed yet: not delegated
        assert reg.entry("n").to_json()["peer"]["reason"] == "not probed yet"
        await reg.probe(reg.entry("n"))
        assert reg.delegates("n") and reg.entry("n").to_json()["peer"]["version"] == __version__
        await reg.probe_peer(reg.entry("n"))
        assert not reg.delegates("n") and "nobody listens" in reg.why_not_delegated("n")
        await reg.probe_peer(reg.entry("n"))
        peer = reg.entry("n").to_json()["peer"]
        assert (peer["delegates"], peer["version"], peer["reason"]) == (False, "0.0.1",
                                                                        "runs 0.0.1")
        # daemon = true is always delegated and false never; neither asks the socket.
        for daemon, delegated in (("true", True), ("false", False)):
            reg = _registry(tmp_path, daemon)
            await reg.probe(reg.entry("n"))
            assert reg.delegates("n") is delegated
        assert answers == []

    asyncio.run(walk())


def test_the_periodic_probe_survives_a_probe_that_fails_unexpectedly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    thrice = asyncio.Event()

    async def check_version(self: PeerClient) -> str:
        asked.append(self.server)
        if len(asked) >= 3:
            thrice.set()
        if len(asked) == 2:  # the watcher's first: not a peer error
            raise RuntimeError("unexpected")
        raise PeerUnavailable("it does not exist")

    monkeypatch.setattr(PeerClient, "check_version", check_version)

    async def walk() -> None:
        reg = _registry(tmp_path, '"auto"')
        await reg.probe(reg.entry("n"))
        assert asked == ["n"]
        watcher = asyncio.create_task(reg.watch_peers())
        try:
            # probed at once, then once a second: the watcher outlived the failure
            await asyncio.wait_for(thrice.wait(), 30)
        finally:
            watcher.cancel()
        assert not watcher.done() or watcher.cancelled()

    asyncio.run(walk())
