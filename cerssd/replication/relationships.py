"""The relationships this daemon keeps: definitions, live state, and the operator's verbs.

Each relationship that is not stopped has one long-lived, self-restarting activity
(kind ``relationship``, progress 0 of 0, run by ``continuous.RelationshipWork``),
and each of its cycles makes child activities: one ``replicate`` per slave that
needs the new snapshot, and ``prune`` activities for retention. This class ties
them together:

* pausing the relationship's activity suspends its running transfers, resuming it
  resumes them (through an engine listener, so the generic
  ``/v1/activities/{id}/suspend`` does the same as ``/pause``);
* a finished transfer updates its slave's facts and prunes the slave;
* ``sync-now`` starts a cycle at once and cuts the back-off of retrying transfers;
* definitions made through the API and every relationship's facts are kept in the
  journal's database, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import structlog

from ..activity import ActivityRecord, Progress, State
from ..backends.base import BackendError, NotFound, Snapshot
from ..backends.ssh import SshError
from ..config import ConfigError
from ..engine import Activity, ActivityEngine
from ..journal import Journal
from ..objectstore.stores import Stores
from ..servers import ServerRegistry
from ..volume_states import PRUNING, VolumeStates, prune_holds
from . import backup, prune, replicate
from .groups import FanoutGroups
from .relationship import RelationshipSpec, parse_relationship
from .retention import to_destroy
from .roles import FailoverState, RolesInvalid, apply_roles, replication_status, roles_json
from .schedule import Schedule
from .status import SlaveStatus, slave_json, slave_state

log = structlog.get_logger("cerssd.relationships")

KIND = "relationship"
#: The longest wait between attempts to fence an old master that does not answer.
FENCE_RETRY_CAP = 10.0


class RelationshipError(Exception):
    """An operator's request about a relationship that cannot be done (HTTP 409)."""


class UnknownRelationship(KeyError):
    pass


@dataclass
class Runtime:
    """One relationship's live state; ``spec`` is its definition."""

    spec: RelationshipSpec
    slaves: dict[str, SlaveStatus]
    #: The master its definition names; a failover away from it makes ``spec.master``
    #: differ, and a failover back to it is a failback.
    home: str = ""
    failover: FailoverState = field(default_factory=FailoverState)
    stopped: bool = False
    last_cycle_at: float | None = None
    next_cycle_at: float | None = None
    cycles: int = 0
    #: A slave finished a transfer still behind the newest snapshot (a cycle ran while
    #: it was sending an older one): the relationship's activity catches it up now.
    catch_up_due: bool = False
    #: A pass of ``enforce_fences`` is under way.
    fencing: bool = False
    #: The master's newest snapshot of this relationship: (name, guid), remembered.
    newest: tuple[str, str] | None = None
    last_error: str | None = None
    #: Since when its cycle waits for a turn (``max_concurrent_cycles``); None if not.
    cycle_waiting_since: float | None = None
    activity_id: str | None = None
    suspended_children: set[str] = field(default_factory=set)
    group_ids: list[str] = field(default_factory=list)
    #: A master retention pass was skipped while an earlier one ran: run it after.
    master_prune_due: bool = False
    #: Per object store: the guid of its newest backup of the volume (the next
    #: incremental's base, kept on the master like a slave's), None while unknown.
    store_bases: dict[str, str | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def schedule(self) -> Schedule:
        return self.spec.schedule

    def remembered(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "last_cycle_at": self.last_cycle_at,
                "cycles": self.cycles, "newest": list(self.newest) if self.newest else None,
                "slaves": {n: s.remembered() for n, s in self.slaves.items()},
                "store_bases": dict(self.store_bases),
                "roles": roles_json(self.spec) if self.failover.last_failover_at else None,
                "failover": self.failover.remembered()}


def _runtime(spec: RelationshipSpec, state: Mapping[str, Any],
             servers: Collection[str]) -> Runtime:
    """The live state of ``spec``: remembered facts, and the roles a failover left."""
    home = spec.master
    if state.get("roles"):
        spec = apply_roles(spec, state["roles"], servers)
    slaves = {s.server: SlaveStatus(s.server, s.target_volume) for s in spec.slaves}
    for name, facts in state.get("slaves", {}).items():
        if name in slaves:
            slaves[name].restore(facts)
    newest = state.get("newest")
    remembered_bases = state.get("store_bases", {})
    return Runtime(spec, slaves, home=home,
                   failover=FailoverState.restore(state.get("failover") or {}),
                   stopped=bool(state.get("stopped")),
                   last_cycle_at=state.get("last_cycle_at"), cycles=state.get("cycles", 0),
                   newest=(newest[0], newest[1]) if newest else None,
                   store_bases={s: remembered_bases.get(s) for s in spec.stores})


class Relationships:
    #: Set by the daemon once the engine has recovered: the cycles' transfers and a
    #: failover hold volumes on stateful servers through it.
    volume_states: VolumeStates

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry, journal: Journal,
                 groups: FanoutGroups, stores: Stores | None = None) -> None:
        self.stores = stores
        self.store_names: Collection[str] = stores.stores if stores else ()
        self.engine = engine
        self.servers = servers
        self.journal = journal
        self.groups = groups
        self.runtimes: dict[str, Runtime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        engine.add_listener(self._on_change)

    # -- loading and starting ---------------------------------------------------------
    def load(self, configured: Mapping[str, RelationshipSpec]) -> None:
        """Config relationships plus those made through the API, with remembered facts."""
        stored = self.journal.load_relationships()
        for name, spec in configured.items():
            self._add(spec, stored.get(name, (None, {}))[1])
        for name, (raw, state) in stored.items():
            if raw is None or name in configured:
                if raw is not None:
                    log.warning("relationship defined in the config and through the API; "
                                "the config wins", relationship=name)
                continue
            try:
                spec = parse_relationship(name, raw, servers=self.servers.entries,
                                          stores=self.store_names,
                                          key=f"relationship {name}", origin="api")
            except ConfigError as exc:
                log.error("stored relationship no longer valid; not started",
                          relationship=name, key=exc.key, problem=exc.problem)
                continue
            self._add(spec, state)

    def _add(self, spec: RelationshipSpec, state: Mapping[str, Any]) -> None:
        try:
            self.runtimes[spec.name] = _runtime(spec, state, self.servers.entries)
        except RolesInvalid as exc:
            log.error("relationship not started: fix the config (restore the servers) "
                      "or remove the relationship", relationship=spec.name, problem=str(exc))

    def start(self) -> None:
        """After the engine's recovery: give every running relationship its activity."""
        live = {a.record.params.get("relationship"): a for a in self.engine.live(KIND)}
        for rt in self.runtimes.values():
            if rt.stopped:
                continue
            activity = live.get(rt.name)
            rt.activity_id = activity.id if activity else self._submit(rt).id
        for rt in self.runtimes.values():
            self.fence_soon(rt)

    def _submit(self, rt: Runtime) -> ActivityRecord:
        return self.engine.submit(
            KIND, volume=rt.spec.volume, source=rt.spec.master,
            target=", ".join(s.server for s in rt.spec.slaves),
            params={"relationship": rt.name}, self_restarting=True,
            progress=Progress(0, 0, unit="cycles"))

    def save(self, rt: Runtime) -> None:
        self.journal.save_relationship_state(rt.name, rt.remembered())

    # -- lookups ----------------------------------------------------------------------
    def get(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise UnknownRelationship(name) from None

    def backups(self, name: str) -> dict[str, Activity]:
        """The live backup of each object store of ``name`` (at most one per store)."""
        return {a.record.params["store"]: a for a in self.engine.live(backup.KIND, name)}

    def transfers(self, name: str) -> dict[str, Activity]:
        """The live transfer of each slave of ``name`` (at most one per slave)."""
        return {a.record.params["destination"]: a
                for a in self.engine.live(replicate.KIND, name)}

    # -- the operator's verbs ---------------------------------------------------------
    def create(self, spec: RelationshipSpec) -> Runtime:
        if spec.name in self.runtimes:
            raise RelationshipError(f"relationship {spec.name} already exists")
        self.journal.save_relationship_spec(spec.name, dict(spec.raw))
        rt = Runtime(spec, {s.server: SlaveStatus(s.server, s.target_volume)
                            for s in spec.slaves}, home=spec.master,
                     store_bases=dict.fromkeys(spec.stores))
        self.runtimes[spec.name] = rt
        self.save(rt)
        rt.activity_id = self._submit(rt).id
        log.info("relationship created", relationship=spec.name, volume=spec.volume,
                 slaves=[s.server for s in spec.slaves])
        return rt

    async def remove(self, name: str) -> None:
        rt = self.get(name)
        self.check_no_failover(rt)
        if rt.spec.origin == "config":
            raise RelationshipError(f"relationship {name} is defined in the config file; "
                                    "remove it there and restart cerssd")
        await self.stop(name)
        del self.runtimes[name]
        self.journal.delete_relationship(name)
        log.info("relationship removed; its snapshots were left in place", relationship=name)

    async def stop(self, name: str) -> None:
        """Cancel the relationship's activity (its transfers roll back) and wait for it."""
        rt = self.get(name)
        activity = self.activity_of(rt)
        if activity is not None:
            await self.engine.cancel(activity.id)
            await activity.done.wait()
        rt.stopped = True
        self.save(rt)

    async def pause(self, name: str) -> ActivityRecord:
        rt = self.get(name)
        self.check_no_failover(rt)
        activity = self.activity_of(rt)
        if activity is None:
            raise RelationshipError(f"relationship {name} is stopped")
        if activity.record.state == State.SUSPENDED:
            raise RelationshipError(f"relationship {name} is already paused")
        return await self.engine.suspend(activity.id)

    async def resume(self, name: str) -> ActivityRecord:
        """Resume a paused relationship, or start a stopped one again."""
        rt = self.get(name)
        self.check_no_failover(rt)
        activity = self.activity_of(rt)
        if activity is None:
            return self.start_again(rt)
        return await self.engine.resume(activity.id)

    def start_again(self, rt: Runtime) -> ActivityRecord:
        rt.stopped = False
        self.save(rt)
        record = self._submit(rt)
        rt.activity_id = record.id
        return record

    def sync_now(self, name: str) -> None:
        rt = self.get(name)
        self.check_no_failover(rt)
        activity = self.activity_of(rt)
        if activity is None:
            raise RelationshipError(f"relationship {name} is stopped; resume it first")
        if activity.record.state == State.SUSPENDED:
            raise RelationshipError(f"relationship {name} is paused; resume it first")
        self.engine.wake(activity.id)  # its wait for the next tick ends now
        for transfer in self.transfers(name).values():
            self.engine.wake(transfer.id)

    # -- failover ---------------------------------------------------------------------
    def check_no_failover(self, rt: Runtime) -> None:
        if rt.failover.in_progress:
            raise RelationshipError(
                f"relationship {rt.name} is {rt.failover.status} (activity "
                f"{rt.failover.activity}); wait for it to end")

    async def halt(self, rt: Runtime) -> None:
        """Stop the cycles and their transfers (rolled back) for a failover; the
        failover starts the relationship again under its new roles."""
        activity = self.activity_of(rt)
        if activity is not None:
            with contextlib.suppress(Exception):  # already ending: waited for below
                await self.engine.cancel(activity.id)
            await activity.done.wait()
        for transfer in self.transfers(rt.name).values():
            await transfer.done.wait()
        rt.stopped = True
        self.save(rt)

    def set_roles(self, rt: Runtime, spec: RelationshipSpec) -> None:
        """Put new roles in force; a slave kept in the same place keeps its facts."""
        old = rt.slaves
        rt.spec = spec
        rt.slaves = {s.server: old[s.server] if s.server in old
                     and old[s.server].target_volume == s.target_volume
                     else SlaveStatus(s.server, s.target_volume) for s in spec.slaves}
        rt.newest = None
        rt.group_ids = []
        self.save(rt)

    async def enforce_fences(self, rt: Runtime) -> None:
        """Keep every fenced old master read-only: set again whenever it answers, so a
        master that comes back (or that someone made writable) never takes writes."""
        for fenced in list(rt.failover.fenced.values()):
            try:
                backend = await self.servers.backend(fenced.server)
                await backend.set_readonly(fenced.volume, True)
            except NotFound:
                pass  # the volume is gone: nothing there can take writes
            except (BackendError, SshError) as exc:
                log.debug("fenced server not reached", relationship=rt.name,
                          server=fenced.server, error=str(exc))
                continue
            if fenced.applied_at is None:
                log.warning("old master reachable again: fenced (read-only) until it "
                            "rejoins", relationship=rt.name, server=fenced.server,
                            volume=fenced.volume)
            if fenced.server in rt.failover.fenced:
                rt.failover.fenced[fenced.server] = replace(fenced,
                                                            applied_at=time.time())
                self.save(rt)

    def fence_soon(self, rt: Runtime) -> None:
        """Fence now, and keep trying while an old master has not been reached."""
        if rt.failover.fenced and not rt.fencing:
            self._spawn(self._quietly(self._fence_until_reached(rt)))

    async def _fence_until_reached(self, rt: Runtime) -> None:
        rt.fencing = True
        try:
            delay = 1.0
            while True:
                await self.enforce_fences(rt)
                if all(f.applied_at for f in rt.failover.fenced.values()):
                    return
                await asyncio.sleep(delay)  # an unreachable server: try again, backing off
                delay = min(delay * 2, FENCE_RETRY_CAP)
        finally:
            rt.fencing = False

    def activity_of(self, rt: Runtime) -> Activity | None:
        """The relationship's live activity, None while it is stopped."""
        if rt.activity_id is None:
            return None
        with contextlib.suppress(KeyError):
            activity = self.engine.get(rt.activity_id)
            if not activity.record.state.terminal:
                return activity
        return None

    # -- reacting to the engine ---------------------------------------------------------
    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        name = record.params.get("relationship")
        rt = self.runtimes.get(name) if isinstance(name, str) else None
        if rt is None:
            return
        if record.kind == KIND and record.id == rt.activity_id:
            self._follow_parent(rt, record)
        elif record.kind == replicate.KIND and record.state.terminal:
            self._spawn(self._after_transfer(rt, record))
        elif record.kind == backup.KIND and record.state.terminal:
            self._spawn(self._after_backup(rt, record))
        elif record.kind == prune.KIND and record.state.terminal and rt.master_prune_due \
                and record.params.get("server") == rt.spec.master:
            rt.master_prune_due = False
            self._spawn(self._quietly(self.prune_master(rt)))

    def _follow_parent(self, rt: Runtime, record: ActivityRecord) -> None:
        """Pause or resume the relationship's running transfers with it."""
        if record.state == State.SUSPENDED:
            for transfer in self.transfers(rt.name).values():
                if transfer.record.state in (State.RUNNING, State.RETRYING):
                    rt.suspended_children.add(transfer.id)
                    self._spawn(self._quietly(self.engine.suspend(transfer.id)))
        elif record.state == State.RUNNING and rt.suspended_children:
            for child in list(rt.suspended_children):
                self._spawn(self._quietly(self.engine.resume(child)))
            rt.suspended_children.clear()
        elif record.state == State.CANCELLED:
            rt.stopped = True
            self.save(rt)

    async def _quietly(self, work: Any) -> None:
        with contextlib.suppress(Exception):
            await work

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        await self.refresh_slave(rt, server)
        self.save(rt)
        if record.state == State.SUCCEEDED:
            await self.prune_slave(rt, server)
            self._catch_up_if_behind(rt, status)
        await self._after_stream(rt)

    def _catch_up_if_behind(self, rt: Runtime, status: SlaveStatus) -> None:
        activity = self.activity_of(rt)
        if (rt.newest is None or status.last_snapshot_guid == rt.newest[1]
                or activity is None or activity.record.state != State.RUNNING
                or status.server in self.transfers(rt.name)):
            return
        rt.catch_up_due = True
        self.engine.wake(activity.id)

    async def _after_backup(self, rt: Runtime, record: ActivityRecord) -> None:
        store = record.params["store"]
        if record.state == State.SUCCEEDED and store in rt.store_bases:
            rt.store_bases[store] = record.params.get("guid")
            self.save(rt)
        await self._after_stream(rt)

    async def _after_stream(self, rt: Runtime) -> None:
        """The cycle's last stream from the master has ended: thin the master too."""
        if self.transfers(rt.name) or self.backups(rt.name):
            return
        try:
            await self.prune_master(rt)
        except (BackendError, SshError) as exc:
            log.info("master retention skipped", relationship=rt.name, error=str(exc))

    # -- facts from ZFS -----------------------------------------------------------------
    async def _master_snapshots(self, rt: Runtime) -> list[Snapshot] | None:
        """The master's snapshots of the volume (and so its newest of ours), or None."""
        try:
            master = await self.servers.backend(rt.spec.master)
            ours = await master.snapshots(rt.spec.volume)
        except (BackendError, SshError) as exc:
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
            theirs = {s.guid for s in await slave.snapshots(status.target_volume)}
        except NotFound:
            theirs = set()  # no target volume yet
        except (BackendError, SshError) as exc:
            log.info("slave state not refreshed", relationship=rt.name, slave=server,
                     error=str(exc))
            return
        common = [s for s in ours if s.guid in theirs]
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
        self.save(rt)

    async def prune_slave(self, rt: Runtime, server: str) -> None:
        """Retention on one slave; its newest common base with the master is kept."""
        status = rt.slaves[server]
        if status.last_snapshot_guid is None or server in self.transfers(rt.name):
            return
        try:
            backend = await self.servers.backend(server)
            snaps = await backend.snapshots(status.target_volume)
        except (BackendError, SshError) as exc:
            log.info("slave retention skipped", relationship=rt.name, slave=server,
                     error=str(exc))
            return
        doomed = to_destroy(snaps, rt.spec.slave_retention, now=time.time(),
                            prefix=rt.spec.prefix, protected={status.last_snapshot_guid})
        if doomed:  # a stateful slave's volume is held while pruned; skipped if held
            self.volume_states.try_submit(
                prune_holds(server, status.target_volume), PRUNING,
                partial(prune.submit_prune, self.engine, server, status.target_volume,
                        [s.name for s in doomed], rt.name), log.bind(relationship=rt.name))

    async def prune_master(self, rt: Runtime, snapshots: list[Snapshot] | None = None) -> None:
        """Retention on the master, sparing every slave's newest common base.

        Not while a stream may be reading from the master (``-I`` carries the
        intermediates, which must not vanish mid-send), and not at all while any
        slave's base is unknown. Master errors propagate: the cycle reports them.
        ``snapshots`` is the master's list when the caller has just read it.
        """
        streams = [*self.transfers(rt.name).values(), *self.backups(rt.name).values()]
        if any(t.record.state in (State.RUNNING, State.SUSPENDED) for t in streams):
            return
        protected = self.protected_bases(rt)
        if protected is None:
            return
        if any(p.record.params["server"] == rt.spec.master
               for p in self.engine.live(prune.KIND, rt.name)):
            rt.master_prune_due = True  # the running pass may predate this cycle's snapshot
            return
        if snapshots is None:
            master = await self.servers.backend(rt.spec.master)
            snapshots = await master.snapshots(rt.spec.volume)
        doomed = to_destroy(snapshots, rt.spec.retention, now=time.time(),
                            prefix=rt.spec.prefix, protected=protected)
        if doomed:
            prune.submit_prune(self.engine, rt.spec.master, rt.spec.volume,
                               [s.name for s in doomed], rt.name)

    def protected_bases(self, rt: Runtime) -> set[str] | None:
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

    def stores_json(self, rt: Runtime) -> list[dict[str, Any]]:
        """Each object store's newest backup (by guid) and its live backup, if any."""
        live = self.backups(rt.name)
        return [{"store": store, "last_backup_guid": base,
                 "backup": live[store].snapshot().to_json() if store in live else None,
                 "link": link.to_json() if (link := self.servers.links.get(store)) else None}
                for store, base in rt.store_bases.items()]

    # -- what the API and the metrics show ----------------------------------------------
    def slaves_json(self, rt: Runtime) -> list[dict[str, Any]]:
        """Each slave's facts with its derived state, live transfer and link."""
        now = time.time()
        transfers = self.transfers(rt.name)
        newest = rt.newest[1] if rt.newest else None
        slaves = []
        for server, status in rt.slaves.items():
            transfer = transfers[server].snapshot() if server in transfers else None
            link = self.servers.links.get(server)
            state = slave_state(status, newest_guid=newest, transfer=transfer, link=link)
            slaves.append(slave_json(status, now=now, state=state, transfer=transfer,
                                     link=link))
        return slaves

    def to_json(self, rt: Runtime) -> dict[str, Any]:
        activity = self.activity_of(rt)
        record = activity.snapshot() if activity else None
        return {
            **rt.spec.to_json(),
            "state": _state(record),
            "replication_status": self.replication_status(rt),
            "active_server": rt.spec.master, "home_master": rt.home,
            "failover": rt.failover.to_json(),
            "activity": record.id if record else None,
            "link": asdict(record.link) if record and record.link else None,
            "cycles": rt.cycles, "last_cycle_at": rt.last_cycle_at,
            "next_cycle_at": rt.next_cycle_at if record else None,
            "cycle_waiting_since": rt.cycle_waiting_since if record else None,
            "newest_snapshot": rt.newest[0] if rt.newest else None,
            "last_error": rt.last_error, "slaves": self.slaves_json(rt),
            "backups": self.stores_json(rt),
        }

    def replication_status(self, rt: Runtime) -> str:
        activity = self.activity_of(rt)
        replicating = activity is not None and activity.record.state != State.SUSPENDED
        return replication_status(rt.spec, rt.home, rt.failover, replicating=replicating)

    def all(self) -> Iterable[Runtime]:
        return list(self.runtimes.values())


def _state(record: ActivityRecord | None) -> str:
    if record is None:
        return "stopped"
    return {State.SUSPENDED: "paused", State.RETRYING: "retrying",
            State.CANCELLING: "stopping"}.get(record.state, "running")


class RelationshipFlow:
    """Base of the activities that act on relationships (their cycles, a failover):
    the daemon's servers and engine, reached through the relationships' manager."""

    manager: Relationships

    @property
    def servers(self) -> ServerRegistry:
        return self.manager.servers

    @property
    def engine(self) -> ActivityEngine:
        return self.manager.engine
