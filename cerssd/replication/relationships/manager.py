"""The relationship manager, assembled: one entry point for the daemon and the API.

The manager is split by responsibility into modules of its own, which know nothing of
this one:

* ``registry``: the relationships by name, loading, adding, removing, and each one's
  long-lived activity (start, stop, halt, find it and its streams);
* ``verbs``: the operator's create, remove, pause, resume and sync-now;
* ``fencing``: keeping the old masters an unplanned failover fenced read-only;
* ``reactions``: the engine listener that follows finished transfers and backups and
  the relationship activity's pause and resume;
* ``upkeep``: each slave's facts from the servers, and retention on slaves and master;
* ``rendering``: the JSON documents of the API (and the metrics' view of them).

The flows that act on relationships (``cycle``, ``failover``, ``rejoin``) are
handed the parts they use, with the engine and the servers, when they are registered
here; they never reach them through this object. It exists because the daemon builds
and starts all of it in one go and the API's context carries one handle: nothing here
but the wiring and start-up order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...engine import ActivityEngine
from ...journal import Journal
from ...objectstore.stores import Stores
from ...servers import ServerRegistry
from ...volume_states import VolumeStates
from ..retry import RetryPolicy
from ..stream.groups import FanoutGroups
from . import cycle, failover, rejoin, tree_backup, tree_sync
from .auto_failover import AutoFailoverWatch
from .cycle_gate import CycleGate
from .failover import FailoverDeps
from .fencing import Fencing
from .leadership import Leadership
from .reactions import Reactions
from .registry import RelationshipRegistry
from .rendering import RelationshipView
from .tree import PolicyLabels, no_policy_labels
from .upkeep import Upkeep
from .verbs import OperatorVerbs


@dataclass(frozen=True)
class RelationshipManager:
    registry: RelationshipRegistry
    verbs: OperatorVerbs
    fencing: Fencing
    upkeep: Upkeep
    reactions: Reactions
    view: RelationshipView
    #: What the API's failover request and the failover activity act through.
    failover: FailoverDeps
    #: The leader's watch on masters with ``auto_failover`` (started only in a cluster).
    auto: AutoFailoverWatch

    @classmethod
    def build(cls, engine: ActivityEngine, servers: ServerRegistry, journal: Journal, *,
              volume_states: VolumeStates, groups: FanoutGroups, stores: Stores | None,
              policy: RetryPolicy, gate: CycleGate,
              policy_labels: PolicyLabels = no_policy_labels,
              leadership: Leadership | None = None) -> RelationshipManager:
        """The parts, wired, and the relationship flows registered with the engine
        (before its recovery restarts their activities)."""
        registry = RelationshipRegistry(engine, servers, journal,
                                        stores.stores if stores else (), leadership)
        upkeep = Upkeep(engine, servers, registry, volume_states, stores)
        fencing = Fencing(servers, registry)
        verbs = OperatorVerbs(engine, registry)
        manager = cls(registry=registry, verbs=verbs, fencing=fencing, upkeep=upkeep,
                      reactions=Reactions(engine, registry, upkeep),
                      view=RelationshipView(registry, servers.links),
                      failover=(deps := FailoverDeps(engine, servers, registry, fencing,
                                                     volume_states)),
                      auto=AutoFailoverWatch(deps))
        manager.view.auto_status = manager.auto.status
        cycle.register(engine, cycle.CycleDeps(
            engine=engine, servers=servers, registry=registry, upkeep=upkeep,
            fencing=fencing, volume_states=volume_states, groups=groups, stores=stores,
            policy=policy, gate=gate, policy_labels=policy_labels))
        tree_sync.register(engine, servers, registry, policy, groups)
        tree_backup.register(engine, servers, stores, registry, policy)
        failover.register(engine, manager.failover)
        rejoin.register(engine, rejoin.RejoinDeps(servers, registry, verbs))
        return manager

    def start(self) -> None:
        """After the engine's recovery: every running relationship gets its activity,
        and the fenced old masters are fenced again."""
        self.registry.start()
        self.fencing.fence_all()
