"""A relationship that replicates a policy's snapshots, checked against the policy.

``snapshots = "NAME"`` in ``[relationships.X]`` means: the policy makes and prunes the
master's snapshots, the relationship only brings its slaves (and stores) up to the
policy's newest. That works only if they agree on what is snapshotted, so the
relationship's master and selection must be the policy's server and selection (compared
as parsed values). The relationship then takes the policy's prefix (its transfers pick
the newest snapshot by it, and slave retention thins by it) and, unless it gives a
``slave_retention`` of its own, the policy's grid on its slaves.

Also checked here, for every policy: no other relationship or policy on the same server
and overlapping volumes may have a prefix that starts with (or is started by) the
policy's. Retention prunes by prefix, so such a pair would prune each other's snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..parsing import ConfigError
from ..replication.logic.members import TreeSelection, trees_overlap
from ..replication.logic.spec import DEFAULT_RETENTION, LONGEST_LABEL_SUFFIX, RelationshipSpec
from ..replication.logic.spec_fields import check_label_room
from .spec import PolicySpec


def bind(spec: RelationshipSpec, policies: Mapping[str, PolicySpec],
         key: str) -> RelationshipSpec:
    """``spec`` with its policy's prefix and grids; ConfigError naming the key if its
    ``snapshots`` names no policy or one that does not cover the same volumes."""
    if spec.snapshots is None:
        return spec
    policy = policies.get(spec.snapshots)
    where = f"{key}.snapshots"
    if policy is None:
        raise ConfigError(where, f"no [snapshots.{spec.snapshots}] in the config (policies: "
                          f"{', '.join(sorted(policies)) or 'none'})")
    if policy.server != spec.master:
        raise ConfigError(where, f"policy {policy.name} snapshots server {policy.server}, "
                          f"but this relationship's master is {spec.master}")
    mine = spec.selection or TreeSelection(spec.volume)
    if policy.volume != spec.volume or policy.selection != mine:
        raise ConfigError(where, f"policy {policy.name} covers {_covers(policy.selection)}, "
                          f"but this relationship replicates {_covers(mine)}: both must "
                          "select the same volume and tree (volume, recursive, include, "
                          "exclude, property)")
    check_label_room(policy.prefix, LONGEST_LABEL_SUFFIX,
                     [s.target_volume for s in spec.slaves], f"{key}.slaves")
    own_slave_grid = "slave_retention" in spec.raw
    # The grids as written, for the API's view of the relationship.
    raw = {**spec.raw, "retention": list(policy.raw.get("retention", DEFAULT_RETENTION))}
    if not own_slave_grid:
        raw["slave_retention"] = raw["retention"]
    return replace(spec, prefix=policy.prefix, retention=policy.retention,
                   slave_retention=spec.slave_retention if own_slave_grid
                   else policy.retention, raw=raw)


def check_prefixes(policies: Mapping[str, PolicySpec],
                   relationships: Mapping[str, RelationshipSpec]) -> None:
    """Refuse a policy and another snapshot maker (policy or relationship making its own)
    on overlapping volumes of one server whose prefixes nest (one's retention would prune
    the other's snapshots). Two relationships are left as they always were."""
    makers: list[tuple[str, str, TreeSelection, str]] = [
        (f"snapshots.{p.name}.prefix", p.server, p.selection, p.prefix)
        for p in sorted(policies.values(), key=lambda p: p.name)]
    makers += [(f"relationships.{r.name}.prefix", r.master,
                r.selection or TreeSelection(r.volume), r.prefix)
               for r in sorted(relationships.values(), key=lambda r: r.name)
               if r.snapshots is None]
    for i, (key, server, sel, prefix) in enumerate(makers):
        for other_key, other_server, other_sel, other_prefix in makers[:i]:
            if not (key.startswith("snapshots.") or other_key.startswith("snapshots.")) \
                    or server != other_server or not trees_overlap(sel, other_sel):
                continue
            if prefix.startswith(other_prefix) or other_prefix.startswith(prefix):
                raise ConfigError(key, f"{prefix!r} and {other_key} {other_prefix!r} name "
                                  "snapshots of the same volumes and one starts with the "
                                  "other: each one's retention would prune the other's "
                                  "snapshots; give them distinct prefixes")


def _covers(sel: TreeSelection) -> str:
    if not sel.is_tree:
        return sel.root
    parts = [f"recursive={str(sel.recursive).lower()}"]
    parts += [f"include={list(sel.include)}"] if sel.include else []
    parts += [f"exclude={list(sel.exclude)}"] if sel.exclude else []
    parts += [f"property={sel.by_property}"] if sel.by_property else []
    return f"the tree {sel.root} ({', '.join(parts)})"
