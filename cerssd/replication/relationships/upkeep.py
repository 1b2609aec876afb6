"""A relationship's facts from its servers, and retention on its slaves and master.

What the daemon remembers about a slave (the newest snapshot it shares with the master,
by guid) is read again from the servers after every transfer and when the
relationship's activity starts; retention then thins each slave, and the master once no
stream reads from it, always sparing every slave's and store's newest common base (an
incremental needs it: losing it would force a full stream).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import structlog

from ...activity import State
from ...engine import ActivityEngine
from ...objectstore.client import StoreError
from ...objectstore.config import StoreConfig
from ...objectstore.layout import Manifest
from ...objectstore.stores import Stores
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...storage.values import Snapshot
from ...transport.errors import LinkError
from ...volume_states import PRUNING, VolumeStates, backup_prune_holds, prune_holds
from ..flows import bucket_prune, snapshot_prune
from ..logic.retention import owned, parse_grid
from .prune_plan import Place, TargetPlan, blocked_plan, grid_text, volume_plan
from .registry import RelationshipRegistry
from .runtime import Runtime

log = structlog.get_logger("cerssd.relationships")


class Upkeep:
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 registry: RelationshipRegistry, volume_states: VolumeStates,
                 stores: Stores | None = None) -> None:
        self.engine = engine
        self.servers = servers
        self.registry = registry
        #: The object stores, for their ``retention`` after a backup.
        self.stores = stores
        #: A stateful slave's volume is held while it is pruned.
        self.volume_states = volume_states

    # -- facts ------------------------------------------------------------------------
    async def _master_snapshots(self, rt: Runtime) -> list[Snapshot] | None:
        """The master's snapshots of the volume (and so its newest of ours), or None."""
        try:
            master = await self.servers.backend(rt.spec.master)
            ours = await master.snapshots(rt.spec.volume)
        except (BackendError, LinkError) as exc:
            log.info("master not listed", relationship=rt.name, error=str(exc))
            return None
        mine = [s for s in ours if owned(s.label, rt.spec.prefix)]
        if mine:
            rt.newest = (mine[-1].name, mine[-1].guid)
        return ours

    async def refresh_slave(self, rt: Runtime, server: str,
                            ours: list[Snapshot] | None = None) -> None:
        """The newest snapshot the slave shares with the master (by guid)."""
        if ours is None and (ours := await self._master_snapshots(rt)) is None:
            return
        status = rt.slaves[server]
        try:
            slave = await self.servers.backend(server)
            # a copy the generic path made shares the master's guid as its origin
            theirs = {i for s in await slave.snapshots(status.target_volume)
                      for i in s.identities}
        except NotFound:
            theirs = set()  # no target volume yet
        except (BackendError, LinkError) as exc:
            log.info("slave state not refreshed", relationship=rt.name, slave=server,
                     error=str(exc))
            return
        common = [s for s in ours if s.identities & theirs]
        if common:
            last = common[-1]
            status.last_snapshot = f"{status.target_volume}@{last.label}"
            status.last_snapshot_guid = last.guid
            status.last_snapshot_created = float(last.creation)
        else:
            status.last_snapshot = status.last_snapshot_guid = None
            status.last_snapshot_created = None

    async def refresh_all(self, rt: Runtime) -> None:
        ours = await self._master_snapshots(rt)
        if ours is not None:
            await asyncio.gather(*(self.refresh_slave(rt, s, ours) for s in rt.slaves))
        self.registry.save(rt)

    # -- retention --------------------------------------------------------------------
    async def prune_slave(self, rt: Runtime, server: str) -> None:
        """Retention on one slave; its newest common base with the master is kept."""
        plan = await self.slave_plan(rt, server, time.time())
        if plan.blocked:
            if plan.blocked.startswith("not listed"):
                log.info("slave retention skipped", relationship=rt.name, slave=server,
                         error=plan.blocked)
            return
        if plan.verdicts:  # a stateful slave's volume is held while pruned; skipped if held
            self.volume_states.try_submit(
                prune_holds(server, plan.volume), PRUNING,
                partial(snapshot_prune.submit_prune, self.engine, server, plan.volume,
                        plan.names, rt.name, plan.guids), log.bind(relationship=rt.name))

    async def slave_plan(self, rt: Runtime, server: str, now: float) -> TargetPlan:
        """What retention destroys on one slave now, and why; or why nothing."""
        status = rt.slaves[server]
        grid, keep = rt.spec.slave_retention, rt.spec.slave_keep_min
        if status.last_snapshot_guid is None:
            return blocked_plan(Place.SLAVE, server, status.target_volume, grid, keep,
                                "its newest common snapshot with the master is not known "
                                "yet (nothing is pruned without it)")
        if server in self.registry.transfers(rt.name):
            return blocked_plan(Place.SLAVE, server, status.target_volume, grid, keep,
                                "a transfer to it is under way")
        try:
            backend = await self.servers.backend(server)
            snaps = await backend.snapshots(status.target_volume)
        except (BackendError, LinkError) as exc:
            return blocked_plan(Place.SLAVE, server, status.target_volume, grid, keep,
                                f"not listed: {exc}")
        return volume_plan(Place.SLAVE, server, status.target_volume, snaps, grid, now=now,
                           prefix=rt.spec.prefix, keep_min=keep,
                           protected={status.last_snapshot_guid})

    def master_blocker(self, rt: Runtime) -> str | None:
        """Why the master may not be pruned now, or None."""
        if rt.spec.snapshots is not None:
            return (f"its snapshots are policy {rt.spec.snapshots}'s: that policy's grid "
                    "prunes the master (its dry run: cerssctl policy prune "
                    f"{rt.spec.snapshots} --dry-run)")
        streams = [*self.registry.transfers(rt.name).values(),
                   *self.registry.backups(rt.name).values()]
        if any(t.record.state in (State.RUNNING, State.SUSPENDED) for t in streams):
            return ("a stream reads from the master (zfs send -I needs the snapshots "
                    "between its ends)")
        if protected_bases(rt) is None:
            return ("a slave's or store's base is not known yet (nothing is pruned "
                    "without it: a lost base would force a full stream)")
        if any(p.record.params["server"] == rt.spec.master
               for p in self.engine.live(snapshot_prune.KIND, rt.name)):
            return "a prune of the master is under way"
        return None

    def master_plan(self, rt: Runtime, snapshots: list[Snapshot], now: float) -> TargetPlan:
        return volume_plan(Place.MASTER, rt.spec.master, rt.spec.volume, snapshots,
                           rt.spec.retention, now=now, prefix=rt.spec.prefix,
                           keep_min=rt.spec.keep_min, protected=protected_bases(rt) or (),
                           blocked=self.master_blocker(rt))

    async def prune_master(self, rt: Runtime, snapshots: list[Snapshot] | None = None) -> None:
        """Retention on the master, sparing every slave's newest common base.

        Not while a stream may be reading from the master (``-I`` carries the
        intermediates, which must not vanish mid-send), and not at all while any
        slave's base is unknown. Master errors propagate: the cycle reports them.
        ``snapshots`` is the master's list when the caller has just read it. None at
        all for a relationship replicating a snapshot policy's snapshots: the policy's
        grid owns them (``policies.guard`` spares this relationship's bases).
        """
        blocked = self.master_blocker(rt)
        if blocked is not None:
            if blocked.startswith("a prune"):
                rt.master_prune_due = True  # the running pass may predate this cycle's
            return
        if snapshots is None:
            master = await self.servers.backend(rt.spec.master)
            snapshots = await master.snapshots(rt.spec.volume)
        plan = self.master_plan(rt, snapshots, time.time())
        if plan.verdicts:
            snapshot_prune.submit_prune(self.engine, rt.spec.master, rt.spec.volume,
                                        plan.names, rt.name, plan.guids)


    # -- object stores ----------------------------------------------------------------
    def store_config(self, store: str) -> StoreConfig | None:
        if self.stores is None or store not in self.stores.stores:
            return None
        return self.stores.get(store).config

    def prune_store(self, rt: Runtime, store: str) -> None:
        """The store's ``retention`` after a backup of the relationship: a
        ``backup-prune`` activity that lists the bucket and decides itself (failures
        are that activity's, reported like any other). One at a time per store."""
        cfg = self.store_config(store)
        if cfg is None or cfg.retention is None:
            return
        if any(a.record.params.get("store") == store
               for a in self.engine.live(bucket_prune.KIND, rt.name)):
            log.info("store retention already under way", relationship=rt.name, store=store)
            return
        base = rt.store_bases.get(store)
        self.volume_states.try_submit(
            backup_prune_holds(self.servers.entries, rt.spec.volume), PRUNING,
            partial(bucket_prune.submit_scheduled, self.engine, store, rt.spec.volume,
                    relationship=rt.name, retention=cfg.retention, keep_min=cfg.keep_min,
                    prefix=rt.spec.prefix, subtree=rt.tree is not None,
                    protected={base} if base else set()), log.bind(relationship=rt.name))

    async def store_plan(self, rt: Runtime, store: str,
                         now: float) -> tuple[TargetPlan, list[Manifest]]:
        """What the store's retention deletes of the relationship's backups now, and why
        (one listing; a failed one blocks the plan: nothing is decided from half)."""
        cfg = self.store_config(store)
        keep = cfg.keep_min if cfg else 1
        if cfg is None or cfg.retention is None:
            return blocked_plan(Place.STORE, store, rt.spec.volume, (), keep,
                                f"no retention for this store ([stores.{store}] "
                                "retention)"), []
        assert self.stores is not None
        grid = parse_grid(cfg.retention, f"stores.{store}.retention")
        base = rt.store_bases.get(store)
        try:
            doomed = await bucket_prune.plan_store(
                self.stores.get(store), rt.spec.volume, grid, now=now,
                subtree=rt.tree is not None, prefix=rt.spec.prefix, keep_min=keep,
                protected={base} if base else ())
        except StoreError as exc:
            return blocked_plan(Place.STORE, store, rt.spec.volume, grid, keep,
                                f"not listed: {exc}"), []
        plan = TargetPlan(Place.STORE, store, rt.spec.volume, grid_text(grid), keep,
                          tuple(v for _, v in doomed))
        return plan, [m for m, _ in doomed]


def protected_bases(rt: Runtime) -> set[str] | None:
    """Guids the master must keep: every slave's and store's base; None if one is
    unknown (nothing is pruned then: a lost base would force a full stream)."""
    guids = set()
    for status in rt.slaves.values():
        if status.last_snapshot_guid is None:
            return None
        guids.add(status.last_snapshot_guid)
    for base in rt.store_bases.values():
        if base is None:
            return None
        guids.add(base)
    return guids
