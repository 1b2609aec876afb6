"""The btrfs driver's own behaviour on a real loop-mounted btrfs: what the storage contract
does not cover (volume operations, the generic path's views, probing a wrong root,
names only btrfs refuses, a receive refused onto another volume's copy).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cerssd.flow_control import Counters, FlowGate
from cerssd.replication.stream.transfer import TransferFailed, transfer
from cerssd.storage.btrfs import BtrfsBackend
from cerssd.storage.btrfs.layout import Layout
from cerssd.storage.errors import AlreadyExists, BackendError, NotFound
from cerssd.storage.names import InvalidName
from cerssd.transport.runner import LocalRunner

from .btrfs_fs import btrfs


@pytest.fixture
async def bt(make_btrfs_root: Callable[[], Path]) -> AsyncIterator[BtrfsBackend]:
    backend = BtrfsBackend(LocalRunner("bt"), root=str(make_btrfs_root()))
    await backend.probe()
    yield backend


def path(b: BtrfsBackend, volume: str) -> Path:
    return Path(b.layout.volume_path(volume))


def fresh(b: BtrfsBackend) -> str:
    return f"{b.layout.pool}/v{uuid.uuid4().hex[:6]}"


async def stream(b: BtrfsBackend, snapshot: str, target: str, base: str | None = None) -> int:
    return await transfer(b.send(snapshot, base), b.receive(target), counters=Counters(),
                          gate=FlowGate(), stall_timeout=60)


async def test_probe_names_the_server_and_key_for_a_root_not_on_btrfs(tmp_path: Path) -> None:
    backend = BtrfsBackend(LocalRunner("web1"), root=str(tmp_path))
    with pytest.raises(BackendError) as info:
        await backend.probe()
    assert "servers.web1.root" in str(info.value) and "not btrfs" in str(info.value)
    missing = BtrfsBackend(LocalRunner("web1"), root=str(tmp_path / "nope"))
    with pytest.raises(BackendError, match=r"servers\.web1\.root: .* does not exist"):
        await missing.probe()


async def test_probe_wants_a_subvolume_and_publishes_what_btrfs_has(
        bt: BtrfsBackend) -> None:
    plain = path(bt, bt.layout.pool) / "plain-dir"
    plain.mkdir()
    with pytest.raises(BackendError, match="not a btrfs subvolume"):
        await BtrfsBackend(LocalRunner("x"), root=str(plain)).probe()
    caps = bt.capabilities
    assert caps.incremental_send and caps.clones and caps.snapshot_views
    assert not (caps.holds or caps.bookmarks or caps.resumable_send or caps.size_estimate
                or caps.raw_send or caps.zvols)
    assert caps.compressed_send  # btrfs-progs 6.2 and a kernel with send protocol v2
    assert bt.info()["backend"] == "btrfs"


@pytest.mark.parametrize("bad", ["pool/.cerssd-snapshots", "pool/a/.cerssd-receiving/x",
                                 "pool/a b", "pool/../x", "pool/a\n"])
async def test_names_btrfs_cannot_map_are_refused(bt: BtrfsBackend, bad: str) -> None:
    name = bad.replace("pool", bt.layout.pool, 1) if bad.startswith("pool/") else bad
    with pytest.raises(InvalidName):
        await bt.create_volume(name)
    with pytest.raises(InvalidName):
        bt.receive(name)


async def test_a_volume_of_another_pool_is_not_found_naming_the_pool(bt: BtrfsBackend) -> None:
    with pytest.raises(NotFound, match=f"its pool is {bt.layout.pool}"):
        await bt.create_volume("otherpool/a")
    assert "otherpool" in str(await bt.target_problem("otherpool/a"))
    assert not await bt.exists("otherpool/a")
    assert not await bt.has_snapshot("otherpool/a@s1")
    with pytest.raises(InvalidName):
        bt.receive("otherpool/a")  # no path to map it to


def test_names_map_to_paths_both_ways() -> None:
    layout = Layout(root="/srv/volumes", pool="volumes", fs_path="srv/volumes")
    assert layout.volume_path("volumes/a/b") == "/srv/volumes/a/b"
    assert layout.snapshot_path("volumes/a/b@s1") == \
        "/srv/volumes/.cerssd-snapshots/a/b@s1/b@s1"
    assert layout.snapshot_path("volumes@s1") == \
        "/srv/volumes/.cerssd-snapshots/@s1/volumes@s1"
    assert layout.name_of("srv/volumes/.cerssd-snapshots/a/b@s1/b@s1") == \
        ("snapshot", "volumes/a/b@s1")
    assert layout.name_of("srv/volumes/.cerssd-snapshots/a@s1/x@s1") == \
        ("snapshot", "volumes/a@s1")
    assert layout.name_of("srv/volumes/.cerssd-snapshots/@s1/volumes@s1") == \
        ("snapshot", "volumes@s1")
    assert layout.name_of("srv/volumes/a/b") == ("volume", "volumes/a/b")
    assert layout.name_of("srv/volumes") == ("volume", "volumes")
    assert layout.name_of("srv/volumes/.cerssd-receiving/a@/0/a@s1") is None
    assert layout.name_of("srv/other") is None
    assert layout.name_of("srv/volumes-x/a") is None


async def test_create_clone_dependents_and_destroy(bt: BtrfsBackend) -> None:
    vol = fresh(bt)
    made = await bt.create_volume(vol)
    assert made.type == "filesystem" and not made.readonly
    with pytest.raises(AlreadyExists):
        await bt.create_volume(vol)
    with pytest.raises(BackendError, match="no block volumes"):
        await bt.create_volume(fresh(bt), size=1 << 30)
    with pytest.raises(NotFound):
        await bt.create_volume(f"{fresh(bt)}/child")
    (path(bt, vol) / "f").write_text("one")
    snap = await bt.create_snapshot(vol, "s1")
    (path(bt, vol) / "f").write_text("two")
    clone = fresh(bt)
    await bt.clone_volume(snap.name, clone)
    assert (path(bt, clone) / "f").read_text() == "one"
    (path(bt, clone) / "f").write_text("clone's own")  # writable
    assert (Path(await bt.snapshot_view(snap.name)) / "f").read_text() == "one"
    assert await bt.volume_path(clone) == str(path(bt, clone))
    await bt.create_volume(f"{vol}/nested")
    assert await bt.dependents(vol) == sorted([clone, f"{vol}/nested"])
    assert await bt.dependents(clone) == []
    with pytest.raises(NotFound):
        await bt.snapshot_view(f"{vol}@nope")
    await bt.destroy_volume(vol)
    assert not await bt.exists(vol) and not await bt.exists(f"{vol}/nested")
    assert not Path(bt.layout.snapshot_path(snap.name)).parent.exists()
    assert (path(bt, clone) / "f").read_text() == "clone's own"  # a clone stands alone


async def test_rollback_swaps_the_volume_and_keeps_nested_ones_and_readonly(
        bt: BtrfsBackend) -> None:
    vol = fresh(bt)
    await bt.create_volume(vol)
    (path(bt, vol) / "f").write_text("s1")
    await bt.create_snapshot(vol, "s1")
    await bt.create_volume(f"{vol}/inner")
    (path(bt, vol) / "inner" / "g").write_text("inner data")
    (path(bt, vol) / "f").write_text("s2")
    await bt.create_snapshot(vol, "s2")
    (path(bt, vol) / "f").write_text("unsnapshotted")
    await bt.set_readonly(vol)
    await bt.rollback(f"{vol}@s1")
    assert (path(bt, vol) / "f").read_text() == "s1"
    assert [s.label for s in await bt.snapshots(vol)] == ["s1"]
    assert (path(bt, vol) / "inner" / "g").read_text() == "inner data"
    assert await bt.is_readonly(vol)
    assert await bt.exists(f"{vol}/inner")


async def test_resize_needs_quotas_and_capacity_matches_btrfs_usage(
        bt: BtrfsBackend) -> None:
    vol = fresh(bt)
    await bt.create_volume(vol)
    with pytest.raises(BackendError, match="btrfs quota enable"):
        await bt.resize_volume(vol, 64 << 20)
    [cap] = await bt.capacity()
    usage = btrfs("filesystem", "usage", "-b", bt.layout.root).stdout
    facts = {line.split(":")[0].strip(): int(line.split(":")[1].split()[0])
             for line in usage.splitlines() if ":" in line
             and line.split(":")[1].split() and line.split(":")[1].split()[0].isdigit()}
    assert cap.pool == bt.layout.pool and cap.total == facts["Device size"]
    assert 0 < cap.allocated <= cap.total and 0 < cap.free <= cap.total
    assert cap.provisioned == cap.allocated  # no quotas: what is allocated


async def test_resize_sets_a_qgroup_limit_where_quotas_are_on(btrfs_quota_root: Path) -> None:
    b = BtrfsBackend(LocalRunner("q"), root=str(btrfs_quota_root))
    await b.probe()
    await b.create_volume("pool/a")
    assert (await b.volume("pool/a")).size is None  # no limit yet
    await b.resize_volume("pool/a", 64 << 20)
    assert (await b.volume("pool/a")).size == 64 << 20
    shown = btrfs("qgroup", "show", "-re", "--raw", str(btrfs_quota_root)).stdout
    assert str(64 << 20) in shown
    [cap] = await b.capacity()
    assert cap.provisioned >= 64 << 20


async def test_an_incremental_is_refused_onto_a_volume_that_only_shares_the_filesystem(
        bt: BtrfsBackend) -> None:
    """btrfs receive would find the parent in another volume's copy: the driver refuses
    a stream whose base is not the target's own newest snapshot, and leaves nothing."""
    vol, copy, other = fresh(bt), fresh(bt), fresh(bt)
    await bt.create_volume(vol)
    s1 = await bt.create_snapshot(vol, "s1")
    await stream(bt, s1.name, copy)
    await bt.create_volume(other)
    await bt.create_snapshot(other, "x")
    s2 = await bt.create_snapshot(vol, "s2")
    with pytest.raises(TransferFailed, match="does not match the incremental source"):
        await stream(bt, s2.name, other, s1.name)
    assert [s.label for s in await bt.snapshots(other)] == ["x"]
    stage = Path(bt.layout.stage_dir(other))
    assert list(stage.iterdir()) == []
    await bt.create_snapshot(copy, "later")  # the copy moved on: s1 is not its newest
    with pytest.raises(TransferFailed, match="does not match"):
        await stream(bt, s2.name, copy, s1.name)
    assert [s.label for s in await bt.snapshots(copy)] == ["s1", "later"]


async def test_a_received_snapshot_reports_the_source_guid_and_sends_on(
        bt: BtrfsBackend) -> None:
    """A -> B -> C: the guid is the received UUID at every hop, so B's copy serves as
    the base of an incremental to C, as the planner assumes."""
    a, b, c = fresh(bt), fresh(bt), fresh(bt)
    await bt.create_volume(a)
    s1 = await bt.create_snapshot(a, "s1")
    await stream(bt, s1.name, b)
    await stream(bt, f"{b}@s1", c)
    assert (await bt.snapshot(f"{c}@s1")).guid == s1.guid == (await bt.snapshot(f"{b}@s1")).guid
    (path(bt, a) / "f").write_text("new")
    s2 = await bt.create_snapshot(a, "s2")
    await stream(bt, s2.name, b, s1.name)
    await stream(bt, f"{b}@s2", c, f"{b}@s1")
    assert [s.guid for s in await bt.snapshots(c)] == [s1.guid, s2.guid]
    assert (path(bt, c) / "f").read_text() == "new"
