"""Cinder's volume operations on ZFS: create, clone, resize, dependents, capacity.

Every name is validated before a command is built. What a flavour lacks is said, not
worked around: zfs-fuse has no zvols (``capabilities.zvols``; its ``zfs create -V``
aborts), so a block volume is refused before any command runs.

``dependents`` and ``capacity`` read whole listings of a pool's filesystems and
volumes, never of its snapshots (``zfs list -t filesystem,volume`` does not visit
them), in as few commands as the flavour allows: OpenZFS's ``zfs list -p`` gives exact
values in one, zfs-fuse's ``list`` prints them rounded, so there one ``zfs get -Hp`` of
the listed names (no ``-r``: snapshots stay unvisited) follows.
"""

from __future__ import annotations

import re
from typing import Protocol

from ...transport.runner import CommandFailed, Runner
from ..errors import BackendError
from ..names import InvalidName, validate_snapshot, validate_volume
from ..values import PoolCapacity, Volume
from . import tree
from .rows import to_int
from .tree import chunks, in_tree, tree_order


class ZfsBackend(tree.ZfsBackend, Protocol):
    """What the volume operations use of ``backend.ZfsBackend`` (declared here, not
    imported: the backend imports this module)."""

    server: str
    runner: Runner
    version: str
    #: Whether ``zpool list -p`` is taken here; None until tried.
    exact_pool_list: bool | None

    @property
    def zpool(self) -> list[str]: ...

    async def volume(self, name: str) -> Volume: ...

    def pool_of(self, volume: str) -> str: ...

#: The facts ``capacity`` reads of each filesystem and volume.
_SPACE_PROPS = ("type", "volsize", "quota", "usedbydataset", "usedbysnapshots")
_UNITS = {"": 0, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60, "Z": 70}


async def create_volume(zfs: ZfsBackend, volume: str, size: int | None) -> Volume:
    """``zfs create`` (a filesystem, mounted where the pool mounts it), or with ``size``
    ``zfs create -V`` (a zvol, where this ZFS has them)."""
    _below_pool(volume)
    if size is not None:
        _check_size(size)
        if not zfs.capabilities.zvols:
            raise BackendError(f"server {zfs.server} has no block volumes (zvols): "
                               f"ZFS there ({zfs.version}) cannot create {volume} with a size")
        await zfs._run("create", "-V", str(size), volume)
    else:
        await zfs._run("create", volume)
    return await zfs.volume(volume)


async def clone_volume(zfs: ZfsBackend, snapshot: str, volume: str) -> Volume:
    """``zfs clone``: writable at once, sharing the snapshot's blocks (it depends on the
    snapshot from now on: ``dependents`` of the origin volume name it)."""
    pool = zfs.pool_of(validate_snapshot(snapshot).volume)
    _below_pool(volume)
    if zfs.pool_of(volume) != pool:
        raise InvalidName(f"{volume}: a clone lives in its snapshot's pool ({pool})")
    await zfs._run("clone", snapshot, volume)
    return await zfs.volume(volume)


async def resize_volume(zfs: ZfsBackend, volume: str, size: int) -> None:
    """``volsize`` of a zvol, ``quota`` of a filesystem. Whether it grows is the caller's
    rule (ZFS would shrink either one as asked)."""
    _check_size(size)
    current = await zfs.volume(volume)
    prop = "volsize" if current.type == "volume" else "quota"
    await zfs._run("set", f"{prop}={size}", volume)


async def dependents(zfs: ZfsBackend, volume: str) -> list[str]:
    """What a destroy of ``volume`` would take or break, from one listing of its pool:
    the datasets below it (tree order), then clones of its snapshots or of its
    descendants' (and what is below them), then clones of those, and so on. Destroying
    them in reverse order never meets one that still has a dependent."""
    validate_volume(volume)
    out = await zfs._list("-H", "-o", "name,origin", "-r", zfs.pool_of(volume))
    rows = [tuple(line.split("\t", 1)) for line in out.splitlines() if "\t" in line]
    names = sorted((name for name, _ in rows), key=tree_order)
    doomed = {n for n in names if in_tree(volume, n)}
    if volume not in doomed:
        return []
    found = [n for n in names if n in doomed and n != volume]
    while True:
        clones = sorted((n for n, origin in rows if n not in doomed
                         and origin.partition("@")[0] in doomed), key=tree_order)
        if not clones:
            return found
        for clone in clones:
            if clone in doomed:  # below a clone found in this same round
                continue
            subtree = [n for n in names if in_tree(clone, n) and n not in doomed]
            doomed.update(subtree)
            found.extend(subtree)


async def capacity(zfs: ZfsBackend) -> list[PoolCapacity]:
    """Each pool's size, allocated and free space (``zpool list``: exact with ``-p``,
    else as printed, rounded), and what its datasets are provisioned for."""
    pools = await _pool_space(zfs)
    provisioned = _provisioned(await _dataset_space(zfs))
    return [PoolCapacity(pool=name, total=total, free=free, allocated=alloc,
                         provisioned=provisioned.get(name, 0), exact=exact)
            for name, total, alloc, free, exact in pools]


async def _pool_space(zfs: ZfsBackend) -> list[tuple[str, int, int, int, bool]]:
    """``zpool list -Hp``; zfs-fuse's has no ``-p`` ("invalid option 'p'"), which is
    found out once and remembered, so later reads take one command."""
    fields = ["-o", "name,size,allocated,free"]
    if zfs.exact_pool_list is not False:
        argv = [*zfs.zpool, "list", "-Hp", *fields]
        result = await zfs.runner.run(argv, check=False)
        if result.returncode == 0:
            zfs.exact_pool_list = True
            return _pool_rows(result.stdout, exact=True)
        if "invalid option" not in result.stderr:
            raise BackendError((result.stderr.strip() or str(
                CommandFailed(argv, result.returncode, result.stderr))).splitlines()[0])
        zfs.exact_pool_list = False
    out = await zfs._run("list", "-H", *fields, tool=zfs.zpool)
    return _pool_rows(out, exact=False)


def _pool_rows(text: str, *, exact: bool) -> list[tuple[str, int, int, int, bool]]:
    rows = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 4:
            name, size, alloc, free = fields
            rows.append((name, parse_size(size), parse_size(alloc), parse_size(free), exact))
    return rows


async def _dataset_space(zfs: ZfsBackend) -> dict[str, dict[str, str]]:
    """``_SPACE_PROPS`` of every filesystem and volume of every pool."""
    props = ",".join(_SPACE_PROPS)
    if zfs.capabilities.parsable_list:
        out = await zfs._list("-Hp", "-o", f"name,{props}")
        return {f[0]: dict(zip(_SPACE_PROPS, f[1:], strict=True))
                for f in (line.split("\t") for line in out.splitlines())
                if len(f) == len(_SPACE_PROPS) + 1}
    names = (await zfs._list("-H", "-o", "name")).splitlines()
    rows: dict[str, dict[str, str]] = {}
    for chunk in chunks(names):
        rows.update(await zfs._props(props, *chunk, missing_ok=True))
    return rows


def _provisioned(rows: dict[str, dict[str, str]]) -> dict[str, int]:
    """Per pool, what its datasets may grow to: a zvol's ``volsize``, a filesystem's
    ``quota`` (which caps everything below it too, so those are not counted again),
    else the filesystem's own data and snapshots (``usedbydataset + usedbysnapshots``;
    its children count for themselves)."""
    totals: dict[str, int] = {}
    capped: set[str] = set()
    for name in sorted(rows, key=tree_order):
        p = rows[name]
        if _under_any(name, capped):
            continue
        if p.get("type") == "volume":
            value = to_int(p.get("volsize"))
        elif to_int(p.get("quota")):
            value = to_int(p.get("quota"))
            capped.add(name)
        else:
            value = to_int(p.get("usedbydataset")) + to_int(p.get("usedbysnapshots"))
        pool = name.split("/")[0]
        totals[pool] = totals.get(pool, 0) + value
    return totals


def _under_any(name: str, roots: set[str]) -> bool:
    parts = name.split("/")
    return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))


def parse_size(text: str) -> int:
    """A size as ``zpool list`` prints it: exact bytes with ``-p``, else rounded with a
    binary unit ("504M", "1.50G", "568K", "0")."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([BKMGTPEZ]?)", text.strip())
    if m is None:
        return 0  # "-": not applicable (a pool that is not imported fully)
    return int(float(m.group(1)) * (1 << _UNITS[m.group(2)]))


def _below_pool(volume: str) -> None:
    if "/" not in validate_volume(volume):
        raise InvalidName(f"{volume!r} is a pool: a volume is pool/name")


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BackendError(f"a size is a positive number of bytes, not {size!r}")
