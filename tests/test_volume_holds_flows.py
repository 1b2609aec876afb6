"""Slave prune, backup prune and rejoin hold their volumes on a stateful server, through
the daemon on real zfs-fuse (the other flows' holds: tests/test_volume_states.py).

Each flow is caught in the middle with a gate in front of a real component, so the
test sees it running rather than racing it: the stateful server's ``zfs`` is the real
one behind a wrapper (``zfs_command``) that, once armed, holds the one subcommand the
flow is made of (a snapshot ``destroy``, a ``rollback``) until the test releases it;
the object store is the real SeaweedFS behind a TCP relay that holds the first
``DELETE`` request. While held, a conflicting action gets 409 Volume Busy naming the
flow's activity; released, the flow ends and the volume is free again. (The busy
state a listing shows comes from the same hold, named in the 409; the listing itself is
not asked here, as it walks every dataset on the host.)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import DaemonProcess, post_json, raw_request, wait_until, write_file, zfs
from .conftest import replicate as replicate_between
from .seaweed import WeedServer
from .test_backups import store_section

PROBLEM = "application/problem+json"


# -- gates ----------------------------------------------------------------------------------
@dataclass
class ZfsGate:
    """A ``zfs`` wrapper: ``arm()`` and the gated subcommand waits for ``release()``;
    ``down()`` makes every command fail (the server does not answer)."""

    root: Path

    @property
    def command(self) -> Path:
        return self.root / "zfs-gated"

    @staticmethod
    def make(root: Path, gated: str) -> ZfsGate:
        """``gated``: a shell ``case`` pattern matched against all the arguments
        (quoted where it has a space: ``'"destroy "*@*'``)."""
        root.mkdir()
        gate = ZfsGate(root)
        real = shutil.which("zfs")
        gate.command.write_text(f"""#!/bin/sh
if [ -e {root}/down ]; then echo "cannot open: connection refused" >&2; exit 1; fi
case "$*" in
{gated})
    if [ -e {root}/armed ]; then
        echo "$*" >> {root}/entered
        i=0
        while [ ! -e {root}/released ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    fi ;;
esac
exec {real} "$@"
""")
        gate.command.chmod(0o755)
        return gate

    def arm(self) -> None:
        (self.root / "armed").touch()

    def release(self) -> None:
        (self.root / "released").touch()

    def down(self, is_down: bool) -> None:
        flag = self.root / "down"
        if is_down:
            flag.touch()
        else:
            flag.unlink()

    def entered(self) -> str:
        path = self.root / "entered"
        return path.read_text() if path.exists() else ""


@dataclass
class DeleteGate:
    """A TCP relay to the object store that, once armed, holds the first request that
    starts with ``DELETE`` until released; everything else passes untouched."""

    upstream: tuple[str, int]
    armed: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if requests and self.armed.is_set() and data.startswith(b"DELETE "):
                    self.entered.set()
                    self.released.wait(120)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.released.set()
        self.listener.close()


# -- helpers --------------------------------------------------------------------------------
def only_live(d: DaemonProcess, kind: str) -> dict[str, Any]:
    live = [a for a in d.api("GET", f"/v1/activities?kind={kind}&limit=100")["items"]
            if a["state"] not in ("succeeded", "failed", "cancelled")]
    assert len(live) == 1, live
    return live[0]


def refused_naming(r: Any, holder: dict[str, Any], server: str, volume: str,
                   state: str) -> None:
    assert r.status == 409, r.body
    assert r.content_type.startswith(PROBLEM)
    assert (r.body["title"], r.body["code"]) == ("Volume Busy", "volume-busy"), r.body
    assert r.body["activity"] == {"id": holder["id"], "kind": holder["kind"]}, r.body
    assert (r.body["server"], r.body["volume"], r.body["state"]) == (server, volume, state)
    assert holder["id"] in r.body["detail"]


def snapshot_on(d: DaemonProcess, server: str, volume: str, name: str) -> Any:
    return post_json(d, f"/v1/volumes/{volume}/snapshots", {"name": name, "server": server})


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[list[ZfsGate]]:
    made: list[ZfsGate] = []
    yield made
    for gate in made:  # never leave a daemon's zfs waiting behind the test
        gate.release()


# -- slave prune ----------------------------------------------------------------------------
def test_slave_prune_holds_the_stateful_slaves_volume(
        start_daemon: Any, make_pool: Any, tmp_path: Path, gates: list[ZfsGate]) -> None:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    write_file(f"/{src}/data/f", 1)
    gate = ZfsGate.make(tmp_path / "lab", "\"destroy \"*@*")  # a snapshot's destroy
    gates.append(gate)
    gate.arm()
    target = f"{dst}/data"
    d = start_daemon(extra=(
        '[servers.local]\nkind = "local"\n'
        f'[servers.lab]\nkind = "local"\nstateless = false\nzfs_command = "{gate.command}"\n'
        f'[relationships.web]\nvolume = "{src}/data"\ninterval = "1h"\n'
        f'slaves = [{{server = "lab", target_volume = "{target}"}}]\n'
        'slave_retention = ["1s:all"]\n'))

    def slave() -> dict[str, Any]:
        return d.api("GET", "/v1/relationships/web")["slaves"][0]  # type: ignore[no-any-return]

    first = wait_until(lambda: (s := slave())["state"] == "in-sync" and s, 60,
                       what="the first cycle's transfer")
    # The slave's first snapshot must be older than the grid's one second when pruned.
    created = float(zfs("get", "-Hpo", "value", "creation",
                        first["last_snapshot"]).stdout)
    wait_until(lambda: time.time() > created + 2, what="the first snapshot to age")
    assert raw_request(d.socket_path, "POST", "/v1/relationships/web/sync-now").status == 202
    wait_until(gate.entered, 60, what="the slave's prune destroying the old snapshot")
    assert first["last_snapshot"] in gate.entered()

    pruning = only_live(d, "prune")
    assert pruning["state"] == "running" and pruning["source"] == "lab"
    assert pruning["params"]["volume_holds"] == {"state": "pruning",
                                                 "volumes": [["lab", target]]}
    refused_naming(snapshot_on(d, "lab", target, "x"), pruning, "lab", target, "pruning")
    refused_naming(replicate_between(d, f"{src}/data@{first['last_snapshot'].split('@')[1]}",
                                     "local", "lab", target),
                   pruning, "lab", target, "pruning")

    gate.release()
    done = d.wait_done(pruning["id"])
    assert done["state"] == "succeeded", done["status"]
    assert snapshot_on(d, "lab", target, "after").status == 202  # released
    assert first["last_snapshot"] not in zfs("list", "-Ht", "snapshot", "-o", "name",
                                             "-r", target).stdout


# -- backup prune ---------------------------------------------------------------------------
@pytest.fixture
def delete_gate(s3_server: WeedServer) -> Iterator[DeleteGate]:
    host, port = s3_server.s3.endpoint.removeprefix("http://").split(":")
    gate = DeleteGate((host, int(port)))
    yield gate
    gate.close()


def test_backup_prune_holds_the_volume_on_stateful_servers(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        delete_gate: DeleteGate, tmp_path: Path) -> None:
    src = make_pool()
    volume = f"{src}/data"
    zfs("create", volume)
    write_file(f"/{volume}/f", 1)
    zfs("snapshot", f"{volume}@s1")
    zfs("snapshot", f"{volume}@s2")
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key").replace(
        s3_server.s3.endpoint, f"http://127.0.0.1:{delete_gate.port}")
    d = start_daemon(extra=('[servers.local]\nkind = "local"\n'
                            '[servers.lab]\nkind = "local"\nstateless = false\n' + store))
    for label in ("s1", "s2"):  # two full backups: s1 is no kept backup's parent
        b = post_json(d, "/v1/backups", {"snapshot": f"{volume}@{label}", "server": "lab",
                                         "force_full": True})
        assert b.status == 202, b.body
        assert d.wait_done(b.body["id"])["state"] == "succeeded"
    created = float(zfs("get", "-Hpo", "value", "creation", f"{volume}@s1").stdout)
    wait_until(lambda: time.time() > created + 2, what="the backups to age")

    delete_gate.armed.set()
    pruned = post_json(d, "/v1/backups/prune", {"volume": volume, "retention": ["1s:all"],
                                                "dry_run": False})
    assert pruned.status == 202, pruned.body
    assert pruned.body["plan"]["delete"] == [f"{volume}@s1"]
    # Held on the stateful server only; the stateless one's volume stays free.
    assert pruned.body["params"]["volume_holds"] == {"state": "pruning",
                                                     "volumes": [["lab", volume]]}
    assert delete_gate.entered.wait(60), "the prune never deleted"
    holder = d.api("GET", f"/v1/activities/{pruned.body['id']}")
    assert (holder["kind"], holder["state"]) == ("backup-prune", "running")
    refused_naming(post_json(d, "/v1/backups", {"snapshot": f"{volume}@s2", "server": "lab"}),
                   holder, "lab", volume, "pruning")
    refused_naming(snapshot_on(d, "lab", volume, "x"), holder, "lab", volume, "pruning")

    delete_gate.released.set()
    assert d.wait_done(holder["id"])["state"] == "succeeded"
    assert snapshot_on(d, "lab", volume, "after").status == 202  # released
    left = d.api("GET", f"/v1/backups?volume={volume}")["items"]
    assert [b["snapshot"] for b in left] == [f"{volume}@s2"]


# -- rejoin ---------------------------------------------------------------------------------
def test_rejoin_is_an_activity_holding_the_old_masters_volume(
        start_daemon: Any, make_pool: Any, tmp_path: Path, gates: list[ZfsGate]) -> None:
    mp, sp = make_pool(), make_pool()
    m_vol, s_vol = f"{mp}/data", f"{sp}/data"
    zfs("create", m_vol)
    write_file(f"/{m_vol}/f", 1)
    gate = ZfsGate.make(tmp_path / "m", "\"rollback \"*")
    gates.append(gate)
    d = start_daemon(extra=(
        f'[servers.m]\nkind = "local"\nstateless = false\nzfs_command = "{gate.command}"\n'
        '[servers.local]\nkind = "local"\n'
        f'[relationships.hot]\nvolume = "{m_vol}"\nmaster = "m"\ninterval = "1h"\n'
        f'slaves = [{{server = "local", target_volume = "{s_vol}"}}]\n'))

    def show() -> dict[str, Any]:
        return d.api("GET", "/v1/relationships/hot")  # type: ignore[no-any-return]

    wait_until(lambda: show()["slaves"][0]["state"] == "in-sync", 60, what="in sync")
    zfs("snapshot", f"{m_vol}@diverged")  # the old master goes its own way ...
    assert d.stop() == 0
    gate.down(True)  # ... and does not answer when the daemon comes back
    d = start_daemon(config_path=d.config_path)
    forced = post_json(d, "/v1/relationships/hot/failover", {"to": "local", "force": True})
    assert forced.status == 202, forced.body
    assert d.wait_done(forced.body["id"])["state"] == "succeeded"
    gate.down(False)
    assert raw_request(d.socket_path, "POST", "/v1/relationships/hot/sync-now").status == 202
    wait_until(lambda: show()["failover"]["fenced"][0]["applied_at"], 60,
               what="the old master fenced")

    gate.arm()
    answer: list[Any] = []
    rejoining = threading.Thread(target=lambda: answer.append(post_json(
        d, "/v1/relationships/hot/rejoin", {"server": "m", "dry_run": False,
                                            "rollback": True})))
    rejoining.start()
    try:
        wait_until(gate.entered, 60, what="the rejoin rolling back")
        holder = only_live(d, "rejoin")
        assert holder["state"] == "running" and holder["target"] == f"m:{m_vol}"
        assert holder["params"]["volume_holds"] == {"state": "rejoining",
                                                    "volumes": [["m", m_vol]]}
        refused_naming(snapshot_on(d, "m", m_vol, "x"), holder, "m", m_vol, "rejoining")
    finally:
        gate.release()
        rejoining.join(60)
    r = answer[0]
    assert r.status == 200, r.body
    assert r.body["rejoined"] is True and r.body["activity"] == holder["id"]
    assert r.body["destroys_snapshots"] == [f"{m_vol}@diverged"]
    assert d.api("GET", f"/v1/activities/{holder['id']}")["state"] == "succeeded"
    assert [s["server"] for s in show()["slaves"]] == ["m"]
    wait_until(lambda: show()["slaves"][0]["state"] == "in-sync", 60,
               what="the old master following the new one")
    assert snapshot_on(d, "m", m_vol, "after").status == 202  # released
