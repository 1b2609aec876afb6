"""One listing of a server's subvolumes, read into volumes and snapshots.

``btrfs subvolume list -u -R -q -c -g`` prints every subvolume of the filesystem with its
generation, generation at creation (``cgen``), UUID, received UUID and parent UUID; the
same with ``-s`` adds the creation time (``otime``) of those that are snapshots. Both run
in one command (``LIST_SCRIPT``), ``TZ=UTC`` so the times read back as they are stored,
with each snapshot's ``user.cerssd.origin`` (the source snapshot's guid, where the generic
path made it: ``create_snapshot(origin=...)``).

**Identity.** A snapshot's ``guid`` is its *received UUID* when it was received, else its
own UUID. ``btrfs send`` names a subvolume (and an incremental's parent) by that same
rule, and ``btrfs receive`` finds the parent by it, so a snapshot and every copy of it,
however many hops away, share one guid: the planner's guid rules hold unchanged.

**Order.** ``cgen`` (the transaction that created the snapshot) plays ``createtxg``;
``creation`` is the ``otime``. A full receive's subvolume is no snapshot and has no
``otime`` in the listing: its root directory's ctime (set as the receive ends, never
changed on a read-only subvolume) stands in, from one ``stat`` naming all such.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..values import Snapshot, Volume
from .layout import Layout

LIST_SCRIPT = (
    'export TZ=UTC; btrfs subvolume list -a -u -R -q -c -g "$1" && echo "#snapshots" && '
    'btrfs subvolume list -a -s -u -R -q -c -g "$1" && echo "#readonly" && '
    'btrfs subvolume list -a -r -u -R -q -c -g "$1" && echo "#qgroups" && '
    '{ btrfs qgroup show -re --raw "$1" 2>/dev/null; true; }; echo "#origins"; '
    # a subvolume's root directory is inode 256: each snapshot's own directory, read
    # and pruned (never walked into), in one getfattr for all of them
    '{ find "$1/.cerssd-snapshots" -mindepth 1 -inum 256 -prune -exec getfattr '
    '--absolute-names -n user.cerssd.origin {} + 2>/dev/null; true; }')

#: With ``-a`` every path is relative to the top level, some spelt with this prefix. (Without
#: it, the subvolumes directly inside the listed one are printed relative to *it*.)
FS_TREE = "<FS_TREE>/"
_ROW = re.compile(
    r"ID (\d+) gen (\d+) cgen (\d+) top level (\d+)(?: otime (\S+ \S+))?"
    r" parent_uuid (\S+)\s+received_uuid (\S+)\s+uuid (\S+) path (.*)")


@dataclass(frozen=True)
class Row:
    """One subvolume as listed."""

    id: int
    gen: int
    cgen: int
    parent_uuid: str
    received_uuid: str
    uuid: str
    path: str
    otime: int | None = None
    readonly: bool = False
    #: From the subvolume's qgroup where quotas are on (else 0, 0, None).
    referenced: int = 0
    exclusive: int = 0
    limit: int | None = None
    #: ``user.cerssd.origin``: the guid of the snapshot the generic path copied, or "".
    origin: str = ""

    @property
    def guid(self) -> str:
        return self.received_uuid if self.received_uuid != "-" else self.uuid


def parse_rows(text: str, relative: Callable[[str], str] = lambda path: path) -> list[Row]:
    """Rows of the first listing, with the second's ``otime`` where it has one, and the
    origins (by ``relative``: an absolute path as the listing prints it)."""
    first, _, rest = text.partition("#snapshots")
    second, _, rest = rest.partition("#readonly")
    third, _, rest = rest.partition("#qgroups")
    fourth, _, fifth = rest.partition("#origins")
    origins = {relative(path): value for path, value in parse_origins(fifth).items()}
    otimes = {r.id: r.otime for r in _rows(second)}
    readonly = {r.id for r in _rows(third)}
    space = _qgroups(fourth)
    return [Row(r.id, r.gen, r.cgen, r.parent_uuid, r.received_uuid, r.uuid, r.path,
                otimes.get(r.id), r.id in readonly, *space.get(r.id, (0, 0, None)),
                origin=origins.get(r.path, ""))
            for r in _rows(first)]


def parse_origins(text: str) -> dict[str, str]:
    """``getfattr`` output: absolute path -> ``user.cerssd.origin``."""
    found: dict[str, str] = {}
    path = None
    for line in text.splitlines():
        if line.startswith("# file: "):
            path = line[len("# file: "):]
        elif path is not None and line.startswith('user.cerssd.origin="') \
                and line.endswith('"'):
            found[path] = line[len('user.cerssd.origin="'):-1]
    return found


def _qgroups(text: str) -> dict[int, tuple[int, int, int | None]]:
    """``btrfs qgroup show -re --raw``: level-0 qgroups (one per subvolume, by id) as
    (referenced, exclusive, limit on referenced or None)."""
    found: dict[int, tuple[int, int, int | None]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].startswith("0/") and fields[0][2:].isdigit() \
                and fields[1].isdigit() and fields[2].isdigit():
            found[int(fields[0][2:])] = (int(fields[1]), int(fields[2]),
                                         int(fields[3]) if fields[3].isdigit() else None)
    return found


def _rows(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        m = _ROW.fullmatch(line.strip())
        if m is None:
            continue
        otime = calendar.timegm(time.strptime(m[5], "%Y-%m-%d %H:%M:%S")) if m[5] else None
        rows.append(Row(int(m[1]), int(m[2]), int(m[3]), m[6], m[7], m[8],
                        m[9].removeprefix(FS_TREE), otime))
    return rows


@dataclass(frozen=True)
class Listing:
    """The root's volumes and snapshots by name (each snapshot's volume oldest first)."""

    volumes: dict[str, Row]
    snapshots: dict[str, list[tuple[str, Row]]]

    def snapshot_rows(self, volume: str) -> list[tuple[str, Row]]:
        return self.snapshots.get(volume, [])


def sort_listing(layout: Layout, rows: list[Row]) -> Listing:
    volumes: dict[str, Row] = {}
    snapshots: dict[str, list[tuple[str, Row]]] = {}
    for row in rows:
        named = layout.name_of(row.path)
        if named is None:
            continue
        kind, name = named
        if kind == "volume":
            volumes[name] = row
        else:
            snapshots.setdefault(name.partition("@")[0], []).append((name, row))
    for snaps in snapshots.values():
        snaps.sort(key=lambda pair: (pair[1].cgen, pair[1].id))
    return Listing(dict(sorted(volumes.items())), snapshots)


def snapshot_of(name: str, row: Row) -> Snapshot:
    volume, _, label = name.partition("@")
    return Snapshot(name=name, volume=volume, label=label, guid=row.guid,
                    creation=row.otime or 0, used=row.exclusive, referenced=row.referenced,
                    userrefs=0, createtxg=row.cgen, origin=row.origin)


def volume_of(name: str, row: Row) -> Volume:
    """A subvolume is mounted wherever its filesystem is: btrfs has no per-volume mount."""
    return Volume(name=name, type="filesystem", guid=row.uuid, creation=row.otime or 0,
                  used=row.exclusive, referenced=row.referenced, readonly=row.readonly,
                  mounted=True, size=row.limit)
