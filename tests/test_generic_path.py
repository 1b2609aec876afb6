"""The generic path (rsync from a snapshot's view, then a snapshot recording its origin)
between two local pools on real zfs-fuse, forced with ``path = "generic"``.

zfs-fuse has no ``.zfs/snapshot`` directory, so the source's view is a temporary clone:
these tests also check that it is gone afterwards.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import DaemonProcess, replicate, write_file, zfs
from .test_replicate_local import guid, snapshots

MiB = 1 << 20


def tree_digest(root: Path | str) -> dict[str, str]:
    """sha256 of every regular file, the target of every symlink, by relative path
    (``.zfs`` left out), and each file's link count: the tree as rsync must copy it."""
    result: dict[str, str] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".zfs")
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                result[rel] = "-> " + os.readlink(path)
            else:
                result[rel] = (f"{hashlib.sha256(path.read_bytes()).hexdigest()} "
                               f"mode={st.st_mode:o} links={st.st_nlink} mtime={int(st.st_mtime)}")
    return result


def origin(name: str) -> str:
    return zfs("get", "-H", "-o", "value", "cerssd:origin", name).stdout.strip()


def views(pool: str) -> list[str]:
    out = zfs("list", "-H", "-o", "name", "-r", pool).stdout
    return [line for line in out.splitlines() if "cerssd-view-" in line]


def populate(root: str, files: int = 10, mib: int = 1) -> None:
    os.makedirs(f"{root}/dir/sub", exist_ok=True)
    for i in range(files):
        write_file(f"{root}/dir/f{i}", mib)
    write_file(f"{root}/dir/sub/deep", 1)
    os.symlink("dir/f0", f"{root}/link")
    os.link(f"{root}/dir/f1", f"{root}/hard")
    with open(f"{root}/sparse", "wb") as f:  # a hole, then 4 KiB of data
        f.seek(8 * MiB)
        f.write(os.urandom(4096))
    os.chmod(f"{root}/dir/f2", 0o600)
    # Written an hour ago: older than the seconds before a base snapshot that an
    # incremental compares by contents (transport.files.distrust_recent_mtimes), so the
    # tests see exactly what the quick check moves.
    hour_ago = time.time() - 3600
    for where, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(where, name), (hour_ago, hour_ago), follow_symlinks=False)


def run(d: DaemonProcess, snapshot: str, target: str, **extra: Any) -> dict[str, Any]:
    r = replicate(d, snapshot, "local", "local", target, **extra)
    assert r.status == 202, r.body
    done = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    done["accepted"] = r.body
    return done


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str]:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    return src, dst


def test_full_then_incremental_moves_only_changed_files(start_daemon: Any,
                                                       pools: tuple[str, str]) -> None:
    src, dst = pools
    zfs("set", "compression=on", dst)  # ZFS keeps zero runs as holes: no rsync --sparse
    d = start_daemon()
    populate(f"/{src}/data")
    zfs("snapshot", f"{src}/data@s1")
    full = run(d, f"{src}/data@s1", f"{dst}/data", path="generic")
    # the 8 MiB hole of /sparse is a hole on the replica too
    assert os.stat(f"/{dst}/data/sparse").st_blocks * 512 < 1 * MiB
    assert (full["accepted"]["plan"], full["accepted"]["path"]) == ("full", "generic")
    assert full["params"]["plan"] == {"mode": "full", "path": "generic"}
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert origin(f"{dst}/data@s1") == guid(f"{src}/data@s1")
    assert guid(f"{dst}/data@s1") != guid(f"{src}/data@s1")  # a copy, not a stream
    stats = full["params"]["generic_stats"]
    assert stats["transferred_size"] >= 11 * MiB
    assert full["progress"]["done"] == full["progress"]["total"] == stats["transferred_size"]
    assert zfs("get", "-H", "-o", "value", "readonly", f"{dst}/data").stdout.strip() == "on"
    assert views(src) == []

    # 5 % of the data changes: one file rewritten, one added, one removed
    write_file(f"/{src}/data/dir/f3", 1)
    write_file(f"/{src}/data/new", 1)
    os.unlink(f"/{src}/data/dir/f4")
    zfs("snapshot", f"{src}/data@s2")
    # auto: the base is shared only as a copy (origin), so only the generic path serves
    incr = run(d, f"{src}/data@s2", f"{dst}/data")
    assert (incr["accepted"]["plan"], incr["accepted"]["path"]) == ("incremental", "generic")
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert snapshots(f"{dst}/data") == ["s1", "s2"]
    assert origin(f"{dst}/data@s2") == guid(f"{src}/data@s2")
    stats = incr["params"]["generic_stats"]
    assert 2 * MiB <= stats["transferred_size"] < 3 * MiB, stats  # not the 11 MiB again
    assert stats["sent"] < 3 * MiB, stats
    assert views(src) == []

    again = replicate(d, f"{src}/data@s2", "local", "local", f"{dst}/data")
    assert (again.body["plan"], again.body["path"]) == ("up-to-date", "generic")
    d.wait_done(again.body["id"])
    zfs("snapshot", f"{src}/data@s3")
    native = replicate(d, f"{src}/data@s3", "local", "local", f"{dst}/data", path="native")
    assert native.status == 409 and native.body["code"] == "path-unavailable", native.body
    assert "file-level copy" in native.body["detail"]


def test_a_same_size_rewrite_in_the_base_snapshots_second_is_copied(
        start_daemon: Any, pools: tuple[str, str]) -> None:
    """zfs-fuse keeps whole-second mtimes: a file rewritten at the same size in the
    second of the base snapshot matches rsync's quick check (size and mtime) and would
    be skipped, leaving the replica different from its snapshot."""
    src, dst = pools
    d = start_daemon()
    path = f"/{src}/data/same"
    write_file(path, 1)
    second = int(time.time()) + 1  # the base snapshot is taken in or before this second
    os.utime(path, (second, second))
    zfs("snapshot", f"{src}/data@s1")
    run(d, f"{src}/data@s1", f"{dst}/data", path="generic")
    write_file(path, 1)  # new contents, same size, and the same mtime as in s1
    os.utime(path, (second, second))
    zfs("snapshot", f"{src}/data@s2")
    incr = run(d, f"{src}/data@s2", f"{dst}/data")
    assert incr["accepted"]["plan"] == "incremental"
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert os.stat(f"/{dst}/data/same").st_mtime == second  # its true mtime again


def test_cancel_rolls_the_destination_back(start_daemon: Any,
                                           pools: tuple[str, str]) -> None:
    src, dst = pools
    d = start_daemon()
    write_file(f"/{src}/data/small", 1)
    zfs("snapshot", f"{src}/data@s1")
    run(d, f"{src}/data@s1", f"{dst}/data", path="generic")
    before = tree_digest(f"/{dst}/data")
    write_file(f"/{src}/data/small", 1)
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s2")
    # 1 MiB/s: the copy lasts ~25 s, so the cancel surely lands while it runs
    r = replicate(d, f"{src}/data@s2", "local", "local", f"{dst}/data",
                  bandwidth_limit=MiB)
    assert r.body["path"] == "generic"
    aid = r.body["id"]
    # m of an incremental comes from a dry run alongside the copy: exact once it answers
    running = d.wait_activity(aid, lambda a: a["progress"]["done"] > MiB
                              and not a["progress"]["estimated"], what="bytes to flow")
    assert running["progress"]["total"] >= 25 * MiB and not running["progress"]["estimated"]
    d.api("POST", f"/v1/activities/{aid}/cancel")
    done = d.wait_done(aid)
    assert done["state"] == "cancelled", done["status"]
    assert snapshots(f"{dst}/data") == ["s1"]
    assert tree_digest(f"/{dst}/data") == before  # the half-copied files are undone
    assert zfs("get", "-H", "-o", "value", "readonly", f"{dst}/data").stdout.strip() == "on"
    assert views(src) == []
    # and the next run copies it whole
    run(d, f"{src}/data@s2", f"{dst}/data")
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")


def test_cancel_of_a_first_copy_removes_the_new_volume(start_daemon: Any,
                                                       pools: tuple[str, str]) -> None:
    src, dst = pools
    d = start_daemon()
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s1")
    r = replicate(d, f"{src}/data@s1", "local", "local", f"{dst}/data", path="generic",
                  bandwidth_limit=4 * MiB)
    aid = r.body["id"]
    running = d.wait_activity(aid, lambda a: a["progress"]["done"] > 2 * MiB,
                              what="bytes to flow")
    # m of a first copy is the source's walk: exact from the start
    assert running["progress"]["total"] == 24 * MiB, running["progress"]
    assert not running["progress"]["estimated"]
    d.api("POST", f"/v1/activities/{aid}/suspend")
    paused = d.api("GET", f"/v1/activities/{aid}")["progress"]["done"]
    time.sleep(2.0)  # an observation window: nothing may move during it
    assert d.api("GET", f"/v1/activities/{aid}")["progress"]["done"] - paused <= MiB
    d.api("POST", f"/v1/activities/{aid}/cancel")
    done = d.wait_done(aid)
    assert done["state"] == "cancelled", done["status"]
    assert zfs("list", f"{dst}/data", check=False).returncode != 0
    assert views(src) == []
