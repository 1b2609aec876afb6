"""Snapshot create and destroy, each run as an activity (progress in snapshots).

Both are quick on ZFS, but running them as activities gives them the same
visibility, journal entry and status code as long work, and makes the create
roll back (destroy what it made) if it is cancelled or fails after the fact.
"""

from __future__ import annotations

from .activity import ActivityRecord, Progress, StatusCode
from .engine import ActivityContext, ActivityEngine, ActivityError
from .servers import ServerRegistry
from .storage.errors import AlreadyExists, BackendError, Busy, NotFound
from .storage.names import validate_snapshot, validate_snapshot_label, validate_volume

CREATE = "snapshot"
DESTROY = "destroy"


def _error(exc: BackendError) -> ActivityError:
    code = (StatusCode.NOT_FOUND if isinstance(exc, NotFound)
            else StatusCode.CONFLICT if isinstance(exc, AlreadyExists | Busy)
            else StatusCode.ERROR)
    return ActivityError(str(exc), code)


class CreateSnapshotWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        self.server = record.params["server"]
        self.volume = record.params["volume"]
        self.label = record.params["name"]
        self.servers = servers
        # True once our `zfs snapshot` may have run: from then on a snapshot of that name
        # is ours to remove on rollback (it did not exist when we checked).
        self.issued = False

    @property
    def name(self) -> str:
        return f"{self.volume}@{self.label}"

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        try:
            if any(s.label == self.label for s in await backend.snapshots(self.volume)):
                raise AlreadyExists(f"snapshot {self.name} already exists")
            self.issued = True
            snap = await backend.create_snapshot(self.volume, self.label)
        except AlreadyExists as exc:
            self.issued = False
            raise _error(exc) from exc
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.remember(guid=snap.guid)
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        if not self.issued:
            return
        backend = await self.servers.backend(self.server)
        try:
            await backend.snapshot(self.name)
        except NotFound:
            return
        await backend.destroy_snapshot(self.name)
        ctx.log.info("rolled back: destroyed the snapshot this activity made",
                     snapshot=self.name)


class DestroySnapshotWork:
    """Destroying is the commit point: once ``zfs destroy`` ran there is nothing to undo."""

    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        self.server = record.params["server"]
        self.name = record.params["snapshot"]
        self.servers = servers

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        await ctx.checkpoint()
        try:
            await backend.destroy_snapshot(self.name)
        except BackendError as exc:
            raise _error(exc) from exc
        ctx.set_progress(1)

    async def rollback(self, ctx: ActivityContext) -> None:
        return None


def register(engine: ActivityEngine, servers: ServerRegistry) -> None:
    engine.register(CREATE, lambda r: CreateSnapshotWork(r, servers))
    engine.register(DESTROY, lambda r: DestroySnapshotWork(r, servers))


def submit_create(engine: ActivityEngine, server: str, volume: str,
                  name: str) -> ActivityRecord:
    validate_volume(volume)
    validate_snapshot_label(name)
    return engine.submit(CREATE, volume=volume, source=server, target=f"{volume}@{name}",
                         params={"server": server, "volume": volume, "name": name},
                         progress=Progress(0, 1, unit="snapshots"))


def submit_destroy(engine: ActivityEngine, server: str, snapshot: str) -> ActivityRecord:
    snap = validate_snapshot(snapshot)
    return engine.submit(DESTROY, volume=snap.volume, source=server, target=snapshot,
                         params={"server": server, "snapshot": snapshot},
                         progress=Progress(0, 1, unit="snapshots"))
