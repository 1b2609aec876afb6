"""Destroying the snapshots a retention grid no longer keeps, as an activity.

The list is decided beforehand (``retention.to_destroy``, which already spares
protected bases and foreign snapshots); this activity only carries it out, one
snapshot at a time with progress n of m. A snapshot ZFS refuses because it is
held (a replication's ``cerssd:<destination>`` hold on a common base, or anyone
else's hold) is skipped, never forced: holds are the last line of defence for the
bases replication needs. The result lists it under ``kept_held`` with whose holds
keep it (``cerssd_holds``, ``foreign_holds``, a ``reason``), so a hold that is not
cerssd's is seen, not silently obeyed.

When the plan came with each snapshot's guid (every prune cerssd plans does), the names
are checked against one ``snapshot_facts`` of them all before anything is destroyed: a
snapshot destroyed and made again under the same name since the plan (by anyone) is
not the one planned, and is left alone (``replaced``). So the prune removes exactly the
set its plan, or its dry run, listed.
"""

from __future__ import annotations

from typing import Any

from ...activity import ActivityRecord, Progress
from ...engine import ActivityContext, ActivityEngine
from ...servers import ServerRegistry
from ...storage.errors import BackendError, Busy, NotFound
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot, validate_volume
from ..logic.holds import NO_HOLDS, holds_of

KIND = "prune"


class PruneWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry) -> None:
        self.server: str = record.params["server"]
        self.snapshots: list[str] = record.params["snapshots"]
        self.guids: list[str] | None = record.params.get("guids")
        self.servers = servers

    async def run(self, ctx: ActivityContext) -> None:
        backend = await self.servers.backend(self.server)
        skipped: list[str] = []
        kept: list[dict[str, Any]] = []
        replaced = await self._replaced(backend)
        if replaced:
            ctx.log.warning("not the snapshots planned: left alone", snapshots=replaced[:20],
                            count=len(replaced))
        for i, name in enumerate(self.snapshots):
            await ctx.checkpoint()
            if name in replaced:
                ctx.set_progress(i + 1)
                continue
            try:
                await backend.destroy_snapshot(name)
            except Busy as exc:
                skipped.append(name)
                kept.append(await self._why_kept(backend, name, str(exc)))
                (ctx.log.warning if kept[-1]["foreign_holds"] else ctx.log.info)(
                    "kept a held snapshot", snapshot=name, reason=kept[-1]["reason"])
            except NotFound:
                pass  # already gone (an earlier, interrupted run)
            ctx.set_progress(i + 1)
        ctx.remember(skipped=skipped, kept_held=kept, replaced=replaced)
        ctx.log.info("retention applied", server=self.server,
                     destroyed=len(self.snapshots) - len(skipped) - len(replaced),
                     kept_held=len(skipped), replaced=len(replaced))

    async def _replaced(self, backend: StorageBackend) -> list[str]:
        """The planned names whose snapshot now has another guid (gone ones are not
        listed: a destroy of those is a no-op). One ``snapshot_facts`` for them all."""
        if self.guids is None:
            return []
        facts = await backend.snapshot_facts(self.snapshots)
        return [name for name, guid in zip(self.snapshots, self.guids, strict=True)
                if name in facts and guid not in facts[name].identities]

    async def _why_kept(self, backend: StorageBackend, name: str, error: str) -> dict[str, Any]:
        """What the prune result says of a snapshot ZFS would not destroy: whose holds."""
        try:
            holds = await holds_of(backend, await backend.snapshot(name),
                                   list(self.servers.entries))
        except BackendError:
            holds = NO_HOLDS
        reason = holds.reason() if holds != NO_HOLDS else error
        return {"snapshot": name, "reason": reason, **holds.to_json()}

    async def rollback(self, ctx: ActivityContext) -> None:
        """Destroyed snapshots cannot come back; the rest are simply left alone."""
        return None


def submit_prune(engine: ActivityEngine, server: str, volume: str, snapshots: list[str],
                 relationship: str | None, guids: list[str] | None = None, *,
                 policy: str | None = None) -> ActivityRecord:
    """``guids``, one per snapshot, makes the prune destroy only those very snapshots.
    It prunes for a relationship, or (``policy``) for a snapshot policy."""
    validate_volume(volume)
    for name in snapshots:
        validate_snapshot(name)
    if guids is not None and len(guids) != len(snapshots):
        raise ValueError("one guid per snapshot")
    extra: dict[str, Any] = {"guids": guids} if guids is not None else {}
    extra |= {"relationship": relationship} if relationship is not None else {}
    extra |= {"policy": policy} if policy is not None else {}
    return engine.submit(KIND, volume=volume, source=server, target=f"{server}:{volume}",
                         params={"server": server, "volume": volume, "snapshots": snapshots,
                                 **extra},
                         self_restarting=True,
                         progress=Progress(0, len(snapshots), unit="snapshots"))


def register(engine: ActivityEngine, servers: ServerRegistry) -> None:
    engine.register(KIND, lambda r: PruneWork(r, servers))
