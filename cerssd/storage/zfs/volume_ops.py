"""Cinder's volume operations on ZFS: create, clone, resize, dependents, capacity.

Placeholders until issue 16's volume operations land: each says so rather than doing
something half-way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BackendError
from ..values import PoolCapacity, Volume

if TYPE_CHECKING:
    from .backend import ZfsBackend


def _not_yet(what: str) -> BackendError:
    return BackendError(f"{what} is not available on ZFS yet")


async def create_volume(zfs: ZfsBackend, volume: str, size: int | None) -> Volume:
    raise _not_yet("creating a volume")


async def clone_volume(zfs: ZfsBackend, snapshot: str, volume: str) -> Volume:
    raise _not_yet("cloning a volume")


async def resize_volume(zfs: ZfsBackend, volume: str, size: int) -> None:
    raise _not_yet("resizing a volume")


async def dependents(zfs: ZfsBackend, volume: str) -> list[str]:
    raise _not_yet("listing a volume's dependents")


async def capacity(zfs: ZfsBackend) -> list[PoolCapacity]:
    raise _not_yet("capacity")


async def snapshot_view(zfs: ZfsBackend, snapshot: str) -> str:
    raise _not_yet("a snapshot's file view")


async def volume_path(zfs: ZfsBackend, volume: str) -> str:
    raise _not_yet("a volume's file path")
