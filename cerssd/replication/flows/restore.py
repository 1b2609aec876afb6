"""Restore: a backup chain read back from the bucket into any server's pool.

    S3 ─ranged GETs, sha256 per part─▶ [zstd -d|lz4 -d] ─pipe─▶ zfs receive (local / ssh)

The chain (full, then each incremental up to the chosen snapshot) is checked whole
before anything is written: every manifest present, every segment object there with
its size. A target that already holds part of the chain (matched by guid) continues
from there; any other existing target is refused, never overwritten.

On failure or cancel the restore leaves the target as it found it: a target it
created is destroyed, snapshots it received into an existing one are destroyed.
After a daemon restart it continues from what the target already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ...activity import ActivityRecord, DataRoute, Progress, StatusCode
from ...engine import ActivityContext, ActivityEngine, ActivityError
from ...objectstore import catalog
from ...objectstore.client import ObjectMissing, ObjectStore
from ...objectstore.download import CorruptPart, download
from ...objectstore.layout import BackupMissing, BrokenChain, Manifest, chain
from ...objectstore.stores import Stores
from ...peers.delegate import ChildRequest, DelegatedWork
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound, while_busy
from ...storage.interface import StorageBackend
from ...storage.names import validate_snapshot, validate_volume
from ...transport.process import exited, stop_process
from ..retry import RetryPolicy
from ..stream.filters import restore_filters, spawn_chain
from ..stream.store_calls import StoreCalls
from ..stream.transfer import FdSet, first_failure

KIND = "restore"


@dataclass(frozen=True)
class RestoreRequest:
    store: str
    snapshot: str  # the backed-up snapshot's full name, volume@label
    server: str
    target_volume: str
    #: The age identity that opens an encrypted chain (else the store's
    #: ``age_identity_file``); a path on this node, never the key itself.
    identity_file: str | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> RestoreRequest:
        return cls(store=p["store"], snapshot=p["snapshot"], server=p["server"],
                   target_volume=p["target_volume"], identity_file=p.get("identity_file"))


class IdentityProblem(ValueError):
    """An encrypted chain without a usable identity file (the API's 422)."""


def identity_for(req: RestoreRequest, store: ObjectStore,
                 backups: list[Manifest]) -> Path | None:
    """The identity file an encrypted chain is opened with (None: the chain is not
    encrypted); ``IdentityProblem`` names the key when there is none or it is unusable."""
    encrypted = [m for m in backups if m.encryption != "none"]
    if not encrypted:
        return None
    key = "identity_file"
    path: str | Path | None = req.identity_file
    if path is None:
        path = store.config.privacy.age_identity_file
        key = f"stores.{store.name}.age_identity_file"
    if path is None:
        raise IdentityProblem(
            f"identity_file: the backup of {encrypted[0].snapshot} is encrypted with age "
            f"(to {', '.join(encrypted[0].age_recipients) or 'its recipients'}); give the "
            f"identity file that opens it, or set stores.{store.name}.age_identity_file")
    found = Path(path)
    if not found.is_absolute():
        raise IdentityProblem(f"{key}: must be an absolute path on the daemon's node")
    if not found.is_file() or not os.access(found, os.R_OK):
        raise IdentityProblem(f"{key}: {found} is not a readable file on the daemon's node")
    return found


async def restore_chain(store: ObjectStore, snapshot: str) -> list[Manifest]:
    """The backups to receive for ``snapshot``, full first; raises BackupMissing when
    there is no backup of it, BrokenChain when its chain has a hole."""
    volume = validate_snapshot(snapshot).volume
    backups = await catalog.backups(store, volume)
    wanted = [m for m in backups if m.snapshot == snapshot]
    if not wanted:
        raise BackupMissing(f"store {store.name} has no complete backup of {snapshot}")
    return chain(backups, wanted[-1].guid)


class RestoreWork:
    def __init__(self, record: ActivityRecord, servers: ServerRegistry, stores: Stores,
                 policy: RetryPolicy) -> None:
        self.req = RestoreRequest.from_params(record.params)
        self.params = record.params
        self.servers = servers
        self.store = stores.get(self.req.store)
        self.policy = policy
        self.created_target = bool(record.params.get("created_target"))
        self.received: list[str] = list(record.params.get("received", []))
        self.identity: Path | None = None

    async def run(self, ctx: ActivityContext) -> None:
        calls = StoreCalls(ctx, self.store, self.policy)
        try:
            backups = await calls("read the chain",
                                  lambda: restore_chain(self.store, self.req.snapshot))
        except BrokenChain as exc:
            raise ActivityError(str(exc), StatusCode.ERROR, "broken-chain") from exc
        try:
            self.identity = identity_for(self.req, self.store, backups)
        except IdentityProblem as exc:
            raise ActivityError(str(exc), StatusCode.ERROR, "identity") from exc
        await self._check_objects(calls, backups)
        dst = await self.servers.backend(self.req.server)
        todo = await self._still_needed(dst, backups)
        total = sum(m.stream_size for m in todo)
        ctx.set_progress(0, total, unit="bytes", estimated=False)
        ctx.counters.done = 0
        ctx.log.info("restore planned", snapshot=self.req.snapshot, store=self.store.name,
                     target=self.req.target_volume, backups=len(todo), bytes=total)
        for i, manifest in enumerate(todo):
            await ctx.checkpoint()
            if not await dst.exists(self.req.target_volume):
                self.created_target = True
                ctx.remember(created_target=True)
            await self._receive(ctx, calls, dst, manifest, force=i > 0)
            got = await dst.snapshot(f"{self.req.target_volume}@{manifest.label}")
            if got.guid != manifest.guid:
                raise ActivityError(f"received {got.name} has guid {got.guid}, the backup "
                                    f"says {manifest.guid}", StatusCode.ERROR, "verify")
            self.received.append(got.name)
            ctx.remember(received=self.received)
        ctx.log.info("restore complete", snapshot=self.req.snapshot,
                     target=self.req.target_volume, backups=len(todo))

    async def _check_objects(self, calls: StoreCalls, backups: list[Manifest]) -> None:
        """Every segment of the chain must be there, whole, before anything is received."""
        for manifest in backups:
            for seg in manifest.segments:
                try:
                    info = await calls("check segment", partial(self.store.head, seg.key))
                except ActivityError as exc:
                    if isinstance(exc.__cause__, ObjectMissing):
                        raise ActivityError(
                            f"the backup of {manifest.snapshot} is incomplete: {seg.key} is "
                            "missing from the bucket", StatusCode.ERROR, "broken-chain") from exc
                    raise
                if info.size != seg.size:
                    raise ActivityError(
                        f"the backup of {manifest.snapshot} is damaged: {seg.key} has "
                        f"{info.size} bytes, the manifest says {seg.size}",
                        StatusCode.ERROR, "broken-chain")

    async def _still_needed(self, dst: StorageBackend, backups: list[Manifest]) -> list[Manifest]:
        """The part of the chain the target lacks; refuses a target that is not a copy."""
        target = self.req.target_volume
        pool = dst.pool_of(target)
        if pool not in await dst.pools():
            raise ActivityError(f"pool {pool} does not exist on {self.req.server}",
                                StatusCode.ERROR, "conflict")
        if not await dst.exists(target):
            return backups
        have = {s.guid for s in await dst.snapshots(target)}
        present = [i for i, m in enumerate(backups) if m.guid in have]
        if not present:
            raise ActivityError(
                f"{target} already exists on {self.req.server} and holds none of the "
                "snapshots of this backup chain; restore into a new volume",
                StatusCode.ERROR, "conflict")
        return backups[present[-1] + 1:]

    async def _receive(self, ctx: ActivityContext, calls: StoreCalls, dst: StorageBackend,
                       manifest: Manifest, *, force: bool) -> None:
        fds = FdSet()
        procs: list[asyncio.subprocess.Process] = []
        filters = restore_filters(manifest.compression,
                                  self.identity if manifest.encryption == "age" else None)
        try:
            in_r, in_w = fds.channel()
            recv_stdin = in_r
            if filters:
                recv_stdin, out_w = fds.channel()
                procs += await spawn_chain([argv for _, argv in filters], in_r, out_w, fds)
            # With ``force``: an incremental onto the snapshot this restore just received.
            receiver = dst.receive(self.req.target_volume, discard_changes=force)
            procs.insert(0, await receiver.spawn(stdin=recv_stdin,
                                                 stdout=asyncio.subprocess.DEVNULL))
            fds.close(recv_stdin)
            try:
                await download(self.store, manifest, in_w, concurrency=self.store.config.
                               concurrency, retry=calls, checkpoint=ctx.checkpoint,
                               on_bytes=ctx.counters.moved)
            except CorruptPart as exc:
                raise ActivityError(str(exc), StatusCode.ERROR, "corrupt") from exc
            except BrokenPipeError:
                pass  # the receiver quit early: its exit status says why
            fds.close(in_w)
            named = list(zip((f"zfs receive of {manifest.snapshot}",
                              *(name for name, _ in filters)), procs, strict=True))
            problem = await _first_failure(named, manifest)
            if problem is not None:
                raise ActivityError(problem, StatusCode.ERROR, "backend")
        finally:
            fds.close_all()
            for proc in procs:
                await asyncio.shield(stop_process(proc))

    async def rollback(self, ctx: ActivityContext) -> None:
        """Leave the target as it was: remove what this restore created or received."""
        try:
            dst = await self.servers.backend(self.req.server)
        except BackendError as exc:
            raise ActivityError(f"cannot roll back on {self.req.server}: {exc}") from exc
        target = self.req.target_volume
        if self.created_target:
            # Right after the receiver is killed ZFS may still call the dataset busy.
            async for attempt in while_busy():
                with attempt, contextlib.suppress(NotFound):
                    if await dst.exists(target):
                        await dst.destroy_volume(target, force_unmount=True)
                        ctx.log.info("removed the partly restored volume", volume=target)
        else:
            for name in reversed(self.received):
                with contextlib.suppress(NotFound):
                    await dst.destroy_snapshot(name)
        self.received = []
        ctx.remember(received=[], created_target=False)


async def _first_failure(named: list[tuple[str, asyncio.subprocess.Process]],
                         manifest: Manifest) -> str | None:
    """The error to report: decryption's first (a wrong identity makes ``zfs receive``
    fail too, on an empty stream), then the receiver's, then a filter's; a filter killed
    by SIGPIPE only saw its reader quit, which the reader's own error explains."""
    order = sorted(named, key=lambda item: item[0] != "age decryption")
    problem = await first_failure(
        [(name, proc) for name, proc in order if await exited(proc) != -signal.SIGPIPE])
    if problem is not None and problem.startswith("age decryption") \
            and "no identity matched" in problem:
        problem += (f" (the identity file does not hold the key of any recipient of "
                    f"{manifest.snapshot}'s backup: "
                    f"{', '.join(manifest.age_recipients) or 'see its manifest'})")
    return problem


def submit_restore(engine: ActivityEngine, servers: ServerRegistry, stores: Stores,
                   req: RestoreRequest) -> ActivityRecord:
    validate_snapshot(req.snapshot)
    validate_volume(req.target_volume)
    if "/" not in req.target_volume:
        raise ActivityError("restore into a dataset below a pool's root, e.g. POOL/restored",
                            StatusCode.ERROR, "conflict")
    stores.get(req.store)
    entry = servers.entry(req.server)
    route = DataRoute.DELEGATED if servers.delegates(req.server) else (
        DataRoute.RELAYED if entry.config.kind == "ssh" else DataRoute.LOCAL)
    return engine.submit(KIND, volume=req.target_volume, source=req.store,
                         target=req.server, params=req.params(), self_restarting=True,
                         progress=Progress(0, 0, unit="bytes"), route=route,
                         node=req.server if route == DataRoute.DELEGATED else None)


def delegated_restore(record: ActivityRecord, servers: ServerRegistry,
                      policy: RetryPolicy) -> DelegatedWork:
    """The parent of a restore the target server's peer daemon fetches from the bucket
    itself (an ``identity_file`` is a path on that node: docs/peers.md)."""
    req = RestoreRequest.from_params(record.params)
    cfg = servers.entry(req.server).config
    body: dict[str, Any] = {"store": req.store, "snapshot": req.snapshot,
                            "server": cfg.daemon_server, "target_volume": req.target_volume}
    if req.identity_file is not None:
        body["identity_file"] = req.identity_file
    return DelegatedWork(servers.peer(req.server), servers.links, policy,
                         ChildRequest("/v1/restores", body))


def register(engine: ActivityEngine, servers: ServerRegistry, stores: Stores,
             policy: RetryPolicy) -> None:
    def work(r: ActivityRecord) -> RestoreWork | DelegatedWork:
        if r.route == DataRoute.DELEGATED:
            return delegated_restore(r, servers, policy)
        return RestoreWork(r, servers, stores, policy)

    engine.register(KIND, work)
