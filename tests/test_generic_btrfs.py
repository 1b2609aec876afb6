"""The generic path between drivers: zfs-fuse to btrfs and back, both local, real."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .btrfs_fs import btrfs
from .conftest import replicate, wait_until, write_file, zfs
from .test_generic_path import populate, tree_digest
from .test_replicate_local import guid

MiB = 1 << 20


def run(d: Any, snapshot: str, source: str, destination: str, target: str) -> dict[str, Any]:
    r = replicate(d, snapshot, source, destination, target)
    assert r.status == 202, r.body
    assert r.body["path"] == "generic", r.body  # auto: two drivers
    done: dict[str, Any] = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    return done


def test_zfs_to_btrfs_and_back(start_daemon: Any, make_pool: Callable[..., str],
                               make_btrfs_root: Callable[[], Path]) -> None:
    pool, root = make_pool(), make_btrfs_root()
    zfs("create", f"{pool}/data")
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\n'
                     f'[servers.bt]\nkind = "local"\nbackend = "btrfs"\nroot = "{root}"\n')
    populate(f"/{pool}/data")
    zfs("snapshot", f"{pool}/data@s1")
    full = run(d, f"{pool}/data@s1", "local", "bt", f"{root.name}/copy")
    assert full["params"]["plan"] == {"mode": "full", "path": "generic"}
    assert tree_digest(root / "copy") == tree_digest(f"/{pool}/data")
    # btrfs stores zeros as zeros: the 8 MiB hole of /sparse is kept by rsync --sparse,
    # asked for because the source has a file with a hole
    assert full["params"]["generic_sparse"] is True
    assert os.stat(root / "copy" / "sparse").st_blocks * 512 < MiB
    snaps = d.api("GET", f"/v1/volumes/{root.name}/copy/snapshots?server=bt")["items"]
    assert [(s["label"], s["origin"]) for s in snaps] == [("s1", guid(f"{pool}/data@s1"))]

    write_file(f"/{pool}/data/dir/f5", 1)
    zfs("snapshot", f"{pool}/data@s2")
    incr = run(d, f"{pool}/data@s2", "local", "bt", f"{root.name}/copy")
    assert incr["params"]["plan"]["mode"] == "incremental"
    assert incr["params"]["generic_stats"]["transferred_size"] == MiB
    assert tree_digest(root / "copy") == tree_digest(f"/{pool}/data")

    # btrfs -> zfs-fuse: a btrfs snapshot's view is the read-only snapshot itself
    back = run(d, f"{root.name}/copy@s2", "bt", "local", f"{pool}/back")
    assert back["params"]["plan"]["mode"] == "full"
    assert back["params"]["generic_sparse"] is False  # ZFS keeps zero runs as holes
    assert tree_digest(f"/{pool}/back") == tree_digest(root / "copy")
    assert btrfs("property", "get", "-ts", str(root / "copy"), "ro").stdout.strip() == "ro=true"


def test_a_zfs_master_keeps_a_btrfs_slave_and_a_zfs_slave(
        start_daemon: Any, make_pool: Callable[..., str],
        make_btrfs_root: Callable[[], Path]) -> None:
    """One relationship, two drivers: the zfs-fuse slave by native streams, the btrfs
    slave by the generic path, each planned on its own; both follow the master."""
    pool, other, root = make_pool(), make_pool(), make_btrfs_root()
    zfs("create", f"{pool}/data")
    populate(f"/{pool}/data", files=4)
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\n'
                     f'[servers.bt]\nkind = "local"\nbackend = "btrfs"\nroot = "{root}"\n'
                     f'[relationships.mix]\nvolume = "{pool}/data"\ninterval = "1h"\n'
                     f'slaves = [{{server = "local", target_volume = "{other}/copy"}}, '
                     f'{{server = "bt", target_volume = "{root.name}/copy"}}]\n')

    def copies_match() -> bool:
        want = tree_digest(f"/{pool}/data")
        return (root / "copy").exists() and tree_digest(root / "copy") == want \
            and zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", f"{other}/copy",
                    check=False).stdout.strip() != ""

    wait_until(copies_match, 120, what="both slaves' first copies")
    write_file(f"/{pool}/data/dir/new", 1)
    d.api("POST", "/v1/relationships/mix/sync-now")
    wait_until(lambda: copies_match() and (root / "copy" / "dir" / "new").exists(), 120,
               what="the second cycle on both slaves")
    paths: dict[str, set[str]] = {}
    for a in d.api("GET", "/v1/activities?relationship=mix&kind=replicate&limit=100")["items"]:
        plan = a["params"].get("plan") or {}
        if a["state"] == "succeeded" and plan:
            paths.setdefault(a["params"]["destination"], set()).add(plan["path"])
    assert paths == {"local": {"native"}, "bt": {"generic"}}, paths
    def newest_match() -> bool:
        master = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-r",
                     f"{pool}/data").stdout.split()[-1]
        copies = d.api("GET", f"/v1/volumes/{root.name}/copy/snapshots?server=bt")["items"]
        return bool(copies) and (copies[-1]["label"], copies[-1]["origin"]) == (
            master.partition("@")[2], guid(master))

    # a cycle asked for while one ran comes after it: wait for the last one to arrive
    wait_until(newest_match, 120, what="the master's newest snapshot on the btrfs slave")


def test_a_tree_without_holes_is_copied_to_btrfs_without_sparse_writes(
        start_daemon: Any, make_pool: Callable[..., str],
        make_btrfs_root: Callable[[], Path]) -> None:
    """rsync's --sparse writes 1 KiB at a time: a source with no file with holes is
    copied without it, byte for byte all the same."""
    pool, root = make_pool(), make_btrfs_root()
    zfs("create", f"{pool}/data")
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\n'
                     f'[servers.bt]\nkind = "local"\nbackend = "btrfs"\nroot = "{root}"\n')
    for i in range(3):
        write_file(f"/{pool}/data/f{i}", 1)
    zfs("snapshot", f"{pool}/data@s1")
    full = run(d, f"{pool}/data@s1", "local", "bt", f"{root.name}/dense")
    assert full["params"]["generic_sparse"] is False
    assert tree_digest(root / "dense") == tree_digest(f"/{pool}/data")
