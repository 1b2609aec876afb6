"""What a policy's pruning must spare for the relationships that replicate its snapshots.

A relationship with ``snapshots = "NAME"`` makes no snapshots and prunes nothing on its
master: the policy's grid owns them. But the grid must not take a slave's (or a store's)
newest common base, or the next transfer would need a full stream. So before pruning,
the policy asks, as a relationship's own master retention does (``upkeep.prune_master``):

* no pruning at all while one of those relationships, or any other relationship sending
  some of the same volumes from the same server, streams from it (``-I`` carries every
  snapshot between base and target, the policy's too, which must not vanish mid-send),
  or while a follower's slave or store base is unknown (a relationship that has not
  listed its slaves yet);
* otherwise, the bases by guid (a volume) and by label (a tree) are spared.

Holds (``cerssd:<slave>`` on each base) remain the last line of defence: a held snapshot
is never forced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..activity import State
from ..replication.logic.members import TreeSelection, trees_overlap
from ..replication.logic.tree_backup_facts import base_labels
from ..replication.relationships.registry import RelationshipRegistry
from ..replication.relationships.runtime import Runtime
from ..replication.relationships.upkeep import protected_bases
from .spec import PolicySpec


@dataclass(frozen=True)
class Protection:
    """Guids (volumes) and labels (trees) to spare, or why nothing may go now."""

    guids: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    hold_off: str | None = None


def followers(registry: RelationshipRegistry, policy: str) -> list[Runtime]:
    """The relationships that replicate ``policy``'s snapshots."""
    return [rt for rt in registry.all() if rt.spec.snapshots == policy]


def protection(registry: RelationshipRegistry, policy: PolicySpec) -> Protection:
    guids: set[str] = set()
    labels: set[str] = set()
    for rt in registry.all():
        if rt.spec.master != policy.server or not trees_overlap(
                policy.selection, rt.spec.selection or TreeSelection(rt.spec.volume)):
            continue
        # as a relationship's own master retention: a retrying transfer reads nothing
        if any(s.record.state in (State.RUNNING, State.SUSPENDED)
               for s in registry.streams(rt.name)):
            return Protection(hold_off=f"relationship {rt.name} is streaming from "
                              f"{policy.server}")
        if rt.spec.snapshots != policy.name:
            continue
        if rt.tree is not None:
            found = _tree_labels(rt)
            if found is None:
                return Protection(hold_off=f"relationship {rt.name} does not know every "
                                  "slave's and store's base yet")
            labels |= found
            continue
        bases = protected_bases(rt)
        if bases is None:
            return Protection(hold_off=f"relationship {rt.name} does not know every slave's "
                              "and store's base yet")
        guids |= bases
    return Protection(frozenset(guids), frozenset(labels))


def _tree_labels(rt: Runtime) -> set[str] | None:
    """The labels a tree relationship's slaves and stores need, or None while one is
    unknown (no member known yet counts as unknown: a restarted daemon learns them at
    the relationship's first cycle)."""
    assert rt.tree is not None
    entries = list(rt.tree.members.values())
    if not entries or any(len(e.slaves) < len(rt.spec.slaves) for e in entries):
        return None
    labels = {s.label for e in entries for s in e.slaves.values() if s.label}
    stores = base_labels(rt.tree.backups, rt.spec.stores, (e.relative for e in entries))
    return None if stores is None else labels | stores
