"""Dataset trees on ZFS: one listing of a whole tree, one instant's snapshot of its members,
and the parents a member's receive needs.

**The listing** is one ``zfs get -r -Hp`` of the root: every filesystem, volume and
snapshot below it with the facts a cycle needs, and the selecting user property's
effective value (``zfs get`` prints inherited values as the dataset's own). Snapshots are
visited too, which is the point: one command instead of one ``snapshots()`` per member.
Bookmarks are left out (``-t`` where this zfs has it, and by type in any case).

A user property's value may contain a line break, and ``zfs get -H`` prints it as is: a
value could then pose as rows of other datasets. So the listing is parsed strictly: every
line must be a dataset of the tree with one of the asked-for properties, each at most
once, or the whole listing is refused with the dataset's name (never half-believed).

**The snapshot** of a tree's members is taken in one transaction, by one of:

* one ``zfs snapshot m1@L m2@L ...`` where this zfs takes several names (``multi_snapshot``:
  OpenZFS) and the names fit in one command line (``MAX_ARGV_BYTES``, far below Linux's
  2 MiB ``ARG_MAX``: about 8,000 members of 60 characters). It touches nothing else and
  needs no listing;
* otherwise (zfs-fuse, or more members than fit) ``zfs snapshot -r A@L`` on the members'
  lowest common ancestor ``A``, then one ``zfs destroy D@L`` per dataset under ``A`` that
  is not a member (zfs-fuse destroys one snapshot per command, OpenZFS several of one
  dataset only), ``DESTROY_PARALLEL`` at a time. Chunking a multi-name command would not
  be atomic, so it is never done. What this costs grows with the non-members under ``A``:
  a property that selects few of many siblings is cheap on OpenZFS, not on zfs-fuse.

Either is all-or-nothing in ZFS. Re-running it is fine: when ``L`` already exists on a
member (a daemon restarted between the snapshot and its journal) or a member is gone
(destroyed since the listing), ZFS refuses the whole command; then the members that still
exist and lack ``L`` get it (together where one command can name them), and snapshots
``L`` of non-members (a ``-r`` cut short before its clean-up) are destroyed.

**Parents** a member's receive needs are created as plain filesystems with
``canmount=off`` (zfs-fuse has no ``zfs create -u``, and ``create -p`` mounts what it
creates): never mounted, by ``zfs mount -a`` or anyone, so a parent can never be mounted
over a member received below it and hide its data; it holds no data of its own. Not
inherited, so the members below mount (when asked) as usual. An operator who wants one
mounted sets ``canmount=on``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from ..errors import AlreadyExists, BackendError, NotFound
from ..names import (
    InvalidName,
    validate_snapshot,
    validate_snapshot_label,
    validate_user_property,
    validate_volume,
)
from ..values import Capabilities, Snapshot, TreeDataset, TreeListing
from .names import ORIGIN_PROP
from .rows import snapshot_from


class ZfsBackend(Protocol):
    """What the tree functions use of ``backend.ZfsBackend`` (declared here, not imported:
    the backend imports this module)."""

    capabilities: Capabilities

    async def _run(self, *args: str, tool: Sequence[str] | None = None) -> str: ...

    async def _list(self, *args: str) -> str: ...

    async def _props(self, props: str, *names: str, depth: int | None = None,
                     recursive: bool = False, missing_ok: bool = False,
                     ) -> dict[str, dict[str, str]]: ...

    async def _get_text(self, props: str, *names: str, depth: int | None = None,
                        recursive: bool = False, missing_ok: bool = False) -> str: ...

    async def _command(self, *args: str) -> tuple[int, str]: ...

TREE_PROPS = ("type", "guid", "creation", "createtxg", "used", "referenced", "userrefs",
              ORIGIN_PROP)
#: What a listing of the datasets alone asks (``list_datasets``).
DATASET_PROPS = ("type", "guid")
DATASET_TYPES = frozenset({"filesystem", "volume"})
#: The most bytes of dataset names one ``zfs`` command line carries. Linux's ARG_MAX is
#: a quarter of the stack limit (2 MiB by default), environment included; this stays far
#: below, whatever the server's limit.
MAX_ARGV_BYTES = 512 * 1024
#: Non-members' snapshots destroyed at a time after a ``snapshot -r``. Concurrent destroys
#: share ZFS transactions: 100 of them took 4.5-4.8 s one by one on zfs-fuse here, 1.0-2.7 s
#: four at a time, 1.3-1.6 s sixteen at a time. Four is also as many commands as an SSH
#: server runs at once (``transport.ssh.MAX_SHELLS``).
DESTROY_PARALLEL = 4


def in_tree(root: str, name: str) -> bool:
    """Whether dataset, snapshot or bookmark ``name`` belongs to ``root``'s tree."""
    dataset = name.partition("@")[0].partition("#")[0]
    return dataset == root or dataset.startswith(root + "/")


def tree_order(name: str) -> tuple[str, ...]:
    """Sort key: a walk of the tree, each parent before its children and its subtree
    whole (``a``, ``a/b``, ``a-b``), siblings by name."""
    return tuple(name.split("/"))


def parse_tree(root: str, text: str, selector: str | None,
               props: Sequence[str] = TREE_PROPS) -> TreeListing:
    """The listing from ``zfs get -r -Hp -o name,property,value`` of ``props`` (and
    ``selector``) on ``root``; refused whole when a line is not what was asked for."""
    wanted = set(props) | ({selector} if selector else set())
    rows: dict[str, dict[str, str]] = defaultdict(dict)
    for line in text.splitlines():
        fields = line.split("\t", 2)
        if len(fields) != 3 or fields[1] not in wanted or not in_tree(root, fields[0]) \
                or fields[1] in rows[fields[0]]:
            raise BackendError(
                f"unexpected line in the listing of {root}: {line[:120]!r} (a line break in "
                f"a value of {selector or 'a property'} under {root}?)")
        rows[fields[0]][fields[1]] = fields[2]
    datasets: dict[str, dict[str, str]] = {}
    snapshots: dict[str, list[Snapshot]] = defaultdict(list)
    for name, values in rows.items():
        kind = values.get("type")
        if kind in DATASET_TYPES:
            datasets[name] = values
        elif kind == "snapshot" and "@" in name:
            snapshots[name.partition("@")[0]].append(snapshot_from(name, values))
    return TreeListing(root=root, datasets=tuple(
        TreeDataset(name=name, type=props["type"], guid=props["guid"],
                    selector=_selected_value(props.get(selector) if selector else None),
                    snapshots=tuple(sorted(snapshots.get(name, ()),
                                           key=lambda s: s.createtxg)))
        for name, props in sorted(datasets.items(), key=lambda item: tree_order(item[0]))))


def _selected_value(value: str | None) -> str | None:
    return None if value in (None, "", "-") else value


def common_ancestor(names: Sequence[str]) -> str:
    """The deepest dataset every one of ``names`` is or is under."""
    parts = [n.split("/") for n in names]
    shared: list[str] = []
    for level in zip(*parts, strict=False):
        if any(p != level[0] for p in level):
            break
        shared.append(level[0])
    return "/".join(shared)


def chunks(names: Iterable[str], budget: int = MAX_ARGV_BYTES) -> Iterator[list[str]]:
    """``names`` in lists of at most ``budget`` bytes of arguments each."""
    chunk: list[str] = []
    size = 0
    for name in names:
        if chunk and size + len(name) + 1 > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(name)
        size += len(name) + 1
    if chunk:
        yield chunk


async def list_tree(zfs: ZfsBackend, root: str, selector: str | None) -> TreeListing:
    validate_volume(root)
    if selector is not None:
        validate_user_property(selector)
    props = ",".join((*TREE_PROPS, *([selector] if selector else [])))
    typed = ["-t", "filesystem,volume,snapshot"] if zfs.capabilities.typed_get else []
    out = await zfs._run("get", "-r", "-Hp", *typed, "-o", "name,property,value", props, root)
    return parse_tree(root, out, selector)


async def list_datasets(zfs: ZfsBackend, root: str, selector: str | None) -> TreeListing:
    """The tree's filesystems and volumes without their snapshots, which are never
    visited: on zfs-fuse a recursive ``zfs get`` visits each snapshot (about 2 ms each
    here: 32 s for 1,000 members of 13 snapshots) where ``zfs list -t filesystem,volume``
    and a ``zfs get`` of those names alone took 1.6 s and 0.6 s. With ``get -t``
    (OpenZFS) it is one command."""
    validate_volume(root)
    if selector is not None:
        validate_user_property(selector)
    props = (*DATASET_PROPS, *([selector] if selector else []))
    if zfs.capabilities.typed_get:
        out = await zfs._run("get", "-r", "-Hp", "-t", "filesystem,volume", "-o",
                             "name,property,value", ",".join(props), root)
        return parse_tree(root, out, selector, DATASET_PROPS)
    names = await _subtree(zfs, root)
    if root not in names:
        raise NotFound(f"{root} does not exist")
    texts = [await zfs._get_text(",".join(props), *chunk, missing_ok=True)
             for chunk in chunks(names)]
    return parse_tree(root, "".join(texts), selector, DATASET_PROPS)


async def snapshot_facts(zfs: ZfsBackend, names: Sequence[str]) -> dict[str, Snapshot]:
    """The snapshots of ``names`` that exist, from ``zfs get`` of those names alone."""
    found: dict[str, Snapshot] = {}
    for name in names:
        validate_snapshot(name)
    for chunk in chunks(names):
        rows = await zfs._props(",".join(TREE_PROPS), *chunk, missing_ok=True)
        found.update((name, snapshot_from(name, p)) for name, p in rows.items()
                     if p.get("type") == "snapshot" and name in chunk and "guid" in p)
    return found


#: What ``zfs hold`` / ``zfs release`` say of a name that needs nothing done: the pin is
#: there already, is not there, or its snapshot is gone. Anything else is an error.
HOLD_NOOPS = ("tag already exists", "no such tag", "does not exist")


async def hold_many(zfs: ZfsBackend, verb: str, tag: str, snapshots: Sequence[str],
                    whole: str | None) -> None:
    """``zfs hold``/``release`` of ``tag`` on each of ``snapshots``, many names per
    command (the command goes on past a name it cannot do, and says which).

    With ``whole`` (``root@label``: the caller says ``snapshots`` are that label's of
    ``root`` and all its descendants) one ``-r`` command is tried first: 1,000 members
    took 0.5 s that way and 4.5 s by name on zfs-fuse here. ZFS does a recursive one all
    or nothing, so where one name is already done it fails whole and the names serve.
    """
    for name in snapshots:
        validate_snapshot(name)
    if not snapshots:
        return
    if whole is not None:
        code, _ = await zfs._command(verb, "-r", tag, str(validate_snapshot(whole)))
        if code == 0:
            return
    for chunk in chunks(snapshots):
        code, stderr = await zfs._command(verb, tag, *chunk)
        problems = [line for line in stderr.splitlines()
                    if line.strip() and not any(n in line for n in HOLD_NOOPS)]
        if code != 0 and problems:
            raise BackendError(f"zfs {verb} {tag}: {problems[0]}")


async def snapshot_tree(zfs: ZfsBackend, root: str, label: str,
                        members: Sequence[str]) -> None:
    validate_volume(root)
    validate_snapshot_label(label)
    chosen = sorted(set(members), key=tree_order)
    for member in chosen:
        validate_snapshot(f"{validate_volume(member)}@{label}")
        if not in_tree(root, member):
            raise InvalidName(f"{member} is not in the tree of {root}")
    if not chosen:
        return
    try:
        await _take(zfs, chosen, label)
    except (AlreadyExists, NotFound):
        await _complete(zfs, chosen, label)


async def _take(zfs: ZfsBackend, members: list[str], label: str) -> None:
    """One transaction: the snapshot ``label`` of every member, of nothing else after."""
    names = [f"{m}@{label}" for m in members]
    if len(names) == 1 or (zfs.capabilities.multi_snapshot
                           and sum(len(n) + 1 for n in names) <= MAX_ARGV_BYTES):
        await zfs._run("snapshot", *names)
        return
    top = common_ancestor(members)
    await zfs._run("snapshot", "-r", f"{top}@{label}")
    wanted = set(members)
    await _destroy(zfs, [d for d in await _subtree(zfs, top) if d not in wanted], label)


async def _complete(zfs: ZfsBackend, members: list[str], label: str) -> None:
    """Bring a partly done (or re-run) snapshot of ``members`` to the exact result: the
    existing members that lack ``label`` get it, non-members lose it."""
    top = common_ancestor(members)
    present = await _subtree(zfs, top)
    having = await _having(zfs, present, label)
    wanted = set(members)
    missing = [m for m in members if m in present and m not in having]
    if missing:
        names = [f"{m}@{label}" for m in missing]
        if zfs.capabilities.multi_snapshot and sum(len(n) + 1 for n in names) <= MAX_ARGV_BYTES:
            await zfs._run("snapshot", *names)
        else:  # each alone: the members that had it were taken at another instant anyway
            for name in names:
                with contextlib.suppress(AlreadyExists):
                    await zfs._run("snapshot", name)
    await _destroy(zfs, sorted(having - wanted, key=tree_order), label)


async def _destroy(zfs: ZfsBackend, datasets: Sequence[str], label: str) -> None:
    """Snapshot ``label`` of each of ``datasets``, ``DESTROY_PARALLEL`` at a time; one
    that is not there (a dataset created after the snapshot) is fine."""
    gate = asyncio.Semaphore(DESTROY_PARALLEL)

    async def destroy(dataset: str) -> None:
        async with gate:
            with contextlib.suppress(NotFound):
                await zfs._run("destroy", f"{dataset}@{label}")

    results = await asyncio.gather(*(destroy(d) for d in datasets), return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed


async def _subtree(zfs: ZfsBackend, top: str) -> list[str]:
    """``top`` and every filesystem and volume under it (no snapshot is visited); empty
    when ``top`` is gone."""
    out = await zfs._list("-H", "-o", "name", "-r", top)
    return [line for line in out.splitlines() if line]


async def _having(zfs: ZfsBackend, datasets: Sequence[str], label: str) -> set[str]:
    """Which of ``datasets`` have a snapshot ``label``: ``zfs get`` of those names only."""
    found: set[str] = set()
    for chunk in chunks(f"{d}@{label}" for d in datasets):
        rows = await zfs._props("type", *chunk, missing_ok=True)
        found.update(name.partition("@")[0] for name, p in rows.items()
                     if p.get("type") == "snapshot")
    return found


async def create_parents(zfs: ZfsBackend, volume: str) -> None:
    parts = validate_volume(volume).split("/")
    ancestors = ["/".join(parts[:depth]) for depth in range(2, len(parts))]
    if not ancestors:
        return
    out = await zfs._list("-H", "-o", "name", *ancestors)
    present = set(out.splitlines())
    for ancestor in ancestors:
        if ancestor not in present:
            with contextlib.suppress(AlreadyExists):  # made meanwhile (a sibling's receive)
                await zfs._run("create", "-o", "canmount=off", ancestor)
