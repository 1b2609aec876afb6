"""Tree relationships on fake storage through the real daemon: retention per member and
the commands a cycle asks (fast tier). The same trees on real zfs-fuse: test_trees.py."""

from __future__ import annotations

from cerssd.storage.values import Snapshot

from .fakes.cluster import FakeCluster

MEMBERS = ("tank/t", "tank/t/a", "tank/t/b", "tank/t/b/c")


async def make_tree(c: FakeCluster, **keys: object) -> None:
    """The tree MEMBERS on m and a relationship "t" keeping it on s under tank/copy."""
    for name in MEMBERS:
        c.fakes["m"].add_volume(name)
    status, body = await c.api("POST", "/v1/relationships", {
        "name": "t", "master": "m", "volume": "tank/t", "recursive": True,
        "interval": "1h", "slaves": [{"server": "s", "target_volume": "tank/copy"}], **keys})
    assert status == 201, body


async def test_retention_thins_every_member_on_master_and_slave_keeping_the_bases() -> None:
    async with FakeCluster(["m", "s"]) as c:
        m, s = c.fakes["m"], c.fakes["s"]
        await make_tree(c, retention=["1s:all"])

        async def synced(cycles: int) -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            tree = r.get("tree") or {}
            return r["cycles"] >= cycles and tree.get("members") == 4 and \
                tree["slaves"]["s"]["in_sync"] == 4

        await c.until_true(lambda: synced(1), what="the first cycle")
        first = {name: [x.label for x in await m.snapshots(name)] for name in MEMBERS}
        assert all(len(labels) == 1 for labels in first.values()), first
        label = first["tank/t"][0]

        async def thinned() -> bool:
            """Cycles go on until the first cycle's snapshot, older than the grid's one
            second and no slave's base, is gone from every member on both sides."""
            _, r = await c.api("GET", "/v1/relationships/t")
            if not await synced(r["cycles"]):
                return False  # a cycle is under way
            master_left = [await _labels(m.snapshots(n)) for n in MEMBERS]
            slave_left = [await _labels(s.snapshots(n.replace("tank/t", "tank/copy", 1)))
                          for n in MEMBERS]
            if all(label not in labels and labels for labels in master_left + slave_left):
                return True
            await c.api("POST", "/v1/relationships/t/sync-now", {})
            return False
        await c.until_true(thinned, timeout=60, what="retention of the first snapshots")
        # the newest of each member is on both sides, and is the slave's base
        for name in MEMBERS:
            newest = (await m.snapshots(name))[-1]
            copy = await s.snapshots(name.replace("tank/t", "tank/copy", 1))
            assert newest.guid in {x.guid for x in copy}


async def _labels(listing: object) -> list[str]:
    snaps: list[Snapshot] = await listing  # type: ignore[misc]
    return [x.label for x in snaps]


async def test_pause_suspends_every_member_transfer_and_remove_cancels_them_all() -> None:
    """A tree has several transfers per slave at once: a pause suspends each of them and
    the syncs, a removal cancels each (a tree's transfers are not one per slave). The
    first sync gives each member its own transfer activity."""
    async with FakeCluster(["m", "s"]) as c:
        m = c.fakes["m"]
        m.stall_sends = True  # every member's stream stays open until killed
        await make_tree(c, max_parallel=3)

        async def sending() -> bool:  # the slave has only the root: its children wait
            return len(await live(c, "replicate", "running")) >= 1
        await c.until_true(sending, what="member transfers running")
        status, body = await c.api("POST", "/v1/relationships/t/pause", {})
        assert status == 200, body

        async def all_suspended() -> bool:
            transfers = await live(c, "replicate")
            syncs = await live(c, "tree-sync")
            return bool(transfers) and all(a["state"] == "suspended"
                                           for a in transfers + syncs) and bool(syncs)
        await c.until_true(all_suspended, what="each member transfer and the sync suspended")
        status, body = await c.api("DELETE", "/v1/relationships/t")
        assert status == 204, body
        assert await live(c, "replicate") == [] and await live(c, "tree-sync") == []


async def live(c: FakeCluster, kind: str, state: str | None = None) -> list[dict[str, object]]:
    _, page = await c.api("GET", f"/v1/activities?kind={kind}&limit=50")
    return [a for a in page["items"] if a["state"] not in ("succeeded", "failed", "cancelled")
            and (state is None or a["state"] == state)]


async def test_steady_syncs_stream_members_without_listings_and_pause_and_remove_stop_them(
        ) -> None:
    """After the first sync, a sync streams each member on from its known base inside the
    sync itself, ``max_parallel`` at once, with no listing of either tree and no activity
    per member; pause suspends those streams, removal cancels them."""
    async with FakeCluster(["m", "s"]) as c:
        m, s = c.fakes["m"], c.fakes["s"]
        await make_tree(c, max_parallel=3)

        async def synced() -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            return bool((r.get("tree") or {}).get("slaves", {}).get("s", {}).get("in_sync") == 4)
        await c.until_true(synced, what="the first cycle")
        transfers_before = len((await c.api("GET", "/v1/activities?kind=replicate&limit=500"))
                               [1]["items"])
        m.calls.clear()
        s.calls.clear()
        m.stall_sends = True
        status, body = await c.api("POST", "/v1/relationships/t/sync-now", {})
        assert status == 202, body

        async def three_sending() -> bool:
            _, page = await c.api("GET", "/v1/relationships/t/volumes?state=sending")
            return bool(page["total"] == 3)
        await c.until_true(three_sending, what="three members streaming at once")
        assert "tree" not in m.calls and "tree" not in s.calls  # no snapshot listing
        assert len((await c.api("GET", "/v1/activities?kind=replicate&limit=500"))
                   [1]["items"]) == transfers_before
        status, body = await c.api("POST", "/v1/relationships/t/pause", {})
        assert status == 200, body

        async def suspended() -> bool:
            return [a["state"] for a in await live(c, "tree-sync")] == ["suspended"]
        await c.until_true(suspended, what="the sync suspended")
        status, body = await c.api("DELETE", "/v1/relationships/t")
        assert status == 204, body
        assert await live(c, "tree-sync") == []


async def test_a_cycle_that_finds_a_slave_still_syncing_has_it_synced_when_that_ends() -> None:
    """The scale bench found a cycle's snapshot waiting a whole interval when the cycle
    came while the slave's previous sync was finishing: it is synced right after."""
    import asyncio

    async with FakeCluster(["m", "s"]) as c:
        m, s = c.fakes["m"], c.fakes["s"]
        await make_tree(c)

        async def synced(cycles: int) -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            return r["cycles"] >= cycles and r["tree"]["slaves"]["s"]["in_sync"] == 4
        await c.until_true(lambda: synced(1), what="the first cycle")
        # the next sync holds at its verification on the slave until the test lets it on
        entered, go_on = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            entered.set()
            await go_on.wait()
        s.hooks["snapshot_facts"] = hold
        await c.api("POST", "/v1/relationships/t/sync-now", {})
        await asyncio.wait_for(entered.wait(), 30)
        del s.hooks["snapshot_facts"]
        await c.api("POST", "/v1/relationships/t/sync-now", {})  # a cycle during the sync
        await c.until_true(lambda: _cycles_at_least(c, 3),
                           what="the third cycle to run while the second sync waits")
        go_on.set()
        await c.until_true(lambda: synced(3), what="the third cycle's snapshot on the slave")
        newest = (await m.snapshots("tank/t/a"))[-1]
        assert newest.guid in {x.guid for x in await s.snapshots("tank/copy/a")}


async def _cycles_at_least(c: FakeCluster, n: int) -> bool:
    _, r = await c.api("GET", "/v1/relationships/t")
    return bool(r["cycles"] >= n)


async def test_steady_retention_leaves_the_copies_of_a_member_gone_from_the_master() -> None:
    """Retention by label destroys each doomed label from the members' copies, never
    from the copy of a member destroyed on the master: the copy keeps its snapshots."""
    async with FakeCluster(["m", "s"]) as c:
        m, s = c.fakes["m"], c.fakes["s"]
        await make_tree(c, retention=["1s:all"])

        async def synced(cycles: int, members: int) -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            tree = r.get("tree") or {}
            return r["cycles"] >= cycles and tree.get("members") == members and \
                tree["slaves"]["s"]["in_sync"] == members
        await c.until_true(lambda: synced(1, 4), what="the first cycle")
        _, r = await c.api("POST", "/v1/relationships/t/sync-now", {})
        await c.until_true(lambda: synced(2, 4), what="a steady cycle")
        kept = await _labels(s.snapshots("tank/copy/a"))
        del m.vols["tank/t/a"]  # destroyed on the master

        async def thinned() -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            others = [await _labels(s.snapshots(n)) for n in ("tank/copy", "tank/copy/b")]
            if r["tree"]["members"] == 3 and await synced(r["cycles"], 3) and all(
                    kept[0] not in labels for labels in others):
                return True
            if r["tree"]["slaves"]["s"]["in_sync"] == r["tree"]["members"]:
                await c.api("POST", "/v1/relationships/t/sync-now", {})
            return False
        await c.until_true(thinned, timeout=60, what="retention on the other copies")
        assert await _labels(s.snapshots("tank/copy/a")) == kept
        _, r = await c.api("GET", "/v1/relationships/t")
        assert r["tree"]["gone"] == ["a"]


async def test_a_new_members_first_transfer_starts_alongside_the_steady_streams() -> None:
    """A member new since the last cycle (its first full copy: often the cycle's biggest
    stream) gets its transfer at once, within ``max_parallel`` with the other members'
    steady streams, not after all of them (bench/tree_big.py measured a new 1 GiB member
    waiting seconds for 20 unchanged members' streams)."""
    async with FakeCluster(["m", "s"]) as c:
        m = c.fakes["m"]
        await make_tree(c, max_parallel=3)

        async def synced() -> bool:
            _, r = await c.api("GET", "/v1/relationships/t")
            return bool((r.get("tree") or {}).get("slaves", {}).get("s", {}).get("in_sync") == 4)
        await c.until_true(synced, what="the first cycle")
        m.add_volume("tank/t/d")
        m.stall_sends = True  # every stream stays open: the slots stay taken
        status, body = await c.api("POST", "/v1/relationships/t/sync-now", {})
        assert status == 202, body

        sending: list[str] = []

        async def three_sending() -> bool:
            _, page = await c.api("GET", "/v1/relationships/t/volumes?state=sending")
            sending[:] = sorted(v["relative"] for v in page["items"])
            return len(sending) == 3
        await c.until_true(three_sending, what="three members streaming at once")
        # the new member holds a slot, and no more than max_parallel streams run
        assert "d" in sending, sending
        transfers = await live(c, "replicate", "running")
        assert len(transfers) == 1, transfers
        status, body = await c.api("DELETE", "/v1/relationships/t")
        assert status == 204, body
