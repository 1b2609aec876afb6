"""zfs-fuse's quirks, and how the ZFS backend works around them (OpenZFS needs none).

* ``readonly`` is recorded but not put in force: the mount keeps its ``rw``/``ro``
  option, which overrides the property (``zfs get`` shows it as ``temporary``) and
  lets writes through. ``remount`` mounts the filesystem again with the option.
* ``zfs holds`` fails (it wants a Python helper zfs-fuse does not ship), so which tags
  hold a snapshot is asked by taking each (``tags_by_taking``).
* A mounted filesystem is busy for ``rename`` (the backend unmounts around it), and a
  killed ``zfs send -I`` leaves its temporary holds for ever (capability
  ``safe_send_holds`` is left out: flows send a chain of single steps instead).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import BackendError, Busy, while_busy

#: How long a fence or promotion waits for a filesystem's clients to close their files.
REMOUNT_PATIENCE = 5.0


async def remount(run: Callable[..., Awaitable[str]], volume: str, option: str) -> None:
    """Unmount (never forced: open files mean a client is busy) and mount again with
    ``option``; a busy filesystem is retried for a few seconds, then reported.

    The mount is retried too: just after the unmount, zfs-fuse can still call the
    dataset busy (a promotion failed so in the local CI of 2026-12-07).
    """
    async for attempt in while_busy(REMOUNT_PATIENCE):
        with attempt:
            try:
                await run("unmount", volume)
            except BackendError as exc:
                if isinstance(exc, Busy) or "not currently mounted" not in str(exc):
                    raise
    async for attempt in while_busy(REMOUNT_PATIENCE):
        with attempt:
            await run("mount", "-o", option, volume)


async def tags_by_taking(run: Callable[..., Awaitable[str]],
                         release: Callable[[str, str], Awaitable[None]], snapshot: str,
                         tags: frozenset[str]) -> frozenset[str]:
    """Which of ``tags`` hold ``snapshot``, found by taking each: "tag already exists"
    means it was there; a hold that was not there is released again at once."""
    found = set()
    for tag in sorted(tags):
        try:
            await run("hold", tag, snapshot)
        except BackendError as exc:
            if "tag already exists" not in str(exc):
                raise
            found.add(tag)
        else:
            await release(tag, snapshot)
    return frozenset(found)
