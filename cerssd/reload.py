"""Putting a reloaded config's servers, stores and relationships in force (SIGHUP).

``config_diff`` says what changed and whether the new config can be put in force at
all; this module checks the rest that needs the running daemon (store credentials)
before changing anything, then applies the diff. Everything that can refuse is
checked first, so a refused reload changes nothing.

What each change does, and why:

* **server or store added**: usable at once (a server is probed in the background and,
  like any server, again when first used);
* **server or store changed**: new work gets a new backend and connection (a client,
  for a store) at once; work already running keeps the one it holds until it ends, then
  the old connection is closed. A transfer's command pipeline cannot move to another
  connection mid-stream, and cutting it would cost a resend; the new settings reach
  it at its next attempt anyway, since every retry asks the registry again;
* **server or store removed**: unknown to new work at once; its connection is closed
  once the work running on it ends (at once if none). Refused while a relationship
  that stays names it (``config_diff.reload_refusal``);
* **relationship added**: remembered and started (its first cycle at once);
* **relationship removed**: forgotten at once, its activity cancelled: no new cycle,
  its transfers in flight cancelled and rolled back like ``DELETE`` through the API
  does (only their partial receive state goes; no snapshot or volume is deleted);
  a relationship that is no longer defined must not keep writing to its slaves;
* **snapshot policy added / removed**: started (its first run at once) / its activity
  cancelled (its snapshots stay where they are);
* **snapshot policy changed**: replaced in place, used from its next run (a new schedule
  at once); another server, volume, or a volume made a tree (or back) restarts it;
* **relationship changed**: its definition is replaced in place and used from its next
  cycle; running transfers carry on. A new schedule takes effect at once (the wait for
  the next tick is computed again). A tree's new selection (recursive, include, exclude,
  property) is read at its next cycle like any change of membership. A new master or
  volume, or a single volume made a tree (or back), is a different replication: the
  relationship is stopped as if removed and started again under the new definition.

Relationships created through the API are never touched by a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from .activity import ActivityRecord
from .config import Config
from .config_diff import ConfigDiff, RunningRelationship, diff_config, reload_refusal
from .engine import ActivityEngine
from .objectstore.stores import Stores
from .policies.registry import PolicyRegistry
from .policies.spec import PolicySpec
from .replication.logic.roles import apply_roles, roles_json
from .replication.logic.spec import RelationshipSpec
from .replication.relationships.background import BackgroundTasks
from .replication.relationships.registry import RelationshipRegistry
from .replication.relationships.runtime import KIND
from .servers import ServerRegistry

log = structlog.get_logger("cerssd.reload")


class ConfigReloader:
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry, stores: Stores,
                 registry: RelationshipRegistry, policies: PolicyRegistry | None = None,
                 ) -> None:
        self.engine = engine
        self.servers = servers
        self.stores = stores
        self.registry = registry
        self.policies = policies
        self._tasks = BackgroundTasks()
        #: Closes of retired connections still waiting for their work to end, by id.
        self._pending: dict[int, Callable[[], Awaitable[None]]] = {}

    def check(self, old: Config, new: Config) -> ConfigDiff:
        """What ``new`` changes; raises ConfigError (naming the key) if it cannot be put
        in force now. Changes nothing."""
        diff = diff_config(old, new)
        running = {rt.name: RunningRelationship(
            rt.spec, failed_over=bool(rt.failover.last_failover_at),
            failover_in_progress=rt.failover.in_progress,
            fenced=frozenset(rt.failover.fenced)) for rt in self.registry.all()}
        refusal = reload_refusal(diff, old, new, running)
        if refusal is not None:
            raise refusal
        for name in (*diff.stores.added, *diff.stores.changed):
            new.stores[name].load_credentials()  # a missing key file is named here
        return diff

    async def apply(self, diff: ConfigDiff, old: Config, new: Config) -> None:
        """Put a checked diff in force, in an order where each step finds what it needs:
        new servers and stores before the relationships that name them, removed
        relationships stopped (their rollback may still use a server) before the
        servers they used go."""
        for name in diff.servers.added:
            self.servers.add(new.servers[name])
            self._tasks.spawn_quietly(self.servers.probe(self.servers.entry(name)))
            log.info("server added", server=name)
        for name in diff.servers.changed:
            old_entry = self.servers.replace(new.servers[name])
            self._close_when_idle(name, partial(self.servers.close_retired, old_entry))
            self._tasks.spawn_quietly(self.servers.probe(self.servers.entry(name)))
            log.info("server changed; new work uses the new settings", server=name)
        for name in diff.stores.added:
            self.stores.add(new.stores[name])
            log.info("object store added", store=name)
        for name in diff.stores.changed:
            old_store = self.stores.replace(new.stores[name])
            self._close_when_idle(name, old_store.close)
            log.info("object store changed; new work uses the new settings", store=name)
        moved = [n for n in diff.relationships.changed
                 if _moved(old.relationships[n], new.relationships[n])]
        await asyncio.gather(*(self._retire(n) for n in (*diff.relationships.removed, *moved)))
        await self._apply_policies(diff, old, new)
        for name in diff.servers.removed:
            entry = self.servers.remove(name)
            self._close_when_idle(name, partial(self.servers.close_retired, entry))
            log.info("server removed", server=name)
        for name in diff.stores.removed:
            self._close_when_idle(name, self.stores.remove(name).close)
            log.info("object store removed", store=name)
        for name in diff.relationships.changed:
            if name in moved:
                self.registry.define(new.relationships[name])
                log.info("relationship restarted under its new master or volume",
                         relationship=name)
            else:
                self._redefine(name, old, new)
        for name in diff.relationships.added:
            self.registry.define(new.relationships[name])
            log.info("relationship added", relationship=name)

    async def _apply_policies(self, diff: ConfigDiff, old: Config, new: Config) -> None:
        """Policies removed (or moved) stopped, changed ones redefined, new ones started:
        before the relationships added that may replicate them."""
        if self.policies is None:
            return
        moved = [n for n in diff.policies.changed
                 if _policy_moved(old.policies[n], new.policies[n])]
        await asyncio.gather(*(self.policies.retire(n)
                               for n in (*diff.policies.removed, *moved)))
        for name in diff.policies.removed:
            log.info("snapshot policy removed; its snapshots were left in place", policy=name)
        for name in diff.policies.changed:
            if name in moved:
                self.policies.define(new.policies[name])
                log.info("snapshot policy restarted under its new server or volume",
                         policy=name)
            else:
                self.policies.redefine(new.policies[name])
                log.info("snapshot policy changed; its next run uses it", policy=name)
        for name in diff.policies.added:
            self.policies.define(new.policies[name])
            log.info("snapshot policy added", policy=name)

    async def _retire(self, name: str) -> None:
        if name not in self.registry.runtimes:
            return  # not started (its remembered roles were invalid)
        await self.registry.retire(name)
        log.info("relationship removed; its snapshots and volumes were left in place",
                 relationship=name)

    def _redefine(self, name: str, old: Config, new: Config) -> None:
        rt = self.registry.runtimes.get(name)
        spec = new.relationships[name]
        if rt is None:  # not started at start-up (invalid remembered roles): now it can be
            self.registry.define(spec)
            log.info("relationship started with its new definition", relationship=name)
            return
        if rt.failover.last_failover_at:  # same servers (checked): keep the failover's roles
            spec = apply_roles(spec, roles_json(rt.spec), self.servers.entries)
        rt.redefine(spec)
        self.registry.save(rt)
        activity = self.registry.activity_of(rt)
        if old.relationships[name].schedule != spec.schedule and activity is not None:
            rt.rescheduled = True
            self.engine.wake(activity.id)
        log.info("relationship changed; its next cycle uses the new definition",
                 relationship=name)

    def _close_when_idle(self, name: str, close: Callable[[], Awaitable[None]]) -> None:
        """Close a retired connection of ``name`` once the work now running on it ends.

        The relationships' own activities are not waited for: they ask the registry for
        a backend at every step, so they hold none between steps."""
        running = [a for a in self.engine.activities()
                   if a.record.kind != KIND and not a.record.state.terminal
                   and _names(a.record, name)]
        key = id(close)
        self._pending[key] = close

        async def later() -> None:
            await asyncio.gather(*(a.done.wait() for a in running))
            if self._pending.pop(key, None) is not None:
                await close()
                log.info("old connection closed", name=name, waited_for=len(running))
        self._tasks.spawn_quietly(later())

    async def close(self) -> None:
        """At shutdown: close the retired connections still waiting."""
        pending, self._pending = list(self._pending.values()), {}
        for close in pending:
            with contextlib.suppress(Exception):
                await close()


def _moved(old: RelationshipSpec, new: RelationshipSpec) -> bool:
    """Whether a change makes another replication of it: another master or volume, one
    volume become a tree (or back), or another source of snapshots (its own or a
    policy's: another prefix). Its live state does not carry over."""
    return (old.master, old.volume, old.is_tree, old.snapshots) != (
        new.master, new.volume, new.is_tree, new.snapshots)


def _policy_moved(old: PolicySpec, new: PolicySpec) -> bool:
    """Whether a policy change makes it snapshot something else (its state is not kept)."""
    return (old.server, old.volume, old.is_tree) != (new.server, new.volume, new.is_tree)


def _names(record: ActivityRecord, name: str) -> bool:
    """Whether the activity acts on server or store ``name``."""
    if name == record.source or name in (record.target or "").split(", "):
        return True
    return any(value == name for value in record.params.values())
