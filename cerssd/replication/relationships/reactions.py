"""What the relationship manager does when one of a relationship's activities changes.

One engine listener, so the generic activity verbs act on relationships too:

* pausing the relationship's activity suspends its running transfers, resuming it
  resumes them (``/v1/activities/{id}/suspend`` does the same as ``/pause``); a
  cancelled one leaves the relationship stopped;
* a finished transfer updates its slave's facts and prunes the slave, and wakes the
  relationship's activity if the slave is still behind the newest snapshot;
* a finished backup records its store's new base;
* once the last stream from the master has ended, the master is thinned too.

Listeners are synchronous: the work runs as background tasks.
"""

from __future__ import annotations

import time

import structlog

from ...activity import ActivityRecord, State
from ...engine import Activity, ActivityEngine
from ...storage.errors import BackendError
from ...transport.errors import LinkError
from ..flows import backup, replicate, snapshot_prune
from ..logic.slave_status import SlaveStatus
from .background import BackgroundTasks
from .registry import OWN_UPLOADS, TREE_BACKUP, RelationshipRegistry
from .runtime import KIND, Runtime
from .upkeep import Upkeep, protected_bases

log = structlog.get_logger("cerssd.relationships")


class Reactions:
    def __init__(self, engine: ActivityEngine, registry: RelationshipRegistry,
                 upkeep: Upkeep) -> None:
        self.engine = engine
        self.registry = registry
        self.upkeep = upkeep
        self._tasks = BackgroundTasks()
        engine.add_listener(self._on_change)

    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        name = record.params.get("relationship")
        rt = self.registry.runtimes.get(name) if isinstance(name, str) else None
        if rt is None or "member" in record.params:
            return  # a tree member's transfer: its tree-sync activity records the outcome
        if record.kind == KIND and record.id == rt.activity_id:
            self._follow_parent(rt, record)
        elif record.kind == replicate.KIND and record.state.terminal:
            self._tasks.spawn(self._after_transfer(rt, record))
        elif record.kind == backup.KIND and record.state.terminal:
            self._tasks.spawn(self._after_backup(rt, record))
        elif record.kind == TREE_BACKUP and record.state.terminal:
            self._after_tree_backup(rt, record)
        elif record.kind == snapshot_prune.KIND and record.state.terminal and rt.master_prune_due \
                and record.params.get("server") == rt.spec.master:
            rt.master_prune_due = False
            self._tasks.spawn_quietly(self.upkeep.prune_master(rt))

    def _follow_parent(self, rt: Runtime, record: ActivityRecord) -> None:
        """Pause or resume the relationship's running transfers with it, and remember
        the pause (the relationship's verbs commit it themselves; this catches a
        suspend or resume of its activity through the activities API)."""
        if record.state == State.SUSPENDED and not rt.paused:
            rt.paused = True
            self.registry.save(rt)
        elif record.state == State.RUNNING and rt.paused and rt.name not in self.registry.stale:
            rt.paused = False  # not while a new leader's runtime waits for the shared facts
            self.registry.save(rt)
        if record.state == State.SUSPENDED:
            for transfer in self.registry.streams(rt.name):
                if transfer.record.kind in OWN_UPLOADS:
                    continue
                if transfer.record.state in (State.RUNNING, State.RETRYING):
                    rt.suspended_children.add(transfer.id)
                    self._tasks.spawn_quietly(self.engine.suspend(transfer.id))
        elif record.state == State.RUNNING and rt.suspended_children:
            for child in list(rt.suspended_children):
                self._tasks.spawn_quietly(self.engine.resume(child))
            rt.suspended_children.clear()
        elif record.state == State.CANCELLED:
            rt.stopped = True
            self.registry.save(rt)

    async def _after_transfer(self, rt: Runtime, record: ActivityRecord) -> None:
        server = record.params["destination"]
        status = rt.slaves.get(server)
        if status is None:
            return
        if record.state == State.SUCCEEDED:
            status.error = None
            status.last_success_at = record.finished_at
            status.last_cycle_bytes = record.usage.bytes_on_wire
        elif record.state == State.FAILED and record.status is not None:
            status.error = record.status.message
        received = record.params.get("received")
        if record.state == State.SUCCEEDED and isinstance(received, dict) \
                and record.params.get("target_volume") == status.target_volume:
            # The snapshot it sent is the newest the slave shares with the master (one
            # transfer per slave at a time): known without listing either side again.
            status.last_snapshot = f"{status.target_volume}@{received['label']}"
            status.last_snapshot_guid = received["guid"]
            status.last_snapshot_created = float(received["creation"])
        else:
            await self.upkeep.refresh_slave(rt, server)
        self.registry.save(rt)
        if record.state == State.SUCCEEDED:
            await self.upkeep.prune_slave(rt, server)
            self._catch_up_if_behind(rt, status)
        await self._after_stream(rt)

    def _catch_up_if_behind(self, rt: Runtime, status: SlaveStatus) -> None:
        activity = self.registry.activity_of(rt)
        if (rt.newest is None or status.last_snapshot_guid == rt.newest[1]
                or activity is None or activity.record.state != State.RUNNING
                or status.server in self.registry.transfers(rt.name)):
            return
        rt.catch_up_due = True
        self.engine.wake(activity.id)

    async def _after_backup(self, rt: Runtime, record: ActivityRecord) -> None:
        store = record.params["store"]
        if record.state == State.SUCCEEDED and store in rt.store_bases:
            rt.store_bases[store] = record.params.get("guid")
            rt.backup_success_at[store] = record.finished_at or time.time()
            if "base_guid" in record.params:  # else it found the snapshot backed up already
                rt.note_backup(store, full=record.params["base_guid"] is None)
            self.registry.save(rt)
            self.upkeep.prune_store(rt, store)
        await self._after_stream(rt)

    def _after_tree_backup(self, rt: Runtime, record: ActivityRecord) -> None:
        """A tree's backup counts as a success when every member's did: only then is
        the store's retention applied (a member that failed keeps what it has)."""
        store = record.params.get("store")
        if record.state != State.SUCCEEDED or record.params.get("failing") \
                or store not in rt.spec.stores:
            return
        rt.backup_success_at[store] = record.finished_at or time.time()
        if record.params.get("to_back_up"):
            rt.note_backup(store, full=bool(record.params.get("full_every_due")))
        self.registry.save(rt)
        self.upkeep.prune_store(rt, store)

    async def _after_stream(self, rt: Runtime) -> None:
        """The cycle's last stream from the master has ended: thin the master too."""
        if self.registry.transfers(rt.name) or self.registry.backups(rt.name):
            return
        seen = (rt.newest[1] if rt.newest else None, frozenset(protected_bases(rt) or ()))
        if seen == rt.master_pruned_for:
            return
        rt.master_pruned_for = seen
        try:
            await self.upkeep.prune_master(rt)
        except (BackendError, LinkError) as exc:
            rt.master_pruned_for = None
            log.info("master retention skipped", relationship=rt.name, error=str(exc))
