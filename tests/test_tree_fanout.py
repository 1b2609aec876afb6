"""Fan-out for trees on real zfs-fuse: with two standbys, each member's stream is sent
once and feeds both slaves (``relationships.tree_fanout``)."""

from __future__ import annotations

from typing import Any

from .conftest import DaemonProcess, make_writable, wait_until, write_file, zfs
from .test_relationships import metric
from .test_trees import rel, sync_now

MEMBERS = ("a", "b")


def guids(root: str) -> dict[str, str]:
    out = zfs("get", "-Hp", "-r", "-o", "name,value", "guid", root).stdout
    return {line.split("\t")[0][len(root):]: line.split("\t")[1] for line in out.splitlines()
            if "@" in line.split("\t")[0]}


def in_sync(d: DaemonProcess, cycles: int) -> bool:
    r = rel(d, "cinder")
    tree = r["tree"]
    return (r["cycles"] >= cycles and tree is not None and tree["members"] == 3
            and all(tree["slaves"][s]["in_sync"] == 3 for s in ("lab1", "lab2")))


def test_each_member_is_sent_once_for_both_standbys(start_daemon: Any, make_pool: Any) -> None:
    src, one, two = make_pool(), make_pool(), make_pool()
    root = f"{src}/cinder"
    zfs("create", root)
    for m in MEMBERS:
        zfs("create", f"{root}/{m}")
        write_file(f"/{root}/{m}/f", 1)
    config = ('[servers.local]\nkind = "local"\n[servers.lab1]\nkind = "local"\n'
              '[servers.lab2]\nkind = "local"\n'
              f'[relationships.cinder]\nvolume = "{root}"\ninterval = "1h"\n'
              'recursive = true\n'
              f'slaves = [{{server = "lab1", target_volume = "{one}/standby"}}, '
              f'{{server = "lab2", target_volume = "{two}/standby"}}]\n')
    d = start_daemon(extra=config)
    wait_until(lambda: in_sync(d, 1), 180, what="the first cycle to both standbys")
    # the first syncs are each member's own transfer per slave: no shared send yet
    assert metric(d.api("GET", "/metrics"), "cerssd_fanout_sends_total") == 0.0

    for m in MEMBERS:
        write_file(f"/{root}/{m}/g", 1)
    cycle = sync_now(d, "cinder")
    wait_until(lambda: in_sync(d, cycle), 180, what="the second cycle to both standbys")
    # steady syncs to both: one send per member (the root, a, b) fed both receives
    assert metric(d.api("GET", "/metrics"), "cerssd_fanout_sends_total") == 3.0
    master = guids(root)
    assert guids(f"{one}/standby") == master and guids(f"{two}/standby") == master

    # lab2's copy of b is written on: the shared send of b still feeds lab1, and lab2's
    # receive of it is refused: b is failing there, and lab2's next sync lists both trees
    make_writable(f"{two}/standby/b")
    zfs("mount", f"{two}/standby/b", check=False)  # received unmounted
    write_file(f"/{two}/standby/b/local", 1)
    for m in MEMBERS:
        write_file(f"/{root}/{m}/h", 1)
    cycle = sync_now(d, "cinder")

    def b_failing_on_lab2() -> bool:
        r = rel(d, "cinder")
        slaves = r["tree"]["slaves"]
        return (r["cycles"] >= cycle and slaves["lab1"]["in_sync"] == 3
                and slaves["lab2"]["in_sync"] == 2 and slaves["lab2"]["failing"] == 1)
    try:
        wait_until(b_failing_on_lab2, 180, what="lab1 in sync, b failing on lab2")
    except AssertionError:
        print(rel(d, "cinder"), d.log()[-20000:])
        raise
    assert metric(d.api("GET", "/metrics"), "cerssd_fanout_sends_total") == 6.0
    assert guids(f"{one}/standby") == guids(root)
    failing = d.api("GET", "/v1/relationships/cinder/volumes?state=failing")["items"]
    assert [i["relative"] for i in failing] == ["b"]
