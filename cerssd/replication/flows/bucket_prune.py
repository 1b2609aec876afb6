"""Retention for backups in a bucket: the snapshot grid, never breaking a kept chain.

The grid decides as it does for snapshots (``retention.prune_plan``, with ``keep_min``);
then every backup a kept incremental needs to be restored (its parent, the parent's
parent, up to the full) is kept as well, and the grid is asked again with those
protected, until nothing changes. Deleting removes the manifest first (from then on it
is not a backup), then its segments, and only keys inside that backup's own directory
(``backup_dir``): a manifest naming a key elsewhere does not get it deleted.

Two ways in:

* an operator's or a dry run's decided list (``guids``): the activity deletes exactly
  those, each looked up again by one listing (gone ones are skipped);
* after a relationship's backup, when its store has ``retention``: the activity lists the
  bucket itself (one listing of the volume's, or a tree root's, prefix), decides per
  volume, remembers the list and then deletes it. A listing or a manifest read that
  fails fails the activity before anything is deleted (retried as a link error first):
  a half-listed bucket would make backups look missing, and their children deletable.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import partial
from typing import Any

import structlog

from ...activity import ActivityRecord, Progress
from ...engine import ActivityContext, ActivityEngine
from ...objectstore import catalog
from ...objectstore.client import ObjectStore
from ...objectstore.layout import Manifest, backup_dir, manifest_key, needed_parents
from ...objectstore.stores import Stores
from ...storage.values import Snapshot
from ..logic.retention import DEFAULT_KEEP_MIN, Tier, Verdict, owned, parse_grid, prune_plan
from ..retry import RetryPolicy
from ..stream.store_calls import StoreCalls

KIND = "backup-prune"
log = structlog.get_logger("cerssd.backups")


def _as_snapshot(m: Manifest) -> Snapshot:
    return Snapshot(name=m.snapshot, volume=m.volume, label=m.label, guid=m.guid,
                    creation=m.snapshot_created, used=0, referenced=0, userrefs=0)


def bucket_plan(backups: Sequence[Manifest], grid: Sequence[Tier], *, now: float,
                prefix: str | None = None, keep_min: int = DEFAULT_KEEP_MIN,
                protected: Collection[str] = ()) -> list[Verdict]:
    """Backups of one volume (oldest first) the grid no longer keeps and no kept one
    needs, with why; ``prefix`` limits it to the labels a relationship makes."""
    ordered = list(backups)  # catalog order: by creation, then txg
    snaps = [_as_snapshot(m) for m in ordered]
    guard = set(protected)
    while True:
        plan = prune_plan(snaps, grid, now=now, prefix=prefix, protected=guard,
                          keep_min=keep_min)
        doomed = {v.snapshot.guid for v in plan}
        kept = [m.guid for m in ordered if m.guid not in doomed]
        needed = needed_parents(ordered, kept)
        if needed <= guard:
            return plan
        guard |= needed


def backups_to_delete(backups: Sequence[Manifest], grid: Sequence[Tier], *,
                      now: float, prefix: str | None = None,
                      keep_min: int = DEFAULT_KEEP_MIN) -> list[Manifest]:
    """``bucket_plan`` as the manifests themselves."""
    doomed = {v.snapshot.guid for v in bucket_plan(backups, grid, now=now, prefix=prefix,
                                                   keep_min=keep_min)}
    return [m for m in backups if m.guid in doomed]


async def plan_store(store: ObjectStore, root: str, grid: Sequence[Tier], *, now: float,
                     subtree: bool, prefix: str | None, keep_min: int,
                     protected: Collection[str] = ()) -> list[tuple[Manifest, Verdict]]:
    """What retention deletes of ``root``'s backups (every volume's under it with
    ``subtree``), oldest first per volume: one listing, manifests read only for labels
    ``prefix`` owns. Raises if the listing or a read fails (nothing decided then)."""
    by_volume = await catalog.backups_under(store, root, subtree=subtree,
                                            label_ok=lambda label: owned(label, prefix))
    doomed: list[tuple[Manifest, Verdict]] = []
    for volume in sorted(by_volume):
        found = by_volume[volume]
        by_guid = {m.guid: m for m in found}
        doomed += [(by_guid[v.snapshot.guid], v) for v in bucket_plan(
            found, grid, now=now, prefix=prefix, keep_min=keep_min, protected=protected)]
    return doomed


class BackupPruneWork:
    def __init__(self, record: ActivityRecord, stores: Stores, policy: RetryPolicy) -> None:
        self.store = stores.get(record.params["store"])
        self.volume: str = record.params["volume"]
        self.params = record.params
        self.policy = policy

    async def run(self, ctx: ActivityContext) -> None:
        calls = StoreCalls(ctx, self.store, self.policy)
        guids: list[str] | None = self.params.get("guids")
        if guids is None:  # scheduled: decide now, remember, then delete
            doomed = await self._decide(ctx, calls)
        else:  # decided beforehand: exactly those, as far as they are still there
            wanted = set(guids)
            present = await calls("list backups", partial(
                catalog.backups_under, self.store, self.volume,
                subtree=bool(self.params.get("subtree")), guids=wanted))
            by_guid = {m.guid: m for found in present.values() for m in found}
            doomed = [by_guid[g] for g in guids if g in by_guid]
        ctx.set_progress(0, len(doomed), estimated=False)
        for i, m in enumerate(doomed):
            await ctx.checkpoint()
            await self._delete(ctx, calls, m)
            ctx.set_progress(i + 1)
        ctx.remember(deleted=len(doomed))

    async def _decide(self, ctx: ActivityContext, calls: StoreCalls) -> list[Manifest]:
        p = self.params
        grid = parse_grid(p["retention"], f"stores.{self.store.name}.retention")
        plan = await calls("list backups", partial(
            plan_store, self.store, self.volume, grid, now=ctx.record.created_at,
            subtree=bool(p.get("subtree")), prefix=p.get("prefix"),
            keep_min=int(p.get("keep_min", DEFAULT_KEEP_MIN)),
            protected=p.get("protected", ())))
        guids = [m.guid for m, _ in plan]
        ctx.remember(guids=guids, snapshots=[m.snapshot for m, _ in plan],
                     reasons=[v.reason() for _, v in plan][:1000])
        ctx.log.info("bucket retention decided", store=self.store.name, volume=self.volume,
                     delete=len(guids))
        return [m for m, _ in plan]

    async def _delete(self, ctx: ActivityContext, calls: StoreCalls, m: Manifest) -> None:
        prefix = self.store.config.prefix
        home = backup_dir(prefix, m.volume, m.label, m.guid)
        await calls("delete manifest", partial(self.store.delete,
                                               manifest_key(prefix, m.volume, m.label, m.guid)))
        for seg in m.segments:
            if not seg.key.startswith(home):
                ctx.log.warning("segment outside its backup's directory left alone",
                                key=seg.key, snapshot=m.snapshot)
                continue
            await calls("delete segment", partial(self.store.delete, seg.key))
        ctx.log.info("backup deleted", snapshot=m.snapshot, store=self.store.name)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Deleted backups cannot come back; the rest are left as they are."""
        return None


def submit_backup_prune(engine: ActivityEngine, store: str, volume: str,
                        doomed: Sequence[Manifest], *, subtree: bool = False,
                        relationship: str | None = None) -> ActivityRecord:
    """Delete exactly ``doomed`` (decided by the caller, e.g. shown by a dry run)."""
    extra: dict[str, Any] = {"relationship": relationship} if relationship else {}
    return engine.submit(KIND, volume=volume, source=store, target=store,
                         params={"store": store, "volume": volume, "subtree": subtree,
                                 "guids": [m.guid for m in doomed],
                                 "snapshots": [m.snapshot for m in doomed], **extra},
                         self_restarting=True,
                         progress=Progress(0, len(doomed), unit="backups"))


def submit_scheduled(engine: ActivityEngine, store: str, volume: str, *, relationship: str,
                     retention: Sequence[str], keep_min: int, prefix: str, subtree: bool,
                     protected: Collection[str]) -> ActivityRecord:
    """The store's retention after a relationship's backup: the activity decides."""
    return engine.submit(KIND, volume=volume, source=store, target=store,
                         params={"store": store, "volume": volume, "subtree": subtree,
                                 "relationship": relationship, "retention": list(retention),
                                 "keep_min": keep_min, "prefix": prefix,
                                 "protected": sorted(protected), "scheduled": True},
                         self_restarting=True,
                         progress=Progress(0, 0, unit="backups", estimated=True))


def register(engine: ActivityEngine, stores: Stores, policy: RetryPolicy) -> None:
    engine.register(KIND, lambda r: BackupPruneWork(r, stores, policy))
