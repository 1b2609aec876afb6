"""Volume operations (create, clone, revert, extend, delete) and capacity on fake storage,
through the real daemon and its API: the activity logic, the rules and the bad input.

The same operations on real zfs-fuse are in test_volume_ops.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cerssd.activity import State
from cerssd.volumes import relationship_uses

from .fakes.cluster import FakeCluster


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    async with FakeCluster(["a", "b"]) as c:
        c.fakes["a"].add_volume("tank/data")
        yield c


async def accepted(c: FakeCluster, method: str, path: str,
                   body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A call that starts an activity, followed to its end (which must be success)."""
    status, doc = await c.api(method, path, body)
    assert status == 202, doc
    assert doc["state"] == "pending" and doc["progress"]["unit"] == "volumes", doc
    done = await c.done(doc["id"])
    assert done["state"] == "succeeded", done["status"]
    assert done["progress"]["done"] == done["progress"]["total"] >= 1, done["progress"]
    return done


async def test_create_a_filesystem_with_a_quota_then_extend_it(cluster: FakeCluster) -> None:
    a = cluster.fakes["a"]
    done = await accepted(cluster, "POST", "/v1/volumes",
                          {"name": "tank/new", "server": "a", "size": 1 << 20})
    assert done["kind"] == "volume-create" and done["volume"] == "tank/new"
    assert a.vols["tank/new"].type == "filesystem" and a.vols["tank/new"].size == 1 << 20
    assert done["params"]["guid"] == a.vols["tank/new"].guid  # journaled what it made
    # Listed with its size; found again in the journal by kind.
    status, page = await cluster.api("GET", "/v1/volumes?server=a")
    assert {v["name"]: v["size"] for v in page["items"]}["tank/new"] == 1 << 20
    status, listed = await cluster.api("GET", "/v1/activities?kind=volume-create")
    assert [x["id"] for x in listed["items"]] == [done["id"]]

    await accepted(cluster, "POST", "/v1/volumes/tank/new/extend",
                   {"server": "a", "size": 2 << 20})
    assert a.vols["tank/new"].size == 2 << 20
    status, body = await cluster.api("POST", "/v1/volumes/tank/new/extend",
                                     {"server": "a", "size": 1 << 20})
    assert status == 409 and body["code"] == "would-shrink", body
    assert str(2 << 20) in body["detail"] and body["current_size"] == 2 << 20
    assert a.vols["tank/new"].size == 2 << 20
    # The same size again is nothing to do, and fine (a retried request).
    await accepted(cluster, "POST", "/v1/volumes/tank/new/extend",
                   {"server": "a", "size": 2 << 20})


async def test_extend_a_filesystem_without_a_quota_is_refused(cluster: FakeCluster) -> None:
    status, body = await cluster.api("POST", "/v1/volumes/tank/data/extend",
                                     {"server": "a", "size": 1 << 30})
    assert status == 409 and body["code"] == "no-size", body
    assert cluster.fakes["a"].vols["tank/data"].size is None


async def test_block_volumes_only_where_the_driver_has_them(cluster: FakeCluster) -> None:
    a = cluster.fakes["a"]
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "tank/disk", "server": "a", "type": "volume", "size": 8 << 20})
    assert status == 409 and body["code"] == "no-block-volumes", body
    assert "zvols" in body["detail"] and "tank/disk" not in a.vols
    a.capabilities = replace(a.capabilities, zvols=True)
    await accepted(cluster, "POST", "/v1/volumes", {
        "name": "tank/disk", "server": "a", "type": "volume", "size": 8 << 20})
    assert a.vols["tank/disk"].type == "volume" and a.vols["tank/disk"].size == 8 << 20
    await accepted(cluster, "POST", "/v1/volumes/tank/disk/extend",
                   {"server": "a", "size": 16 << 20})
    assert a.vols["tank/disk"].size == 16 << 20
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "tank/disk2", "server": "a", "type": "volume"})
    assert status == 422 and body["field"] == "size", body


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"name": "tank/x", "server": "a", "size": 0}, 422, "size"),
    ({"name": "tank/x", "server": "a", "size": -5}, 422, "size"),
    ({"name": "tank/x", "server": "a", "size": "10G"}, 422, "size"),
    ({"name": "tank/x", "server": "a", "size": 1.5}, 422, "size"),
    ({"name": "tank/x", "server": "a", "size": True}, 422, "size"),
    ({"name": "tank/x\n", "server": "a"}, 400, "name"),
    ({"name": "tank/-x", "server": "a"}, 400, "name"),
    ({"name": "tank/a b", "server": "a"}, 400, "name"),
    ({"name": "tank", "server": "a"}, 400, "name"),
    ({"name": "tank/x", "server": "a", "type": "disk"}, 422, "type"),
    ({"name": "tank/x", "server": "a", "from_snapshot": "tank/data"}, 400, "from_snapshot"),
    ({"name": "tank/x", "server": "a", "colour": "red"}, 422, "colour"),
    ({"name": "tank/x", "server": "no such"}, 400, "server"),
])
async def test_create_bad_input_is_a_problem_and_nothing_runs(
        cluster: FakeCluster, body: dict[str, Any], status: int, field: str) -> None:
    got, problem = await cluster.api("POST", "/v1/volumes", body)
    assert (got, problem.get("field")) == (status, field), problem
    assert "create_volume" not in cluster.fakes["a"].calls
    assert "tank/x" not in cluster.fakes["a"].vols


async def test_create_conflicts_and_missing_things(cluster: FakeCluster) -> None:
    status, body = await cluster.api("POST", "/v1/volumes", {"name": "tank/data",
                                                             "server": "a"})
    assert status == 409 and body["code"] == "volume-exists", body
    status, body = await cluster.api("POST", "/v1/volumes", {"name": "tank/no/x",
                                                             "server": "a"})
    assert status == 404 and "tank/no" in body["detail"], body
    status, body = await cluster.api("POST", "/v1/volumes", {"name": "tank/x",
                                                             "server": "zz"})
    assert status == 404 and body["title"] == "Unknown Server", body
    assert "create_volume" not in cluster.fakes["a"].calls


async def test_clone_then_delete_names_the_clone(cluster: FakeCluster) -> None:
    a = cluster.fakes["a"]
    await a.create_snapshot("tank/data", "s1")
    done = await accepted(cluster, "POST", "/v1/volumes", {
        "name": "tank/copy", "server": "a", "from_snapshot": "tank/data@s1"})
    assert done["kind"] == "volume-clone" and a.vols["tank/copy"].origin == "tank/data@s1"
    a.add_volume("tank/data/child")
    status, body = await cluster.api("DELETE", "/v1/volumes/tank/data?server=a")
    assert status == 409 and body["code"] == "has-dependents", body
    assert body["dependents"] == ["tank/data/child", "tank/copy"]
    assert "tank/copy" in body["detail"] and "tank/data/child" in body["detail"]
    assert "tank/data" in a.vols
    # Forced: the clone goes first, then the volume and what is below it.
    done = await accepted(cluster, "DELETE", "/v1/volumes/tank/data?server=a&force=true")
    assert done["progress"]["total"] == 2 and done["params"]["clones"] == ["tank/copy"]
    assert not {"tank/data", "tank/data/child", "tank/copy"} & set(a.vols)


async def test_clone_bad_input(cluster: FakeCluster) -> None:
    a = cluster.fakes["a"]
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "tank/copy", "server": "a", "from_snapshot": "tank/data@nope"})
    assert status == 404, body
    await a.create_snapshot("tank/data", "s1")
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "other/copy", "server": "a", "from_snapshot": "tank/data@s1"})
    assert status == 409 and body["code"] == "wrong-pool", body
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "tank/copy", "server": "a", "from_snapshot": "tank/data@s1", "size": 5})
    assert status == 422 and body["field"] == "from_snapshot", body
    a.capabilities = replace(a.capabilities, clones=False)
    status, body = await cluster.api("POST", "/v1/volumes", {
        "name": "tank/copy", "server": "a", "from_snapshot": "tank/data@s1"})
    assert status == 409 and body["code"] == "no-clones", body
    assert "clone_volume" not in a.calls


async def test_delete_is_refused_while_a_relationship_uses_it() -> None:
    rel = {"web": {"volume": "tank/data", "master": "a", "slaves": ["b"], "interval": "1h"}}
    async with FakeCluster(["a", "b"], relationships=rel) as c:
        c.fakes["a"].add_volume("tank/data")
        c.fakes["a"].add_volume("tank/parent")
        status, body = await c.api("DELETE", "/v1/volumes/tank/data?server=a")
        assert status == 409 and body["relationships"] == ["web"], body
        assert "web" in body["detail"]
        # Forced: the relationship's base is unpinned first (a held snapshot is busy).
        await c.fakes["a"].create_snapshot("tank/data", "base")
        await c.fakes["a"].pin("tank/data@base", "b")
        done = await accepted(c, "DELETE", "/v1/volumes/tank/data?server=a&force=true")
        assert done["params"]["unpin"] == [["tank/data@base", "b"]]
        assert "tank/data" not in c.fakes["a"].vols
        # Capacity shows the pools the daemon serves there: the relationship's.
        c.fakes["b"]._pools.add("other")
        status, caps = await c.api("GET", "/v1/capabilities")
        assert [p["pool"] for p in caps["b"]["capacity"]["pools"]] == ["tank"], caps["b"]
        assert "other" in {p.pool for p in await c.fakes["b"].capacity()}
        # Another volume, or the same name on a server the relationship does not use: fine.
        await accepted(c, "DELETE", "/v1/volumes/tank/parent?server=a")
        c.fakes["b"].add_volume("tank/other")
        await accepted(c, "DELETE", "/v1/volumes/tank/other?server=b")


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/volumes/tank/nope?server=a", 404),
    ("/v1/volumes/tank?server=a", 400),
    ("/v1/volumes/tank/data?server=zz", 404),
    ("/v1/volumes/tank/data?server=a&force=maybe", 400),
    ("/v1/volumes/tank/%0Adata?server=a", 400),
])
async def test_delete_bad_input(cluster: FakeCluster, path: str, status: int) -> None:
    got, body = await cluster.api("DELETE", path)
    assert got == status, body
    assert body["status"] == status and "destroy_volume" not in cluster.fakes["a"].calls


async def test_revert_says_what_it_destroys_and_guards_replication_bases(
        cluster: FakeCluster) -> None:
    a = cluster.fakes["a"]
    for label in ("s1", "s2", "s3"):
        await a.create_snapshot("tank/data", label)
    await a.pin("tank/data@s2", "b")  # a replication's base, as a transfer leaves it
    status, plan = await cluster.api("POST", "/v1/volumes/tank/data/revert",
                                     {"server": "a", "snapshot": "s1", "dry_run": True})
    assert status == 200, plan
    assert plan["destroys_snapshots"] == ["tank/data@s2", "tank/data@s3"]
    assert plan["replication_bases"] == ["tank/data@s2"]
    status, body = await cluster.api("POST", "/v1/volumes/tank/data/revert",
                                     {"server": "a", "snapshot": "s1"})
    assert status == 409 and body["code"] == "replication-base", body
    assert "tank/data@s2" in body["detail"] and " b" in body["detail"]
    assert len(a.vols["tank/data"].snapshots) == 3
    # To s2 nothing that is a base goes: no force needed.
    done = await accepted(cluster, "POST", "/v1/volumes/tank/data/revert",
                          {"server": "a", "snapshot": "s2"})
    assert done["params"]["destroys"] == ["tank/data@s3"]
    assert [s.label for s in a.vols["tank/data"].snapshots] == ["s1", "s2"]
    # Forced: the pin is released, the base destroyed.
    status, body = await cluster.api("POST", "/v1/volumes/tank/data/revert",
                                     {"server": "a", "snapshot": "s1", "force": True})
    assert status == 202 and body["plan"]["replication_bases"] == ["tank/data@s2"], body
    done = await cluster.done(body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert [s.label for s in a.vols["tank/data"].snapshots] == ["s1"]


async def test_revert_bad_input(cluster: FakeCluster) -> None:
    await cluster.fakes["a"].create_snapshot("tank/data", "s1")
    for body, status in [({"server": "a", "snapshot": "nope"}, 404),
                         ({"server": "a", "snapshot": "s1@x"}, 400),
                         ({"server": "a"}, 422),
                         ({"server": "a", "snapshot": "s1", "force": "yes"}, 422)]:
        got, problem = await cluster.api("POST", "/v1/volumes/tank/data/revert", body)
        assert got == status, (body, problem)
    got, problem = await cluster.api("POST", "/v1/volumes/tank/nope/revert",
                                     {"server": "a", "snapshot": "s1"})
    assert got == 404, problem
    assert "rollback" not in cluster.fakes["a"].calls


async def test_a_failed_create_is_rolled_back(cluster: FakeCluster) -> None:
    """The filesystem was made but its quota could not be set: the activity fails and
    destroys what it made (nothing half-done is left)."""
    a = cluster.fakes["a"]

    async def refuse() -> None:
        raise __import__("cerssd.storage.errors").storage.errors.BackendError("no quota")

    a.hooks["resize_volume"] = refuse
    status, doc = await cluster.api("POST", "/v1/volumes",
                                    {"name": "tank/new", "server": "a", "size": 1 << 20})
    assert status == 202, doc
    done = await cluster.done(doc["id"])
    assert done["state"] == "failed" and "no quota" in done["status"]["message"], done
    assert "tank/new" not in a.vols


async def test_a_stateful_server_holds_the_volume_while_it_works(
        cluster: FakeCluster) -> None:
    """Without stateless_snapshots a volume operation holds its volume (deleting), and a
    snapshot of it is refused with the holder's name until it ends."""
    import asyncio
    a = cluster.fakes["a"]
    a.capabilities = replace(a.capabilities, stateless_snapshots=False)
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    a.hooks["destroy_volume"] = wait
    status, doc = await cluster.api("DELETE", "/v1/volumes/tank/data?server=a")
    assert status == 202, doc
    status, page = await cluster.api("GET", "/v1/volumes?server=a")
    assert {v["name"]: v["state"] for v in page["items"]}["tank/data"] == "deleting"
    status, body = await cluster.api("POST", "/v1/volumes/tank/data/snapshots",
                                     {"name": "s1", "server": "a"})
    assert status == 409 and body["code"] == "volume-busy", body
    assert body["activity"]["id"] == doc["id"]
    gate.set()
    done = await cluster.done(doc["id"])
    assert done["state"] == State.SUCCEEDED and "tank/data" not in a.vols


async def test_capacity_beside_the_capabilities_and_in_the_metrics(
        cluster: FakeCluster) -> None:
    status, caps = await cluster.api("GET", "/v1/capabilities")
    assert status == 200, caps
    pools = caps["a"]["capacity"]["pools"]
    assert [p["pool"] for p in pools] == ["tank"] and pools[0]["total"] == 1 << 30
    assert caps["a"]["clones"] is True and caps["a"]["capacity"]["error"] is None
    before = cluster.daemon.capacity.measurements
    await cluster.api("GET", "/v1/capabilities")
    await metrics(cluster)
    assert cluster.daemon.capacity.measurements == before  # kept, not measured per read
    await accepted(cluster, "POST", "/v1/volumes",
                   {"name": "tank/q", "server": "a", "size": 3 << 20})
    status, caps = await cluster.api("GET", "/v1/capabilities")
    assert caps["a"]["capacity"]["pools"][0]["provisioned"] == 3 << 20  # measured again
    assert caps["a"]["capacity"]["pools"][0]["thin_ratio"] == round((3 << 20) / (1 << 30), 4)
    samples = {(s.name, s.labels.get("server"), s.labels.get("pool")): s.value
               for f in text_string_to_metric_families(await metrics(cluster))
               for s in f.samples}
    assert samples[("cerssd_pool_provisioned_bytes", "a", "tank")] == 3 << 20
    assert samples[("cerssd_pool_total_bytes", "b", "tank")] == 1 << 30
    assert samples[("cerssd_pool_thin_provisioning_ratio", "a", "tank")] == (3 << 20) / (1 << 30)


async def test_a_scrape_never_waits_for_a_measurement_of_a_server_it_has_figures_of(
        cluster: FakeCluster) -> None:
    """The scrape's p99 was the commands of an expired measurement (issue 13): a scrape
    takes the last figures and the next measurement runs on in the background."""
    await metrics(cluster)  # the first figures
    measured = cluster.daemon.capacity.measurements
    held = asyncio.Event()
    entered = asyncio.Event()

    async def hold() -> None:
        entered.set()
        await held.wait()

    cluster.fakes["a"].hooks["capacity"] = hold
    cluster.daemon.capacity.max_age = 0.0  # every figure expired
    text = await asyncio.wait_for(metrics(cluster), 2.0)  # served while "a" is measured
    assert "cerssd_pool_total_bytes" in text and entered.is_set()  # "a"'s measurement runs
    held.set()
    await cluster.daemon.capacity.current()  # an API read waits for "a"'s measurement
    assert cluster.daemon.capacity.measurements >= measured + 2


async def metrics(cluster: FakeCluster) -> str:
    assert cluster._session is not None
    async with cluster._session.get("http://cerssd/metrics") as r:
        assert r.status == 200
        return await r.text()


def test_relationship_uses_reads_masters_slaves_trees_and_ancestors() -> None:
    class Slave:
        def __init__(self, server: str, target: str) -> None:
            self.server, self.target_volume = server, target

    class Spec:
        def __init__(self, name: str, volume: str, tree: bool = False) -> None:
            self.name, self.volume, self.master, self.is_tree = name, volume, "a", tree
            self.slaves = [Slave("b", "backup/" + volume.partition("/")[2])]

    specs = [Spec("one", "tank/data"), Spec("tree", "tank/vms", tree=True)]
    assert relationship_uses(specs, "a", "tank/data") == ["one"]
    assert relationship_uses(specs, "a", "tank") == ["one", "tree"]  # an ancestor
    assert relationship_uses(specs, "a", "tank/vms/disk1") == ["tree"]  # a member
    assert relationship_uses(specs, "a", "tank/data/child") == []  # not a tree
    assert relationship_uses(specs, "b", "backup/data") == ["one"]
    assert relationship_uses(specs, "b", "tank/data") == []
