"""Backups of a tree relationship to a real S3 store (SeaweedFS), on real zfs-fuse.

One chain per member in the bucket, under the member's own volume name: each member is
listed and restored as a single volume is. Cycles are driven with sync-now and waited
for on the tree summary's backup counts, never on time. Faults are real: the store is
stopped mid-backup while a member's snapshot is taken away on the master.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from .conftest import SLOW, DaemonProcess, post_json, wait_until, write_file, zfs
from .seaweed import WeedServer
from .test_backups import (
    MiB,
    bucket_keys,
    digest,
    guid,
    listed,
    open_uploads,
    restore_ok,
    store_section,
    write,
)
from .test_cli import ctl
from .test_relationships import metric
from .test_trees import rel, sync_now, tree_config

MEMBERS = ("a", "a/x", "b")


def backups_of(d: DaemonProcess, name: str) -> dict[str, Any]:
    return rel(d, name)["tree"]["stores"]["s3"]  # type: ignore[no-any-return]


def tree_backups(d: DaemonProcess, name: str) -> list[dict[str, Any]]:
    items = d.api("GET", "/v1/activities?kind=tree-backup&limit=100")["items"]
    return [x for x in items if x["params"].get("relationship") == name]


def settled(d: DaemonProcess, name: str, cycles: int, backed_up: int,
            failing: int = 0) -> dict[str, Any] | None:
    """The store's summary once ``cycles`` have run and no tree-backup is live."""
    r = rel(d, name)
    if r["cycles"] < cycles or any(x["state"] not in ("succeeded", "failed", "cancelled")
                                   for x in tree_backups(d, name)):
        return None
    s = r["tree"]["stores"]["s3"]
    return s if s["backed_up"] == backed_up and s["failing_total"] == failing else None


def kinds(d: DaemonProcess, volume: str) -> list[str]:
    return [m["kind"] for m in listed(d, volume)]


def test_a_tree_keeps_one_chain_per_member_and_a_failing_member_is_isolated(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    src, dst, restored = make_pool(), make_pool(), make_pool()
    root = f"{src}/cinder"
    zfs("create", root)
    for m in MEMBERS:
        zfs("create", f"{root}/{m}")
        write_file(f"/{root}/{m}/f", 1)
    config = (store_section(s3_server, s3_bucket, tmp_path / "s3.key")
              + tree_config("cinder", root, f"{dst}/standby", recursive="true",
                            stores='["s3"]', max_parallel="2"))
    d = start_daemon(extra=config, daemon_extra='retry_max_interval = "1s"\n')
    names = [root] + [f"{root}/{m}" for m in MEMBERS]

    # cycle 1: a full of every member, by one tree-backup activity
    first = wait_until(lambda: settled(d, "cinder", 1, 4), SLOW, what="the first backups")
    assert first["failing_members"] == [] and first["oldest_backup_age_seconds"] is not None
    (b1,) = tree_backups(d, "cinder")
    assert b1["state"] == "succeeded" and b1["progress"]["done"] == 4
    assert b1["progress"]["total"] == 4 and b1["progress"]["unit"] == "members"
    assert b1["params"]["full"] == 4 and b1["params"]["incremental"] == 0
    assert all(kinds(d, n) == ["full"] for n in names)

    # cycle 2: a member created between cycles gets a full, the others incrementals
    zfs("create", f"{root}/d")
    write_file(f"/{root}/d/f", 1)
    write_file(f"/{root}/a/g", 2)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: settled(d, "cinder", cycle, 5), SLOW, what="the second backups")
    assert all(kinds(d, n) == ["full", "incremental"] for n in names)
    assert kinds(d, f"{root}/d") == ["full"]
    second = listed(d, f"{root}/a")[1]
    assert second["parent_guid"] == listed(d, f"{root}/a")[0]["guid"]
    members = d.api("GET", "/v1/relationships/cinder/volumes")["items"]
    assert all(m["backups"] == [{"store": "s3", "state": "backed-up", "error": None,
                                 "last_snapshot": m["newest_snapshot"].split("@")[1]}]
               for m in members)
    # a member restores from its own chain, exactly as a single volume
    restore_ok(d, second["snapshot"], f"{restored}/a")
    for f in ("f", "g"):
        assert digest(f"/{restored}/a/{f}") == digest(f"/{root}/a/{f}")
    assert metric(d.api("GET", "/metrics"), "cerssd_tree_backup_members_by_state",
                  relationship="cinder", state="backed-up", store="s3") == 5.0

    # cycle 3: the store goes away mid-backup, and meanwhile b's cycle snapshot is taken
    # away on the master (renamed): b fails with its reason, the others go on
    wait_until(lambda: rel(d, "cinder")["slaves"][0]["state"] == "in-sync", SLOW,
               what="the slave's sync of cycle 2 to end")
    s3_server.stop()
    try:
        cycle = sync_now(d, "cinder")
        wait_until(lambda: any(x["state"] == "retrying" for x in tree_backups(d, "cinder")),
                   60, what="the tree backup to report the lost store")
        label = wait_until(lambda: _newest_label(d, cycle), 60, what="cycle 3's label")
        wait_until(lambda: rel(d, "cinder")["tree"]["slaves"]["lab1"]["in_sync"] == 5, SLOW,
                   what="the slave's sync of cycle 3")
        zfs("rename", f"{root}/b@{label}", f"{root}/b@moved-away")
    finally:
        s3_server.start()
    third = wait_until(lambda: settled(d, "cinder", cycle, 4, failing=1), SLOW,
                       what="the third backups, one failing")
    assert [f["member"] for f in third["failing_members"]] == [f"{root}/b"]
    assert "no longer exists" in third["failing_members"][0]["error"]
    assert rel(d, "cinder")["state"] == "degraded"
    shown = ctl(d, "relationship", "show", "cinder")
    assert shown.returncode == 0, shown.stderr
    assert f"failing  {root}/b backup to s3: " in shown.stdout, shown.stdout
    assert kinds(d, f"{root}/b") == ["full", "incremental"]
    assert all(kinds(d, n) == ["full", "incremental", "incremental"]
               for n in names if n != f"{root}/b")

    # cycle 4: b is tried again, from its newest backed-up snapshot the master still has
    cycle = sync_now(d, "cinder")
    wait_until(lambda: settled(d, "cinder", cycle, 5), SLOW, what="the fourth backups")
    b_chain = listed(d, f"{root}/b")
    assert [m["kind"] for m in b_chain] == ["full", "incremental", "incremental"]
    assert b_chain[2]["parent_guid"] == b_chain[1]["guid"]
    assert rel(d, "cinder")["state"] == "running"

    # a restarted daemon knows nothing: one listing of the bucket serves every member,
    # whose next backups are incrementals again, not fulls
    write_file(f"/{root}/b/h", 1)
    d.stop()
    d2 = start_daemon(config_path=d.config_path)
    cycle = sync_now(d2, "cinder")  # the schedule's next tick is an hour away
    wait_until(lambda: settled(d2, "cinder", cycle, 5), SLOW,
               what="the first backups after the restart")
    assert all(kinds(d2, n)[-1] == "incremental" for n in [*names, f"{root}/d"])
    last = listed(d2, f"{root}/b")[-1]
    restore_ok(d2, last["snapshot"], f"{restored}/b")
    for f in ("f", "h"):
        assert digest(f"/{restored}/b/{f}") == digest(f"/{root}/b/{f}")
    assert guid(last["snapshot"]) == last["guid"]


def _newest_label(d: DaemonProcess, cycle: int) -> str | None:
    if rel(d, "cinder")["cycles"] < cycle:
        return None
    items = d.api("GET", "/v1/relationships/cinder/volumes")["items"]
    label: str = items[0]["newest_snapshot"].split("@")[1]
    return label


def test_suspend_and_cancel_act_on_the_members_uploads(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    src, dst = make_pool(), make_pool()
    root = f"{src}/cinder"
    zfs("create", root)
    zfs("create", f"{root}/a")
    write(f"/{root}/a/f", 40)
    config = (store_section(s3_server, s3_bucket, tmp_path / "s3.key")
              + tree_config("cinder", root, f"{dst}/standby", recursive="true",
                            stores='["s3"]', max_parallel="1"))
    d = start_daemon(extra=config)
    # one member at a time, the root first: past 2 MiB read, a's upload is under way
    backup_id = wait_until(lambda: next((x["id"] for x in tree_backups(d, "cinder")
                                         if x["usage"]["bytes_read"] > 2 * MiB
                                         and x["state"] == "running"), None),
                           SLOW, interval=0.02, what="a's upload under way")
    assert post_json(d, f"/v1/activities/{backup_id}/suspend", {}).status == 200
    suspended = d.wait_activity(backup_id, lambda x: x["state"] == "suspended",
                                what="the tree backup suspended")
    assert suspended["progress"] == {**suspended["progress"], "done": 1, "total": 2}
    assert backups_of(d, "cinder")["sending"] == 1
    assert post_json(d, f"/v1/activities/{backup_id}/cancel", {}).status == 202
    assert d.wait_done(backup_id)["state"] == "cancelled"
    assert open_uploads(s3_server, s3_bucket) == []
    assert listed(d, f"{root}/a") == [] and kinds(d, root) == ["full"]
    assert not [k for k in bucket_keys(s3_server, s3_bucket) if "/cinder/a/" in k]
    summary = backups_of(d, "cinder")
    assert (summary["backed_up"], summary["behind"], summary["sending"]) == (1, 1, 0)

    cycle = sync_now(d, "cinder")
    wait_until(lambda: settled(d, "cinder", cycle, 2), SLOW, what="the next cycle's backups")
    assert kinds(d, f"{root}/a") == ["full"] and kinds(d, root) == ["full", "incremental"]


def test_an_api_created_tree_backs_up_and_an_unknown_store_is_refused(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    src, dst = make_pool(), make_pool()
    root = f"{src}/cinder"
    zfs("create", root)
    zfs("create", f"{root}/a")
    servers = '[servers.local]\nkind = "local"\n[servers.lab1]\nkind = "local"\n'
    d = start_daemon(extra=servers + store_section(s3_server, s3_bucket, tmp_path / "s3.key"))
    body = {"name": "cinder", "volume": root, "recursive": True, "interval": "1h",
            "slaves": [{"server": "lab1", "target_volume": f"{dst}/standby"}]}
    refused = post_json(d, "/v1/relationships", {**body, "stores": ["s4"]})
    assert refused.status == 422 and refused.body["field"] == "stores[0]", refused.body
    assert post_json(d, "/v1/relationships", {**body, "stores": ["s3"]}).status == 201
    wait_until(lambda: settled(d, "cinder", 1, 2), SLOW, what="the first backups")
    assert kinds(d, root) == ["full"] and kinds(d, f"{root}/a") == ["full"]


def test_a_tree_backup_killed_mid_upload_restarts_and_leaves_nothing_behind(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    src, dst, restored = make_pool(), make_pool(), make_pool()
    root = f"{src}/cinder"
    zfs("create", root)
    zfs("create", f"{root}/a")
    write(f"/{root}/a/f", 40)
    config = (store_section(s3_server, s3_bucket, tmp_path / "s3.key")
              + tree_config("cinder", root, f"{dst}/standby", recursive="true",
                            stores='["s3"]', max_parallel="1"))
    d = start_daemon(extra=config)
    backup_id = wait_until(lambda: next((x["id"] for x in tree_backups(d, "cinder")
                                         if x["usage"]["bytes_read"] > 2 * MiB
                                         and x["state"] == "running"), None),
                           SLOW, interval=0.02, what="a's upload under way")
    post_json(d, f"/v1/activities/{backup_id}/suspend", {})
    d.wait_activity(backup_id, lambda x: x["state"] == "suspended", what="suspended")
    assert len(open_uploads(s3_server, s3_bucket)) == 1  # the crash will leave this behind
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d2 = start_daemon(config_path=d.config_path)
    again = d2.api("GET", f"/v1/activities/{backup_id}")
    assert again["restarts"] == 1 and again["state"] == "suspended"  # as it was left
    post_json(d2, f"/v1/activities/{backup_id}/resume", {})
    done = d2.wait_done(backup_id)
    assert done["state"] == "succeeded", done["status"]
    assert "removed the unfinished uploads of the earlier run" in d2.log()
    assert open_uploads(s3_server, s3_bucket) == []
    # the root's backup of the first run was found by the restarted run's listing
    assert kinds(d2, root) == ["full"] and kinds(d2, f"{root}/a") == ["full"]
    a_keys = [k for k in bucket_keys(s3_server, s3_bucket) if "/cinder/a/" in k]
    assert len(a_keys) == 2, a_keys  # one stream, one manifest: no leftover segment
    snapshot = listed(d2, f"{root}/a")[0]["snapshot"]
    restore_ok(d2, snapshot, f"{restored}/a")
    assert digest(f"/{restored}/a/f") == digest(f"/{root}/a/f")
