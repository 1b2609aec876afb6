"""The OpenZFS 2.x tier: a real OpenZFS server in a QEMU guest, reached over SSH.

Everything zfs-fuse lacks is tested here on the real thing: exact stream sizes,
resumable receives, bookmarks, raw sends of encrypted data, zvols, and streams
between the host's zfs-fuse and the guest's OpenZFS. The guest is slow (software
emulation), so streams are small and slowed on purpose where a test must land
mid-transfer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    DaemonProcess,
    post_json,
    replicate,
    replicate_ok,
    wait_until,
    write_file,
    zfs,
)
from .openzfs_guest import OpenZfsGuest
from .test_relationships import wait_in_sync

pytestmark = pytest.mark.openzfs

MiB = 1 << 20


class Guest:
    """Shell helpers for the guest's ZFS."""

    def __init__(self, vm: OpenZfsGuest) -> None:
        self.vm = vm

    def sh(self, command: str, check: bool = True) -> str:
        result = self.vm.ssh("sh", "-c", command)
        if check and result.returncode != 0:
            raise AssertionError(f"guest: {command}: {result.stderr}")
        return result.stdout

    def guid(self, name: str) -> str:
        return self.sh(f"zfs get -Hp -o value guid {name}").strip()

    def prop(self, name: str, prop: str) -> str:
        return self.sh(f"zfs get -Hp -o value {prop} {name}").strip()

    def exists(self, name: str) -> bool:
        return self.vm.ssh("zfs", "list", name).returncode == 0

    def write(self, path: str, mib: int) -> None:
        self.sh(f"head -c {mib * MiB} /dev/urandom > {path}")


@pytest.fixture(scope="module")
def guest(openzfs_guest: OpenZfsGuest) -> Iterator[Guest]:
    g = Guest(openzfs_guest)
    a, b = openzfs_guest.disks
    g.sh(f"zpool create -f -o ashift=12 tank {a} && zpool create -f -o ashift=12 tank2 {b}")
    yield g
    g.sh("zpool destroy -f tank; zpool destroy -f tank2", check=False)


@pytest.fixture
def fresh(guest: Guest) -> Iterator[Guest]:
    """Empty source and target pools for each test."""
    yield guest
    guest.sh("for s in $(zfs list -H -o name -t snapshot -r tank tank2); do "
             "for t in cerssd:guest cerssd:guest2 cerssd:local; do "
             "zfs release $t $s 2>/dev/null; done; done; "
             "for d in $(zfs list -H -o name -d 1 tank tank2 | grep /); do "
             "zfs destroy -rf $d; done", check=False)


@pytest.fixture
def daemon(start_daemon: Any, openzfs_guest: OpenZfsGuest) -> DaemonProcess:
    servers = (openzfs_guest.server_config("guest") + openzfs_guest.server_config("guest2")
               + '[servers.local]\nkind = "local"\n')
    d: DaemonProcess = start_daemon(extra=servers)
    return d


def test_probe_reports_openzfs_capabilities(daemon: DaemonProcess) -> None:
    caps = daemon.api("GET", "/v1/capabilities")
    for name in ("resumable_send", "bookmarks", "size_estimate", "raw_send", "zvols",
                 "encryption", "compressed_send"):
        assert caps["guest"][name] is True, name
        assert caps["local"][name] is False, name  # zfs-fuse: same probing code
    servers = {s["name"]: s for s in daemon.api("GET", "/v1/servers")["items"]}
    assert servers["guest"]["zfs_version"].startswith("zfs-2.")


def test_progress_total_from_send_nvp(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("zfs create tank/data")
    fresh.write("/tank/data/f", 16)
    fresh.sh("zfs snapshot tank/data@s1")
    dry_run = int(fresh.sh("zfs send -Lec -nvP tank/data@s1 | awk '$1==\"size\"{print $2}'"))
    r = replicate(daemon, "tank/data@s1", "guest", "guest2", "tank2/data",
                  bandwidth_limit=4 * MiB)
    running = daemon.wait_activity(r.body["id"], lambda a: a["progress"]["done"] > 0,
                                   timeout=300, what="bytes to flow")
    # m is ZFS's own dry-run size, not cerssd's space-accounting guess
    assert running["progress"]["estimated"] is False
    assert running["progress"]["total"] == dry_run
    done = daemon.wait_done(r.body["id"], timeout=600)
    assert done["state"] == "succeeded", done["status"]
    moved = done["usage"]["bytes_on_wire"]
    assert done["progress"]["done"] == done["progress"]["total"] == moved
    # measured on 2.1.11: the dry run is a few KiB off a 16 MiB stream
    assert abs(moved - dry_run) < dry_run / 1000
    assert fresh.guid("tank2/data@s1") == fresh.guid("tank/data@s1")


def test_interrupted_transfer_resumes_from_token(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("zfs create tank/data")
    fresh.write("/tank/data/f", 24)
    fresh.sh("zfs snapshot tank/data@s1")
    aid = replicate(daemon, "tank/data@s1", "guest", "guest2", "tank2/data",
                    bandwidth_limit=4 * MiB).body["id"]
    total = daemon.wait_activity(aid, lambda a: a["progress"]["done"] > 10 * MiB,
                                 timeout=300, what="10 MiB to flow")["progress"]["total"]
    # Suspended first: a command in the emulated guest can take seconds, in which the
    # rest of the stream would arrive and the receive finish before the kill.
    assert post_json(daemon, f"/v1/activities/{aid}/suspend", {}).status == 200
    fresh.sh("pkill -9 -f 'zfs [r]eceive'")  # the receiving side dies mid-stream
    assert post_json(daemon, f"/v1/activities/{aid}/resume", {}).status == 200
    daemon.wait_activity(aid, lambda a: a["state"] == "retrying", timeout=60,
                         what="the retry after the interruption")
    done = daemon.wait_done(aid, timeout=600)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] >= 1
    # a restart would send the 10+ MiB already received again, on top of the whole stream;
    # resuming re-sends only what was in flight (pipes, ssh windows) when the receive died
    assert done["usage"]["bytes_on_wire"] < total + 5 * MiB
    assert '"resuming an interrupted receive from its token"' in daemon.log()
    assert fresh.guid("tank2/data@s1") == fresh.guid("tank/data@s1")
    assert fresh.prop("tank2/data", "receive_resume_token") == "-"


def test_resume_token_of_a_destroyed_snapshot_is_discarded(
        daemon: DaemonProcess, fresh: Guest) -> None:
    """The failure zrepl users hit: a receive cut off mid-stream leaves a token, then the
    snapshot it was cut from is destroyed on the source. The token can never resume; kept,
    it would make every later transfer to the target fail. It is discarded instead."""
    fresh.sh("zfs create tank/data")
    fresh.write("/tank/data/f", 1)
    fresh.sh("zfs snapshot tank/data@s1")
    replicate_ok(daemon, "tank/data@s1", "guest", "guest2", "tank2/data", timeout=600)
    fresh.write("/tank/data/g", 24)
    fresh.sh("zfs snapshot tank/data@s2")
    aid = replicate(daemon, "tank/data@s2", "guest", "guest2", "tank2/data",
                    bandwidth_limit=4 * MiB).body["id"]
    daemon.wait_activity(aid, lambda a: a["progress"]["done"] > 8 * MiB, timeout=300,
                         what="8 MiB to flow")
    assert post_json(daemon, f"/v1/activities/{aid}/suspend", {}).status == 200
    fresh.sh("pkill -9 -f 'zfs [r]eceive'; pkill -9 -f 'zfs [s]end'")  # both ends die
    fresh.sh("for i in $(seq 60); do [ \"$(zfs get -Hp -o value receive_resume_token "
             "tank2/data)\" != - ] && break; sleep 1; done")
    assert fresh.prop("tank2/data", "receive_resume_token") != "-"
    # ...and the snapshot the token was cut from is destroyed on the source
    fresh.sh("for i in $(seq 30); do zfs destroy tank/data@s2 && break; sleep 1; done")
    assert not fresh.exists("tank/data@s2")
    assert post_json(daemon, f"/v1/activities/{aid}/resume", {}).status == 200
    gone = daemon.wait_done(aid, timeout=600)
    # s2 itself is gone, so this request ends: as a missing snapshot, not a failed resume
    assert gone["state"] == "failed", gone
    assert gone["status"]["reason"] == "source-snapshot-missing", gone["status"]
    assert '"discarded a resume token the source can never resume' in daemon.log()
    assert fresh.prop("tank2/data", "receive_resume_token") == "-"
    # The next transfer to the target is planned as if no receive had been cut off.
    fresh.sh("zfs snapshot tank/data@s3")
    done = replicate_ok(daemon, "tank/data@s3", "guest", "guest2", "tank2/data", timeout=600)
    assert done["usage"]["bytes_on_wire"] < 30 * MiB  # an incremental from s1
    assert fresh.guid("tank2/data@s3") == fresh.guid("tank/data@s3")


def test_cancel_clears_partial_receive(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("zfs create tank/data")
    fresh.write("/tank/data/f", 1)
    fresh.sh("zfs snapshot tank/data@s1")
    replicate_ok(daemon, "tank/data@s1", "guest", "guest2", "tank2/data", timeout=600)
    fresh.write("/tank/data/g", 24)
    fresh.sh("zfs snapshot tank/data@s2")
    aid = replicate(daemon, "tank/data@s2", "guest", "guest2", "tank2/data",
                    bandwidth_limit=4 * MiB).body["id"]
    daemon.wait_activity(aid, lambda a: a["progress"]["done"] > 4 * MiB, timeout=300,
                         what="bytes to flow")
    daemon.api("POST", f"/v1/activities/{aid}/cancel")
    assert daemon.wait_done(aid, timeout=300)["state"] == "cancelled"
    assert fresh.prop("tank2/data", "receive_resume_token") == "-"
    assert fresh.sh("zfs list -H -o name -t snapshot -r tank2/data").split() == [
        "tank2/data@s1"]


def test_bookmark_serves_as_base_after_prune(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("zfs create tank/data")
    fresh.write("/tank/data/f", 4)
    fresh.sh("zfs snapshot tank/data@s1")
    replicate_ok(daemon, "tank/data@s1", "guest", "guest2", "tank2/data", timeout=600)
    assert "tank/data#cerssd-guest2-s1" in fresh.sh("zfs list -H -o name -t bookmark -r tank")
    # someone prunes the common snapshot on the source anyway
    fresh.sh("zfs release cerssd:guest2 tank/data@s1 && zfs destroy tank/data@s1")
    fresh.write("/tank/data/g", 2)
    fresh.sh("zfs snapshot tank/data@s2")
    r = replicate(daemon, "tank/data@s2", "guest", "guest2", "tank2/data")
    assert r.status == 202 and r.body["plan"] == "incremental", r.body
    done = daemon.wait_done(r.body["id"], timeout=600)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["bytes_on_wire"] < 3 * MiB  # only the delta
    assert fresh.guid("tank2/data@s2") == fresh.guid("tank/data@s2")
    marks = fresh.sh("zfs list -H -o name -t bookmark -r tank").split()
    assert marks == ["tank/data#cerssd-guest2-s2"]  # the older one was dropped


def test_raw_send_keeps_encryption(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("printf 'correct horse battery' > /root/key && "
             "zfs create -o encryption=on -o keyformat=passphrase "
             "-o keylocation=file:///root/key tank/secret && "
             "echo 'top secret' > /tank/secret/note && zfs snapshot tank/secret@s1")
    replicate_ok(daemon, "tank/secret@s1", "guest", "guest2", "tank2/secret", timeout=600)
    assert fresh.prop("tank2/secret", "encryption") != "off"
    assert fresh.prop("tank2/secret", "keystatus") == "unavailable"  # arrived encrypted
    fresh.sh("zfs load-key -L file:///root/key tank2/secret && zfs mount tank2/secret")
    assert fresh.sh("cat /tank2/secret/note").strip() == "top secret"


def test_zvol_replicates_block_for_block(daemon: DaemonProcess, fresh: Guest) -> None:
    fresh.sh("zfs create -V 32M tank/vol && udevadm settle; "
             "for i in $(seq 50); do [ -e /dev/zvol/tank/vol ] && break; sleep 0.1; done; "
             "head -c 33554432 /dev/urandom | dd of=/dev/zvol/tank/vol bs=1M status=none "
             "conv=fsync && zfs snapshot tank/vol@s1")
    replicate_ok(daemon, "tank/vol@s1", "guest", "guest2", "tank2/vol", timeout=600)
    digest = ("for i in $(seq 50); do [ -e /dev/zvol/{0}@s1 ] && break; sleep 0.1; done; "
              "sha256sum < /dev/zvol/{0}@s1")
    fresh.sh("zfs set snapdev=visible tank/vol && zfs set snapdev=visible tank2/vol && "
             "udevadm settle")
    assert fresh.sh(digest.format("tank2/vol")) == fresh.sh(digest.format("tank/vol"))
    assert fresh.prop("tank2/vol", "type") == "volume"


def test_zfs_fuse_to_openzfs_and_back(daemon: DaemonProcess, fresh: Guest,
                                      make_pool: Any) -> None:
    host_pool = make_pool()
    zfs("create", f"{host_pool}/old")
    write_file(f"/{host_pool}/old/f", 2)
    zfs("snapshot", f"{host_pool}/old@s1")
    # zfs-fuse (pool version 23) streams are readable by OpenZFS
    replicate_ok(daemon, f"{host_pool}/old@s1", "local", "guest", "tank2/old", timeout=600)
    host_guid = zfs("get", "-Hp", "-o", "value", "guid", f"{host_pool}/old@s1").stdout.strip()
    assert fresh.guid("tank2/old@s1") == host_guid
    # and back: OpenZFS's plain stream of a feature-flag pool
    fresh.sh("zfs create tank/new && echo hello > /tank/new/f && zfs snapshot tank/new@s1")
    r = replicate(daemon, "tank/new@s1", "guest", "local", f"{host_pool}/new", path="native")
    assert r.status == 202, r.body
    done = daemon.wait_done(r.body["id"], timeout=600)
    # measured: zfs-fuse refuses OpenZFS 2.1's stream ("unsupported feature, feature flags
    # = 4"); forced native, the activity says so in words and leaves nothing behind
    assert done["state"] == "failed", done
    assert done["status"]["reason"] == "stream-incompatible", done["status"]
    assert "local's ZFS cannot read the stream guest sends" in done["status"]["message"]
    assert subprocess.run(["zfs", "list", f"{host_pool}/new"],
                          capture_output=True).returncode != 0
    # path auto (the default): the same first copy falls back to files, and the pair's
    # next copy stays generic (its base matches by origin)
    first = replicate_ok(daemon, "tank/new@s1", "guest", "local", f"{host_pool}/new",
                         timeout=600)
    assert first["params"]["plan"] == {"mode": "full", "path": "generic"}, first["params"]
    assert first["params"]["fallback"]["reason"] == "stream-incompatible", first["params"]
    with open(f"/{host_pool}/new/f") as f:
        assert f.read() == "hello\n"
    fresh.sh("echo again > /tank/new/g && zfs snapshot tank/new@s2")
    nxt = replicate_ok(daemon, "tank/new@s2", "guest", "local", f"{host_pool}/new",
                       timeout=600)
    assert nxt["params"]["plan"] == {"mode": "incremental", "path": "generic"}, nxt["params"]
    assert "fallback" not in nxt["params"]
    with open(f"/{host_pool}/new/g") as f:
        assert f.read() == "again\n"


def test_a_tree_with_a_zvol_member_and_a_bookmark_base_per_member(
        daemon: DaemonProcess, fresh: Guest) -> None:
    """A tree relationship on OpenZFS: one multi-name snapshot for every member, a zvol
    member replicated as a zvol, and each member's base kept as a bookmark, so a member
    whose common snapshot someone destroyed still goes incremental."""
    fresh.sh("zfs create tank/t && zfs create tank/t/a && zfs create -V 4M tank/t/v && "
             "head -c 2097152 /dev/urandom > /tank/t/a/f")
    r = post_json(daemon, "/v1/relationships", {
        "name": "tree", "master": "guest", "volume": "tank/t", "recursive": True,
        "interval": "1h", "slaves": [{"server": "guest2", "target_volume": "tank2/t"}]})
    assert r.status == 201, r.body

    def in_sync(cycles: int) -> bool:
        rel = daemon.api("GET", "/v1/relationships/tree")
        tree = rel.get("tree") or {}
        return rel["cycles"] >= cycles and tree.get("members") == 3 \
            and tree["slaves"]["guest2"]["in_sync"] == 3

    wait_until(lambda: in_sync(1), 900, what="the tree's first cycle")
    assert fresh.prop("tank2/t/v", "type") == "volume"
    label = fresh.sh("zfs list -H -o name -t snapshot -s createtxg tank/t").split()[-1] \
        .split("@")[1]
    txgs = {fresh.prop(f"tank/t{m}@{label}", "createtxg") for m in ("", "/a", "/v")}
    assert len(txgs) == 1, txgs  # one instant for the whole tree
    marks = fresh.sh("zfs list -H -o name -t bookmark -r tank/t").split()
    assert sorted(marks) == sorted(f"tank/t{m}#cerssd-guest2-{label}"
                                   for m in ("", "/a", "/v")), marks
    # someone destroys member a's common snapshot: its bookmark is the base now
    fresh.sh(f"zfs release cerssd:guest2 tank/t/a@{label} && zfs destroy tank/t/a@{label} && "
             "head -c 1048576 /dev/urandom > /tank/t/a/g")
    before = daemon.api("GET", "/v1/relationships/tree")["cycles"]
    assert post_json(daemon, "/v1/relationships/tree/sync-now", {}).status == 202
    wait_until(lambda: in_sync(before + 1), 900, what="the second cycle")
    sends = daemon.api("GET", "/v1/activities?kind=replicate&limit=10")["items"]
    member_a = [s for s in sends if s["params"].get("member") == "a"]
    assert member_a and member_a[0]["usage"]["bytes_on_wire"] < 2 * MiB, member_a[0]


def test_a_second_full_copy_of_one_snapshot_reuses_its_bookmark(
        daemon: DaemonProcess, fresh: Guest) -> None:
    """The bench in the guest found a second full copy of one snapshot (to a new target on
    the same destination) failing on the bookmark the first had made."""
    fresh.sh("zfs create tank/data && zfs snapshot tank/data@b1")
    replicate_ok(daemon, "tank/data@b1", "guest", "guest2", "tank2/one", timeout=600)
    replicate_ok(daemon, "tank/data@b1", "guest", "guest2", "tank2/two", timeout=600)
    assert fresh.guid("tank2/two@b1") == fresh.guid("tank/data@b1")



def test_zvol_create_extend_and_exact_capacity(daemon: DaemonProcess, fresh: Guest) -> None:
    """A block volume's create and extend (zfs-fuse has no zvols), and capacity from
    ``zpool list -Hp``: exact bytes, the zvol's size in what is provisioned."""
    created = post_json(daemon, "/v1/volumes", {"name": "tank/disk", "server": "guest",
                                                "type": "volume", "size": 32 * MiB})
    assert created.status == 202, created.body
    assert daemon.wait_done(created.body["id"])["state"] == "succeeded"
    assert fresh.prop("tank/disk", "type") == "volume"
    assert fresh.prop("tank/disk", "volsize") == str(32 * MiB)
    grown = post_json(daemon, "/v1/volumes/tank/disk/extend", {"server": "guest",
                                                               "size": 64 * MiB})
    assert grown.status == 202, grown.body
    assert daemon.wait_done(grown.body["id"])["state"] == "succeeded"
    assert fresh.prop("tank/disk", "volsize") == str(64 * MiB)
    shrink = post_json(daemon, "/v1/volumes/tank/disk/extend", {"server": "guest",
                                                                "size": 32 * MiB})
    assert shrink.status == 409 and shrink.body["current_size"] == 64 * MiB, shrink.body

    pools = {p["pool"]: p for p in
             daemon.api("GET", "/v1/capabilities")["guest"]["capacity"]["pools"]}
    size, alloc = fresh.sh("zpool list -Hp -o size,allocated tank").split()
    tank = pools["tank"]
    assert tank["exact"] is True and tank["total"] == int(size)
    assert tank["provisioned"] >= 64 * MiB  # the zvol's size, and the root's own data
    assert abs(tank["allocated"] - int(alloc)) <= 4 * MiB  # measured moments apart


def relationship(name: str, master: str, volume: str, slave: str, target: str,
                 extra: str = "") -> str:
    return (f'[relationships.{name}]\nmaster = "{master}"\nvolume = "{volume}"\n'
            f'interval = "1h"\nslaves = [{{server = "{slave}", target_volume = "{target}"}}]\n'
            f"{extra}\n")


def test_receive_exclude_and_set_use_x_and_o_and_a_shared_master_is_not_shared(
        start_daemon: Any, openzfs_guest: OpenZfsGuest, fresh: Guest) -> None:
    # The master shares over NFS and mounts at a path of its own (the guest has no NFS
    # server: ZFS keeps sharenfs=on and says it cannot share, as it would with one down).
    fresh.sh("zfs create -o mountpoint=/srv/master -o compression=zstd "
             "-o test:marker=from-master tank/data && "
             "head -c 1048576 /dev/urandom > /srv/master/f")
    fresh.sh("zfs set sharenfs=on tank/data", check=False)
    assert fresh.prop("tank/data", "sharenfs") == "on"
    d = start_daemon(extra=(
        openzfs_guest.server_config("guest") + openzfs_guest.server_config("guest2")
        + relationship("r", "guest", "tank/data", "guest2", "tank2/props",
                       'send_properties = true\nreceive_set = { canmount = "noauto" }')))
    wait_in_sync(d, "r", timeout=900)

    def source(prop: str) -> tuple[str, str]:
        value, _, where = fresh.sh(f"zfs get -H -o value,source {prop} tank2/props"
                                   ).strip().partition("\t")
        return value, where

    assert source("compression") == ("zstd", "received")  # the stream carried them
    assert source("test:marker") == ("from-master", "received")
    assert source("sharenfs") == ("off", "default")
    assert source("mountpoint") == ("/tank2/props", "default")
    assert source("canmount") == ("noauto", "local")
    assert source("mounted")[0] == "no"
    assert "tank2/props" not in fresh.sh("cat /etc/exports.d/zfs.exports 2>/dev/null; true")
    # -x and -o on the receive itself (no zfs set afterwards): the pool's own history
    # (the module's pools are shared: this test's target has a name no other test uses)
    history = [line for line in fresh.sh("zpool history tank2").splitlines()
               if "tank2/props" in line]
    received = [line for line in history if "zfs receive" in line]
    assert received and all(
        "receive -u -x mountpoint -x sharenfs -x sharesmb -o canmount=noauto " in line
        and line.endswith(" tank2/props")
        for line in received), received
    assert not any("zfs set canmount" in line or "zfs inherit" in line for line in history)


#: The delegations docs/least-privilege.md gives, for the master's and the slave's pools.
MASTER_PERMISSIONS = "send,snapshot,hold,release,destroy,bookmark,mount"
SLAVE_PERMISSIONS = ("receive,create,mount,hold,release,destroy,rollback,readonly,canmount,"
                     "mountpoint,sharenfs,sharesmb,userprop")


def test_a_non_root_user_with_zfs_allow_replicates_both_ways(
        start_daemon: Any, openzfs_guest: OpenZfsGuest, fresh: Guest) -> None:
    user = "cerssd"
    fresh.sh(f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' {user}; "
             f"install -d -o {user} -m 700 /home/{user}/.ssh && "
             f"install -o {user} -m 600 /root/.ssh/authorized_keys /home/{user}/.ssh/")
    fresh.sh(f"zfs create tank/out && zfs create tank/in && "
             f"head -c 1048576 /dev/urandom > /tank/out/f && "
             f"head -c 1048576 /dev/urandom > /tank/in/f && "
             f"zfs allow -u {user} {MASTER_PERMISSIONS} tank/in && "
             f"zfs allow -u {user} {SLAVE_PERMISSIONS} tank2")
    d = start_daemon(extra=(
        openzfs_guest.server_config("guest")
        # no sudo: a login's PATH lacks /usr/sbin, so zfs (and zpool beside it) by path
        + openzfs_guest.server_config("limited", user=user,
                                      extra='zfs_command = "/usr/sbin/zfs"')
        + relationship("push", "guest", "tank/out", "limited", "tank2/out")
        + relationship("pull", "limited", "tank/in", "guest", "tank2/in")))
    try:
        for name, copy in (("push", "tank2/out"), ("pull", "tank2/in")):
            r = wait_in_sync(d, name, timeout=900)
            label = r["newest_snapshot"].split("@")[1]
            assert fresh.guid(f"{copy}@{label}") == fresh.guid(r["newest_snapshot"])
            assert fresh.prop(copy, "readonly") == "on"  # the fence, by the delegation
        assert fresh.prop("tank2/out", "mounted") == "no"  # unmounted: no root needed
        # what the user did, it did as itself: the pool history names it
        history = fresh.sh("zpool history -l tank2").splitlines()
        who = f"[user {fresh.sh(f'id -u {user}').strip()} ({user})"
        assert [line for line in history if "zfs receive -u" in line
                and " tank2/out " in line and who in line], history
    finally:
        fresh.sh(f"zfs unallow -u {user} tank2; zfs unallow -u {user} tank/in", check=False)
