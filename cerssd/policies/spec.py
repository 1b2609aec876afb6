"""A snapshot policy (``[snapshots.NAME]``) as a value: what to snapshot, when, how long to keep.

sanoid's model: snapshots are made and thinned on their own schedule, whether or not
anything replicates them, so local recovery does not depend on a standby being there.
A relationship may then replicate a policy's snapshots (``snapshots = "NAME"``) rather
than make its own, and one set of snapshots serves recovery, standbys and the bucket.

The keys it shares with a relationship (volume and tree selection, server, prefix,
retention grid, schedule) are parsed by the same functions
(``replication.logic.spec_fields``, ``schedule``, ``retention``): the same key gets the
same error, and a relationship is checked against its policy by comparing parsed values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..hooks import Hooks, parse_hooks
from ..parsing import ConfigError, reject_unknown
from ..replication.logic import spec_fields as fields
from ..replication.logic.members import TreeSelection
from ..replication.logic.retention import DEFAULT_KEEP_MIN, Tier, parse_keep_min
from ..replication.logic.schedule import Schedule, describe, parse_schedule
from ..replication.logic.spec import DEFAULT_RETENTION
from ..storage.names import InvalidName, validate_object_name

#: The keys a ``[snapshots.NAME]`` table accepts (docs/config.md lists each).
POLICY_KEYS = {"server", "volume", "recursive", "include", "exclude", "property",
               "interval", "cron", "prefix", "retention", "keep_min", "hooks"}
#: The longest label a policy makes after its prefix (``tree.cycle_label``: UTC time and
#: a counter should one second see two runs).
LONGEST_SUFFIX = "20260101T000000Z-99"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    server: str
    volume: str
    selection: TreeSelection
    schedule: Schedule
    prefix: str
    retention: tuple[Tier, ...]
    hooks: Hooks | None = None
    #: The fewest of its own snapshots its grid leaves (per member of a tree).
    keep_min: int = DEFAULT_KEEP_MIN
    #: The table it was parsed from, to show the grid as written.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_tree(self) -> bool:
        return self.selection.is_tree

    def to_json(self) -> dict[str, Any]:
        sel = self.selection
        return {"name": self.name, "server": self.server, "volume": self.volume,
                "schedule": describe(self.schedule), "prefix": self.prefix,
                "retention": list(self.raw.get("retention", DEFAULT_RETENTION)),
                "keep_min": self.keep_min, "recursive": sel.recursive, "include": list(sel.include),
                "exclude": list(sel.exclude), "property": sel.by_property,
                "hooks": self.hooks.to_json() if self.hooks is not None else None}


def parse_policy(name: str, t: Mapping[str, Any], *, servers: Collection[str]) -> PolicySpec:
    """Validate one ``[snapshots.NAME]`` table; ``servers`` are the configured names."""
    key = f"snapshots.{name}"
    try:
        validate_object_name(name, "snapshot policy")
    except InvalidName as exc:
        raise ConfigError(key, str(exc)) from None
    reject_unknown(t, f"{key}.", POLICY_KEYS)
    volume = fields.volume(t.get("volume"), f"{key}.volume", required=True)
    prefix = fields.prefix(t.get("prefix", f"cerssd-{name}-"), f"{key}.prefix")
    fields.check_label_room(prefix, LONGEST_SUFFIX, [volume], f"{key}.prefix")
    return PolicySpec(
        name=name, server=fields.server(t.get("server", "local"), f"{key}.server", servers),
        volume=volume, selection=fields.selection(t, key, volume),
        schedule=parse_schedule(t.get("interval"), t.get("cron"), key, name),
        prefix=prefix,
        retention=fields.grid(t.get("retention", DEFAULT_RETENTION), f"{key}.retention"),
        keep_min=parse_keep_min(t.get("keep_min", DEFAULT_KEEP_MIN), f"{key}.keep_min"),
        hooks=parse_hooks(t.get("hooks"), f"{key}.hooks"), raw=dict(t))
