"""The generic path over SSH: rsync with the server's own SSH settings, a real sshd (on
127.0.0.1, and in a network namespace for a cut link), real zfs-fuse behind it."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import DaemonProcess, NetnsSshServer, SshServer, replicate, write_file, zfs
from .test_generic_path import origin, populate, tree_digest, views
from .test_links import FAST_RETRIES, REPORTED_WITHIN, link, reported_after
from .test_replicate_local import guid, snapshots

MiB = 1 << 20


@pytest.fixture
def daemon(start_daemon: Any, sshd: SshServer) -> DaemonProcess:
    d: DaemonProcess = start_daemon(extra=sshd.config("remote") + sshd.config("remote2")
                                    + '[servers.local]\nkind = "local"\n')
    return d


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str]:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    return src, dst


def done_ok(d: DaemonProcess, r: Any) -> dict[str, Any]:
    assert r.status == 202, r.body
    done = d.wait_done(r.body["id"])
    assert done["state"] == "succeeded", done["status"]
    return done


@pytest.mark.parametrize(("source", "destination"), [("local", "remote"), ("remote", "local")])
def test_full_and_incremental_over_ssh(daemon: DaemonProcess, pools: tuple[str, str],
                                       source: str, destination: str) -> None:
    src, dst = pools
    populate(f"/{src}/data", files=20)
    zfs("snapshot", f"{src}/data@s1")
    full = done_ok(daemon, replicate(daemon, f"{src}/data@s1", source, destination,
                                     f"{dst}/data", path="generic"))
    assert full["params"]["plan"]["path"] == "generic"
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert full["params"]["generic_stats"]["sent" if source == "local" else "received"] \
        > 20 * MiB
    write_file(f"/{src}/data/dir/f7", 1)  # 1 of 22 MiB changes
    zfs("snapshot", f"{src}/data@s2")
    r = replicate(daemon, f"{src}/data@s2", source, destination, f"{dst}/data")
    assert (r.body["plan"], r.body["path"]) == ("incremental", "generic")
    incr = done_ok(daemon, r)
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert origin(f"{dst}/data@s2") == guid(f"{src}/data@s2")
    stats = incr["params"]["generic_stats"]
    # only the changed file crossed the wire (rsync's delta on it: at most its size)
    assert stats["transferred_size"] == MiB, stats
    assert stats["sent"] + stats["received"] < 2 * MiB, stats
    assert incr["usage"]["bytes_on_wire"] == stats["sent"] + stats["received"]
    assert views(src) == []


def test_remote_to_remote_is_refused_with_the_reason(daemon: DaemonProcess,
                                                     pools: tuple[str, str]) -> None:
    src, dst = pools
    zfs("snapshot", f"{src}/data@s1")
    r = replicate(daemon, f"{src}/data@s1", "remote", "remote2", f"{dst}/data", path="generic")
    assert r.status == 409 and r.body["code"] == "path-unavailable", r.body
    assert "both servers are remote" in r.body["detail"]
    assert zfs("list", f"{dst}/data", check=False).returncode != 0


def test_cut_link_is_reported_and_the_copy_completes(
        start_daemon: Any, netns_sshd: NetnsSshServer, pools: tuple[str, str]) -> None:
    src, dst = pools
    write_file(f"/{src}/data/small", 1)
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon(daemon_extra=FAST_RETRIES,
                     extra=netns_sshd.config("slave") + '[servers.local]\nkind = "local"\n')
    done_ok(d, replicate(d, f"{src}/data@s1", "local", "slave", f"{dst}/data", path="generic"))
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s2")
    r = replicate(d, f"{src}/data@s2", "local", "slave", f"{dst}/data",
                  bandwidth_limit=3 * MiB)
    assert r.body["path"] == "generic"
    aid = r.body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 3 * MiB, what="bytes to flow")
    seconds, retrying = reported_after(d, aid, netns_sshd.cut)
    assert seconds < REPORTED_WITHIN
    assert retrying["link"]["server"] == "slave" and retrying["link"]["last_error"]
    assert "file copy interrupted" in retrying["link"]["last_error"]
    netns_sshd.restore()
    done = d.wait_done(aid, timeout=180)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] >= 1
    assert snapshots(f"{dst}/data") == ["s1", "s2"]
    assert tree_digest(f"/{dst}/data") == tree_digest(f"/{src}/data")
    assert link(d, "slave")["state"] == "up"
