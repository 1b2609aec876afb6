"""What a reload changes: the running config against the new one, as a value (no I/O).

``diff_config`` names, per section (``servers``, ``stores``, ``relationships``,
``policies``: the ``[snapshots]`` tables), the
entries added, removed and changed. Entries are frozen dataclasses compared with
``==``, so any key a spec gains later is covered without touching this module.
``reload_refusal`` says why the new config cannot be put in force in the running daemon
although it parses (a removed server a remaining relationship still names, say): the
reload is then refused as a whole, like a file that does not parse. The daemon applies
an accepted diff (``reload.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .parsing import ConfigError
from .replication.logic.spec import RelationshipSpec, overlapping

#: The sections a reload applies entry by entry.
RELOADED_SECTIONS = ("servers", "stores", "relationships", "policies")


@dataclass(frozen=True)
class SectionDiff:
    """The names added, removed and changed in one section, each sorted."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in (("added", self.added), ("removed", self.removed),
                                        ("changed", self.changed)) if v}


@dataclass(frozen=True)
class ConfigDiff:
    servers: SectionDiff = field(default_factory=SectionDiff)
    stores: SectionDiff = field(default_factory=SectionDiff)
    relationships: SectionDiff = field(default_factory=SectionDiff)
    #: Snapshot policies (``[snapshots.NAME]``).
    policies: SectionDiff = field(default_factory=SectionDiff)

    def __bool__(self) -> bool:
        return bool(self.servers or self.stores or self.relationships or self.policies)

    def to_json(self) -> dict[str, dict[str, list[str]]]:
        """For the log: only the sections that changed."""
        return {s: d.to_json() for s in RELOADED_SECTIONS if (d := getattr(self, s))}


def diff_section(old: Mapping[str, Any], new: Mapping[str, Any]) -> SectionDiff:
    return SectionDiff(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(n for n in old.keys() & new.keys() if old[n] != new[n])))


def diff_config(old: Config, new: Config) -> ConfigDiff:
    return ConfigDiff(*(diff_section(getattr(old, s), getattr(new, s)) for s in RELOADED_SECTIONS))


@dataclass(frozen=True)
class RunningRelationship:
    """What a reload must know of a relationship the daemon runs now."""

    #: The definition in force: the config's or the API's, with a failover's roles.
    spec: RelationshipSpec
    #: A failover left roles of its own (``spec`` differs from the definition's servers).
    failed_over: bool = False
    #: A failover or failback of it is under way.
    failover_in_progress: bool = False
    #: Old masters an unplanned failover keeps fenced (read-only) until they rejoin.
    fenced: frozenset[str] = frozenset()


def _servers_of(spec: RelationshipSpec) -> set[str]:
    return {spec.master, *(s.server for s in spec.slaves)}


def _roles_changed(old: RelationshipSpec, new: RelationshipSpec) -> str | None:
    """The first server-placement key that differs, for the refusal's dotted key."""
    for key in ("master", "volume", "slaves"):
        if getattr(old, key) != getattr(new, key):
            return key
    return None


def reload_refusal(diff: ConfigDiff, old: Config, new: Config,
                   running: Mapping[str, RunningRelationship]) -> ConfigError | None:
    """Why ``new`` cannot be put in force now, naming the key; None if it can.

    ``running``: every relationship the daemon runs (from the config or the API). Those
    that stay after the reload are the API's and the new config's; a server or store
    they still name cannot go.
    """
    for name in (*diff.relationships.removed, *diff.relationships.changed):
        rt = running.get(name)
        if rt is not None and rt.failover_in_progress:
            return ConfigError(f"relationships.{name}", "a failover of this relationship is "
                               "under way; reload again after it ends")
    for name in diff.relationships.added:
        rt = running.get(name)
        if rt is not None and rt.spec.origin == "api":
            return ConfigError(f"relationships.{name}", "a relationship of this name was "
                               "created through the API; delete it there first")
    for name in diff.relationships.changed:
        rt = running.get(name)
        key = _roles_changed(old.relationships[name], new.relationships[name])
        if rt is not None and rt.failed_over and key is not None:
            return ConfigError(f"relationships.{name}.{key}", f"the relationship runs under "
                               f"the roles a failover left (master {rt.spec.master}); fail "
                               "back before changing its servers or volume")
    staying = list(_staying(diff, new, running))
    api = [rt.spec for n, rt in running.items()
           if rt.spec.origin == "api" and n not in diff.relationships.added]
    for name in (*diff.relationships.added, *diff.relationships.changed):
        if (other := overlapping(new.relationships[name], api)) is not None:
            return ConfigError(f"relationships.{name}.volume", f"its datasets overlap those "
                               f"of relationship {other} (created through the API; same "
                               "master, same slave server)")
    for server in diff.servers.removed:
        for spec in staying:
            if server in _servers_of(spec):
                return ConfigError(f"servers.{server}", f"removed, but relationship "
                                   f"{spec.name} ({spec.origin}) still names it")
            rt = running.get(spec.name)
            if rt is not None and server in rt.fenced:
                return ConfigError(f"servers.{server}", f"removed, but relationship "
                                   f"{spec.name} keeps it fenced (read-only) until it "
                                   "rejoins")
    for store in diff.stores.removed:
        for spec in staying:
            if store in spec.stores:
                return ConfigError(f"stores.{store}", f"removed, but relationship "
                                   f"{spec.name} ({spec.origin}) still names it")
    return None


def _staying(diff: ConfigDiff, new: Config,
             running: Mapping[str, RunningRelationship]) -> Iterable[RelationshipSpec]:
    """The definitions in force after the reload: the new config's (with the roles a
    failover left, which name the same servers or the reload is refused) and the API's."""
    for name, spec in new.relationships.items():
        rt = running.get(name)
        yield rt.spec if rt is not None and rt.failed_over else spec
    for name, rt in running.items():
        if rt.spec.origin == "api" and name not in diff.relationships.added:
            yield rt.spec
