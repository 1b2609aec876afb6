"""Files on ZFS for the generic path: a snapshot's read-only view, a volume's path.

**A snapshot's view** is ``MOUNTPOINT/.zfs/snapshot/LABEL`` where that directory
answers (OpenZFS mounts it on first access, whatever ``snapdir`` says: ``hidden`` only
keeps ``.zfs`` out of directory listings). zfs-fuse has no ``.zfs`` directory at all
(measured: ``snapdir=visible`` shows nothing), and a volume that is not mounted (a
replica received unmounted, ``mountpoint=none``) has none either: there the view is a
temporary read-only **clone** of the snapshot, ``POOL/cerssd-view-SERVER-GUID``,
mounted at ``VIEW_ROOT/POOL/cerssd-view-SERVER-GUID``, and ``release_view`` destroys it.

The clone is named for the snapshot's guid, never its name (a snapshot destroyed and
made again under the same name is another snapshot, and must not be read through the
old one's view), and for the destination it is read for: one copy per destination runs
at a time, so no two copies share a clone and one's release never pulls the view from
under the other. A copy that is retried (or restarted with the daemon) finds its clone
still there and reuses it. While it exists its snapshot cannot be destroyed (``has
dependent clones``): a clone left by a daemon that was never restarted shows in ``zfs
list`` under that name and may be destroyed by hand.

**A volume's path** is its mountpoint, mounted first if it is not (a replica received
with ``-u``); ``none`` and ``legacy`` mountpoints and block volumes have no path cerssd
may write to, and say so.
"""

from __future__ import annotations

import contextlib

from ..errors import BackendError, NotFound, while_busy
from ..names import validate_object_name, validate_snapshot, validate_volume
from .names import pool_of
from .volume_ops import ZfsBackend  # the backend's shape, not the backend (it imports us)

#: Where temporary snapshot clones are mounted on the server.
VIEW_ROOT = "/run/cerssd-views"


async def snapshot_view(zfs: ZfsBackend, snapshot: str, for_server: str) -> str:
    snap = validate_snapshot(snapshot)
    rows = await zfs._props("type,mountpoint,mounted,guid", snap.volume, snapshot)
    volume, facts = rows.get(snap.volume, {}), rows.get(snapshot, {})
    if facts.get("type") != "snapshot":
        raise NotFound(f"snapshot {snapshot} does not exist on {zfs.server}")
    if volume.get("type") == "volume":
        raise BackendError(f"{snap.volume} on {zfs.server} is a block volume (zvol): the "
                           "generic path copies files, and a block volume has none")
    mountpoint = volume.get("mountpoint", "")
    if volume.get("mounted") == "yes" and mountpoint.startswith("/"):
        path = f"{mountpoint.rstrip('/')}/.zfs/snapshot/{snap.snapshot}"
        if (await zfs.runner.run(["test", "-d", path], check=False)).returncode == 0:
            return path
    return await _clone_view(zfs, snapshot, _view_name(snapshot, facts["guid"], for_server))


async def _clone_view(zfs: ZfsBackend, snapshot: str, clone: str) -> str:
    """The clone mounted read-only at its own path, made now or found from before."""
    path = f"{VIEW_ROOT}/{clone}"
    code, stderr = await zfs._command("clone", "-o", "readonly=on", "-o",
                                      f"mountpoint={path}", snapshot, clone)
    if code != 0 and "already exists" not in stderr:
        raise BackendError(f"cannot make a read-only view of {snapshot} on {zfs.server}: "
                           f"{stderr.strip() or f'zfs clone exited {code}'}")
    facts = (await zfs._props("origin,mounted", clone)).get(clone, {})
    if facts.get("origin") != snapshot:  # a clone of that name but of another snapshot
        raise BackendError(f"{clone} on {zfs.server} is not a view of {snapshot} "
                           f"(origin {facts.get('origin')})")
    if facts.get("mounted") != "yes":
        await zfs._run("mount", clone)
    return path


async def release_view(zfs: ZfsBackend, snapshot: str, for_server: str) -> None:
    """Destroy the snapshot's clone view for ``for_server``, if there is one."""
    validate_snapshot(snapshot)
    try:
        guid = (await zfs._props("guid", snapshot))[snapshot]["guid"]
    except (NotFound, KeyError):
        return  # no snapshot: no clone of it either (a clone keeps its snapshot)
    clone = _view_name(snapshot, guid, for_server)
    # Right after a copy the FUSE mount may still be closing its files (busy).
    async for attempt in while_busy():
        with attempt, contextlib.suppress(NotFound):
            await zfs._run("destroy", clone)
    await zfs.runner.run(["rmdir", f"{VIEW_ROOT}/{clone}"], check=False)  # its mountpoint


def _view_name(snapshot: str, guid: str, for_server: str) -> str:
    server = validate_object_name(for_server, "server") if for_server else "any"
    return validate_volume(f"{pool_of(snapshot.partition('@')[0])}/cerssd-view-{server}-{guid}")


async def volume_path(zfs: ZfsBackend, volume: str) -> str:
    validate_volume(volume)
    facts = (await zfs._props("type,mountpoint,mounted", volume))[volume]
    if facts.get("type") == "volume":
        raise BackendError(f"{volume} on {zfs.server} is a block volume (zvol): it has no "
                           "files to write")
    mountpoint = facts.get("mountpoint", "")
    if not mountpoint.startswith("/"):
        raise BackendError(f"{volume} on {zfs.server} has mountpoint={mountpoint}: cerssd "
                           "writes files only where ZFS mounts them; set a mountpoint")
    if facts.get("mounted") != "yes":
        await zfs._run("mount", volume)
    return mountpoint
