"""The relationships this daemon keeps, by name, and each one's long-lived activity.

Definitions come from the config and from the API; the ones made through the API and
every relationship's remembered facts are kept in the journal's database, so they
survive restarts. Each relationship that is not stopped has one self-restarting
activity (kind ``relationship``, progress 0 of 0, run by ``cycle.RelationshipWork``);
the registry starts it, stops it, and finds it and the streams it started
(``transfers``, ``backups``). Everything else about relationships (the operator's
verbs, fencing, reactions to finished streams, retention, rendering) lives in its own
module and reaches a relationship through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import structlog

from ...activity import ActivityRecord, Progress
from ...engine import Activity, ActivityEngine
from ...journal import Journal
from ...parsing import ConfigError
from ...servers import ServerRegistry
from ..flows import backup, member_streams, replicate
from ..logic.roles import RolesInvalid
from ..logic.spec import RelationshipSpec, parse_relationship
from .leadership import Alone, Leadership
from .runtime import (
    KIND,
    RelationshipError,
    Runtime,
    UnknownRelationship,
    new_runtime,
    restore_runtime,
)

log = structlog.get_logger("cerssd.relationships")

#: The activity kind of a tree's per-slave sync (``tree_sync``, which imports this module).
TREE_SYNC = "tree-sync"
#: The activity kind of a tree's backup to one store (``tree_backup``).
TREE_BACKUP = "tree-backup"
#: Uploads that are the master's own: a relationship's pause and a failover's halt
#: leave them running, as they leave a single volume's backup.
OWN_UPLOADS = frozenset({backup.KIND, TREE_BACKUP})


class RelationshipRegistry:
    """Runtimes by name: loading, adding, removing, saving, and their activities."""

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry, journal: Journal,
                 store_names: Collection[str] = (),
                 leadership: Leadership | None = None) -> None:
        self.engine = engine
        #: Whether this daemon may act on a relationship, and where its facts are shared
        #: (``leadership``): alone by default, or one of a cluster's managers.
        self.leadership: Leadership = leadership or Alone()
        #: Each relationship's definition (config or API), before a failover's roles.
        self.definitions: dict[str, RelationshipSpec] = {}
        #: In a cluster: relationships whose runtime here is not (yet) the shared one;
        #: nothing decides on them until their activity has led and taken over.
        self.stale: set[str] = set()
        self.servers = servers
        self.journal = journal
        #: The configured object stores a relationship may name.
        self.store_names = store_names
        self.runtimes: dict[str, Runtime] = {}

    # -- loading and starting ---------------------------------------------------------
    def load(self, configured: Mapping[str, RelationshipSpec]) -> None:
        """Config relationships plus those made through the API, with remembered facts."""
        stored = self.journal.load_relationships()
        for name, spec in configured.items():
            self._restore(spec, stored.get(name, (None, {}))[1])
        for name, (raw, state) in stored.items():
            if raw is None or name in configured:
                if raw is not None:
                    log.warning("relationship defined in the config and through the API; "
                                "the config wins", relationship=name)
                continue
            try:
                spec = parse_relationship(name, raw, servers=self.servers.entries,
                                          stores=self.store_names,
                                          drivers=self.servers.drivers(),
                                          key=f"relationship {name}", origin="api")
            except ConfigError as exc:
                log.error("stored relationship no longer valid; not started",
                          relationship=name, key=exc.key, problem=exc.problem)
                continue
            self._restore(spec, state)

    def _restore(self, spec: RelationshipSpec, state: Mapping[str, Any]) -> None:
        self.definitions[spec.name] = spec
        if not isinstance(self.leadership, Alone):
            self.stale.add(spec.name)
        try:
            self.runtimes[spec.name] = restore_runtime(spec, state, self.servers.entries)
        except RolesInvalid as exc:
            log.error("relationship not started: fix the config (restore the servers) "
                      "or remove the relationship", relationship=spec.name, problem=str(exc))

    def start(self) -> None:
        """After the engine's recovery: give every running relationship its activity
        (the one the engine restarted, or a new one)."""
        live = {a.record.params.get("relationship"): a for a in self.engine.live(KIND)}
        for rt in self.runtimes.values():
            if rt.stopped:
                continue
            activity = live.get(rt.name)
            if activity is not None:
                rt.activity_id = activity.id
            else:
                self.launch(rt)

    # -- adding and removing ----------------------------------------------------------
    def add(self, spec: RelationshipSpec) -> Runtime:
        """A new relationship made through the API: kept in the journal, not started."""
        if spec.name in self.runtimes:
            raise RelationshipError(f"relationship {spec.name} already exists")
        self.journal.save_relationship_spec(spec.name, dict(spec.raw))
        rt = self.runtimes[spec.name] = new_runtime(spec)
        self.save(rt)
        return rt

    def define(self, spec: RelationshipSpec) -> Runtime:
        """A relationship a reload added to the config: remembered and started."""
        rt = self.runtimes[spec.name] = new_runtime(spec)
        self.save(rt)
        self.launch(rt)
        return rt

    async def retire(self, name: str) -> None:
        """A relationship a reload removed from the config: forgotten at once (the API no
        longer shows it, reactions to its streams stop), then its activity cancelled
        and waited for: no new cycle, its running transfers and backups cancelled
        (rolled back: only their partial receive or upload goes). Nothing else is
        deleted anywhere."""
        rt = self.runtimes.pop(name)
        self.journal.delete_relationship(name)
        activity = self.activity_of(rt)
        if activity is not None:
            with contextlib.suppress(Exception):  # already ending: waited for below
                await self.engine.cancel(activity.id)
            await activity.done.wait()
        for stream in self.streams(name):  # the rollback's, and any started as it was cancelled
            with contextlib.suppress(Exception):
                await self.engine.cancel(stream.id)
            await stream.done.wait()

    def remove(self, name: str) -> None:
        """Forget ``name`` (stopped first by the caller)."""
        del self.runtimes[name]
        self.journal.delete_relationship(name)

    def save(self, rt: Runtime) -> None:
        remembered = rt.remembered()
        self.journal.save_relationship_state(rt.name, remembered)
        self.leadership.publish(rt.name, remembered)

    async def commit(self, rt: Runtime) -> None:
        """Save, and have the cluster accept it before going on (409 if this daemon no
        longer leads ``rt``): for decisions that must be made once, such as a failover."""
        remembered = rt.remembered()
        await self.leadership.commit(rt.name, remembered)
        self.journal.save_relationship_state(rt.name, remembered)

    def take_over(self, name: str, state: Mapping[str, Any]) -> Runtime | None:
        """This daemon now leads ``name``: the facts its previous leader shared (roles,
        failover state, slaves, the newest snapshot) replace what it knew. None (and
        the relationship not run) if the roles name servers no longer configured."""
        spec = self.definitions.get(name)
        old = self.runtimes.get(name)
        if spec is None or old is None:
            return old
        try:
            rt = restore_runtime(spec, state, self.servers.entries)
        except RolesInvalid as exc:
            log.error("relationship not taken over: its shared roles name servers no "
                      "longer configured", relationship=name, problem=str(exc))
            return None
        rt.activity_id = old.activity_id
        self.runtimes[name] = rt
        self.stale.discard(name)
        self.journal.save_relationship_state(name, rt.remembered())
        return rt

    def lead_here(self, name: str) -> None:
        """This daemon now leads ``name`` (a cluster): give it an activity if it has none
        (its journal may say stopped; the shared facts decide, ``cycle.RelationshipWork``)."""
        rt = self.runtimes.get(name)
        if rt is not None and self.activity_of(rt) is None:
            self.launch(rt)

    async def step_down(self, name: str) -> None:
        """Another manager leads ``name`` now: its cycles stop here and its streams are
        cancelled (rolled back), then a fresh activity waits to lead it again. Nothing is
        saved: the facts are the new leader's to write."""
        rt = self.runtimes.get(name)
        if rt is None:
            return
        self.stale.add(name)  # the next leader's facts replace ours
        activity = self.activity_of(rt)
        if activity is not None:
            with contextlib.suppress(Exception):  # already ending: waited for below
                await self.engine.cancel(activity.id)
            await activity.done.wait()
        for stream in self.streams(name):
            with contextlib.suppress(Exception):
                await self.engine.cancel(stream.id)
            await stream.done.wait()
        if not rt.stopped and name in self.runtimes:
            self.launch(rt)

    def set_roles(self, rt: Runtime, spec: RelationshipSpec) -> None:
        """New roles (a failover, a rejoin) in force and remembered."""
        rt.take_roles(spec)
        self.save(rt)

    # -- lookups ----------------------------------------------------------------------
    def get(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise UnknownRelationship(name) from None

    def all(self) -> Iterable[Runtime]:
        return list(self.runtimes.values())

    def backups(self, name: str) -> dict[str, Activity]:
        """The live backup of each object store of ``name`` (at most one per store)."""
        return {a.record.params["store"]: a for a in self.engine.live(backup.KIND, name)}

    def transfers(self, name: str) -> dict[str, Activity]:
        """The live transfer of each slave of ``name`` (at most one per slave)."""
        return {a.record.params["destination"]: a
                for a in self.engine.live(replicate.KIND, name)}

    def streams(self, name: str) -> list[Activity]:
        """Every live transfer of ``name`` (a tree's member transfers too, several per
        slave), its tree syncs and its backups: what a pause, stop or removal acts on."""
        return [*self.engine.live(replicate.KIND, name), *self.engine.live(TREE_SYNC, name),
                *self.engine.live(member_streams.KIND, name),
                *self.engine.live(backup.KIND, name), *self.engine.live(TREE_BACKUP, name)]

    # -- the relationship's own activity ------------------------------------------------
    def activity_of(self, rt: Runtime) -> Activity | None:
        """The relationship's live activity, None while it is stopped."""
        return self.engine.unfinished(rt.activity_id)

    def start_again(self, rt: Runtime) -> ActivityRecord:
        """Give a stopped relationship a new activity (its cycles run again, not paused:
        a failover halts and starts it afresh, as it always did)."""
        rt.stopped = False
        rt.paused = False
        self.save(rt)
        return self.launch(rt)

    async def stop(self, rt: Runtime) -> None:
        """Cancel the relationship's activity (its transfers roll back) and wait for it."""
        activity = self.activity_of(rt)
        if activity is not None:
            await self.engine.cancel(activity.id)
            await activity.done.wait()
        rt.stopped = True
        self.save(rt)

    async def halt(self, rt: Runtime) -> None:
        """Stop the cycles and their transfers (rolled back) for a failover; the
        failover starts the relationship again under its new roles."""
        activity = self.activity_of(rt)
        if activity is not None:
            with contextlib.suppress(Exception):  # already ending: waited for below
                await self.engine.cancel(activity.id)
            await activity.done.wait()
        for transfer in self.streams(rt.name):
            if transfer.record.kind not in OWN_UPLOADS:
                await transfer.done.wait()
        rt.stopped = True
        self.save(rt)

    def launch(self, rt: Runtime) -> ActivityRecord:
        """Submit the relationship's activity and remember its id."""
        record = self.engine.submit(
            KIND, volume=rt.spec.volume, source=rt.spec.master,
            target=", ".join(s.server for s in rt.spec.slaves),
            params={"relationship": rt.name}, self_restarting=True,
            progress=Progress(0, 0, unit="cycles"))
        rt.activity_id = record.id
        return record
