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
from ...servers import ServerRegistry
from ...storage.errors import BackendError, NotFound
from ...storage.values import Snapshot
from ...transport.errors import LinkError
from ...volume_states import PRUNING, VolumeStates, prune_holds
from ..flows import snapshot_prune
from ..logic.retention import to_destroy
from .registry import RelationshipRegistry
from .runtime import Runtime

log = structlog.get_logger("cerssd.relationships")


class Upkeep:
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 registry: RelationshipRegistry, volume_states: VolumeStates) -> None:
        self.engine = engine
        self.servers = servers
        self.registry = registry
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
        mine = [s for s in ours if s.label.startswith(rt.spec.prefix)]
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
        status = rt.slaves[server]
        if status.last_snapshot_guid is None or server in self.registry.transfers(rt.name):
            return
        try:
            backend = await self.servers.backend(server)
            snaps = await backend.snapshots(status.target_volume)
        except (BackendError, LinkError) as exc:
            log.info("slave retention skipped", relationship=rt.name, slave=server,
                     error=str(exc))
            return
        doomed = to_destroy(snaps, rt.spec.slave_retention, now=time.time(),
                            prefix=rt.spec.prefix, protected={status.last_snapshot_guid})
        if doomed:  # a stateful slave's volume is held while pruned; skipped if held
            self.volume_states.try_submit(
                prune_holds(server, status.target_volume), PRUNING,
                partial(snapshot_prune.submit_prune, self.engine, server, status.target_volume,
                        [s.name for s in doomed], rt.name), log.bind(relationship=rt.name))

    async def prune_master(self, rt: Runtime, snapshots: list[Snapshot] | None = None) -> None:
        """Retention on the master, sparing every slave's newest common base.

        Not while a stream may be reading from the master (``-I`` carries the
        intermediates, which must not vanish mid-send), and not at all while any
        slave's base is unknown. Master errors propagate: the cycle reports them.
        ``snapshots`` is the master's list when the caller has just read it. None at
        all for a relationship replicating a snapshot policy's snapshots: the policy's
        grid owns them (``policies.guard`` spares this relationship's bases).
        """
        if rt.spec.snapshots is not None:
            return
        streams = [*self.registry.transfers(rt.name).values(),
                   *self.registry.backups(rt.name).values()]
        if any(t.record.state in (State.RUNNING, State.SUSPENDED) for t in streams):
            return
        protected = protected_bases(rt)
        if protected is None:
            return
        if any(p.record.params["server"] == rt.spec.master
               for p in self.engine.live(snapshot_prune.KIND, rt.name)):
            rt.master_prune_due = True  # the running pass may predate this cycle's snapshot
            return
        if snapshots is None:
            master = await self.servers.backend(rt.spec.master)
            snapshots = await master.snapshots(rt.spec.volume)
        doomed = to_destroy(snapshots, rt.spec.retention, now=time.time(),
                            prefix=rt.spec.prefix, protected=protected)
        if doomed:
            snapshot_prune.submit_prune(self.engine, rt.spec.master, rt.spec.volume,
                               [s.name for s in doomed], rt.name)


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
