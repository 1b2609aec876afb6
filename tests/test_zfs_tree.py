"""ZFS trees beyond the shared contract: the listing's strict parsing, the probe of
``multi_snapshot``, the commands ``snapshot_tree`` chooses, and zfs-fuse's own answers."""

from __future__ import annotations

from typing import Any

import pytest

from cerssd.storage.errors import BackendError, Busy
from cerssd.storage.zfs import ZfsBackend, tree
from cerssd.storage.zfs.probe import capabilities_from_usage, parse_usage
from cerssd.transport.runner import CommandResult, LocalRunner

from .conftest import zfs
from .test_zfs_backend import OPENZFS_USAGE

ZFS_FUSE_SNAPSHOT = "snapshot [-r] [-o property=value] ... <filesystem@snapname|volume@snapname>"


@pytest.mark.parametrize(("line", "multi"), [
    (ZFS_FUSE_SNAPSHOT, False),
    ("snapshot|snap [-r] [-o property=value] ... <filesystem|volume>@<snap> ...", True),  # 0.7
    ("snapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...", True),  # 2.x
])
def test_multi_snapshot_is_read_off_the_snapshot_usage(line: str, multi: bool) -> None:
    usage = parse_usage(f"usage: zfs command args ...\n\t{line}\n\tlist [-rH]\n")
    assert capabilities_from_usage(usage, stateless=True).multi_snapshot is multi
    assert capabilities_from_usage(parse_usage(OPENZFS_USAGE), stateless=True).multi_snapshot


def _rows(name: str, kind: str, guid: str, txg: int, selector: str | None = None) -> str:
    props = {"type": kind, "guid": guid, "creation": "1700000000", "createtxg": str(txg),
             "used": "0", "referenced": "1024", "userrefs": "0" if kind == "snapshot" else "-"}
    if selector is not None:
        props["x:sel"] = selector
    return "".join(f"{name}\t{p}\t{v}\n" for p, v in props.items())


LISTING = (_rows("t/r", "filesystem", "1", 5, "-") + _rows("t/r@late", "snapshot", "2", 9, "-")
           + _rows("t/r@early", "snapshot", "3", 7, "-")
           + _rows("t/r/z", "volume", "4", 8, "on") + _rows("t/r/b", "filesystem", "6", 6, "on")
           + _rows("t/r#mark", "bookmark", "3", 7, "-")
           + _rows("t/r/a", "filesystem", "5", 6, "off"))


def test_the_listing_is_parsed_into_tree_order() -> None:
    listing = tree.parse_tree("t/r", LISTING, "x:sel")
    assert [(d.name, d.type, d.selector) for d in listing.datasets] == [
        ("t/r", "filesystem", None), ("t/r/a", "filesystem", "off"),
        ("t/r/b", "filesystem", "on"), ("t/r/z", "volume", "on")]
    assert [s.label for s in listing.datasets[0].snapshots] == ["early", "late"]


@pytest.mark.parametrize("bad", [
    "t/r\tx:sel\tline\nbreak\n",  # a continuation line
    _rows("t/r/a", "filesystem", "666", 1),  # a dataset's rows twice: one is a forgery
    _rows("t/other", "filesystem", "7", 1),  # outside the root
    _rows("t/r-b", "filesystem", "7", 1),  # outside too, though its name starts alike
    "t/r/a\tmounted\tyes\n",  # a property not asked for
])
def test_a_listing_with_forged_or_stray_lines_is_refused(bad: str) -> None:
    with pytest.raises(BackendError, match="unexpected line in the listing of t/r"):
        tree.parse_tree("t/r", LISTING + bad, "x:sel")


def test_tree_helpers() -> None:
    assert tree.common_ancestor(["p/a/b/c", "p/a/b", "p/a/bc"]) == "p/a"
    assert tree.common_ancestor(["p/a"]) == "p/a"
    assert list(tree.chunks(["aaaa", "bb", "cc", "d"], budget=8)) == [["aaaa", "bb"],
                                                                     ["cc", "d"]]
    assert sorted(["p/a-b", "p/a/b", "p/a", "p/a.c"], key=tree.tree_order) == [
        "p/a", "p/a/b", "p/a-b", "p/a.c"]
    assert tree.in_tree("p/a", "p/a/b@s") and not tree.in_tree("p/a", "p/a-b")


class Scripted:
    """A runner that prints ``usage`` for a bare ``zfs``, answers other commands from
    ``answers`` by prefix (success with no output by default), and records them."""

    server = "scripted"

    def __init__(self, usage: str, answers: dict[str, CommandResult]) -> None:
        self.usage = usage
        self.answers = {"zfs version": CommandResult(1, "", ""), **answers}
        self.commands: list[list[str]] = []

    async def run(self, argv: Any, *, check: bool = True) -> CommandResult:
        self.commands.append(list(argv))
        if list(argv) == ["zfs"]:
            return CommandResult(2, "", self.usage)
        line = " ".join(argv)
        return next((answer for prefix, answer in self.answers.items()
                     if line.startswith(prefix)), CommandResult(0, "", ""))


async def _backend(answers: dict[str, CommandResult], usage: str = OPENZFS_USAGE
                   ) -> tuple[ZfsBackend, Scripted]:
    runner = Scripted(usage, answers)
    backend = ZfsBackend(runner)  # type: ignore[arg-type]
    await backend.probe()
    runner.commands.clear()
    return backend, runner


TREE = "t/r\nt/r/a\nt/r/a/x\nt/r/b\n"


async def test_one_command_names_every_member_where_zfs_takes_several() -> None:
    backend, runner = await _backend({})
    assert backend.capabilities.multi_snapshot
    await backend.snapshot_tree("t/r", "c1", ["t/r/b", "t/r/a", "t/r/a"])
    assert runner.commands == [["zfs", "snapshot", "t/r/a@c1", "t/r/b@c1"]]


async def test_too_many_names_for_one_command_take_the_recursive_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "MAX_ARGV_BYTES", 16)
    backend, runner = await _backend({"zfs list": CommandResult(0, TREE, "")})
    await backend.snapshot_tree("t/r", "c1", ["t/r/a", "t/r/b", "t/r"])
    assert runner.commands == [
        ["zfs", "snapshot", "-r", "t/r@c1"],
        ["zfs", "list", "-t", "filesystem,volume", "-H", "-o", "name", "-r", "t/r"],
        ["zfs", "destroy", "t/r/a/x@c1"]]


async def test_without_multi_snapshot_the_common_ancestor_is_snapshotted() -> None:
    usage = OPENZFS_USAGE.replace("<filesystem|volume>@<snap> ...", "<filesystem@snapname>")
    backend, runner = await _backend(
        {"zfs list": CommandResult(0, "t/r/a\nt/r/a/x\nt/r/a/y\n", "")}, usage)
    assert not backend.capabilities.multi_snapshot
    await backend.snapshot_tree("t/r", "c1", ["t/r/a/x", "t/r/a"])
    assert runner.commands[0] == ["zfs", "snapshot", "-r", "t/r/a@c1"]
    assert runner.commands[2:] == [["zfs", "destroy", "t/r/a/y@c1"]]
    runner.commands.clear()
    await backend.snapshot_tree("t/r", "c2", ["t/r/a/x"])  # one member: no -r
    assert runner.commands == [["zfs", "snapshot", "t/r/a/x@c2"]]


async def test_the_listing_is_one_command_without_bookmarks() -> None:
    backend, runner = await _backend({"zfs get": CommandResult(0, LISTING, "")})
    listing = await backend.tree("t/r", selector="x:sel")
    assert [d.name for d in listing.datasets] == ["t/r", "t/r/a", "t/r/b", "t/r/z"]
    assert [s.name for s in listing.datasets[0].snapshots] == ["t/r@early", "t/r@late"]
    assert runner.commands == [["zfs", "get", "-r", "-Hp", "-t", "filesystem,volume,snapshot",
                                "-o", "name,property,value",
                                "type,guid,creation,createtxg,used,referenced,userrefs,cerssd:origin,x:sel",
                                "t/r"]]


# zfs-fuse


@pytest.fixture
def backend(zfs_fuse: None) -> ZfsBackend:
    return ZfsBackend(LocalRunner("local"))


async def test_zfs_fuse_takes_one_name_per_snapshot_as_probed(backend: ZfsBackend,
                                                            pool: str) -> None:
    assert not (await backend.probe()).multi_snapshot
    zfs("create", f"{pool}/a")
    zfs("create", f"{pool}/b")
    refused = zfs("snapshot", f"{pool}/a@x", f"{pool}/b@x", check=False)
    assert refused.returncode != 0 and "too many arguments" in refused.stderr


async def test_a_line_break_in_a_selector_value_refuses_the_listing(backend: ZfsBackend,
                                                                    pool: str) -> None:
    await backend.probe()
    zfs("create", f"{pool}/a")
    zfs("create", f"{pool}/b")
    zfs("set", f"x:sel=on\n{pool}/b\tguid\t1", f"{pool}/a")
    with pytest.raises(BackendError, match=f"unexpected line in the listing of {pool}"):
        await backend.tree(pool, selector="x:sel")
    listing = await backend.tree(pool)  # without that property the listing is fine
    assert [d.name for d in listing.datasets] == [pool, f"{pool}/a", f"{pool}/b"]


async def test_datasets_alone_facts_of_named_snapshots_and_pins_in_few_commands(
        backend: ZfsBackend, pool: str) -> None:
    """What a steady tree sync uses instead of listings: the datasets without their
    snapshots, the facts of snapshots by name, pins by name or recursively, and a
    label's snapshots destroyed from every dataset at once (all or none)."""
    await backend.probe()
    for name in ("a", "a/c", "b"):
        zfs("create", f"{pool}/{name}")
    zfs("set", "x:sel=on", f"{pool}/a")
    zfs("snapshot", "-r", f"{pool}@s1")
    zfs("snapshot", "-r", f"{pool}@s2")
    listing = await backend.tree(pool, selector="x:sel", snapshots=False)
    assert [(d.name, d.selector, d.snapshots) for d in listing.datasets] == [
        (pool, None, ()), (f"{pool}/a", "on", ()), (f"{pool}/a/c", "on", ()),
        (f"{pool}/b", None, ())]
    assert listing.get(f"{pool}/a") is not None and listing.get(f"{pool}/a").guid.isdigit()

    names = [f"{pool}/a@s2", f"{pool}/b@s2", f"{pool}/gone@s2"]
    facts = await backend.snapshot_facts(names)
    assert set(facts) == {f"{pool}/a@s2", f"{pool}/b@s2"}
    assert facts[f"{pool}/a@s2"].guid == (await backend.snapshot(f"{pool}/a@s2")).guid

    every = [f"{pool}@s1", f"{pool}/a@s1", f"{pool}/a/c@s1", f"{pool}/b@s1"]
    await backend.pin_many(every, "lab1", whole=f"{pool}@s1")
    assert all(s.userrefs == 1 for s in (await backend.snapshot_facts(every)).values())
    # one is released already: the recursive release is refused whole, the names serve
    await backend.unpin(f"{pool}/a@s1", "lab1")
    await backend.unpin_many(every, "lab1", whole=f"{pool}@s1")
    assert all(s.userrefs == 0 for s in (await backend.snapshot_facts(every)).values())
    await backend.pin_many([f"{pool}/b@s1"], "lab1")
    await backend.pin_many([f"{pool}/a@s1", f"{pool}/b@s1"], "lab1")  # b's is there: fine

    with pytest.raises(Busy):  # b's pin keeps every dataset's s1
        await backend.destroy_snapshot(f"{pool}@s1", recursive=True)
    assert len(await backend.snapshot_facts(every)) == 4
    await backend.unpin_many([f"{pool}/a@s1", f"{pool}/b@s1"], "lab1")
    await backend.destroy_snapshot(f"{pool}@s1", recursive=True)
    assert await backend.snapshot_facts(every) == {}

