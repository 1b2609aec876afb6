"""Cinder's volume operations on btrfs: create, clone, revert, extend, dependents, capacity.

* create: ``btrfs subvolume create`` (btrfs has no block volumes: a ``size`` is refused);
* clone: a writable snapshot of the read-only snapshot (``btrfs subvolume snapshot``);
* revert (``rollback``): the volume is swapped for a writable snapshot of the target
  snapshot by two renames (nested subvolumes carried over, the read-only flag kept) and
  every later snapshot deleted; ``streams.RECEIVE_SCRIPT`` swaps a volume the same way;
* extend (``resize_volume``): a qgroup limit, which needs quotas enabled on the
  filesystem (``btrfs quota enable``); without them a clear error says so;
* dependents: volumes nested below it, and clones of its snapshots (a subvolume whose
  parent UUID is one of its snapshots' UUIDs), from the one listing;
* capacity: ``btrfs filesystem usage -b`` for total, free and allocated; provisioned is
  the sum of the qgroup limits where quotas are on (a volume without one counts what it
  uses), else what is allocated.
"""

from __future__ import annotations

import re
from typing import Protocol

from ...transport.runner import Runner
from ..errors import AlreadyExists, BackendError, NotFound
from ..values import PoolCapacity, Volume
from .layout import Layout, check_snapshot, check_volume
from .listing import Listing


class BtrfsBackend(Protocol):
    """What the volume operations use of ``backend.BtrfsBackend`` (declared here, not
    imported: the backend imports this module)."""

    server: str
    runner: Runner
    layout: Layout

    async def _run(self, *argv: str) -> str: ...

    async def _sh(self, text: str, *args: str) -> str: ...

    async def listing(self) -> Listing: ...

    async def volume(self, name: str) -> Volume: ...

    async def exists(self, volume: str) -> bool: ...

    async def target_problem(self, volume: str) -> str | None: ...

    async def has_snapshot(self, name: str) -> bool: ...

ROLLBACK_SCRIPT = r'''
set -u
vol=$1 snap=$2 new=$3 old=$4; shift 4
ro=$(btrfs property get -ts "$vol" ro) || exit 1
btrfs subvolume snapshot "$snap" "$new" >/dev/null || exit 1
[ "$ro" = "ro=true" ] && btrfs property set -ts "$vol" ro false
for n in $(cd "$vol" && find . -mindepth 1 -xdev -inum 256 -prune -print); do
  rmdir "$new/$n" 2>/dev/null
  mkdir -p "$(dirname "$new/$n")" && mv "$vol/$n" "$new/$n" || exit 1
done
mv "$vol" "$old" && mv "$new" "$vol" || exit 1
# A read-only subvolume cannot move between directories: read-only once in place.
[ "$ro" = "ro=true" ] && btrfs property set -ts "$vol" ro true
btrfs subvolume delete "$old" >/dev/null || exit 1
for later do
  btrfs subvolume delete "$later" >/dev/null && rmdir "$(dirname "$later")" || exit 1
done
'''


async def create_volume(b: BtrfsBackend, volume: str, size: int | None) -> Volume:
    check_volume(volume)
    if size is not None:
        raise BackendError(f"btrfs on {b.server} has no block volumes: create {volume} "
                           "without a size (a filesystem), or on a ZFS server")
    if "/" not in volume:
        raise AlreadyExists(f"{volume} is the pool's root on {b.server}")
    problem = await b.target_problem(volume)
    if problem:
        raise NotFound(problem)
    await b._run("btrfs", "subvolume", "create", b.layout.volume_path(volume))
    return await b.volume(volume)


async def clone_volume(b: BtrfsBackend, snapshot: str, volume: str) -> Volume:
    check_snapshot(snapshot)
    check_volume(volume)
    if await b.exists(volume):
        raise AlreadyExists(f"volume {volume} already exists on {b.server}")
    if not await b.has_snapshot(snapshot):
        raise NotFound(f"snapshot {snapshot} does not exist on {b.server}")
    if problem := await b.target_problem(volume):
        raise NotFound(problem)
    await b._run("btrfs", "subvolume", "snapshot", b.layout.snapshot_path(snapshot),
                 b.layout.volume_path(volume))
    return await b.volume(volume)


async def rollback(b: BtrfsBackend, snapshot: str) -> None:
    snap = check_snapshot(snapshot)
    listing = await b.listing()
    rows = listing.snapshot_rows(snap.volume)
    names = [n for n, _ in rows]
    if snapshot not in names:
        raise NotFound(f"snapshot {snapshot} does not exist on {b.server}")
    later = [b.layout.snapshot_path(n) for n in names[names.index(snapshot) + 1:]]
    stage = b.layout.stage_dir(snap.volume)
    await b._sh('mkdir -p "$1"', stage)
    await b._sh(ROLLBACK_SCRIPT, b.layout.volume_path(snap.volume),
                b.layout.snapshot_path(snapshot), f"{stage}/.volume", f"{stage}/.old", *later)


async def resize_volume(b: BtrfsBackend, volume: str, size: int) -> None:
    check_volume(volume)
    if size <= 0:
        raise BackendError(f"a size must be positive, not {size}")
    result = await b.runner.run(["btrfs", "qgroup", "limit", str(size),
                                 b.layout.volume_path(volume)], check=False)
    if result.returncode != 0:
        if "quota" in result.stderr.lower() and "not enabled" in result.stderr.lower():
            raise BackendError(f"extending {volume} on {b.server} needs btrfs quotas: "
                               f"run btrfs quota enable {b.layout.root}")
        raise BackendError(result.stderr.strip() or f"btrfs qgroup limit failed on {volume}")


async def dependents(b: BtrfsBackend, volume: str) -> list[str]:
    check_volume(volume)
    listing = await b.listing()
    if volume not in listing.volumes:
        raise NotFound(f"volume {volume} does not exist on {b.server}")
    own = {row.uuid for _, row in listing.snapshot_rows(volume)}
    below = [v for v in listing.volumes if v.startswith(volume + "/")]
    clones = [v for v, row in listing.volumes.items()
              if row.parent_uuid in own and v not in below and v != volume]
    return sorted(below + clones)


async def capacity(b: BtrfsBackend) -> list[PoolCapacity]:
    root = b.layout.root
    usage = await b._run("btrfs", "filesystem", "usage", "-b", root)
    facts: dict[str, int] = {}
    for line in usage.splitlines():
        m = re.match(r"\s*([A-Za-z ()]+):\s+(\d+)", line)
        if m:
            facts.setdefault(m[1].strip(), int(m[2]))
    total = facts.get("Device size", 0)
    allocated = facts.get("Used", 0)
    free = facts.get("Free (estimated)", max(total - allocated, 0))
    provisioned = allocated
    qgroups = await b.runner.run(["btrfs", "qgroup", "show", "-re", "--raw", root],
                                 check=False)
    if qgroups.returncode == 0:
        provisioned = 0
        for line in qgroups.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0].startswith("0/") and fields[1].isdigit():
                limit = fields[3]
                provisioned += int(limit) if limit.isdigit() else int(fields[1])
    return [PoolCapacity(pool=b.layout.pool, total=total, free=free, allocated=allocated,
                         provisioned=provisioned)]

