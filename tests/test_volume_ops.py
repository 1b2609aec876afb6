"""Volume operations and capacity on real zfs-fuse: the ZFS backend's own methods, then
every operation through a real daemon's API and ``cerssctl`` (activities followed to
their end, the result checked with ``zfs`` itself), and capacity against ``zpool list``.

zfs-fuse has no zvols, so the block-volume cases here are the refusals; a zvol's create
and extend run on OpenZFS in test_openzfs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cerssd.storage.errors import AlreadyExists, BackendError, Busy, NotFound
from cerssd.storage.names import InvalidName
from cerssd.storage.zfs import ZfsBackend
from cerssd.storage.zfs.volume_ops import parse_size
from cerssd.transport.runner import LocalRunner

from .conftest import DaemonProcess, raw_request, write_file, zfs, zpool
from .test_cli import ctl

MiB = 1 << 20


@pytest.fixture
async def backend(zfs_fuse: None) -> ZfsBackend:
    b = ZfsBackend(LocalRunner("local"))
    await b.probe()
    return b


def prop(name: str, value: str) -> str:
    return zfs("get", "-Hp", "-o", "value", value, name).stdout.strip()


async def test_probe_finds_clones_and_no_zvols(backend: ZfsBackend) -> None:
    assert backend.capabilities.clones and not backend.capabilities.zvols


async def test_create_clone_resize_and_dependents(backend: ZfsBackend, pool: str) -> None:
    made = await backend.create_volume(f"{pool}/a")
    assert made.type == "filesystem" and made.mounted and made.size is None
    assert made.guid == prop(f"{pool}/a", "guid")
    with pytest.raises(AlreadyExists):
        await backend.create_volume(f"{pool}/a")
    with pytest.raises(NotFound):
        await backend.create_volume(f"{pool}/missing/x")
    with pytest.raises(BackendError, match="zvols"):
        await backend.create_volume(f"{pool}/disk", size=8 * MiB)
    assert zfs("list", f"{pool}/disk", check=False).returncode != 0  # nothing ran
    with pytest.raises(InvalidName):
        await backend.create_volume(pool)

    await backend.resize_volume(f"{pool}/a", 64 * MiB)
    assert prop(f"{pool}/a", "quota") == str(64 * MiB)
    assert (await backend.volume(f"{pool}/a")).size == 64 * MiB

    zfs("create", f"{pool}/a/child")
    write_file(f"/{pool}/a/f", 1)
    zfs("snapshot", f"{pool}/a@s1")
    zfs("snapshot", f"{pool}/a/child@s1")
    clone = await backend.clone_volume(f"{pool}/a@s1", f"{pool}/c1")
    assert prop(f"{pool}/c1", "origin") == f"{pool}/a@s1" and clone.mounted
    assert os.path.exists(f"/{pool}/c1/f")  # the snapshot's files, writable
    zfs("create", f"{pool}/c1/below")
    zfs("snapshot", f"{pool}/c1@t")
    await backend.clone_volume(f"{pool}/c1@t", f"{pool}/c2")  # a clone of a clone
    await backend.clone_volume(f"{pool}/a/child@s1", f"{pool}/c3")  # of a descendant
    with pytest.raises(InvalidName):
        await backend.clone_volume(f"{pool}/a@s1", f"other{pool}/x")
    with pytest.raises(NotFound):
        await backend.clone_volume(f"{pool}/a@nope", f"{pool}/x")

    assert await backend.dependents(f"{pool}/a") == [
        f"{pool}/a/child", f"{pool}/c1", f"{pool}/c1/below", f"{pool}/c3", f"{pool}/c2"]
    assert await backend.dependents(f"{pool}/c2") == []
    with pytest.raises(Busy):  # ZFS itself refuses while clones depend on it
        await backend.destroy_volume(f"{pool}/a")


async def test_capacity_matches_zpool_list_and_the_datasets(backend: ZfsBackend,
                                                            pool: str) -> None:
    zfs("create", "-o", "quota=100M", f"{pool}/capped")
    zfs("create", f"{pool}/capped/inside")  # under the quota: not counted again
    zfs("create", f"{pool}/free")
    write_file(f"/{pool}/free/f", 2)
    zfs("snapshot", f"{pool}/free@s1")
    pools = {p.pool: p for p in await backend.capacity()}
    listed = zpool("list", "-H", "-o", "name,size,allocated,free", pool).stdout.split()
    mine = pools[pool]
    assert [mine.pool, mine.total, mine.allocated, mine.free] == [
        listed[0], *(parse_size(x) for x in listed[1:])]
    assert not mine.exact and backend.exact_pool_list is False  # zfs-fuse: no -p
    own = sum(int(prop(name, p)) for name in (pool, f"{pool}/free")
              for p in ("usedbydataset", "usedbysnapshots"))
    assert mine.provisioned == 100 * MiB + own
    assert mine.thin_ratio == pytest.approx(mine.provisioned / mine.total)
    assert parse_size("504M") == 504 * MiB and parse_size("1.50G") == 3 << 29


def test_every_operation_through_cerssctl(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    created = ctl(daemon, "volume", "create", f"{pool}/db", "--size", "64M")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "succeeded" in created.stdout and "1 of 1 volumes" in created.stdout
    assert prop(f"{pool}/db", "quota") == str(64 * MiB) and prop(f"{pool}/db", "mounted") \
        == "yes"
    extended = ctl(daemon, "volume", "extend", f"{pool}/db", "128MiB")
    assert extended.returncode == 0, extended.stdout + extended.stderr
    assert prop(f"{pool}/db", "quota") == str(128 * MiB)
    shrink = ctl(daemon, "volume", "extend", f"{pool}/db", "1M")
    assert shrink.returncode == 1 and "Would Shrink" in shrink.stderr
    assert str(128 * MiB) in shrink.stderr and prop(f"{pool}/db", "quota") == str(128 * MiB)

    write_file(f"/{pool}/db/one", 1)
    zfs("snapshot", f"{pool}/db@s1")
    write_file(f"/{pool}/db/two", 1)
    zfs("snapshot", f"{pool}/db@s2")
    cloned = ctl(daemon, "volume", "clone", f"{pool}/db@s1", f"{pool}/db-copy")
    assert cloned.returncode == 0, cloned.stdout + cloned.stderr
    assert prop(f"{pool}/db-copy", "origin") == f"{pool}/db@s1"

    plan = ctl(daemon, "volume", "revert", f"{pool}/db@s1", "--dry-run")
    assert f"destroys 1 later snapshot(s): {pool}/db@s2" in plan.stdout, plan.stdout
    reverted = json.loads(ctl(daemon, "--json", "volume", "revert", f"{pool}/db@s1").stdout)
    assert reverted["state"] == "succeeded" and reverted["kind"] == "volume-revert"
    assert zfs("list", f"{pool}/db@s2", check=False).returncode != 0
    assert os.path.exists(f"/{pool}/db/one") and not os.path.exists(f"/{pool}/db/two")

    refused = ctl(daemon, "volume", "delete", f"{pool}/db")
    assert refused.returncode == 1 and f"{pool}/db-copy" in refused.stderr
    assert zfs("list", f"{pool}/db", check=False).returncode == 0
    zfs("hold", "cerssd:local", f"{pool}/db@s1")  # a replication's base, as one leaves it
    deleted = ctl(daemon, "volume", "delete", f"{pool}/db", "--force")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "2 of 2 volumes" in deleted.stdout
    for gone in (f"{pool}/db", f"{pool}/db-copy"):
        assert zfs("list", gone, check=False).returncode != 0, gone

    kinds = {a["kind"] for a in json.loads(ctl(daemon, "--json", "activities").stdout)["items"]}
    assert {"volume-create", "volume-extend", "volume-clone", "volume-revert",
            "volume-delete"} <= kinds

    servers = ctl(daemon, "servers")
    assert servers.returncode == 0 and "thin ratio" in servers.stdout
    row = next(line.split() for line in servers.stdout.splitlines()
               if line.split()[:2] == ["local", pool])
    assert row[2].startswith("~")  # zfs-fuse prints the pool's size rounded
    as_json = json.loads(ctl(daemon, "--json", "servers").stdout)
    assert any(p["pool"] == pool for p in as_json["items"][0]["capacity"]["pools"])


def test_bad_input_on_a_real_daemon(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = raw_request(daemon.socket_path, method, path,
                        json.dumps(body).encode() if body is not None else None,
                        {"Content-Type": "application/json"})
        assert r.content_type.startswith("application/problem+json"), r
        return r

    zvol = call("POST", "/v1/volumes", {"name": f"{pool}/disk", "type": "volume",
                                        "size": 8 * MiB})
    assert zvol.status == 409 and zvol.body["code"] == "no-block-volumes", zvol.body
    exists = call("POST", "/v1/volumes", {"name": f"{pool}/vol"})
    assert exists.status == 409 and exists.body["code"] == "volume-exists"
    for size in (0, -1, "1G", 2.5):
        r = call("POST", f"/v1/volumes/{pool}/vol/extend", {"size": size})
        assert r.status == 422 and r.body["field"] == "size", r.body
    r = call("POST", f"/v1/volumes/{pool}/vol/extend", {"size": MiB})
    assert r.status == 409 and r.body["code"] == "no-size", r.body
    r = call("POST", "/v1/volumes", {"name": f"{pool}/bad name"})
    assert r.status == 400 and r.body["title"] == "Invalid Name"
    r = call("POST", "/v1/volumes", {"name": f"{pool}/x", "server": "elsewhere"})
    assert r.status == 404 and r.body["title"] == "Unknown Server"
    r = call("DELETE", f"/v1/volumes/{pool}/nope")
    assert r.status == 404, r.body
    r = call("POST", f"/v1/volumes/{pool}/vol/revert", {"snapshot": "nope"})
    assert r.status == 404, r.body
    assert zfs("list", "-H", "-o", "name", "-r", pool).stdout.split() == [pool, f"{pool}/vol"]
    assert "api request failed" not in daemon.log()


def test_pool_metrics_pass_promtool_and_match_the_api(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    text = daemon.api("GET", "/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = {(s.name, s.labels.get("pool")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples
               if s.labels.get("server") == "local"}
    measured = daemon.api("GET", "/v1/capabilities")["local"]["capacity"]
    mine = next(p for p in measured["pools"] if p["pool"] == pool)
    for key in ("total", "free", "allocated", "provisioned"):
        assert samples[(f"cerssd_pool_{key}_bytes", pool)] == mine[key], key
    assert samples[("cerssd_pool_thin_provisioning_ratio", pool)] == pytest.approx(
        mine["thin_ratio"], abs=1e-4)
    assert samples[("cerssd_pool_measured_timestamp_seconds", None)] == measured[
        "measured_at"]
