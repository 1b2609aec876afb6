"""Volume operations as activities: create, clone, revert, extend, delete (Cinder's
verbs, issue 16).

Each is quick on ZFS (milliseconds), but running it as an activity gives it the same
visibility, journal entry, status code and busy-state locking as long work: on a
server without ``stateless_snapshots`` the volume is held (``creating``, ``reverting``,
``extending``, ``deleting``) while the activity runs, and a conflicting action is
refused with the holder's name (``volume_states``). Progress is 0 of 1 volumes, 1 of 1
once done (a delete counts the dependents it destroys too).

What can be undone is: a create or clone that fails or is cancelled after its command
ran destroys what it made (if it is still the volume it made: same guid). A revert and
a delete are their own commit points (what ``zfs rollback``/``destroy`` removed does not
come back); the API says what they will destroy before they are submitted.

The rules that need the daemon's knowledge (relationships, holds) are checked by the
API before submitting (``api/volumes.py``); the pure parts are here
(``relationship_uses``), so they are tested without a daemon.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

from .activity import ActivityRecord, Progress, StatusCode
from .engine import ActivityContext, ActivityEngine, ActivityError
from .servers import ServerRegistry
from .storage.errors import AlreadyExists, BackendError, Busy, NotFound, while_busy
from .storage.interface import StorageBackend
from .storage.names import validate_snapshot, validate_volume

CREATE = "volume-create"
CLONE = "volume-clone"
REVERT = "volume-revert"
EXTEND = "volume-extend"
DELETE = "volume-delete"
KINDS = (CREATE, CLONE, REVERT, EXTEND, DELETE)
#: How long a destroy is retried while the backend calls the volume busy: a client with
#: a file open keeps it busy for good, and that must fail in seconds, not hang.
BUSY_SECONDS = 10.0


def _error(exc: BackendError) -> ActivityError:
    code = (StatusCode.NOT_FOUND if isinstance(exc, NotFound)
            else StatusCode.CONFLICT if isinstance(exc, AlreadyExists | Busy)
            else StatusCode.ERROR)
    reason = ("not-found" if code == StatusCode.NOT_FOUND
              else "conflict" if code == StatusCode.CONFLICT else "backend")
    return ActivityError(str(exc), code, reason)


class _Work:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        self.params = record.params
        self.server: str = record.params["server"]
        self.volume: str = record.params["volume"]
        self.servers = servers


class CreateVolumeWork(_Work):
    """A new filesystem (with a quota when a size is given) or a block volume of a size,
    or a clone of a snapshot (``from_snapshot``)."""

    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        super().__init__(record, servers)
        #: The guid of what this activity made, once made: only that is rolled back.
        self.made: str | None = None
        #: When its command was issued: a cancel may land while the command runs, and a
        #: volume of that name created since then is this activity's (the API checked
        #: that none existed).
        self.issued: float | None = None

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        snapshot, size = self.params.get("from_snapshot"), self.params.get("size")
        block = self.params.get("type") == "volume"
        try:
            self.issued = time.time()
            if snapshot is not None:
                made = await backend.clone_volume(snapshot, self.volume)
            else:
                made = await backend.create_volume(self.volume,
                                                   size=size if block else None)
            self.made = made.guid
            ctx.remember(guid=made.guid)
            if size is not None and not block and snapshot is None:
                await backend.resize_volume(self.volume, size)  # a filesystem's quota
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        if self.issued is None:
            return
        backend = await self.servers.backend(self.server)
        try:
            found = await backend.volume(self.volume)
        except NotFound:
            return
        ours = (found.guid == self.made if self.made is not None
                else found.creation >= int(self.issued))  # creation has 1 s steps
        if not ours:
            return
        await backend.destroy_volume(self.volume, force_unmount=True)
        ctx.log.info("rolled back: destroyed the volume this activity made",
                     volume=self.volume)


class RevertVolumeWork(_Work):
    """``rollback`` to a snapshot: later snapshots and every change since are destroyed.
    Forced past a replication base, cerssd's pins on the later snapshots are released
    first (holds that are not cerssd's still stop it)."""

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        try:
            for snapshot, server in self.params.get("unpin", []):
                await backend.unpin(snapshot, server)
            await backend.rollback(self.params["snapshot"])
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        return None  # the rollback is the commit point


class ExtendVolumeWork(_Work):
    """Grow a block volume's size or a filesystem's quota; never shrink (the size is
    read again here: it may have changed since the API looked)."""

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        size = int(self.params["size"])
        try:
            current = (await backend.volume(self.volume)).size
            if current is None:
                raise ActivityError(no_quota(self.volume), StatusCode.CONFLICT, "no-size")
            if size < current:
                raise ActivityError(would_shrink(self.volume, size, current),
                                    StatusCode.CONFLICT, "would-shrink")
            ctx.remember(previous_size=current)
            await backend.resize_volume(self.volume, size)
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        return None  # a failed ``zfs set`` changed nothing


class DeleteVolumeWork(_Work):
    """Destroy the volume and what is below it; forced, the clones that depend on it
    too (named to the operator before: ``clones``), clones of clones first, after
    cerssd's pins on their snapshots (``unpin``) are released."""

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        clones: list[str] = list(self.params.get("clones", []))
        done = 0
        try:
            for snapshot, server in self.params.get("unpin", []):
                await backend.unpin(snapshot, server)  # forced past a replication's base
            for clone in reversed(clones):
                await _destroy(backend, clone, force_unmount=True)
                done += 1
                ctx.set_progress(done)
            await _destroy(backend, self.volume, force_unmount=bool(self.params.get("force")))
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.set_progress(done + 1)

    async def rollback(self, ctx: ActivityContext) -> None:
        return None  # a destroy is the commit point


async def _destroy(backend: StorageBackend, volume: str, *, force_unmount: bool) -> None:
    """Destroy ``volume``, retried while the backend calls it busy for a moment (zfs-fuse
    does just after a dataset was mounted or its clone destroyed); one gone already (with
    an earlier one) is fine."""
    with contextlib.suppress(NotFound):
        async for attempt in while_busy(BUSY_SECONDS):
            with attempt:
                await backend.destroy_volume(volume, force_unmount=force_unmount)


def register(engine: ActivityEngine, servers: ServerRegistry) -> None:
    engine.register(CREATE, lambda r: CreateVolumeWork(r, servers))
    engine.register(CLONE, lambda r: CreateVolumeWork(r, servers))
    engine.register(REVERT, lambda r: RevertVolumeWork(r, servers))
    engine.register(EXTEND, lambda r: ExtendVolumeWork(r, servers))
    engine.register(DELETE, lambda r: DeleteVolumeWork(r, servers))


def submit(engine: ActivityEngine, kind: str, server: str, volume: str, *,
           target: str | None = None, total: int = 1, **params: Any) -> ActivityRecord:
    """One volume operation's activity (``kind`` one of ``KINDS``)."""
    validate_volume(volume)
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not a volume operation")
    return engine.submit(kind, volume=volume, source=server, target=target or volume,
                         params={"server": server, "volume": volume, **params},
                         progress=Progress(0, total, unit="volumes"))


# -- the rules, as plain functions ----------------------------------------------------------
def would_shrink(volume: str, size: int, current: int) -> str:
    return (f"{volume} is {current} bytes; extend only grows it, and {size} bytes is "
            f"{'smaller' if size < current else 'the same'}")


def no_quota(volume: str) -> str:
    return (f"{volume} is a filesystem without a quota: it may already grow to the "
            "pool's size, so there is nothing to extend (give it a quota at creation "
            "with a size)")


def within(top: str, name: str) -> bool:
    return name == top or name.startswith(top + "/")


def relationship_uses(specs: Iterable[Any], server: str, volume: str) -> list[str]:
    """The relationships that ``volume`` on ``server`` takes part in, by name: as the
    master's volume or a slave's target, as a member of a tree (below its root), or as
    an ancestor of one of those (a delete takes what is below it)."""
    names = []
    for spec in specs:
        tree = bool(getattr(spec, "is_tree", False))
        ends = [(spec.master, spec.volume)] + [(s.server, s.target_volume)
                                               for s in spec.slaves]
        if any(srv == server and (within(volume, vol) or (tree and within(vol, volume)))
               for srv, vol in ends):
            names.append(spec.name)
    return sorted(names)


def later_snapshots(snapshots: Iterable[Any], label: str) -> list[Any]:
    """The snapshots a rollback to ``label`` destroys (those after it, oldest first);
    ``NotFound`` if there is no snapshot ``label``."""
    listed = list(snapshots)
    at = next((i for i, s in enumerate(listed) if s.label == label), None)
    if at is None:
        raise NotFound(f"no snapshot {label} of the volume")
    return listed[at + 1:]


def snapshot_volume(snapshot: str) -> str:
    return validate_snapshot(snapshot).volume
