"""One relationship's live state (``Runtime``), and the errors its verbs raise.

The definition (``relationship.RelationshipSpec``, parsed from the config or the API)
says what to keep replicated; a ``Runtime`` is what the daemon knows about it now:
the roles a failover left, each slave's facts, the newest snapshot, the ids of its
activities. The facts that must survive a restart are ``remembered()`` into the
journal and read back by ``restore_runtime``. Every part of the relationship manager
(registry, verbs, fencing, reactions, upkeep, rendering) and the flows that act on a
relationship share this one object per relationship.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...hooks import HookRun
from ..logic.roles import FailoverState, apply_roles, roles_json
from ..logic.schedule import Schedule
from ..logic.slave_status import SlaveStatus
from ..logic.spec import RelationshipSpec
from ..logic.tree_status import TreeStatus

#: The activity kind of a relationship's long-lived activity (``relationships/cycle.py``).
KIND = "relationship"


class SnapshotOutcome(enum.StrEnum):
    """What became of a cycle's snapshot with hooks around it."""

    TAKEN = "taken"
    #: The ``pre`` hook failed and ``on_pre_failure = "skip"``: no snapshot this cycle.
    SKIPPED = "skipped"


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
    #: A pass of ``Fencing.enforce`` is under way.
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
    #: What the last master retention after a cycle's streams saw: the master's newest
    #: snapshot guid and the bases it spared. A second stream ending at the same moment
    #: would read the same list and spare the same bases: it does not list again.
    master_pruned_for: tuple[str | None, frozenset[str]] | None = None
    #: Per object store: the guid of its newest backup of the volume (the next
    #: incremental's base, kept on the master like a slave's), None while unknown.
    store_bases: dict[str, str | None] = field(default_factory=dict)
    #: Per object store: when its last backup of the relationship (every member of a
    #: tree) succeeded; remembered, so the backup-age alert survives a restart.
    backup_success_at: dict[str, float] = field(default_factory=dict)
    #: Per object store: incremental backups since its last full (``full_every``).
    backups_since_full: dict[str, int] = field(default_factory=dict)
    #: A tree relationship's members and their state on each slave (None: one volume).
    tree: TreeStatus | None = None
    #: A reload changed the schedule: the wait for the next tick is computed again (the
    #: activity is woken for it, and this tells the wake from a sync-now).
    rescheduled: bool = False
    #: The hooks around the last snapshot a cycle took or skipped (``note_hooks``).
    last_hooks: dict[str, Any] | None = None
    #: Cycles that made no snapshot because their ``pre`` hook failed.
    skipped_cycles: int = 0
    #: The label of the cycle snapshot under way (chosen, perhaps not made yet): shared
    #: in a cluster so that a manager taking over finishes that cycle rather than
    #: running another one.
    pending_cycle: str | None = None
    #: An operator paused its cycles (the relationship's activity is suspended). A
    #: remembered fact, shared in a cluster: a manager that takes the relationship over
    #: keeps it paused until someone resumes it.
    paused: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def schedule(self) -> Schedule | None:
        """None: it follows its snapshot policy's runs (``spec.snapshots``)."""
        return self.spec.schedule

    def note_hooks(self, label: str | None, outcome: SnapshotOutcome,
                   runs: Sequence[HookRun]) -> dict[str, Any]:
        """Record the hooks around a cycle's snapshot (shown in the API, remembered)."""
        self.last_hooks = {"label": label, "at": time.time(), "outcome": outcome.value,
                           "runs": [r.to_json() for r in runs]}
        if outcome == SnapshotOutcome.SKIPPED:
            self.skipped_cycles += 1
        return self.last_hooks

    def full_backup_due(self, store: str, every: int | None) -> bool:
        """Whether the next backup to ``store`` is a full one (its ``full_every``): a
        relationship's backups are one incremental chain, which retention can never cut
        (each needs all before it); a full every N starts a new chain and lets the old
        one age out."""
        return every is not None and self.backups_since_full.get(store, 0) >= every - 1

    def note_backup(self, store: str, *, full: bool) -> None:
        self.backups_since_full[store] = 0 if full else self.backups_since_full.get(store, 0) + 1

    def remembered(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "last_cycle_at": self.last_cycle_at,
                "last_hooks": self.last_hooks, "skipped_cycles": self.skipped_cycles,
                "cycles": self.cycles, "newest": list(self.newest) if self.newest else None,
                "slaves": {n: s.remembered() for n, s in self.slaves.items()},
                "store_bases": dict(self.store_bases),
                "backup_success_at": dict(self.backup_success_at),
                "backups_since_full": dict(self.backups_since_full),
                "roles": roles_json(self.spec) if self.failover.last_failover_at else None,
                "failover": self.failover.remembered(),
                "pending_cycle": self.pending_cycle, "paused": self.paused}

    def take_roles(self, spec: RelationshipSpec) -> None:
        """Put new roles in force; a slave kept in the same place keeps its facts. A tree
        under a new master is learnt again from its listings (its members' names, guids
        and labels there are the new master's)."""
        old = self.slaves
        if self.tree is not None and spec.master != self.spec.master:
            self.tree = TreeStatus()
        self.spec = spec
        self.slaves = {s.server: old[s.server] if s.server in old
                       and old[s.server].target_volume == s.target_volume
                       else SlaveStatus(s.server, s.target_volume) for s in spec.slaves}
        self.newest = None
        self.group_ids = []

    def redefine(self, spec: RelationshipSpec) -> None:
        """A reload changed the definition (same master and volume): the next cycle
        uses it. A slave kept in the same place keeps its facts, a store its base;
        running transfers are not touched."""
        old = self.slaves
        self.spec = spec
        self.slaves = {s.server: old[s.server] if s.server in old
                       and old[s.server].target_volume == s.target_volume
                       else SlaveStatus(s.server, s.target_volume) for s in spec.slaves}
        self.store_bases = {s: self.store_bases.get(s) for s in spec.stores}
        self.backup_success_at = {s: t for s, t in self.backup_success_at.items()
                                  if s in spec.stores}
        if self.tree is not None:
            # A tree slave whose target moved (or that left) is listed again at its
            # next sync rather than streamed to from bases known under the old definition.
            moved = {server for server in old if server not in self.slaves
                     or self.slaves[server] is not old[server]}
            self.tree.known -= moved
            for server in moved:
                self.tree.slave_labels.pop(server, None)
                for member in self.tree.members.values():
                    member.slaves.pop(server, None)


def new_runtime(spec: RelationshipSpec) -> Runtime:
    """The live state of a relationship just defined: nothing known yet."""
    return Runtime(spec, {s.server: SlaveStatus(s.server, s.target_volume)
                          for s in spec.slaves}, home=spec.master,
                   store_bases=dict.fromkeys(spec.stores),
                   tree=TreeStatus() if spec.is_tree else None)


def restore_runtime(spec: RelationshipSpec, state: Mapping[str, Any],
                    servers: Collection[str]) -> Runtime:
    """The live state of ``spec``: remembered facts, and the roles a failover left.

    Raises ``roles.RolesInvalid`` when the remembered roles name servers no longer
    configured."""
    home = spec.master
    if state.get("roles"):
        spec = apply_roles(spec, state["roles"], servers)
    slaves = {s.server: SlaveStatus(s.server, s.target_volume) for s in spec.slaves}
    for name, facts in state.get("slaves", {}).items():
        if name in slaves:
            slaves[name].restore(facts)
    newest = state.get("newest")
    remembered_bases = state.get("store_bases", {})
    succeeded = state.get("backup_success_at") or {}
    since_full = state.get("backups_since_full") or {}
    return Runtime(spec, slaves, home=home,
                   failover=FailoverState.restore(state.get("failover") or {}),
                   stopped=bool(state.get("stopped")),
                   last_cycle_at=state.get("last_cycle_at"), cycles=state.get("cycles", 0),
                   newest=(newest[0], newest[1]) if newest else None,
                   store_bases={s: remembered_bases.get(s) for s in spec.stores},
                   backup_success_at={s: float(succeeded[s]) for s in spec.stores
                                      if isinstance(succeeded.get(s), int | float)},
                   backups_since_full={s: int(since_full[s]) for s in spec.stores
                                       if isinstance(since_full.get(s), int)},
                   tree=TreeStatus() if spec.is_tree else None,
                   last_hooks=state.get("last_hooks"),
                   skipped_cycles=state.get("skipped_cycles", 0),
                   pending_cycle=state.get("pending_cycle"),
                   paused=bool(state.get("paused")))


def check_no_failover(rt: Runtime) -> None:
    """Refuse (409) while a failover or failback of ``rt`` runs: its roles are moving."""
    if rt.failover.in_progress:
        raise RelationshipError(
            f"relationship {rt.name} is {rt.failover.status} (activity "
            f"{rt.failover.activity}); wait for it to end")
