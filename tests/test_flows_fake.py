"""The flows on fake storage, through the real daemon and its API: the fast tier.

Replication (full, incremental, a conflict, a cancel mid-stream), a relationship's
cycles to two slaves, and a planned failover's steps, each in well under a second of
work: only the storage is fake (tests/fakes), the engine, journal, flows, stream
pipeline and API are the daemon's own. The same flows on real zfs-fuse, sshd and
network namespaces are in test_replicate_local.py, test_relationships.py and
test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from cerssd.replication.relationships.leadership import Alone
from cerssd.replication.relationships.runtime import RelationshipError

from .fakes.cluster import FakeCluster


@pytest.fixture
async def pair() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(["a", "b"]) as cluster:
        cluster.fakes["a"].add_volume("tank/data")
        yield cluster


async def replicate(c: FakeCluster, snapshot: str, target: str = "tank/data",
                    **extra: object) -> tuple[int, dict[str, object]]:
    return await c.api("POST", "/v1/replications", {
        "snapshot": snapshot, "source": "a", "destination": "b", "target_volume": target,
        **extra})


async def test_full_then_incremental(pair: FakeCluster) -> None:
    a, b = pair.fakes["a"], pair.fakes["b"]
    s1 = await a.create_snapshot("tank/data", "s1")
    status, body = await replicate(pair, "tank/data@s1")
    assert status == 202 and body["plan"] == "full", body
    done = await pair.done(str(body["id"]))
    assert done["state"] == "succeeded", done["status"]
    assert [s.guid for s in await b.snapshots("tank/data")] == [s1.guid]
    assert await b.is_readonly("tank/data")  # a replica is a standby
    assert await a.pinned_by(s1.name, ["b"]) == {"b"}  # the base is pinned on both sides
    assert await b.pinned_by("tank/data@s1", ["b"]) == {"b"}
    assert [m.guid for m in await a.bookmarks("tank/data")] == [s1.guid]

    s2 = await a.create_snapshot("tank/data", "s2")
    status, body = await replicate(pair, "tank/data@s2")
    assert status == 202 and body["plan"] == "incremental", body
    done = await pair.done(str(body["id"]))
    assert done["state"] == "succeeded", done["status"]
    assert [s.guid for s in await b.snapshots("tank/data")] == [s1.guid, s2.guid]
    # The pin and the mark moved to the new base; the old one is free to go.
    assert await a.pinned_by(s1.name, ["b"]) == frozenset()
    assert await a.pinned_by(s2.name, ["b"]) == {"b"}
    assert [m.guid for m in await a.bookmarks("tank/data")] == [s2.guid]
    assert b.refused == []


async def test_a_diverged_target_is_a_conflict_and_nothing_is_destroyed(
        pair: FakeCluster) -> None:
    a, b = pair.fakes["a"], pair.fakes["b"]
    await a.create_snapshot("tank/data", "s1")
    b.add_volume("tank/data")
    theirs = await b.create_snapshot("tank/data", "theirs")
    status, body = await replicate(pair, "tank/data@s1")
    assert status == 409, body
    assert [s.guid for s in await b.snapshots("tank/data")] == [theirs.guid]


async def test_a_missing_target_pool_is_refused(pair: FakeCluster) -> None:
    await pair.fakes["a"].create_snapshot("tank/data", "s1")
    status, body = await replicate(pair, "tank/data@s1", target="nopool/data")
    assert status == 409, body
    assert "nopool" in str(body["detail"])


async def test_cancel_mid_stream_leaves_the_target_as_it_was(pair: FakeCluster) -> None:
    a, b = pair.fakes["a"], pair.fakes["b"]
    await a.create_snapshot("tank/data", "s1")
    a.stall_sends = True  # the stream's data goes, its end never comes
    status, body = await replicate(pair, "tank/data@s1")
    assert status == 202, body
    activity = str(body["id"])
    await pair.until(lambda: "receive" in b.calls, what="the receive to start")
    status, _ = await pair.api("POST", f"/v1/activities/{activity}/cancel")
    assert status in (200, 202)
    done = await pair.done(activity)
    assert done["state"] == "cancelled", done
    assert not await b.exists("tank/data")
    assert b.refused == []


async def test_a_relationship_cycles_to_two_slaves() -> None:
    relationship = {"hot": {
        "master": "m", "volume": "tank/data", "interval": "1h",
        "slaves": [{"server": "s1", "target_volume": "tank/copy"},
                   {"server": "s2", "target_volume": "tank/copy"}]}}
    async with FakeCluster(["m", "s1", "s2"]) as c:
        c.fakes["m"].add_volume("tank/data")
        status, body = await c.api("POST", "/v1/relationships", {"name": "hot",
                                                                 **relationship["hot"]})
        assert status == 201, body
        m, s1, s2 = c.fakes["m"], c.fakes["s1"], c.fakes["s2"]

        async def in_sync(cycles: int) -> list[str]:
            """Both slaves hold every snapshot of the master, and (the transfers' last
            step) each pins the newest as its base on the master."""
            async def both() -> bool:
                snaps = await m.snapshots("tank/data")
                ours = [s.guid for s in snaps]
                theirs = [[s.guid for s in await f.snapshots("tank/copy")]
                          if await f.exists("tank/copy") else [] for f in (s1, s2)]
                return (len(ours) == cycles and theirs == [ours, ours]
                        and await m.pinned_by(snaps[-1].name, ["s1", "s2"]) == {"s1", "s2"})
            await c.until_true(both, what=f"both slaves at cycle {cycles}")
            return [s.guid for s in await m.snapshots("tank/data")]

        first = await in_sync(1)
        status, body = await c.api("POST", "/v1/relationships/hot/sync-now", {})
        assert status == 202, body
        second = await in_sync(2)
        assert second[0] == first[0]
        status, shown = await c.api("GET", "/v1/relationships/hot")
        assert status == 200 and shown["cycles"] >= 2, shown
        # The first cycle's snapshot is nobody's base any more.
        assert await m.pinned_by((await m.snapshots("tank/data"))[0].name,
                                 ["s1", "s2"]) == frozenset()
        assert s1.refused == s2.refused == []


async def test_planned_failover_fences_syncs_promotes_and_reverses() -> None:
    relationship = {"hot": {
        "master": "m", "volume": "tank/data", "interval": "1h",
        "slaves": [{"server": "s1", "target_volume": "tank/copy"}]}}
    async with FakeCluster(["m", "s1"]) as c:
        m, s1 = c.fakes["m"], c.fakes["s1"]
        m.add_volume("tank/data")
        status, body = await c.api("POST", "/v1/relationships", {"name": "hot",
                                                                 **relationship["hot"]})
        assert status == 201, body
        await c.until(lambda: s1.vols.get("tank/copy") and s1.vols["tank/copy"].snapshots,
                      what="the first cycle to reach the slave")

        status, body = await c.api("POST", "/v1/relationships/hot/failover", {"to": "s1"})
        assert status == 202, body
        done = await c.done(str(body["id"]))
        assert done["state"] == "succeeded", done["status"]
        result = done["params"]["result"]
        assert result["master"] == "s1" and result["slaves"] == ["m"], result

        # fence: the old master is read-only; sync: the final snapshot reached the new
        # master (same guid); promote: the new master is writable; reverse: the roles.
        assert await m.is_readonly("tank/data")
        final = (await m.snapshots("tank/data"))[-1]
        assert "failover" in final.label
        assert (await s1.snapshots("tank/copy"))[-1].guid == final.guid
        assert not await s1.is_readonly("tank/copy")
        status, shown = await c.api("GET", "/v1/relationships/hot")
        assert shown["master"] == "s1" and [s["server"] for s in shown["slaves"]] == ["m"]


class _CutOffLeader(Alone):
    """A cluster leader cut off from etcd: it believes it leads until its commit gives up
    (when ``give_up`` is set), then it has lost the lead."""

    def __init__(self) -> None:
        self.committing = asyncio.Event()
        self.give_up = asyncio.Event()

    async def commit(self, name: str, remembered: Mapping[str, Any]) -> None:
        self.committing.set()
        await self.give_up.wait()
        raise RelationshipError(f"this daemon lost the lead of relationship {name}; "
                                "nothing decided")


async def test_a_failover_takes_no_step_before_its_decision_is_committed() -> None:
    async with FakeCluster(["m", "s1"]) as c:
        m, s1 = c.fakes["m"], c.fakes["s1"]
        m.add_volume("tank/data")
        status, body = await c.api("POST", "/v1/relationships", {
            "name": "hot", "master": "m", "volume": "tank/data", "interval": "1h",
            "slaves": [{"server": "s1", "target_volume": "tank/copy"}]})
        assert status == 201, body
        await c.until(lambda: s1.vols.get("tank/copy") and s1.vols["tank/copy"].snapshots,
                      what="the first cycle to reach the slave")
        registry = c.daemon.relationships.registry
        leader = registry.leadership = _CutOffLeader()
        asking = asyncio.create_task(
            c.api("POST", "/v1/relationships/hot/failover", {"to": "s1"}))
        await asyncio.wait_for(leader.committing.wait(), 30)
        [failover] = c.daemon.engine.live("failover")
        for _ in range(20):  # the activity's task gets every chance to take a step
            await asyncio.sleep(0)
        assert failover.record.params.get("current_step") is None
        assert registry.activity_of(registry.get("hot")) is not None  # not halted
        leader.give_up.set()
        status, body = await asking
        assert status == 409 and "nothing decided" in body["detail"], body
        done = await c.done(failover.id)
        assert done["state"] == "cancelled" and "current_step" not in done["params"], done
        assert not await m.is_readonly("tank/data")  # never fenced
        status, shown = await c.api("GET", "/v1/relationships/hot")
        assert shown["master"] == "m" and shown["state"] == "running", shown
        assert shown["failover"]["activity"] is None and shown["failover"]["error"] is None
