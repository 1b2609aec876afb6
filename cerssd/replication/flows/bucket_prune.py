"""Retention for backups in a bucket: the snapshot grid, never breaking a kept chain.

The grid decides as it does for snapshots (``retention.to_destroy``); then every
backup a kept incremental needs to be restored (its parent, the parent's parent, up
to the full) is kept as well, and the grid is asked again with those protected,
until nothing changes. Deleting removes the manifest first (from then on it is not
a backup), then its segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ...activity import ActivityRecord, Progress
from ...engine import ActivityContext, ActivityEngine
from ...objectstore import catalog
from ...objectstore.layout import Manifest, manifest_key, needed_parents
from ...objectstore.stores import Stores
from ...storage.values import Snapshot
from ..logic.retention import Tier, to_destroy
from ..retry import RetryPolicy
from ..stream.store_calls import StoreCalls

KIND = "backup-prune"


def _as_snapshot(m: Manifest) -> Snapshot:
    return Snapshot(name=m.snapshot, volume=m.volume, label=m.label, guid=m.guid,
                    creation=m.snapshot_created, used=0, referenced=0, userrefs=0)


def backups_to_delete(backups: Sequence[Manifest], grid: Sequence[Tier], *,
                      now: float) -> list[Manifest]:
    """Backups of one volume (oldest first) the grid no longer keeps and no kept one needs."""
    ordered = list(backups)  # catalog order: by creation, then txg
    snaps = [_as_snapshot(m) for m in ordered]
    protected: set[str] = set()
    while True:
        doomed = {s.guid for s in to_destroy(snaps, grid, now=now, prefix="",
                                             protected=protected)}
        kept = [m.guid for m in ordered if m.guid not in doomed]
        needed = needed_parents(ordered, kept)
        if needed <= protected:
            return [m for m in ordered if m.guid in doomed]
        protected |= needed


class BackupPruneWork:
    def __init__(self, record: ActivityRecord, stores: Stores, policy: RetryPolicy) -> None:
        self.store = stores.get(record.params["store"])
        self.volume: str = record.params["volume"]
        self.guids: list[str] = record.params["guids"]
        self.policy = policy

    async def run(self, ctx: ActivityContext) -> None:
        calls = StoreCalls(ctx, self.store, self.policy)
        present = {m.guid: m for m in await calls(
            "list backups", lambda: catalog.backups(self.store, self.volume))}
        prefix = self.store.config.prefix
        for i, guid in enumerate(self.guids):
            await ctx.checkpoint()
            m = present.get(guid)
            if m is not None:  # else gone already (an earlier, interrupted run)
                mkey = manifest_key(prefix, m.volume, m.label, m.guid)
                await calls("delete manifest", partial(self.store.delete, mkey))
                for seg in m.segments:
                    await calls("delete segment", partial(self.store.delete, seg.key))
                ctx.log.info("backup deleted", snapshot=m.snapshot, store=self.store.name)
            ctx.set_progress(i + 1)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Deleted backups cannot come back; the rest are left as they are."""
        return None


def submit_backup_prune(engine: ActivityEngine, store: str, volume: str,
                        doomed: Sequence[Manifest]) -> ActivityRecord:
    return engine.submit(KIND, volume=volume, source=store, target=store,
                         params={"store": store, "volume": volume,
                                 "guids": [m.guid for m in doomed],
                                 "snapshots": [m.snapshot for m in doomed]},
                         self_restarting=True,
                         progress=Progress(0, len(doomed), unit="backups"))


def register(engine: ActivityEngine, stores: Stores, policy: RetryPolicy) -> None:
    engine.register(KIND, lambda r: BackupPruneWork(r, stores, policy))
