"""A tree's backup facts and plans, without ZFS or a store: which members a steady backup
sends from which base, what the summary counts, what the master's retention spares, and
how one listing of the bucket under a tree's root is read (a fake store's keys)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cerssd.objectstore import catalog
from cerssd.objectstore.client import ObjectInfo
from cerssd.objectstore.layout import manifest_key, parse_manifest_key
from cerssd.replication.logic.tree_backup_facts import (
    BackupState,
    MemberBackup,
    StoreBackups,
    base_labels,
    bases,
    steady_steps,
)
from cerssd.replication.logic.tree_status import TreeMember

LABEL = "cerssd-t-2"


def member(rel: str, guid: str, newest: str | None = "n", label: str | None = LABEL,
           ) -> TreeMember:
    m = TreeMember(rel, f"tank/t/{rel}" if rel else "tank/t", guid)
    m.newest_guid, m.newest_label = newest, label
    return m


def test_steady_steps_go_on_from_known_bases_and_plan_the_rest() -> None:
    known, new, failing, done, later, reborn = (
        member("a", "g1", "n1"), member("b", "g2", "n2"), member("c", "g3", "n3"),
        member("d", "g4", "n4"), member("e", "g5", "n5", label="cerssd-t-3"),
        member("f", "g6-new", "n6"))
    store = StoreBackups(members={
        "a": MemberBackup("g1", "o1", "cerssd-t-1", 1.0),
        "c": MemberBackup("g3", "o3", "cerssd-t-1", 1.0, error="no space"),
        "d": MemberBackup("g4", "n4", LABEL, 2.0),
        "e": MemberBackup("g5", "o5", "cerssd-t-1", 1.0),
        "f": MemberBackup("g6-old", "o6", "cerssd-t-1", 1.0),  # destroyed, made again
    })
    steps = steady_steps(store, [known, new, failing, done, later, reborn], LABEL)
    by_member = {s.member.relative: (s.base_label, s.base_guid) for s in steps}
    assert by_member == {"a": ("cerssd-t-1", "o1"), "b": (None, None), "c": (None, None),
                         "f": (None, None)}


def test_summary_counts_states_and_names_failing_members() -> None:
    members = [member("a", "g1", "n1"), member("b", "g2", "n2"), member("c", "g3", "n3"),
               member("d", "g4", "n4")]
    store = StoreBackups(members={
        "a": MemberBackup("g1", "n1", LABEL, 100.0),
        "b": MemberBackup("g2", "o2", "cerssd-t-1", 40.0, error="zfs send failed"),
        "c": MemberBackup("g3", "o3", "cerssd-t-1", 70.0, sending=True),
    })
    assert [store.state(m) for m in members] == [
        BackupState.BACKED_UP, BackupState.FAILING, BackupState.SENDING, BackupState.BEHIND]
    summary = store.summary(members, now=100.0)
    assert (summary["backed_up"], summary["behind"], summary["sending"],
            summary["failing"]) == (1, 1, 1, 1)
    assert summary["failing_members"] == [{"member": "tank/t/b", "error": "zfs send failed"}]
    assert summary["oldest_backup_age_seconds"] is None  # d has no backup at all
    del members[3]
    assert store.summary(members, now=100.0)["oldest_backup_age_seconds"] == 60.0
    store.forget_others(["a"])
    assert list(store.members) == ["a"]


def test_retention_spares_store_bases_and_keeps_all_while_one_is_unknown() -> None:
    backups = {"s3": StoreBackups(members={"a": MemberBackup("g1", "o1", "L1"),
                                           "b": MemberBackup("g2")})}  # b: never backed up
    assert bases(backups, ["s3"], "a") == {"o1"}
    assert bases(backups, ["s3"], "b") == set()
    assert bases(backups, ["s3"], "c") is None
    assert bases(backups, ["s3", "s4"], "a") is None
    assert base_labels(backups, ["s3"], ["a", "b"]) == {"L1"}
    assert base_labels(backups, ["s3"], ["a", "b", "c"]) is None
    assert base_labels(backups, [], ["a"]) == set()


def test_manifest_keys_parse_back_to_volume_label_and_guid() -> None:
    key = manifest_key("p/", "tank/t/a.b/c", "cerssd-x.y", "123")
    assert parse_manifest_key("p/", key) == ("tank/t/a.b/c", "cerssd-x.y", "123")
    assert parse_manifest_key("p/", "p/tank/t/L.123/stream-000000") is None
    assert parse_manifest_key("p/", "p/tank/t/L.12x/manifest.json") is None
    assert parse_manifest_key("p/", "q/tank/t/L.1/manifest.json") is None
    assert parse_manifest_key("p/", "p/L.1/manifest.json") is None


@dataclass
class Config:
    prefix: str = "cerssd/"


class ListingStore:
    """Just enough of ``ObjectStore`` for a listing: keys, and who asked for what."""

    def __init__(self, keys: list[str]) -> None:
        self.config = Config()
        self.keys = keys
        self.prefixes: list[str] = []

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        self.prefixes.append(prefix)
        for key in self.keys:
            if key.startswith(prefix):
                yield ObjectInfo(key, 1)


def test_one_listing_of_the_root_gives_each_members_newest_base() -> None:
    def backup(volume: str, label: str, guid: str, *, complete: bool = True) -> list[str]:
        d = f"cerssd/{volume}/{label}.{guid}/"
        return [d + "stream-000000"] + ([d + "manifest.json"] if complete else [])

    keys = [*backup("tank/t", "L1", "11"), *backup("tank/t", "L2", "12"),
            *backup("tank/t/a", "L1", "21"), *backup("tank/t/a", "L2", "22", complete=False),
            *backup("tank/t/b", "L1", "31"), *backup("tank/t/b", "L2", "32"),
            *backup("tank/other", "L1", "41")]
    store = ListingStore(keys)
    positions = {"tank/t": {"11": 0, "12": 1}, "tank/t/a": {"21": 0, "22": 1},
                 "tank/t/b": {"31": 0}}  # b's L2 is gone from the master: no base
    newest = asyncio.run(catalog.newest_in_tree(store, "tank/t", positions))  # type: ignore[arg-type]
    assert newest == {"tank/t": "12", "tank/t/a": "21", "tank/t/b": "31"}
    assert store.prefixes == ["cerssd/tank/t/"]
