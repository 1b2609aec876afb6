"""Fencing, promoting and mounting many datasets at once: a tree's failover.

A tree's failover makes every member of the old master read-only (the fence) and every
copy on the promoted slave writable, then mounts it. One command serves many names where
ZFS allows it: ``zfs set readonly=on a b c ...`` takes many datasets (OpenZFS and
zfs-fuse 0.7 alike), and one ``zfs get`` of all of them tells which are not in force. Only
those are then done one by one: on zfs-fuse a mounted filesystem keeps its mount option
over the property and needs a remount (``fuse.remount``), which takes one per member.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ..errors import BackendError
from ..names import validate_user_property, validate_volume
from .tree import ZfsBackend, chunks, tree_order

#: What ``zfs mount`` says of a dataset that needs no mounting (mounted already, a zvol,
#: ``canmount=off``, a legacy mountpoint): not a failure of a promotion.
MOUNT_NOOPS = ("already mounted", "not a filesystem", "canmount", "legacy", "volume")


async def set_readonly_many(zfs: ZfsBackend, volumes: Sequence[str], readonly: bool,
                            one: Callable[[str, bool], Awaitable[None]]) -> dict[str, str]:
    """``readonly`` on each of ``volumes``, in force. Returns, for each volume where it is
    not, why; ``one`` is the single-volume way (with the remount zfs-fuse needs)."""
    for volume in volumes:
        validate_volume(volume)
    if not volumes:
        return {}
    value = "on" if readonly else "off"
    problems: dict[str, str] = {}
    for chunk in chunks(volumes):
        code, stderr = await zfs._command("set", f"readonly={value}", *chunk)
        if code != 0:  # which ones it refused, it says per name; the check below finds them
            problems.update((v, stderr.strip()) for v in chunk if v in stderr)
    effective = await _readonly_of(zfs, volumes)
    for volume in volumes:
        if volume in problems or effective.get(volume) == readonly:
            continue
        try:
            await one(volume, readonly)
        except BackendError as exc:
            problems[volume] = str(exc)
    return problems


async def _readonly_of(zfs: ZfsBackend, volumes: Sequence[str]) -> dict[str, bool]:
    """The effective ``readonly`` of each of ``volumes`` that exists."""
    found: dict[str, bool] = {}
    for chunk in chunks(volumes):
        rows = await zfs._props("readonly", *chunk, missing_ok=True)
        found.update((name, p.get("readonly") == "on") for name, p in rows.items())
    return found


async def set_user_property_many(zfs: ZfsBackend, volumes: Sequence[str], prop: str,
                                 value: str) -> None:
    """``prop=value`` (a user property) on each of ``volumes``, many per command."""
    validate_user_property(prop)
    if not value or any(c in value for c in "\n\t\0"):
        raise BackendError(f"refusing the value {value!r} for {prop}")
    for volume in volumes:
        validate_volume(volume)
    for chunk in chunks(volumes):
        await zfs._run("set", f"{prop}={value}", *chunk)


async def mount_many(zfs: ZfsBackend, volumes: Sequence[str]) -> dict[str, str]:
    """Mount each of ``volumes`` that is a filesystem meant to be mounted, parents first
    (a child's mountpoint lies under its parent's). Returns why not, per volume that
    should have mounted and did not; the others are mounted."""
    problems: dict[str, str] = {}
    for volume in sorted(volumes, key=tree_order):
        validate_volume(volume)
        code, stderr = await zfs._command("mount", volume)
        if code != 0 and not any(n in stderr for n in MOUNT_NOOPS):
            problems[volume] = stderr.strip() or f"zfs mount exited {code}"
    return problems
