"""Pruning an operator can trust, on real zfs-fuse and a real SeaweedFS (issue 17).

A relationship ``web`` keeps a master volume on a slave (a local server of its own pool)
and backs it up to a bucket. The tests check, on the volumes and in the bucket
themselves:

* ``keep_min`` keeps the newest N of cerssd's snapshots on the master, the slave and in
  the bucket where the grid would leave one, and snapshots (and backups) cerssd did not
  make stay whatever the grid says, including one that shares the relationship's prefix;
* a dry run lists exactly what the prune that follows removes, place by place;
* the store's ``retention`` runs after each backup with no manual step, and a bucket
  listing cut off halfway (a real connection cut by a proxy in front of SeaweedFS)
  fails that prune with nothing deleted.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import SLOW, DaemonProcess, post_json, wait_until, zfs
from .fault_proxy import ListingCutter
from .seaweed import WeedServer
from .test_backups import store_section
from .test_relationships import LOCAL_SLAVES, metric, relationship_config, show

PREFIX = "cerssd-web-"
OWN_SUFFIX = r"(?:failover-)?\d{8}T\d{6}Z(?:-\d+)?"
FOREIGN = ("manual", f"{PREFIX}keep")  # the second shares the prefix: still not cerssd's


def labels(volume: str) -> list[str]:
    """The volume's snapshot labels, oldest first."""
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1",
              volume).stdout
    return [line.partition("@")[2] for line in out.split()]


def own(names: list[str], prefix: str = PREFIX) -> list[str]:
    """The labels a relationship with ``prefix`` made (its prefix and a UTC time)."""
    return [n for n in names if re.fullmatch(re.escape(prefix) + OWN_SUFFIX, n)]


def created(snapshot: str) -> int:
    return int(zfs("get", "-Hp", "-o", "value", "creation", snapshot).stdout)


def backed_up(d: DaemonProcess, volume: str) -> list[str]:
    items = d.api("GET", f"/v1/backups?volume={volume}")["items"]
    return [m["snapshot"].partition("@")[2] for m in items]


def manifests(client: Any, bucket: str, volume: str) -> list[str]:
    """Labels of the volume's backups, read from the bucket itself (no daemon)."""
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"cerssd/{volume}/") for o in page.get("Contents", [])]
    found = [k[len(f"cerssd/{volume}/"):].split("/") for k in keys
             if k.endswith("/manifest.json")]
    return sorted(parts[0].rpartition(".")[0] for parts in found if len(parts) == 2)


def activities(d: DaemonProcess, kind: str) -> list[dict[str, Any]]:
    items = d.api("GET", f"/v1/activities?kind={kind}&limit=1000")["items"]
    return [a for a in items if a["params"].get("relationship") == "web"]


def settled(d: DaemonProcess, backups: int) -> bool:
    """``backups`` backups of web done and none of its streams or prunes still going."""
    done = [a for a in activities(d, "backup") if a["state"] == "succeeded"]
    going = [a for kind in ("replicate", "backup", "prune", "backup-prune")
             for a in activities(d, kind) if a["state"] not in ("succeeded", "failed",
                                                                 "cancelled")]
    return len(done) >= backups and not going


def cycle(d: DaemonProcess, number: int, master: str, *, spaced: bool = True) -> str:
    """Cycle ``number`` (the first runs at start): its snapshot, once every stream and
    the prunes after them are done. ``spaced``: not before the last snapshot is over
    1 s old, so a ``1s:all`` grid has let it go by the prunes after this cycle."""
    before = show(d, "web")["newest_snapshot"] if number > 1 else None
    if number > 1:
        if spaced:
            wait_until(lambda: time.time() - created(before) > 1.5, 10, interval=0.1,
                       what="the last snapshot to age past the 1 s tier")
        assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202

    def newest() -> str | None:
        r = show(d, "web")
        ok = r["newest_snapshot"] not in (None, before) and all(
            s["state"] == "in-sync" for s in r["slaves"])
        return r["newest_snapshot"] if ok else None
    name: str = wait_until(newest, SLOW, interval=0.2, what=f"cycle {number} in sync")
    wait_until(lambda: settled(d, number), SLOW, interval=0.2,
               what=f"cycle {number}'s backup and prunes")
    return name.partition("@")[2]


@pytest.fixture
def web(start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> Any:
    """Starts the daemon: relationship ``web`` from a new master pool to slave ``a``
    and store ``s3``; returns (daemon, master volume, slave volume)."""
    def start(rel: str = "", store: dict[str, Any] | None = None, endpoint: str | None = None,
              daemon_extra: str = "", before: Any = None) -> tuple[DaemonProcess, str, str]:
        master, slave = make_pool(), make_pool()
        zfs("create", f"{master}/data")
        if before is not None:
            before(master)
        section = store_section(s3_server, s3_bucket, tmp_path / "s3.key", **(store or {}))
        if endpoint is not None:
            section = section.replace(s3_server.s3.endpoint, endpoint)
        config = (LOCAL_SLAVES + section + relationship_config(
            "web", f"{master}/data", {"a": f"{slave}/data"},
            extra=f'stores = ["s3"]\n{rel}'))
        return start_daemon(extra=config, daemon_extra=daemon_extra), f"{master}/data", \
            f"{slave}/data"

    return start


def reload(d: DaemonProcess, old: str, new: str) -> None:
    """Rewrite the daemon's config (every ``old``) and SIGHUP it; back once READY."""
    text = d.config_path.read_text()
    assert text.count(old) == 2, text
    d.config_path.write_text(text.replace(old, new))
    d.proc.send_signal(signal.SIGHUP)
    while "READY=1" not in d.next_notify(60):
        pass


def test_keep_min_holds_what_the_grid_drops_and_foreign_snapshots_stay(web: Any) -> None:
    d, master, slave = web(
        rel='retention = ["1s:all"]\nkeep_min = 3\nslave_keep_min = 2\n',
        store={"retention": ["1s:all"], "keep_min": 2, "full_every": 1})
    made = [cycle(d, 1, master)]
    for label in FOREIGN:  # between cycles: the next one's -i chain takes them along
        zfs("snapshot", f"{master}@{label}")
    manual = post_json(d, "/v1/backups", {"snapshot": f"{master}@manual", "force_full": True})
    assert manual.status == 202 and d.wait_done(manual.body["id"])["state"] == "succeeded"
    for n in range(2, 6):
        made.append(cycle(d, n, master))
    # The grid (1s:all) would leave only the newest everywhere.
    wait_until(lambda: own(labels(master)) == made[-3:], SLOW, interval=0.2,
               what=f"the master at keep_min 3: {labels(master)}")
    wait_until(lambda: own(labels(slave)) == made[-2:], SLOW, interval=0.2,
               what=f"the slave at slave_keep_min 2: {labels(slave)}")
    wait_until(lambda: own(backed_up(d, master)) == made[-2:], SLOW, interval=0.2,
               what=f"the bucket at keep_min 2: {backed_up(d, master)}")
    for volume in (master, slave):
        assert set(FOREIGN) <= set(labels(volume)), (volume, labels(volume))
    assert "manual" in backed_up(d, master)
    # The bucket's retention ran after each backup, by itself.
    scheduled = activities(d, "backup-prune")
    assert scheduled and all(a["params"]["scheduled"] for a in scheduled)
    assert all(a["state"] == "succeeded" for a in scheduled), scheduled
    deleted = [s for a in scheduled for s in a["params"]["snapshots"]]
    assert sorted(deleted) == sorted(f"{master}@{label}" for label in made[:3])
    # ... and the age alert's series: the last backup's end.
    last = max(a["finished_at"] for a in activities(d, "backup") if a["state"] == "succeeded")
    seen = metric(d.api("GET", "/metrics"), "cerssd_backup_last_success_timestamp_seconds",
                  relationship="web", store="s3")
    assert seen == pytest.approx(last)


def hourly_doomed(names: list[str], volume: str) -> list[str]:
    """What a ``1d:1h`` grid thins, worked out here: all but the oldest per UTC hour,
    never the newest."""
    seen: set[int] = set()
    doomed = []
    for label in names[:-1]:
        hour = created(f"{volume}@{label}") // 3600
        if hour in seen:
            doomed.append(label)
        seen.add(hour)
    return doomed


def test_dry_run_lists_exactly_what_the_prune_then_removes(web: Any) -> None:
    from .test_cli import ctl

    d, master, slave = web(rel='retention = ["1h:all"]\n',
                           store={"retention": ["1h:all"], "full_every": 1})
    made = [cycle(d, n, master, spaced=False) for n in range(1, 5)]
    assert own(labels(master)) == made and own(backed_up(d, master)) == made
    assert post_json(d, "/v1/relationships/web/pause", {}).status == 200
    # the relationship's grid and the store's, in one reload
    reload(d, 'retention = ["1h:all"]', 'retention = ["1d:1h"]')
    expected = hourly_doomed(made, master)
    assert expected, "four cycles within a minute share an hour"

    dry = post_json(d, "/v1/relationships/web/prune", {"dry_run": True})
    assert dry.status == 200, dry.body
    places = {p["name"]: p for p in dry.body["places"]}
    assert set(places) == {"local", "a", "s3"}
    before = {"local": labels(master), "a": labels(slave), "s3": backed_up(d, master)}
    for name, volume in (("local", master), ("a", slave), ("s3", master)):
        p = places[name]
        assert p["blocked"] is None and p["activity"] is None, p
        assert [v["snapshot"] for v in p["destroy"]] == [f"{volume}@{x}" for x in expected]
        assert all(v["rule"] == "thinned" and v["tier"] == "1d:1h" and v["kept_instead"]
                   for v in p["destroy"])
    shown = ctl(d, "prune", "web", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert all(label in shown.stdout for label in expected)
    assert "keeps one per interval" in shown.stdout and "would destroy" in shown.stdout
    assert labels(master) == before["local"]  # a dry run destroys nothing

    real = post_json(d, "/v1/relationships/web/prune", {})
    assert real.status == 200 and real.body["dry_run"] is False, real.body
    for p in real.body["places"]:
        assert [v["snapshot"] for v in p["destroy"]] == \
            [v["snapshot"] for v in places[p["name"]]["destroy"]]
        assert d.wait_done(p["activity"])["state"] == "succeeded"
    after = {"local": labels(master), "a": labels(slave), "s3": backed_up(d, master)}
    for name in ("local", "a", "s3"):
        gone = [x for x in before[name] if x not in after[name]]
        assert gone == expected, (name, gone)
        assert set(after[name]) <= set(before[name])


def test_bad_prune_requests_and_keep_min_below_one(web: Any, tmp_path: Path) -> None:
    d, master, _ = web(rel='retention = ["1h:all"]\n')
    cycle(d, 1, master)
    r = post_json(d, "/v1/relationships/web/prune", {"only": ["nowhere"]})
    assert r.status == 422 and "only[0]" in r.body["detail"]
    r = post_json(d, "/v1/relationships/nope/prune", {"dry_run": True})
    assert r.status == 404
    r = post_json(d, "/v1/relationships/web/prune", {"dry_run": True, "only": ["s3"]})
    (store,) = r.body["places"]
    assert store["blocked"].startswith("no retention for this store")
    r = post_json(d, "/v1/backups/prune", {"volume": master, "retention": ["1h:all"],
                                           "keep_min": 0})
    assert r.status == 422 and r.body["detail"].startswith("keep_min")
    body = {"name": "web2", "volume": master, "slaves": ["b"], "keep_min": 0}
    r = post_json(d, "/v1/relationships", body)
    assert r.status == 422 and "keep_min" in r.body["detail"], r.body


def test_a_listing_cut_halfway_prunes_nothing(web: Any, s3_server: WeedServer,
                                              s3_bucket: str) -> None:
    proxy = ListingCutter(int(s3_server.s3.endpoint.rsplit(":", 1)[1]))
    try:
        d, master, _ = web(store={"retention": ["1s:all"], "full_every": 1},
                           endpoint=proxy.endpoint, daemon_extra='retry_deadline = "5s"\n')
        # Over a listing page (1,000 keys) of someone else's objects under the volume's
        # prefix: a bucket listing is two pages, and these are never touched.
        client = s3_server.client()
        junk = [f"cerssd/{master}/junk/{i:05d}" for i in range(1001)]
        for key in junk:
            client.put_object(Bucket=s3_bucket, Key=key, Body=b"not cerssd's")
        first = cycle(d, 1, master)
        proxy.arm()  # from the next manifest written on, listings lose their 2nd page
        wait_until(lambda: time.time() - created(f"{master}@{first}") > 1.5, 10,
                   interval=0.1, what="the first backup to age past the 1 s tier")
        assert post_json(d, "/v1/relationships/web/sync-now", {}).status == 202
        failed = wait_until(lambda: next((a for a in activities(d, "backup-prune")
                                          if a["state"] == "failed"), None), SLOW,
                            interval=0.2, what="the cut-off prune to fail")
        assert proxy.cut >= 1, "the listing was never cut"
        assert "gave up after retrying" in failed["status"]["message"], failed
        assert "guids" not in failed["params"], "it decided something from half a listing"
        backups = manifests(client, s3_bucket, master)  # straight from SeaweedFS
        assert len(backups) == 2, backups
        dry = post_json(d, "/v1/relationships/web/prune", {"dry_run": True, "only": ["s3"]})
        assert dry.body["places"][0]["blocked"].startswith("not listed"), dry.body
        proxy.disarm()
        third = cycle(d, 3, master)
        wait_until(lambda: manifests(client, s3_bucket, master) == [third], SLOW,
                   interval=0.2, what=f"the next prune to delete {backups}")
        keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=f"cerssd/{master}/junk/") for o in page.get("Contents", [])}
        assert keys == set(junk)
    finally:
        proxy.close()


# -- a tree: the same rules member by member ---------------------------------------------

TREE_MEMBERS = ("", "a", "b")


def tree_settled(d: DaemonProcess, cycles: int) -> bool:
    from .test_trees import rel

    r = rel(d, "t")
    if r["cycles"] < cycles or r["tree"]["slaves"]["lab1"]["in_sync"] != len(TREE_MEMBERS):
        return False
    items = [a for kind in ("tree-sync", "tree-backup", "replicate", "prune", "backup-prune")
             for a in d.api("GET", f"/v1/activities?kind={kind}&limit=1000")["items"]
             if a["params"].get("relationship") == "t"]
    backups = [a for a in items if a["kind"] == "tree-backup" and a["state"] == "succeeded"]
    return len(backups) >= cycles and all(
        a["state"] in ("succeeded", "failed", "cancelled") for a in items)


def test_a_trees_members_keep_min_everywhere_and_its_dry_run_is_its_prune(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    from .test_trees import sync_now, tree_config

    src, dst = make_pool(), make_pool()
    root = f"{src}/t"
    zfs("create", root)
    for m in TREE_MEMBERS[1:]:
        zfs("create", f"{root}/{m}")
    config = (store_section(s3_server, s3_bucket, tmp_path / "s3.key", retention=["1s:all"],
                            keep_min=2, full_every=1)
              + tree_config("t", root, f"{dst}/standby", recursive="true", stores='["s3"]',
                            retention='["1s:all"]', keep_min="2"))
    d = start_daemon(extra=config)
    names = [f"{root}/{m}".rstrip("/") for m in TREE_MEMBERS]
    copies = [n.replace(root, f"{dst}/standby", 1) for n in names]
    wait_until(lambda: tree_settled(d, 1), SLOW, interval=0.2, what="the first cycle")
    for label in ("manual", "cerssd-t-keep"):  # not cerssd's, on a member
        zfs("snapshot", f"{root}/a@{label}")
    for n in range(2, 5):
        newest = own(labels(root), "cerssd-t-")[-1]
        wait_until(lambda x=newest: time.time() - created(f"{root}@{x}") > 1.5, 10,
                   interval=0.1, what="the last cycle to age past the 1 s tier")
        sync_now(d, "t")
        wait_until(lambda n=n: tree_settled(d, n), SLOW, interval=0.2, what=f"cycle {n}")
    made = own(labels(root), "cerssd-t-")
    # The master's retention runs at a cycle's start (keep_min 2 of what it had), then
    # the cycle adds its snapshot; each slave copy and each member's backups at 2.
    assert len(made) == 3, made
    for name in names:
        assert own(labels(name), "cerssd-t-") == made
    for copy in copies:
        wait_until(lambda c=copy: own(labels(c), "cerssd-t-") == made[-2:], SLOW,
                   interval=0.2, what=f"{copy} at keep_min 2: {labels(copy)}")
    for name in names:
        wait_until(lambda n=name: own(backed_up(d, n), "cerssd-t-") == made[-2:], SLOW,
                   interval=0.2, what=f"{name}'s backups at keep_min 2")
    assert {"manual", "cerssd-t-keep"} <= set(labels(f"{root}/a"))

    dry = post_json(d, "/v1/relationships/t/prune", {"dry_run": True, "only": ["master"]})
    assert dry.status == 200, dry.body
    (plan,) = dry.body["places"]
    assert plan["blocked"] is None and plan["kept"] == 2 * len(names)
    assert sorted(v["snapshot"] for v in plan["destroy"]) == sorted(
        f"{n}@{made[0]}" for n in names)
    real = post_json(d, "/v1/relationships/t/prune", {"only": ["master"]})
    (done,) = real.body["places"]
    assert [v["snapshot"] for v in done["destroy"]] == [v["snapshot"] for v in plan["destroy"]]
    assert d.wait_done(done["activity"])["state"] == "succeeded"
    for name in names:
        assert own(labels(name), "cerssd-t-") == made[1:]
    assert {"manual", "cerssd-t-keep"} <= set(labels(f"{root}/a"))
