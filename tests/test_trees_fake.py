"""Tree relationships on fake storage through the real daemon: retention per member and
the commands a cycle asks (fast tier). The same trees on real zfs-fuse: test_trees.py."""

from __future__ import annotations

from cerssd.storage.values import Snapshot

from .fakes.cluster import FakeCluster

MEMBERS = ("tank/t", "tank/t/a", "tank/t/b", "tank/t/b/c")


async def test_retention_thins_every_member_on_master_and_slave_keeping_the_bases() -> None:
    async with FakeCluster(["m", "s"]) as c:
        m, s = c.fakes["m"], c.fakes["s"]
        for name in MEMBERS:
            m.add_volume(name)
        status, body = await c.api("POST", "/v1/relationships", {
            "name": "t", "master": "m", "volume": "tank/t", "recursive": True,
            "interval": "1h", "retention": ["1s:all"],
            "slaves": [{"server": "s", "target_volume": "tank/copy"}]})
        assert status == 201, body

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
