"""A tree relationship failed over and back on real zfs-fuse: every member together.

A real daemon, real pools; each side is read back with ``zfs`` itself. The failover
fences every member of the master's tree, snapshots the tree at one instant, syncs that
snapshot to the slave and checks every member's guid there, promotes every copy and
reverses the roles; the failback does the same the other way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import (
    SLOW,
    DaemonProcess,
    NetnsSshServer,
    make_writable,
    post_json,
    wait_until,
    write_file,
    zfs,
)
from .test_failover import FAST_RETRIES
from .test_trees import all_in_sync, rel, sync_now, tree_config

MEMBERS = ("a", "a/x", "b", "c")


def readonly(volume: str) -> bool:
    return zfs("get", "-H", "-o", "value", "readonly", volume).stdout.strip() == "on"


def mounted(volume: str) -> bool:
    return zfs("get", "-H", "-o", "value", "mounted", volume).stdout.strip() == "yes"


def guids_at(root: str, label: str) -> dict[str, str]:
    """Each dataset's (relative name) guid of its snapshot ``label``."""
    out = zfs("get", "-Hp", "-r", "-o", "name,value", "guid", root).stdout
    found = {}
    for line in out.splitlines():
        name, value = line.split("\t")
        if name.endswith("@" + label):
            found[name.split("@")[0][len(root):].lstrip("/")] = value
    return found


def fail_over(d: DaemonProcess, to: str) -> dict[str, Any]:
    answer = post_json(d, "/v1/relationships/cinder/failover", {"to": to})
    assert answer.status == 202, answer.body
    body = answer.body
    wait_until(lambda: d.api("GET", f"/v1/activities/{body['id']}")["state"]
               in ("succeeded", "failed", "cancelled"), 240, what="the failover to end")
    done: dict[str, Any] = d.api("GET", f"/v1/activities/{body['id']}")
    assert done["state"] == "succeeded", (done["status"], done.get("params"))
    return done


def test_planned_failover_and_failback_of_a_tree(start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root, copy = f"{src}/cinder", f"{dst}/standby"
    zfs("create", root)
    for m in MEMBERS:
        zfs("create", f"{root}/{m}")
        write_file(f"/{root}/{m}/old", 1)
    members = 1 + len(MEMBERS)
    d = start_daemon(extra=tree_config("cinder", root, copy, recursive="true"))
    wait_until(lambda: all_in_sync(d, "cinder", members, 1), 180, what="the first cycle")

    # writes after the last cycle, and a member the cycles never saw: the failover's
    # own snapshot carries them all (zero data loss)
    write_file(f"/{root}/a/late", 1)
    write_file(f"/{root}/c/late", 1)
    zfs("create", f"{root}/d")
    write_file(f"/{root}/d/late", 1)
    late = {m: Path(f"/{root}/{m}/late").read_bytes() for m in ("a", "c", "d")}

    done = fail_over(d, "lab1")
    result = done["params"]["result"]
    assert result["master"] == "lab1" and result["volume"] == copy
    assert result["tree"]["members"] == members + 1 and result["tree"]["promoted"] == members + 1
    label = result["promoted_at"].split("@")[1]
    # one instant: every member's final snapshot, the same guid on both sides
    master_guids = guids_at(root, label)
    assert sorted(master_guids) == sorted(["", *MEMBERS, "d"])
    assert guids_at(copy, label) == master_guids
    # the old master's members all fenced; the copies all writable and mounted
    for m in ["", *MEMBERS, "d"]:
        assert readonly(f"{root}/{m}".rstrip("/")), m
        name = f"{copy}/{m}".rstrip("/")
        assert not readonly(name) and mounted(name), name
    for m, data in late.items():
        assert Path(f"/{copy}/{m}/late").read_bytes() == data
    r = rel(d, "cinder")
    assert r["master"] == "lab1" and r["replication_status"] == "failed-over"
    assert [s["server"] for s in r["slaves"]] == ["local"]

    # the new master takes writes, and the old master follows its tree
    write_file(f"/{copy}/b/new", 1)
    new = Path(f"/{copy}/b/new").read_bytes()
    cycle = sync_now(d, "cinder")
    wait_until(lambda: rel(d, "cinder")["cycles"] >= cycle
               and rel(d, "cinder")["tree"]["slaves"]["local"]["in_sync"] == members + 1,
               180, what="the old master to follow the new one")
    newest = d.api("GET", "/v1/relationships/cinder/volumes")["items"][0][
        "newest_snapshot"].split("@")[1]
    assert len(guids_at(copy, newest)) == members + 1
    assert guids_at(root, newest) == guids_at(copy, newest), "the old master follows"

    back = fail_over(d, "local")["params"]["result"]
    assert back["master"] == "local" and back["volume"] == root
    assert Path(f"/{root}/b/new").read_bytes() == new
    r = rel(d, "cinder")
    assert r["replication_status"] == "enabled"
    assert [s["server"] for s in r["slaves"]] == ["lab1"]
    for m in ["", *MEMBERS, "d"]:
        assert not readonly(f"{root}/{m}".rstrip("/")), m
        assert readonly(f"{copy}/{m}".rstrip("/")), m
    cycle = sync_now(d, "cinder")
    wait_until(lambda: all_in_sync(d, "cinder", members + 1, cycle), 180,
               what="the tree in sync again after the failback")


def in_sync_on(d: DaemonProcess, server: str, members: int, cycles: int) -> bool:
    r = rel(d, "cinder")
    tree = r["tree"]
    return (r["cycles"] >= cycles and tree is not None and tree["members"] == members
            and server in tree["slaves"] and tree["slaves"][server]["in_sync"] == members)


def labels_of(volume: str) -> list[str]:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1",
              volume).stdout
    return [line.split("@")[1] for line in out.split()]


def test_unplanned_failover_of_a_tree_at_a_chosen_point_then_rejoin_and_failback(
        start_daemon: Any, make_pool: Any,
        make_netns_sshd: Callable[[], NetnsSshServer]) -> None:
    mpool, spool = make_pool(), make_pool()
    root, copy = f"{mpool}/cinder", f"{spool}/standby"
    zfs("create", root)
    for m in ("a", "b", "c"):
        zfs("create", f"{root}/{m}")
        write_file(f"/{root}/{m}/old", 1)
    members = 4
    ns = make_netns_sshd()
    config = (ns.config("m") + '[servers.local]\nkind = "local"\n'
              f'[relationships.cinder]\nmaster = "m"\nvolume = "{root}"\nrecursive = true\n'
              f'interval = "1h"\nslaves = [{{server = "local", target_volume = "{copy}"}}]\n')
    d = start_daemon(extra=config, daemon_extra=FAST_RETRIES)
    wait_until(lambda: in_sync_on(d, "local", members, 1), 180, what="the first cycle")
    first = labels_of(f"{copy}/a")[-1]

    # b's copy is written on by someone: the next cycle leaves it behind at the first
    # label while the other copies get the second: the copies disagree
    make_writable(f"{copy}/b")
    zfs("mount", f"{copy}/b", check=False)
    write_file(f"/{copy}/b/standby-change", 1)
    zfs("unmount", f"{copy}/b")
    os.rmdir(f"/{copy}/b")  # the mount's directory would keep the root from mounting
    for m in ("a", "b"):
        write_file(f"/{root}/{m}/second", 1)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: rel(d, "cinder")["cycles"] >= cycle
               and rel(d, "cinder")["tree"]["slaves"]["local"]["in_sync"] == members - 1
               and rel(d, "cinder")["tree"]["slaves"]["local"]["failing"] == 1, 180,
               what="the second cycle on every copy but b")
    second = labels_of(f"{copy}/a")[-1]
    assert second != first and labels_of(f"{copy}/b")[-1] == first
    # the master takes a write no cycle sees, then drops off the network
    write_file(f"/{root}/a/unseen", 1)
    zfs("snapshot", f"{root}/a@diverged")
    ns.cut()

    refused = post_json(d, "/v1/relationships/cinder/failover", {"to": "local"})
    assert refused.status == 409 and "force" in refused.body["detail"]
    undecided = post_json(d, "/v1/relationships/cinder/failover",
                          {"to": "local", "force": True})
    assert undecided.status == 202, undecided.body
    failed = d.wait_done(undecided.body["id"])
    assert failed["state"] == "failed"
    assert f"at={first}" in failed["status"]["message"], failed["status"]
    assert labels_of(f"{copy}/a")[-1] == second, "a refused failover changes nothing"
    assert readonly(f"{copy}/a") and rel(d, "cinder")["master"] == "m"

    chosen = post_json(d, "/v1/relationships/cinder/failover",
                       {"to": "local", "force": True, "at": first})
    assert chosen.status == 202, chosen.body
    done = d.wait_done(chosen.body["id"])
    assert done["state"] == "succeeded", done["status"]
    outcome = done["params"]["result"]["tree"]
    assert outcome["promoted"] == members and outcome["not_promoted"] == []
    assert outcome["not_mounted"] == []
    assert sorted(outcome["rolled_back"]) == ["", "a", "c"]
    for m in ("", "a", "b", "c"):
        name = f"{copy}/{m}".rstrip("/")
        assert labels_of(name)[-1] == first, name
        assert not readonly(name) and mounted(name), name
    assert not Path(f"/{copy}/a/second").exists(), "a is as of the chosen point"
    r = rel(d, "cinder")
    assert (r["master"], r["replication_status"]) == ("local", "failed-over")
    assert r["failover"]["data_loss"]["snapshot"] == f"{copy}@{first}"
    assert [f["server"] for f in r["failover"]["fenced"]] == ["m"]

    # back on the network, every member of the old master's tree is fenced
    ns.restore()
    assert post_json(d, "/v1/relationships/cinder/sync-now", {}).status == 202
    wait_until(lambda: rel(d, "cinder")["failover"]["fenced"][0]["applied_at"], SLOW,
               what="the returning old master fenced")
    for m in ("", "a", "b", "c"):
        assert readonly(f"{root}/{m}".rstrip("/")), m

    # rejoin: a dry run lists what each member loses; with consent every member is
    # rolled back to what it shares with the new master, and follows it
    dry = post_json(d, "/v1/relationships/cinder/rejoin", {"server": "m"})
    assert dry.status == 200 and dry.body["rejoined"] is False and dry.body["members"] == 4
    assert f"{root}/a@diverged" in dry.body["destroys_snapshots"]
    assert f"{root}/a@{second}" in dry.body["destroys_snapshots"]
    assert f"{root}/b@{second}" in dry.body["destroys_snapshots"]
    assert "diverged" in labels_of(f"{root}/a")
    done_rejoin = post_json(d, "/v1/relationships/cinder/rejoin",
                            {"server": "m", "dry_run": False, "rollback": True})
    assert done_rejoin.status == 200 and done_rejoin.body["rejoined"] is True, done_rejoin.body
    assert labels_of(f"{root}/a")[-1] == first
    assert rel(d, "cinder")["failover"]["fenced"] == []
    write_file(f"/{copy}/c/after", 1)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: in_sync_on(d, "m", members, cycle), 180,
               what="the old master following the new one")

    back = post_json(d, "/v1/relationships/cinder/failover", {"to": "m"})
    assert back.status == 202, back.body
    assert d.wait_done(back.body["id"])["state"] == "succeeded"
    r = rel(d, "cinder")
    assert (r["master"], r["replication_status"]) == ("m", "enabled")
    assert Path(f"/{root}/c/after").exists() and not readonly(f"{root}/c")
