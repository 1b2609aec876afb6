"""One contract for every ``StorageBackend``: the fake, zfs-fuse and btrfs here, OpenZFS
in a guest.

The flows are written against the protocol, so every implementation must behave the
same where the flows can tell: snapshots listed oldest first with guids, names refused
before anything runs, pins that keep a snapshot, streams that carry guids and are
taken in only onto their base, fencing, rollback, replace, trees (one listing, one
instant's snapshot of the members, parents made for a receive). Where a capability is
missing the method's answer is the documented no-op (``estimate`` None, no marks).

Each test gets a ``Store``: a backend, its pool, and ways to make an empty volume and to
set a user property (flows do neither, so the protocol has no verb for them). The ``btrfs``
parameter runs on a loop-mounted btrfs (tests/btrfs_fs.py), the ``openzfs`` one on the QEMU
guest (marker ``openzfs``, like tests/test_openzfs.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cerssd.config import ServerConfig
from cerssd.flow_control import Counters, FlowGate
from cerssd.replication.stream.transfer import TransferFailed, transfer
from cerssd.storage.btrfs import BtrfsBackend
from cerssd.storage.errors import AlreadyExists, BackendError, Busy, NotFound, while_busy
from cerssd.storage.interface import StorageBackend
from cerssd.storage.names import InvalidName
from cerssd.storage.values import Capabilities
from cerssd.storage.zfs import ZfsBackend
from cerssd.transport.runner import LocalRunner
from cerssd.transport.ssh import SshRunner

from .btrfs_fs import btrfs
from .conftest import zfs
from .fakes.storage import FakeBackend
from .openzfs_guest import OpenZfsGuest

PEER = "contract-peer"


@dataclass
class Store:
    backend: StorageBackend
    pool: str
    make_volume: Callable[[str], object]
    set_property: Callable[[str, str, str], object]
    #: Volumes can be left unmounted (ZFS); a btrfs subvolume is reachable wherever its
    #: filesystem is mounted.
    mounts: bool = True
    #: A tree's members are snapshotted in one transaction (ZFS); btrfs takes them in turn.
    atomic_trees: bool = True

    def fresh(self) -> str:
        """A new empty volume's name."""
        name = f"{self.pool}/v{uuid.uuid4().hex[:8]}"
        self.make_volume(name)
        return name

    def unused(self) -> str:
        return f"{self.pool}/n{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def fuse_pool(pool_factory: Callable[..., str]) -> str:
    return pool_factory()


@pytest.fixture(scope="module")
def guest_pool(openzfs_guest: OpenZfsGuest) -> Iterator[str]:
    result = openzfs_guest.ssh("zpool", "create", "-f", "-o", "ashift=12", "contract",
                               openzfs_guest.disks[0])
    assert result.returncode == 0, result.stderr
    yield "contract"
    openzfs_guest.ssh("zpool", "destroy", "-f", "contract")


@pytest.fixture(params=["fake", pytest.param("zfs-fuse", marks=pytest.mark.integration),
                        pytest.param("openzfs", marks=pytest.mark.openzfs),
                        pytest.param("btrfs", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "fake":
        fake = FakeBackend("contract", tmp_path)
        await fake.probe()
        yield Store(fake, "tank", fake.add_volume, fake.set_property)
    elif request.param == "btrfs":
        root = request.getfixturevalue("make_btrfs_root")()
        bt = BtrfsBackend(LocalRunner("contract"), root=str(root))
        await bt.probe()

        def subvolume(name: str) -> None:
            btrfs("subvolume", "create", bt.layout.volume_path(name))

        def xattr(name: str, prop: str, value: str) -> None:
            subprocess.run(["setfattr", "-n", f"user.{prop}", "-v", value,
                            bt.layout.volume_path(name)], check=True)

        yield Store(bt, bt.layout.pool, subvolume, xattr, mounts=False, atomic_trees=False)
    elif request.param == "zfs-fuse":
        pool = request.getfixturevalue("fuse_pool")
        backend = ZfsBackend(LocalRunner("contract"))
        await backend.probe()
        yield Store(backend, pool, lambda name: zfs("create", name),
                    lambda name, prop, value: zfs("set", f"{prop}={value}", name))
    else:
        vm: OpenZfsGuest = request.getfixturevalue("openzfs_guest")
        pool = request.getfixturevalue("guest_pool")
        cfg = ServerConfig(name="guest", kind="ssh", host="127.0.0.1", port=vm.port,
                           identity_file=vm.client_key, known_hosts=vm.known_hosts)
        runner = SshRunner(cfg, Path(tempfile.mkdtemp(prefix="cerssd-contract-")))
        backend = ZfsBackend(runner)
        await backend.probe()

        def create(name: str) -> None:
            result = vm.ssh("zfs", "create", name)
            assert result.returncode == 0, result.stderr

        def set_property(name: str, prop: str, value: str) -> None:
            result = vm.ssh("zfs", "set", f"{prop}={value}", name)
            assert result.returncode == 0, result.stderr

        try:
            yield Store(backend, pool, create, set_property)
        finally:
            await runner.close()


async def stream(src: StorageBackend, snapshot: str, dst: StorageBackend, target: str,
                 base: str | None = None, *, intermediates: bool = False,
                 unmounted: bool = False) -> int:
    return await transfer(src.send(snapshot, base, intermediates=intermediates),
                          dst.receive(target, unmounted=unmounted), counters=Counters(),
                          gate=FlowGate(), stall_timeout=120)


async def test_probe_publishes_capabilities(store: Store) -> None:
    caps = await store.backend.probe()
    assert isinstance(caps, Capabilities) and caps is store.backend.capabilities
    assert caps.incremental_send
    assert store.backend.info()["server"] == store.backend.server


async def test_pools_and_the_pool_of_a_volume(store: Store) -> None:
    assert store.pool in await store.backend.pools()
    assert store.backend.pool_of(f"{store.pool}/a/b") == store.pool
    assert store.backend.pool_of(store.pool) == store.pool


async def test_a_target_needs_its_pool_and_parent(store: Store) -> None:
    b = store.backend
    assert await b.target_problem(store.unused()) is None
    assert await b.target_problem(f"{store.fresh()}/child") is None
    missing = store.unused()
    assert missing in str(await b.target_problem(f"{missing}/child"))
    assert "nosuchpool" in str(await b.target_problem("nosuchpool/x"))


async def test_snapshot_lifecycle(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    assert await b.exists(vol) and await b.snapshots(vol) == []
    snap = await b.create_snapshot(vol, "s1")
    assert (snap.name, snap.volume, snap.label) == (f"{vol}@s1", vol, "s1") and snap.guid
    assert await b.snapshot(snap.name) == snap
    assert await b.has_snapshot(snap.name)
    with pytest.raises(AlreadyExists):
        await b.create_snapshot(vol, "s1")
    await b.destroy_snapshot(snap.name)
    assert not await b.has_snapshot(snap.name) and await b.snapshots(vol) == []
    with pytest.raises(NotFound):
        await b.destroy_snapshot(snap.name)
    with pytest.raises(NotFound):
        await b.snapshot(snap.name)
    with pytest.raises(NotFound):
        await b.snapshots(store.unused())
    assert not await b.exists(store.unused())


async def test_snapshots_are_listed_oldest_first_with_distinct_guids(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    for label in ("c", "a", "b"):  # made within one second: order by creation, not name
        await b.create_snapshot(vol, label)
    snaps = await b.snapshots(vol)
    assert [s.label for s in snaps] == ["c", "a", "b"]
    assert len({s.guid for s in snaps}) == 3


@pytest.mark.parametrize("bad", ["", "-rf", "a b", "tank/../x", "tank/a\n", "tank;ls"])
async def test_hostile_names_are_refused_before_anything_runs(store: Store, bad: str) -> None:
    b = store.backend
    with pytest.raises(InvalidName):
        await b.snapshots(bad)
    with pytest.raises(InvalidName):
        await b.create_snapshot(store.pool, bad or "-x")
    with pytest.raises(InvalidName):
        await b.destroy_snapshot(f"{store.pool}@{bad}")
    with pytest.raises(InvalidName):
        b.receive(bad)


async def test_a_pin_keeps_a_snapshot_until_unpinned(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    snap = await b.create_snapshot(vol, "base")
    await b.pin(snap.name, PEER)
    if not b.capabilities.holds:  # the documented no-op: nothing pinned, nothing kept
        assert await b.pinned_by(snap.name, [PEER]) == frozenset()
        await b.unpin(snap.name, PEER)
        await b.destroy_snapshot(snap.name)
        return
    assert await b.pinned_by(snap.name, [PEER, "someone"]) == {PEER}
    assert (await b.snapshot(snap.name)).userrefs == 1
    assert PEER in b.pin_tag(PEER)
    with pytest.raises(Busy):
        await b.destroy_snapshot(snap.name)
    await b.unpin(snap.name, PEER)
    await b.unpin(snap.name, PEER)  # not pinned any more: fine
    assert await b.pinned_by(snap.name, [PEER]) == frozenset()
    await b.destroy_snapshot(snap.name)
    await b.unpin(snap.name, PEER)  # gone: fine too


async def test_full_then_incremental_streams_keep_guids(store: Store) -> None:
    b, vol, target = store.backend, store.fresh(), store.unused()
    s1 = await b.create_snapshot(vol, "s1")
    assert await stream(b, s1.name, b, target) > 0
    assert [s.guid for s in await b.snapshots(target)] == [s1.guid]
    s2 = await b.create_snapshot(vol, "s2")
    s3 = await b.create_snapshot(vol, "s3")
    await stream(b, s3.name, b, target, s1.name, intermediates=True)
    assert [s.guid for s in await b.snapshots(target)] == [s1.guid, s2.guid, s3.guid]
    s4 = await b.create_snapshot(vol, "s4")
    await stream(b, s4.name, b, target, s3.name)
    assert [s.label for s in await b.snapshots(target)] == ["s1", "s2", "s3", "s4"]


async def test_a_stream_is_taken_in_only_onto_its_base(store: Store) -> None:
    b, vol, target = store.backend, store.fresh(), store.unused()
    s1 = await b.create_snapshot(vol, "s1")
    await stream(b, s1.name, b, target)
    stranger = store.fresh()  # never had s1
    await b.create_snapshot(stranger, "x")
    s2 = await b.create_snapshot(vol, "s2")
    with contextlib.suppress(TransferFailed):
        await stream(b, s2.name, b, stranger, s1.name)
    assert [s.label for s in await b.snapshots(stranger)] == ["x"]
    with contextlib.suppress(TransferFailed):  # a full stream onto an existing volume
        await stream(b, s2.name, b, target)
    assert [s.label for s in await b.snapshots(target)] == ["s1"]


async def test_readonly_is_in_force_and_lifted(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    assert not await b.is_readonly(vol)
    await b.set_readonly(vol, True)
    assert await b.is_readonly(vol)
    assert (await b.volume(vol)).readonly
    await b.set_readonly(vol, False)
    assert not await b.is_readonly(vol)


async def test_rollback_destroys_every_later_snapshot(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    for label in ("s1", "s2", "s3"):
        await b.create_snapshot(vol, label)
    await b.rollback(f"{vol}@s1")
    assert [s.label for s in await b.snapshots(vol)] == ["s1"]


async def test_replace_volume_gives_the_replacement_its_name(store: Store) -> None:
    b, vol, staging = store.backend, store.fresh(), store.fresh()
    await b.create_snapshot(vol, "old")
    new = await b.create_snapshot(staging, "new")
    await b.replace_volume(vol, staging)
    assert not await b.exists(staging)
    assert [(s.label, s.guid) for s in await b.snapshots(vol)] == [("new", new.guid)]


async def test_destroy_volume_but_never_a_pool(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    await b.create_snapshot(vol, "s1")
    # Busy is transient (zfs-fuse: a volume just made or used): callers retry, as flows do.
    async for attempt in while_busy():
        with attempt:
            await b.destroy_volume(vol, force_unmount=True)
    assert not await b.exists(vol)
    with pytest.raises(BackendError):
        await b.destroy_volume(store.pool)
    assert await b.exists(store.pool)


async def test_a_marked_base_serves_after_its_snapshot_is_gone(store: Store) -> None:
    b, vol, target = store.backend, store.fresh(), store.unused()
    s1 = await b.create_snapshot(vol, "s1")
    await b.mark_base(s1, PEER)
    if not b.capabilities.bookmarks:
        assert await b.bookmarks(vol) == []
        return
    await stream(b, s1.name, b, target)
    s2 = await b.create_snapshot(vol, "s2")
    await b.mark_base(s2, PEER)  # moves: the older mark goes
    assert [m.guid for m in await b.bookmarks(vol)] == [s2.guid]
    await b.mark_base(s1, "other-peer")
    await b.destroy_snapshot(s1.name)
    marks = {m.guid: m for m in await b.bookmarks(vol)}
    assert set(marks) == {s1.guid, s2.guid}
    await stream(b, s2.name, b, target, marks[s1.guid].name)
    assert [s.guid for s in await b.snapshots(target)] == [s1.guid, s2.guid]


async def test_estimate_is_exact_or_says_it_cannot(store: Store) -> None:
    b, vol = store.backend, store.fresh()
    snap = await b.create_snapshot(vol, "s1")
    size = await b.estimate(snap.name)
    if b.capabilities.size_estimate:
        assert size is not None and size > 0
    else:
        assert size is None


async def test_no_partial_receive_is_pending_after_a_complete_one(store: Store) -> None:
    b, vol, target = store.backend, store.fresh(), store.unused()
    snap = await b.create_snapshot(vol, "s1")
    await stream(b, snap.name, b, target)
    assert await b.resume_token(target) is None
    await b.abort_receive(target)  # nothing to abort: no error
    assert [s.guid for s in await b.snapshots(target)] == [snap.guid]


async def test_volumes_are_listed_under_roots_in_pages(store: Store) -> None:
    b, parent = store.backend, store.fresh()
    for child in ("a", "b", "c"):
        store.make_volume(f"{parent}/{child}")
    everything = await b.volumes([parent])
    assert [v.name for v in everything.items] == [parent, *(f"{parent}/{c}" for c in "abc")]
    assert everything.total == 4
    page = await b.volumes([parent], limit=2, offset=1)
    assert [v.name for v in page.items] == [f"{parent}/a", f"{parent}/b"]
    assert page.total == 4
    assert (await b.volumes([store.unused()])).total == 0


# Trees

PROPERTY = "cerssd-test:replicate"


async def test_a_tree_lists_parents_first_each_with_its_snapshots(store: Store) -> None:
    b, root = store.backend, store.fresh()
    for child in ("a.c", "a", "a/b", "a-b", "a/b/c"):  # made out of order
        store.make_volume(f"{root}/{child}")
    store.make_volume(f"{root}-sibling")  # shares the root's name as a prefix: not in it
    for volume, label in (("a/b", "y"), ("a/b", "x"), ("", "s1"), ("a-b", "s1")):
        await b.create_snapshot(f"{root}/{volume}".rstrip("/"), label)
    marked = await b.create_snapshot(f"{root}/a", "m")
    await b.mark_base(marked, PEER)  # a bookmark (where there are any) is not listed
    listing = await b.tree(root)
    assert listing.root == root
    assert [d.name for d in listing.datasets] == [
        root, *(f"{root}/{c}" for c in ("a", "a/b", "a/b/c", "a-b", "a.c"))]
    for d in listing.datasets:
        assert d.type == "filesystem" and d.selector is None
        assert d.guid == (await b.volume(d.name)).guid
        assert list(d.snapshots) == await b.snapshots(d.name)
    got = listing.get(f"{root}/a/b")
    assert got is not None and [s.label for s in got.snapshots] == ["y", "x"]
    assert listing.get(f"{root}-sibling") is None
    leaf = await b.tree(f"{root}/a/b/c")
    assert [d.name for d in leaf.datasets] == [f"{root}/a/b/c"]


async def test_a_tree_selector_follows_zfs_inheritance(store: Store) -> None:
    b, root = store.backend, store.fresh()
    for child in ("on", "on/child", "on/off", "on/off/grandchild", "named", "unset"):
        store.make_volume(f"{root}/{child}")
    store.set_property(f"{root}/on", PROPERTY, "on")
    store.set_property(f"{root}/on/off", PROPERTY, "off")
    store.set_property(f"{root}/named", PROPERTY, "rel-1")
    listing = await b.tree(root, selector=PROPERTY)
    assert {d.name.removeprefix(root): d.selector for d in listing.datasets} == {
        "": None, "/on": "on", "/on/child": "on", "/on/off": "off",
        "/on/off/grandchild": "off", "/named": "rel-1", "/unset": None}
    store.set_property(root, PROPERTY, "on")  # from above the root, inherited all the same
    below = await b.tree(f"{root}/unset", selector=PROPERTY)
    assert [d.selector for d in below.datasets] == ["on"]


@pytest.mark.parametrize("selector", ["replicate", "Cerssd:x", ":x", "a b:c", "a+b:c",
                                      "x:y,mounted", "x:" + "y" * 300])
async def test_a_tree_refuses_bad_names_before_anything_runs(store: Store,
                                                              selector: str) -> None:
    b = store.backend
    with pytest.raises(InvalidName):
        await b.tree(store.pool, selector=selector)
    with pytest.raises(InvalidName):
        await b.tree("tank/a b")


async def test_a_tree_needs_its_root(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.backend.tree(store.unused())


async def test_a_tree_snapshot_is_one_instant_of_the_members_only(store: Store) -> None:
    b, root = store.backend, store.fresh()
    for child in ("a", "a/x", "b", "c", "c/y"):
        store.make_volume(f"{root}/{child}")
    members = [f"{root}/{m}" for m in ("a", "a/x", "c")]  # not the root, b or c/y
    await b.snapshot_tree(root, "cycle-1", members)
    taken = {m: await b.snapshot(f"{m}@cycle-1") for m in members}
    if store.atomic_trees:
        assert len({s.createtxg for s in taken.values()}) == 1  # one transaction
    assert len({s.guid for s in taken.values()}) == len(members)
    for other in (root, f"{root}/b", f"{root}/c/y"):
        assert not await b.has_snapshot(f"{other}@cycle-1")
    listing = await b.tree(root)
    assert {d.name for d in listing.datasets if any(s.label == "cycle-1" for s in d.snapshots)
            } == set(members)

    await b.snapshot_tree(root, "cycle-1", members)  # again (a restart): nothing changes
    assert {m: await b.snapshot(f"{m}@cycle-1") for m in members} == taken
    assert not await b.has_snapshot(f"{root}/b@cycle-1")


async def test_a_tree_snapshot_completes_a_partial_one(store: Store) -> None:
    b, root = store.backend, store.fresh()
    for child in ("a", "b", "c"):
        store.make_volume(f"{root}/{child}")
    early = await b.create_snapshot(f"{root}/a", "cycle-2")
    gone = f"{root}/gone"  # destroyed since the listing: skipped
    await b.snapshot_tree(root, "cycle-2", [f"{root}/a", f"{root}/b", root, gone])
    assert await b.snapshot(f"{root}/a@cycle-2") == early
    assert await b.has_snapshot(f"{root}/b@cycle-2") and await b.has_snapshot(f"{root}@cycle-2")
    assert not await b.has_snapshot(f"{root}/c@cycle-2")
    assert not await b.exists(gone)


async def test_a_tree_snapshot_refuses_members_outside_the_root(store: Store) -> None:
    b, root, other = store.backend, store.fresh(), store.fresh()
    with pytest.raises(InvalidName):
        await b.snapshot_tree(root, "s", [other])
    with pytest.raises(InvalidName):
        await b.snapshot_tree(root, "s", [f"{root}-x"])
    with pytest.raises(InvalidName):
        await b.snapshot_tree(root, "bad label", [root])
    assert not await b.has_snapshot(f"{other}@s")
    await b.snapshot_tree(root, "s", [])  # no members: nothing to do


async def test_parents_are_created_unmounted_for_a_receive(store: Store) -> None:
    b, source = store.backend, store.fresh()
    snap = await b.create_snapshot(source, "s1")
    top = store.unused()
    target = f"{top}/p/q/leaf"
    assert await b.target_problem(target) is not None
    await b.create_parents(target)
    await b.create_parents(target)  # again: they exist, fine
    for parent in (top, f"{top}/p", f"{top}/p/q"):
        made = await b.volume(parent)
        assert made.type == "filesystem" and made.mounted != store.mounts
    assert not await b.exists(target) and await b.target_problem(target) is None
    await stream(b, snap.name, b, target, unmounted=True)
    assert [s.guid for s in await b.snapshots(target)] == [snap.guid]
    assert (await b.volume(target)).mounted != store.mounts
    existing = store.fresh()  # an existing, mounted ancestor is left as it is
    await b.create_parents(f"{existing}/new/leaf")
    assert (await b.volume(existing)).mounted
    assert (await b.volume(f"{existing}/new")).mounted != store.mounts
    await b.create_parents(f"{store.pool}/x")  # no ancestor below the pool: nothing to make
    assert not await b.exists(f"{store.pool}/x")
    with pytest.raises(NotFound):
        await b.create_parents("nosuchpool/a/b")


async def test_a_receive_leaves_a_filesystem_unmounted_when_asked(store: Store) -> None:
    b, source = store.backend, store.fresh()
    snap = await b.create_snapshot(source, "s1")
    mounted, unmounted = store.unused(), store.unused()
    await stream(b, snap.name, b, mounted)
    await stream(b, snap.name, b, unmounted, unmounted=True)
    assert (await b.volume(mounted)).mounted
    assert (await b.volume(unmounted)).mounted != store.mounts
