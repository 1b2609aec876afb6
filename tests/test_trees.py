"""Tree relationships on real zfs-fuse: a whole dataset tree kept on a standby.

A real daemon, real pools; the master's tree and the slave's copy are read back with
``zfs`` itself. Each test drives cycles with sync-now and waits on the relationship's
tree summary (every member in sync on every slave), never on time.
"""

from __future__ import annotations

import signal
from typing import Any

from .conftest import (
    DaemonProcess,
    make_writable,
    post_json,
    raw_request,
    wait_until,
    write_file,
    zfs,
)
from .test_cli import ctl

MEMBERS = ("a", "a/x", "b", "b/scratch", "c", "tmp", "tmp/t1")


def tree_config(name: str, root: str, target: str, **keys: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return ('[servers.local]\nkind = "local"\n[servers.lab1]\nkind = "local"\n'
            f'[relationships.{name}]\nvolume = "{root}"\ninterval = "1h"\n{extra}'
            f'slaves = [{{server = "lab1", target_volume = "{target}"}}]\n')


def rel(d: DaemonProcess, name: str) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", f"/v1/relationships/{name}")
    return result


def all_in_sync(d: DaemonProcess, name: str, members: int, cycles: int) -> bool:
    r = rel(d, name)
    tree = r["tree"]
    return (r["cycles"] >= cycles and tree is not None and tree["members"] == members
            and tree["slaves"]["lab1"]["in_sync"] == members)


def sync_now(d: DaemonProcess, name: str) -> int:
    before: int = rel(d, name)["cycles"]
    assert raw_request(d.socket_path, "POST", f"/v1/relationships/{name}/sync-now").status \
        == 202
    return before + 1


def datasets(root: str) -> list[str]:
    out = zfs("list", "-H", "-o", "name", "-r", "-t", "filesystem,volume", root).stdout
    return out.split()


def snapshot_txgs(root: str, label: str) -> dict[str, str]:
    out = zfs("get", "-Hp", "-r", "-o", "name,value", "createtxg", root).stdout
    return {line.split("\t")[0].split("@")[0]: line.split("\t")[1]
            for line in out.splitlines() if line.split("\t")[0].endswith("@" + label)}


def destroy_released(volume: str) -> None:
    """What an operator does to destroy a replicated volume: cerssd's holds (the bases it
    keeps for each slave) are released first, as ZFS asks."""
    snaps = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", volume).stdout.split()
    for snap in snaps:
        zfs("release", "cerssd:lab1", snap, check=False)
    # zfs-fuse calls a dataset busy for a moment after a use (as conftest's pools)
    wait_until(lambda: zfs("destroy", "-r", volume, check=False).returncode == 0, 30,
               interval=0.2, what=f"{volume} to be destroyed")


def make_tree(pool: str) -> str:
    root = f"{pool}/cinder"
    zfs("create", root)
    for m in MEMBERS:
        zfs("create", f"{root}/{m}")
    write_file(f"/{root}/a/f", 1)
    write_file(f"/{root}/c/f", 1)
    return root


def test_a_recursive_tree_with_excludes_follows_the_pool(
        start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root = make_tree(src)
    d = start_daemon(extra=tree_config("cinder", root, f"{dst}/standby", recursive="true",
                                       exclude='["tmp", "*/scratch"]', max_parallel="3"))
    members = 1 + len(MEMBERS) - 3  # the root, less tmp, tmp/t1 and b/scratch
    wait_until(lambda: all_in_sync(d, "cinder", members, 1), 180, what="the first cycle")
    expected = sorted([f"{dst}/standby"] + [f"{dst}/standby/{m}" for m in MEMBERS
                                            if not m.startswith("tmp") and "scratch" not in m])
    assert datasets(f"{dst}/standby") == expected
    # received unmounted: a standby of hundreds must not mount them all
    mounted = zfs("get", "-H", "-o", "value", "mounted", f"{dst}/standby/a").stdout.strip()
    assert mounted == "no"
    # one instant for the whole tree: every member's cycle snapshot shares one txg
    label = rel(d, "cinder")["tree"] and d.api(
        "GET", "/v1/relationships/cinder/volumes")["items"][0]["newest_snapshot"].split("@")[1]
    txgs = snapshot_txgs(root, label)
    assert sorted(txgs) == sorted([root] + [f"{root}/{m}" for m in MEMBERS
                                             if not m.startswith("tmp") and "scratch" not in m])
    assert len(set(txgs.values())) == 1, txgs
    # excluded datasets got no snapshot of the cycle
    assert zfs("list", "-t", "snapshot", f"{root}/tmp@{label}", check=False).returncode != 0

    # a member created and another destroyed between cycles
    zfs("create", f"{root}/d")
    write_file(f"/{root}/d/f", 1)
    destroy_released(f"{root}/c")
    cycle = sync_now(d, "cinder")
    wait_until(lambda: all_in_sync(d, "cinder", members, cycle), 120,
               what="the new member on the slave")
    tree = rel(d, "cinder")["tree"]
    assert tree["gone"] == ["c"]
    assert f"{dst}/standby/d" in datasets(f"{dst}/standby")
    assert f"{dst}/standby/c" in datasets(f"{dst}/standby"), "a gone member's copy is kept"

    wait_until(lambda: rel(d, "cinder")["slaves"][0]["state"] == "in-sync", 60,
               what="the slave as a whole in sync (its sync ends after its last member)")
    page = d.api("GET", "/v1/relationships/cinder/volumes?limit=2&offset=1")
    assert page["total"] == members and len(page["items"]) == 2
    assert [i["relative"] for i in page["items"]] == ["a", "a/x"]
    assert all(s["state"] == "in-sync" for i in page["items"] for s in i["slaves"])

    # a point to fail over at is only for a tree's unplanned failover (test_tree_failover)
    refused = post_json(d, "/v1/relationships/cinder/failover", {"to": "lab1", "at": "x"})
    assert refused.status == 409 and "force" in refused.body["detail"], refused.body


def test_a_property_selects_members_and_off_on_a_child_takes_it_out(
        start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root = make_tree(src)
    zfs("set", "cerssd:replicate=on", f"{root}/a")
    zfs("set", "cerssd:replicate=on", f"{root}/b")
    zfs("set", "cerssd:replicate=off", f"{root}/b/scratch")
    zfs("set", "cerssd:replicate=tenants", f"{root}/c")
    d = start_daemon(extra=tree_config("tenants", root, f"{dst}/copy",
                                       property='"cerssd:replicate"'))
    wait_until(lambda: all_in_sync(d, "tenants", 4, 1), 180, what="the first cycle")
    # the root is no member: its copy was made as a plain parent for the members
    assert datasets(f"{dst}/copy") == sorted(
        [f"{dst}/copy"] + [f"{dst}/copy/{m}" for m in ("a", "a/x", "b", "c")])

    # through the API: a tree that would send members of "tenants" to lab1 again is
    # refused naming it; one of another tree is made (and runs)
    overlap = post_json(d, "/v1/relationships", {"name": "again", "volume": f"{root}/a",
                                                 "slaves": ["lab1"], "interval": "1h",
                                                 "recursive": True})
    assert overlap.status == 409 and "tenants" in overlap.body["detail"], overlap.body
    zfs("create", f"{src}/other")
    zfs("create", f"{src}/other/o1")
    made = post_json(d, "/v1/relationships", {
        "name": "other", "volume": f"{src}/other", "interval": "1h", "recursive": True,
        "slaves": [{"server": "lab1", "target_volume": f"{dst}/other"}], "exclude": ["tmp"]})
    assert made.status == 201 and made.body["recursive"] is True, made.body
    wait_until(lambda: all_in_sync(d, "other", 2, 1), 120, what="the API-made tree")
    bad = post_json(d, "/v1/relationships", {"name": "bad", "volume": f"{src}/other",
                                             "slaves": ["lab2x"], "interval": "1h",
                                             "property": "no-colon"})
    assert bad.status == 422, bad.body


def test_a_member_that_fails_is_isolated_and_named(start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root = make_tree(src)
    d = start_daemon(extra=tree_config("cinder", root, f"{dst}/standby", recursive="true"))
    members = 1 + len(MEMBERS)
    wait_until(lambda: all_in_sync(d, "cinder", members, 1), 180, what="the first cycle")
    # someone writes on a replica on the standby: it no longer follows the master
    replica = f"{dst}/standby/b"
    make_writable(replica)
    zfs("mount", replica, check=False)  # received unmounted
    write_file(f"/{replica}/local-change", 1)
    write_file(f"/{root}/a/g", 1)
    write_file(f"/{root}/b/g", 1)
    cycle = sync_now(d, "cinder")

    def degraded() -> bool:
        r = rel(d, "cinder")
        return (r["cycles"] >= cycle and r["state"] == "degraded"
                and r["tree"]["slaves"]["lab1"]["in_sync"] == members - 1)
    wait_until(degraded, 120, what="the others in sync, b failing")
    shown = rel(d, "cinder")
    tree = shown["tree"]
    assert [f["member"] for f in tree["failing"]] == [f"{root}/b"]
    assert shown["slaves"][0]["state"] == "error" and f"{root}/b" in shown["slaves"][0]["error"]
    assert "modified" in tree["failing"][0]["error"], tree["failing"]
    failing = d.api("GET", "/v1/relationships/cinder/volumes?state=failing")
    assert [i["relative"] for i in failing["items"]] == ["b"]
    shown = ctl(d, "relationship", "show", "cinder")
    assert shown.returncode == 0, shown.stderr
    assert f"{members} members" in shown.stdout and f"failing  {root}/b on lab1" in shown.stdout
    listed = ctl(d, "relationship", "volumes", "cinder", "--state", "failing")
    assert listed.returncode == 0 and f"{root}/b" in listed.stdout, listed
    assert "1 of 1 members" in listed.stdout

    # the operator rolls the replica back to its last snapshot and makes it read-only
    # again (zfs-fuse rolls back a mounted filesystem only: unmounted, "I/O error"); the
    # next cycle brings it up to date
    last = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1",
               replica).stdout.split()[-1]
    zfs("rollback", last)
    zfs("set", "readonly=on", replica)
    zfs("unmount", replica)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: all_in_sync(d, "cinder", members, cycle)
               and rel(d, "cinder")["state"] == "running", 120, what="b in sync again")


def test_a_renamed_member_is_renamed_on_the_slave_not_sent_again(
        start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root = make_tree(src)
    d = start_daemon(extra=tree_config("cinder", root, f"{dst}/standby", recursive="true"))
    members = 1 + len(MEMBERS)
    wait_until(lambda: all_in_sync(d, "cinder", members, 1), 180, what="the first cycle")
    guid = zfs("get", "-Hp", "-o", "value", "guid", f"{dst}/standby/c").stdout.strip()
    # zfs-fuse calls a mounted dataset busy for a rename, and a used one for a moment after
    def renamed() -> bool:
        zfs("unmount", f"{root}/c", check=False)  # fails once it is unmounted: fine
        return zfs("rename", f"{root}/c", f"{root}/e", check=False).returncode == 0
    wait_until(renamed, 30, interval=0.2, what="the rename on the master")
    cycle = sync_now(d, "cinder")
    wait_until(lambda: all_in_sync(d, "cinder", members, cycle), 120, what="the rename")
    assert zfs("get", "-Hp", "-o", "value", "guid", f"{dst}/standby/e").stdout.strip() == guid
    assert f"{dst}/standby/c" not in datasets(f"{dst}/standby")


def test_a_tree_of_fifty_killed_mid_sync_converges_after_restart(
        start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool("1G"), make_pool("1G")
    root = f"{src}/many"
    zfs("create", root)
    for i in range(50):
        zfs("create", f"{root}/v{i:02d}")
        write_file(f"/{root}/v{i:02d}/f", 1)
    config = tree_config("many", root, f"{dst}/many", recursive="true", max_parallel="2")
    # held to 4 MB/s per member transfer, so that the kill lands mid-sync
    config = config.replace('target_volume = "' + f"{dst}/many" + '"}',
                            'target_volume = "' + f"{dst}/many" + '", '
                            "bandwidth_limit = 4000000}")
    d = start_daemon(extra=config)

    def some_sent() -> bool:
        syncs = d.api("GET", "/v1/activities?kind=tree-sync")["items"]
        return bool(syncs) and 5 <= syncs[0]["progress"]["done"] < 40
    wait_until(some_sent, 180, interval=0.2, what="the first sync part-way")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    again = start_daemon(config_path=d.config_path)
    wait_until(lambda: all_in_sync(again, "many", 51, 1), 300, what="convergence after kill -9")
    for i in range(50):
        name = f"v{i:02d}"
        newest = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg",
                     "-r", f"{root}/{name}").stdout.split()[-1]
        label = newest.split("@")[1]
        guid = zfs("get", "-Hp", "-o", "value", "guid", newest).stdout.strip()
        copy = zfs("get", "-Hp", "-o", "value", "guid", f"{dst}/many/{name}@{label}")
        assert copy.returncode == 0 and copy.stdout.strip() == guid, (name, copy.stderr)
