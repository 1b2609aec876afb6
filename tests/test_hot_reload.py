"""Hot reload on a real daemon and zfs-fuse: SIGHUP puts added, removed and changed
servers and relationships in force without a restart, and leaves running transfers of
the relationships it does not change alone.

Slaves are pools of this machine declared as ``local`` servers (as in
``test_relationships``), so each is a server of its own with its own transfers.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import SLOW, DaemonProcess, post_json, wait_until, write_file, zfs
from .seaweed import WeedServer
from .sshd import SshServer
from .test_backups import store_section
from .test_relationships import show, transfers, wait_in_sync
from .test_replicate_local import guid, snapshots

MiB = 1 << 20


def server(name: str, extra: str = "") -> str:
    return f'[servers.{name}]\nkind = "local"\n{extra}\n'


def relationship(name: str, volume: str, slave: str, target: str, *, interval: str = "1h",
                 limit: int | None = None) -> str:
    row = f'server = "{slave}", target_volume = "{target}"'
    if limit is not None:
        row += f", bandwidth_limit = {limit}"
    return (f'[relationships.{name}]\nvolume = "{volume}"\nmaster = "local"\n'
            f'interval = "{interval}"\nslaves = [{{{row}}}]\n')


class Reloader:
    """Rewrites the daemon's config (its ``[daemon]`` table kept) and sends SIGHUP."""

    def __init__(self, d: DaemonProcess, first: str) -> None:
        self.d = d
        self.head = d.config_path.read_text().replace(first, "")

    def __call__(self, body: str) -> str:
        """The status the daemon reports once the reload is done (sd_notify READY=1)."""
        self.d.config_path.write_text(self.head + body)
        self.d.proc.send_signal(signal.SIGHUP)
        seen = []
        while True:
            message = self.d.next_notify(60)
            seen.append(message)
            if "READY=1" in message:
                assert any("RELOADING=1" in m for m in seen), seen
                return next(line for line in message.splitlines()
                            if line.startswith("STATUS="))


def log_lines(d: DaemonProcess, event: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in d.log().splitlines() if f'"{event}"' in x]


@pytest.fixture
def volumes(make_pool: Any) -> tuple[str, str, str]:
    master, a, c = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/slow")
    zfs("create", f"{master}/fast")
    return master, a, c


def test_reload_adds_a_relationship_and_a_server_while_a_transfer_runs(
        start_daemon: Any, volumes: tuple[str, str, str]) -> None:
    master, a, c = volumes
    write_file(f"/{master}/slow/f", 12)  # 12 s at 1 MiB/s: the reload lands mid-transfer
    write_file(f"/{master}/fast/f", 2)
    first = server("local") + server("a") + relationship(
        "slow", f"{master}/slow", "a", f"{a}/slow", limit=MiB)
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    running = wait_until(lambda: next((t for t in transfers(d, "slow")
                                       if t["state"] == "running"
                                       and t["progress"]["done"] > 0), None),
                         30, what="the slow transfer moving")

    # Added: server c and relationship fast on it; changed: server a (what GET /v1/volumes
    # lists), on which the slow transfer runs. Unchanged: relationship slow.
    status = reload(server("local") + server("a", f'pools = ["{a}"]') + server("c")
                    + relationship("slow", f"{master}/slow", "a", f"{a}/slow", limit=MiB)
                    + relationship("fast", f"{master}/fast", "c", f"{c}/fast"))
    assert status == "STATUS=serving"
    assert d.api("GET", f"/v1/activities/{running['id']}")["state"] == "running"  # premise
    [line] = log_lines(d, "config reloaded")
    assert line["servers"] == {"added": ["c"], "changed": ["a"]}
    assert line["relationships"] == {"added": ["fast"]}
    assert {s["name"] for s in d.api("GET", "/v1/servers")["items"]} >= {"local", "a", "c"}
    names = {r["name"] for r in d.api("GET", "/v1/relationships")["items"]}
    assert names == {"slow", "fast"}

    fast = wait_in_sync(d, "fast")
    assert fast["slaves"][0]["server"] == "c"
    # The slow relationship's transfer was not touched: the same activity, never restarted,
    # and the only one of its relationship.
    now = d.api("GET", f"/v1/activities/{running['id']}")
    assert now["state"] in ("running", "succeeded") and now["restarts"] == 0
    done = d.wait_done(running["id"])
    assert done["state"] == "succeeded" and done["restarts"] == 0
    assert done["usage"]["retries"] == 0, done  # never interrupted, not even resumed
    assert [t["id"] for t in transfers(d, "slow")] == [running["id"]]
    wait_in_sync(d, "slow")
    # The changed server's old connection was closed once the transfer on it ended.
    closed = wait_until(lambda: [x for x in log_lines(d, "old connection closed")
                                 if x["name"] == "a"], 30, what="a's old connection closed")
    assert closed[0]["waited_for"] == 1


def test_reload_removes_a_relationship_with_its_server_and_changes_a_schedule(
        start_daemon: Any, volumes: tuple[str, str, str]) -> None:
    master, a, c = volumes
    body = server("local") + server("a")
    first = body + server("c") + relationship("web", f"{master}/fast", "a", f"{a}/fast") \
        + relationship("db", f"{master}/slow", "c", f"{c}/slow", limit=MiB)
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    assert wait_in_sync(d, "web")["cycles"] == 1
    db = wait_in_sync(d, "db")
    db_snapshot = db["newest_snapshot"].split("@")[1]
    write_file(f"/{master}/slow/f", 12)  # db's next transfer is still running at the reload
    assert post_json(d, "/v1/relationships/db/sync-now", {}).status == 202
    in_flight = wait_until(lambda: next((t for t in transfers(d, "db")
                                         if t["state"] == "running"), None),
                           30, what="db's second transfer running")

    reload(body + relationship("web", f"{master}/fast", "a", f"{a}/fast", interval="1s"))
    [line] = log_lines(d, "config reloaded")
    assert line["relationships"] == {"removed": ["db"], "changed": ["web"]}
    assert line["servers"] == {"removed": ["c"]}  # with the only relationship naming it
    assert [r["name"] for r in d.api("GET", "/v1/relationships")["items"]] == ["web"]
    assert "c" not in {s["name"] for s in d.api("GET", "/v1/servers")["items"]}
    assert post_json(d, "/v1/relationships/db/sync-now", {}).status == 404
    assert d.wait_done(db["activity"])["state"] == "cancelled"
    assert d.wait_done(in_flight["id"])["state"] == "cancelled"  # rolled back, not left
    # The new schedule is in force at once: an hourly relationship cycles every second.
    wait_until(lambda: show(d, "web")["cycles"] >= 3, SLOW, what="cycles every second")
    # Nothing of the removed relationship was deleted, on the master or on the slave.
    for volume in (f"{master}/slow", f"{c}/slow"):
        assert db_snapshot in snapshots(volume), volume
    assert in_flight["params"]["snapshot"].split("@")[1] in snapshots(f"{master}/slow")


def test_bad_reload_keeps_the_running_config_whole(
        start_daemon: Any, volumes: tuple[str, str, str]) -> None:
    master, a, c = volumes
    first = server("local") + server("a") + server("c") \
        + relationship("web", f"{master}/fast", "a", f"{a}/fast")
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    assert wait_in_sync(d, "web")["cycles"] == 1
    mine = post_json(d, "/v1/relationships", {
        "name": "mine", "volume": f"{master}/slow", "interval": "1h",
        "slaves": [{"server": "c", "target_volume": f"{c}/slow"}]})
    assert mine.status == 201, mine.body

    def refused(body: str) -> dict[str, Any]:
        before = len(log_lines(d, "config reload failed; keeping the running config"))
        assert reload(body).startswith("STATUS=serving (reload failed:")
        lines = log_lines(d, "config reload failed; keeping the running config")
        assert len(lines) == before + 1
        return lines[-1]

    # A broken relationship next to a new one: neither is applied.
    bad = refused(first + relationship("new", f"{master}/slow", "a", f"{a}/new")
                  + '[relationships.web2]\nvolume = "tank/x"\ncolour = "blue"\n')
    assert bad["key"] == "relationships.web2.colour"
    # A server a config relationship still names.
    still = refused(server("local") + server("c")
                    + relationship("web", f"{master}/fast", "a", f"{a}/fast"))
    assert still["key"].startswith("relationships.web.slaves[0].server"), still
    # A server only an API relationship names (the config no longer does).
    api = refused(server("local") + server("a")
                  + relationship("web", f"{master}/fast", "a", f"{a}/fast"))
    assert api["key"] == "servers.c" and "mine" in api["problem"]

    assert not log_lines(d, "config reloaded")
    assert {r["name"] for r in d.api("GET", "/v1/relationships")["items"]} == {"web", "mine"}
    assert {s["name"] for s in d.api("GET", "/v1/servers")["items"]} >= {"a", "c"}
    # The old config still works: a cycle on demand, and the API relationship syncs on c.
    assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202
    wait_until(lambda: show(d, "web")["cycles"] >= 2, SLOW, what="a second cycle")
    wait_in_sync(d, "mine")


def relationship_to(name: str, volume: str, slave: str, target: str) -> str:
    return relationship(name, volume, slave, target, limit=MiB)


def test_changed_ssh_server_new_work_on_a_new_connection_old_work_undisturbed(
        start_daemon: Any, sshd: SshServer, volumes: tuple[str, str, str]) -> None:
    """The old connection is closed when its transfer ends, while a transfer on the new
    one runs: each generation has its own SSH stream multiplexer, so neither is cut."""
    master, a, _ = volumes
    write_file(f"/{master}/slow/f", 12)
    rels = relationship_to("one", f"{master}/slow", "remote", f"{a}/slow") \
        + relationship_to("two", f"{master}/fast", "remote", f"{a}/fast")
    first = server("local") + sshd.config("remote") + rels
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    wait_in_sync(d, "two")
    one = wait_until(lambda: next((t for t in transfers(d, "one") if t["state"] == "running"
                                   and t["progress"]["done"] > 0), None),
                     30, what="one's transfer moving")
    reload(server("local") + sshd.config("remote", extra='cipher = "aes256-gcm@openssh.com"')
           + rels)
    [line] = log_lines(d, "config reloaded")
    assert line["servers"] == {"changed": ["remote"]} and "relationships" not in line
    assert d.api("GET", f"/v1/activities/{one['id']}")["state"] == "running"  # premise
    write_file(f"/{master}/fast/f", 16)  # still running when one's transfer ends
    assert post_json(d, "/v1/relationships/two/sync-now", {}).status == 202
    two = wait_until(lambda: next((t for t in transfers(d, "two") if t["state"] == "running"
                                   and t["progress"]["done"] > 0), None),
                     30, what="two's transfer moving on the new connection")
    finished = {}
    for activity in (one, two):
        done = finished[activity["id"]] = d.wait_done(activity["id"])
        assert done["state"] == "succeeded" and done["restarts"] == 0, done
        assert done["usage"]["retries"] == 0, done  # never interrupted, not even resumed
    closed = wait_until(lambda: [x for x in log_lines(d, "old connection closed")
                                 if x["name"] == "remote"], 30, what="the old connection closed")
    assert closed[0]["waited_for"] == 1
    closed_at = datetime.fromisoformat(closed[0]["timestamp"]).timestamp()
    assert finished[two["id"]]["finished_at"] > closed_at  # premise: two ran through it
    wait_in_sync(d, "one")
    wait_in_sync(d, "two")


def test_reload_adds_changes_and_removes_an_object_store(
        start_daemon: Any, volumes: tuple[str, str, str], s3_server: WeedServer,
        s3_bucket: str, tmp_path: Path) -> None:
    master, a, _ = volumes
    web = relationship("web", f"{master}/fast", "a", f"{a}/fast")
    first = server("local") + server("a") + web
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    wait_in_sync(d, "web")
    store = store_section(s3_server, s3_bucket, tmp_path / "s3.key")

    # Added: the store, and the relationship now backs up to it from its next cycle.
    reload(server("local") + server("a") + store + web + 'stores = ["s3"]\n')
    [line] = log_lines(d, "config reloaded")
    assert line == {**line, "stores": {"added": ["s3"]},
                    "relationships": {"changed": ["web"]}}
    assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202
    wait_until(lambda: show(d, "web")["cycles"] >= 2, SLOW, what="the second cycle")
    backed_up = wait_until(lambda: (r := show(d, "web"))["backups"][0]["last_backup_guid"]
                           and r, SLOW, what="the cycle's backup")
    assert backed_up["backups"][0]["store"] == "s3"
    assert backed_up["backups"][0]["last_backup_guid"] == guid(backed_up["newest_snapshot"])

    # Refused: the store removed while the relationship still names it.
    assert reload(server("local") + server("a") + web + 'stores = ["s3"]\n').startswith(
        "STATUS=serving (reload failed:")
    [refused] = log_lines(d, "config reload failed; keeping the running config")
    assert refused["key"] == "relationships.web.stores[0]"
    # Changed, then removed together with its use.
    reload(server("local") + server("a") + store.replace("concurrency = 2", "concurrency = 3")
           + web + 'stores = ["s3"]\n')
    assert log_lines(d, "config reloaded")[-1]["stores"] == {"changed": ["s3"]}
    reload(server("local") + server("a") + web)
    assert log_lines(d, "config reloaded")[-1]["stores"] == {"removed": ["s3"]}
    assert show(d, "web")["backups"] == []
    assert "s3" not in {x["server"] for x in d.api("GET", "/v1/links")["items"]}


def test_reload_adds_a_tree_relationship_and_narrows_its_selection(
        start_daemon: Any, volumes: tuple[str, str, str]) -> None:
    master, a, c = volumes
    root = f"{master}/tenants"
    for member in ("", "/t1", "/t2", "/tmp"):
        zfs("create", root + member)
    first = server("local") + server("a") + server("c") \
        + relationship("web", f"{master}/fast", "a", f"{a}/fast")
    d = start_daemon(extra=first)
    reload = Reloader(d, first)
    wait_in_sync(d, "web")

    def tree(exclude: str) -> str:
        return (relationship("tenants", root, "c", f"{c}/tenants")
                + f"recursive = true\nexclude = [{exclude}]\n")

    def in_sync(members: int, cycles: int) -> bool:
        r = show(d, "tenants")
        return bool(r["cycles"] >= cycles and r["tree"] and r["tree"]["members"] == members
                    and r["tree"]["slaves"]["c"]["in_sync"] == members)

    reload(first + tree(""))
    assert log_lines(d, "config reloaded")[-1]["relationships"] == {"added": ["tenants"]}
    wait_until(lambda: in_sync(4, 1), SLOW, what="the tree in sync")
    reload(first + tree('"tmp"'))
    assert log_lines(d, "config reloaded")[-1]["relationships"] == {"changed": ["tenants"]}
    assert post_json(d, "/v1/relationships/tenants/sync-now", {}).status == 202
    wait_until(lambda: in_sync(3, 2), SLOW, what="the narrowed tree at its next cycle")
    assert show(d, "web")["cycles"] == 1  # the other relationship was left alone
    assert f"{c}/tenants/tmp" in zfs("list", "-H", "-o", "name", "-r", f"{c}/tenants").stdout
