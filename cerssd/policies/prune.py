"""What a snapshot policy's grid prunes, and why: one decision for its runs, its dry run
and an operator's prune (``POST /v1/policies/{name}/prune``).

A run prunes with ``volume_decision`` (a volume: its listing) or ``tree_decision`` (a
tree: its labels); ``plan`` lists the server now and asks the very same function, so a
dry run shows what the policy's prune at that moment destroys. The plan is the
relationships' ``TargetPlan`` (place ``master``: the policy's server) plus what stays
that a reader could expect to go (``keep``: a snapshot that is not the policy's, one
``keep_min`` spares, a base a relationship needs, the newest), each with its reason. A
prune submits one ``prune`` activity given the names and guids listed, as a
relationship's does, so it removes that set and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..activity import ActivityRecord
from ..engine import ActivityEngine
from ..replication.flows import snapshot_prune
from ..replication.logic.members import ListedDataset, select
from ..replication.logic.retention import Decision, KeepRule, Kept, Verdict, owned, prune_decision
from ..replication.logic.tree_labels import labels_decision, labels_of
from ..replication.relationships.prune_plan import Place, TargetPlan, blocked_plan, grid_text
from ..storage.errors import BackendError
from ..storage.interface import StorageBackend
from ..storage.values import Snapshot, TreeListing
from ..transport.errors import LinkError
from ..volume_states import PRUNING, VolumeStates, prune_holds
from .guard import Protection
from .spec import PolicySpec


@dataclass(frozen=True)
class PolicyPlan:
    """The policy's place (its server) with what goes and, with why, what stays."""

    target: TargetPlan
    keep: tuple[Kept, ...] = ()

    def to_json(self, activity: str | None = None) -> dict[str, Any]:
        return {**self.target.to_json(activity), "keep": [k.to_json() for k in self.keep]}


def volume_decision(spec: PolicySpec, snapshots: Sequence[Snapshot], protection: Protection,
                    now: float) -> Decision:
    """A volume policy's grid on the volume's snapshots (oldest first)."""
    return prune_decision(snapshots, spec.retention, now=now, prefix=spec.prefix,
                          protected=protection.guids, keep_min=spec.keep_min)


def tree_decision(spec: PolicySpec, labels: Mapping[str, float], protection: Protection,
                  now: float) -> Decision:
    """A tree policy's grid on its labels (label -> creation; each one snapshot of every
    member)."""
    return labels_decision(labels, spec.retention, now=now, prefix=spec.prefix,
                           protected=protection.labels, keep_min=spec.keep_min)


def listed(listing: TreeListing) -> list[ListedDataset]:
    return [ListedDataset(d.name, d.guid, d.selector) for d in listing.datasets]


def tree_labels(listing: TreeListing, names: Sequence[str], prefix: str) -> dict[str, float]:
    """The policy's labels on its members (label -> creation), from a full listing."""
    labels: dict[str, float] = {}
    for name in names:
        ds = listing.get(name)
        if ds is not None:
            labels_of(ds.snapshots, prefix, labels)
    return labels


async def plan(spec: PolicySpec, backend: StorageBackend, protection: Protection,
               now: float, *, busy: str | None = None) -> PolicyPlan:
    """What the policy's grid destroys on its server now (``busy``: why nothing may go
    now, besides the relationships' ``protection``)."""
    grid, keep = spec.retention, spec.keep_min
    why = busy or protection.hold_off
    if why is not None:
        return PolicyPlan(blocked_plan(Place.MASTER, spec.server, spec.volume, grid, keep, why))
    try:
        if not spec.is_tree:
            snapshots = await backend.snapshots(spec.volume)
            decision = volume_decision(spec, snapshots, protection, now)
            ours = sum(1 for s in snapshots if owned(s.label, spec.prefix))
            return _plan(spec, decision.doomed, decision.kept, ours)
        sel = spec.selection
        listing = await backend.tree(sel.root, selector=sel.by_property, snapshots=True)
    except (BackendError, LinkError) as exc:
        return PolicyPlan(blocked_plan(Place.MASTER, spec.server, spec.volume, grid, keep,
                                       f"not listed: {exc}"))
    names = [m.name for m in select(sel, spec.name, listed(listing))]
    decision = tree_decision(spec, tree_labels(listing, names, spec.prefix), protection, now)
    return _tree_plan(spec, listing, names, decision, now)


def _plan(spec: PolicySpec, doomed: Sequence[Verdict], kept: Sequence[Kept],
          ours: int) -> PolicyPlan:
    return PolicyPlan(TargetPlan(Place.MASTER, spec.server, spec.volume,
                                 grid_text(spec.retention), spec.keep_min, tuple(doomed),
                                 ours - len(doomed)), tuple(kept))


def _tree_plan(spec: PolicySpec, listing: TreeListing, names: Sequence[str],
               decision: Decision, now: float) -> PolicyPlan:
    """The labels' decision as every member's snapshots (as a tree relationship's plan
    lists them), plus the snapshots on members that are not the policy's."""
    doomed = {v.snapshot.label: v for v in decision.doomed}
    spared = {k.snapshot.label: k for k in decision.kept}
    verdicts: list[Verdict] = []
    kept: list[Kept] = []
    ours = 0
    for name in names:
        ds = listing.get(name)
        for snap in ds.snapshots if ds is not None else ():
            if not owned(snap.label, spec.prefix):
                kept.append(Kept(snap, KeepRule.NOT_OURS, now - snap.creation, spec.prefix))
                continue
            ours += 1
            if (v := doomed.get(snap.label)) is not None:
                verdicts.append(replace(v, snapshot=snap))
            elif (k := spared.get(snap.label)) is not None:
                kept.append(replace(k, snapshot=snap))
    return _plan(spec, verdicts, kept, ours)


def carry_out(engine: ActivityEngine, volume_states: VolumeStates, spec: PolicySpec,
              plan: PolicyPlan) -> ActivityRecord | None:
    """Submit the prune of exactly what ``plan`` lists (None: nothing to destroy).
    Raises VolumeBusy if the volume is held. Synchronous: nothing runs in between."""
    target = plan.target
    if target.blocked or not target.verdicts:
        return None
    return volume_states.submit_holding(
        holds=prune_holds(spec.server, spec.volume), busy=PRUNING,
        submit=lambda: snapshot_prune.submit_prune(
            engine, spec.server, spec.volume, target.names, None, target.guids,
            policy=spec.name))


def prune_under_way(engine: ActivityEngine, name: str) -> bool:
    """Whether an operator's prune of the policy's snapshots is still running."""
    return any(a.record.params.get("policy") == name for a in engine.live(snapshot_prune.KIND))
