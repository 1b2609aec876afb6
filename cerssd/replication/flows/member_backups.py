"""A tree's members backed up by the peer daemon on the tree's master, as one activity
(kind ``member-backups``): a tree's backup whose bytes never pass the managing node.

A tree whose master runs cerssd (``daemon = true``, docs/peers.md) keeps one chain per
member in the bucket as any tree does (``relationships.tree_backup``). The managing
daemon still decides what each member sends (its listings of the master's tree and of
the bucket, or its memory of each member's base: control only, no stream); the streams
run on the master's node. As a local tree's backup is one activity for all members, so
is the delegated one: the managing daemon's ``tree-backup`` hands the peer one request
naming every member's snapshot and base (``POST /v1/member-backups``), and the peer
uploads them ``max_parallel`` at once through one pool of part buffers
(``member_uploads``), a member that fails reported and the others going on. Its
``results`` (volume -> what was backed up, or the error) become the tree's bookkeeping
on the managing daemon, exactly as the members' own outcomes do for a local master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...activity import ActivityRecord, Progress, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...objectstore.stores import Stores, UnknownStore
from ...servers import ServerRegistry
from ...storage.names import validate_snapshot, validate_volume
from ...storage.values import Snapshot
from ..retry import RetryPolicy
from ..stream.store_calls import StoreCalls
from .member_uploads import Job, MemberUploads

KIND = "member-backups"


@dataclass(frozen=True)
class MemberBackupItem:
    """One member's backup: ``snapshot``, incremental from ``base`` (a snapshot name
    with its ``base_guid``) or full; ``remembered`` and ``full`` as ``member_uploads.Job``."""

    snapshot: str
    base: str | None = None
    base_guid: str | None = None
    remembered: bool = False
    full: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "base": self.base, "base_guid": self.base_guid,
                "remembered": self.remembered, "full": self.full}

    @classmethod
    def of(cls, job: Job) -> MemberBackupItem:
        return cls(job.snapshot.name, job.base.name if job.base else None,
                   job.base.guid if job.base else None, job.remembered, job.full)


def base_snapshot(name: str, guid: str) -> Snapshot:
    """A base known by name and guid (what the manifest names as parent)."""
    snap = validate_snapshot(name)
    return Snapshot(name=name, volume=snap.volume, label=snap.snapshot, guid=guid,
                    creation=0, used=0, referenced=0, userrefs=0)


def submit_member_backups(engine: ActivityEngine, *, server: str, store: str, root: str,
                          items: list[MemberBackupItem], max_parallel: int,
                          **extra: Any) -> ActivityRecord:
    """The peer's side: the batch a managing daemon's ``tree-backup`` asked for."""
    validate_volume(root)
    for item in items:
        validate_snapshot(item.snapshot)
        if item.base is not None:
            validate_snapshot(item.base)
    return engine.submit(KIND, volume=root, source=server, target=store,
                         params={"server": server, "store": store, "root": root,
                                 "max_parallel": max_parallel,
                                 "items": [i.to_json() for i in items], **extra},
                         self_restarting=True,
                         progress=Progress(0, len(items), unit="members"))


class MemberBackupsWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry,
                 stores: Stores | None, policy: RetryPolicy) -> None:
        self.params = record.params
        self.servers = servers
        self.stores = stores
        self.policy = policy
        self.uploader: MemberUploads | None = None

    async def run(self, ctx: ActivityContext) -> None:
        p = self.params
        try:
            if self.stores is None:
                raise UnknownStore(p["store"])
            store = self.stores.get(p["store"])
        except UnknownStore:
            raise ActivityError(f"object store {p['store']} is not configured here",
                                StatusCode.NOT_FOUND, "not-found") from None
        uploader = self.uploader = MemberUploads(store, p["server"])
        calls = StoreCalls(ctx, store, self.policy)
        await uploader.abort_earlier_run(ctx, calls)
        src = await self.servers.backend(p["server"])
        items = [MemberBackupItem(**i) for i in p["items"]]
        # one ``zfs get`` of every member's snapshot (what a manifest records of it)
        found = await src.snapshot_facts([i.snapshot for i in items])
        results: dict[str, dict[str, Any]] = {}
        jobs = []
        for item in items:
            snap = found.get(item.snapshot)
            if snap is None:
                results[item.snapshot] = {"error": f"{item.snapshot} does not exist on "
                                                   "the master"}
                continue
            base = base_snapshot(item.base, item.base_guid) \
                if item.base is not None and item.base_guid is not None else None
            jobs.append(Job(item.snapshot, snap, base, item.remembered, item.full))

        def nothing(job: Job) -> None:
            pass

        def done(job: Job, snap: Snapshot, kind: str | None, error: str | None) -> None:
            results[job.key] = {"error": error} if error is not None else {
                "guid": snap.guid, "label": snap.label, "creation": snap.creation,
                "kind": kind}

        kinds = await uploader.run(ctx, src, calls, jobs, width=int(p["max_parallel"]),
                                   root=p["root"], on_start=nothing, on_stop=nothing,
                                   on_done=done)
        failed = sum(1 for r in results.values() if "error" in r)
        ctx.remember(results=results, failed=failed, full=kinds.count("full"),
                     incremental=kinds.count("incremental"))
        ctx.log.info("members backed up", store=store.name, backed_up=len(kinds),
                     failed=failed)

    async def rollback(self, ctx: ActivityContext) -> None:
        if self.uploader is not None:
            await self.uploader.rollback(ctx)


def register(engine: ActivityEngine, servers: ServerRegistry, stores: Stores | None,
             policy: RetryPolicy | None = None) -> None:
    engine.register(KIND, lambda r: MemberBackupsWork(r, servers, stores,
                                                      policy or RetryPolicy()))
