"""A relationship: "keep volume V on master M replicated to slaves S1..Sn", as a value.

Relationships come from the config file (``[relationships.NAME]``) or from the API;
both are parsed here by one function, so a bad key gets the same clear error
(``ConfigError`` naming the dotted key) whether it was typed in a file or posted.
The schedule and retention grids are parsed too, so a relationship that exists
can always run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...hooks import Hooks, parse_hooks
from ...parsing import ConfigError, parse_duration, parse_size, reject_unknown
from ...storage.names import (
    InvalidName,
    validate_object_name,
)
from .auto_failover_rule import KEYS as AUTO_KEYS
from .auto_failover_rule import AutoFailover, parse_auto_failover
from .members import TreeSelection, trees_overlap
from .receive import KEYS as RECEIVE_KEYS
from .receive import ReceiveSettings, parse_receive
from .retention import DEFAULT_KEEP_MIN, Tier, parse_grid, parse_keep_min
from .schedule import Schedule, describe, parse_schedule
from .spec_fields import as_list as _as_list
from .spec_fields import bounded_int as _bounded_int
from .spec_fields import check_label_room
from .spec_fields import flag as _flag
from .spec_fields import prefix as parse_prefix
from .spec_fields import selection as _selection
from .spec_fields import server as _server
from .spec_fields import volume as _volume

DEFAULT_RETENTION = ("1h:all", "1d:1h", "1w:1d")
#: A second or more of stream: identical slaves drifted apart by more than 64 MiB when they
#: share CPUs (bench/RESULTS.md); where receives cannot resume, a split-off costs the
#: slave the whole stream again. Chunks are shared, so this bounds the group's memory.
DEFAULT_FANOUT_BUFFER = 256 << 20

_KEYS = {"volume", "master", "slaves", "interval", "cron", "prefix", "retention",
         "slave_retention", "retry_deadline", "fanout", "fanout_buffer", "stores",
         "recursive", "include", "exclude", "property", "max_parallel", "member_metrics",
         "hooks", "snapshots", "send_properties", "keep_min",
         "slave_keep_min", *RECEIVE_KEYS, *AUTO_KEYS}
#: Member transfers to one slave at a time: each is a ``zfs send | zfs receive`` pair over
#: the server's one SSH connection; a 2-CPU node saturates near four (bench/RESULTS.md).
DEFAULT_MAX_PARALLEL = 4
MAX_MAX_PARALLEL = 64
_SLAVE_KEYS = {"server", "target_volume", "bandwidth_limit", "path", *RECEIVE_KEYS}
#: A slave's ``path``: how its replications move data (``logic.plan.ReplicationPath``).
SLAVE_PATHS = ("auto", "native", "generic")


@dataclass(frozen=True)
class SlaveSpec:
    """One slave of a relationship: a server and the volume there that mirrors the master."""

    server: str
    target_volume: str
    bandwidth_limit: int | None = None
    #: ``auto`` (native where one driver serves both ends), ``native`` or ``generic``.
    path: str = "auto"
    #: Mounted or not, and the properties its receives exclude or set (``logic.receive``).
    receive: ReceiveSettings = ReceiveSettings()

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "target_volume": self.target_volume,
                "bandwidth_limit": self.bandwidth_limit, "path": self.path,
                **self.receive.to_json()}


@dataclass(frozen=True)
class RelationshipSpec:
    name: str
    volume: str
    master: str
    slaves: tuple[SlaveSpec, ...]
    #: None: no schedule of its own (it follows its snapshot policy's runs).
    schedule: Schedule | None
    prefix: str
    retention: tuple[Tier, ...]
    slave_retention: tuple[Tier, ...]
    retry_deadline: float | None = None
    fanout: bool = True
    fanout_buffer: int = DEFAULT_FANOUT_BUFFER
    #: Object stores every cycle's snapshot is also backed up to (``[stores.NAME]``).
    stores: tuple[str, ...] = ()
    #: The table it was parsed from, kept to persist and show it exactly as given.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    origin: str = "config"  # "config" | "api"
    #: Which datasets under ``volume`` it keeps: the volume alone unless recursive or a
    #: property selects a tree (``members``).
    selection: TreeSelection | None = None
    #: Member transfers to each slave at a time (a tree).
    max_parallel: int = DEFAULT_MAX_PARALLEL
    #: Per-member metric series (off: a tree's series stay per relationship and slave).
    member_metrics: bool = False
    #: Commands run around each cycle's snapshot (``cerssd.hooks``); config file only.
    hooks: Hooks | None = None
    #: The snapshot policy (``[snapshots.NAME]``) whose snapshots it replicates instead
    #: of making its own: its cycles take no snapshot and prune nothing on the master.
    snapshots: str | None = None
    #: Streams carry the master's properties (``zfs send -p``) for the slaves to receive,
    #: less each slave's ``receive_exclude``.
    send_properties: bool = False
    #: The relationship's own receive settings: each slave's unless its table says
    #: otherwise, and those of a slave a failover or a rejoin adds (the old master).
    receive: ReceiveSettings = ReceiveSettings()
    #: The fewest of its own snapshots retention leaves on the master / each slave,
    #: whatever the grid says (``logic.retention``).
    keep_min: int = DEFAULT_KEEP_MIN
    slave_keep_min: int = DEFAULT_KEEP_MIN
    #: Automatic failover by the relationship's leader (clustered managers only).
    auto_failover: AutoFailover | None = None

    @property
    def selecting_name(self) -> str:
        """The name a selecting property's value may give (``members.select``): the
        policy's when it replicates one, since the policy chose the members."""
        return self.snapshots or self.name

    @property
    def is_tree(self) -> bool:
        return self.selection is not None and self.selection.is_tree

    def slave(self, server: str) -> SlaveSpec:
        for s in self.slaves:
            if s.server == server:
                return s
        raise KeyError(server)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "volume": self.volume, "master": self.master,
            "slaves": [s.to_json() for s in self.slaves],
            "schedule": describe(self.schedule) if self.schedule is not None
            else f"after each run of policy {self.snapshots}", "snapshots": self.snapshots,
            "prefix": self.prefix, "retention": list(self.raw.get("retention",
                                                                   DEFAULT_RETENTION)),
            "slave_retention": list(self.raw.get("slave_retention",
                                                 self.raw.get("retention", DEFAULT_RETENTION))),
            "retry_deadline": self.retry_deadline, "fanout": self.fanout,
            "keep_min": self.keep_min, "slave_keep_min": self.slave_keep_min,
            "fanout_buffer": self.fanout_buffer, "stores": list(self.stores),
            "send_properties": self.send_properties,
            "origin": self.origin, **self._tree_json(),
            "hooks": self.hooks.to_json() if self.hooks else None,
        }

    def _tree_json(self) -> dict[str, Any]:
        sel = self.selection
        if sel is None or not sel.is_tree:
            return {}
        return {"recursive": sel.recursive, "include": list(sel.include),
                "exclude": list(sel.exclude), "property": sel.by_property,
                "max_parallel": self.max_parallel, "member_metrics": self.member_metrics}


def parse_relationship(name: str, t: Mapping[str, Any], *, servers: Collection[str],
                       key: str | None = None, origin: str = "config",
                       stores: Collection[str] = (),
                       drivers: Mapping[str, str] | None = None) -> RelationshipSpec:
    """Validate one relationship table; ``servers`` and ``stores`` are the configured names,
    ``drivers`` each server's storage driver (``backend``) where known."""
    key = f"relationships.{name}" if key is None else key
    try:
        validate_object_name(name, "relationship")
    except InvalidName as exc:
        raise ConfigError(key, str(exc)) from None
    reject_unknown(t, f"{key}.", _KEYS)
    volume = _volume(t.get("volume"), f"{key}.volume", required=True)
    master = _server(t.get("master", "local"), f"{key}.master", servers)
    receive = parse_receive(t, f"{key}.")
    slaves = _slaves(t.get("slaves"), f"{key}.slaves", servers, volume, master, receive)
    prefix = parse_prefix(t.get("prefix", f"cerssd-{name}-"), f"{key}.prefix")
    policy = _policy_name(t, key)
    retention = tuple(parse_grid(_as_list(t.get("retention", DEFAULT_RETENTION),
                                          f"{key}.retention"), f"{key}.retention"))
    slave_grid = t.get("slave_retention", t.get("retention", DEFAULT_RETENTION))
    slave_retention = tuple(parse_grid(_as_list(slave_grid, f"{key}.slave_retention"),
                                       f"{key}.slave_retention"))
    keep_min = parse_keep_min(t.get("keep_min", DEFAULT_KEEP_MIN), f"{key}.keep_min")
    slave_keep_min = parse_keep_min(t.get("slave_keep_min", keep_min), f"{key}.slave_keep_min")
    fanout = t.get("fanout", True)
    if not isinstance(fanout, bool):
        raise ConfigError(f"{key}.fanout", "must be true or false")
    store_names = t.get("stores", [])
    if not isinstance(store_names, list | tuple) or not all(
            isinstance(x, str) for x in store_names):
        raise ConfigError(f"{key}.stores", 'must be a list of store names such as ["s3"]')
    store_names = tuple(store_names)
    for i, store in enumerate(store_names):
        if store not in stores:
            raise ConfigError(f"{key}.stores[{i}]", f"no [stores.{store}] in the config")
    if len(set(store_names)) != len(store_names):
        raise ConfigError(f"{key}.stores", "names a store twice")
    _check_receive_drivers(slaves, drivers or {}, f"{key}.slaves")
    _check_label_room(prefix, [volume, *(s.target_volume for s in slaves)], f"{key}.prefix")
    selection = _selection(t, key, volume)
    if selection.is_tree:
        _check_tree_slaves(slaves, volume, master, f"{key}.slaves")
    if "hooks" in t and origin != "config":
        raise ConfigError(f"{key}.hooks", "only the config file may name hooks (they run "
                          "commands as the daemon's user)")
    return RelationshipSpec(
        name=name, volume=volume, master=master, slaves=slaves, stores=store_names,
        schedule=None if policy is not None and t.get("interval") is None
        and t.get("cron") is None else parse_schedule(t.get("interval"), t.get("cron"), key,
                                                      name),
        prefix=prefix, retention=retention, slave_retention=slave_retention,
        keep_min=keep_min, slave_keep_min=slave_keep_min,
        retry_deadline=_deadline(t.get("retry_deadline"), f"{key}.retry_deadline"),
        fanout=fanout,
        fanout_buffer=parse_size(t.get("fanout_buffer", DEFAULT_FANOUT_BUFFER),
                                 f"{key}.fanout_buffer"),
        raw=dict(t), origin=origin, selection=selection,
        max_parallel=_bounded_int(t.get("max_parallel", DEFAULT_MAX_PARALLEL),
                                  f"{key}.max_parallel", 1, MAX_MAX_PARALLEL),
        member_metrics=_flag(t.get("member_metrics", False), f"{key}.member_metrics"),
        hooks=parse_hooks(t.get("hooks"), f"{key}.hooks"), snapshots=policy,
        send_properties=_flag(t.get("send_properties", False), f"{key}.send_properties"),
        receive=receive,
        auto_failover=parse_auto_failover(t, key, tree=selection.is_tree, origin=origin))


def _check_receive_drivers(slaves: tuple[SlaveSpec, ...], drivers: Mapping[str, str],
                           key: str) -> None:
    """``receive_set`` needs properties to set: ZFS has them, btrfs has none (its streams
    carry none either, so ``receive_exclude`` holds there as it is)."""
    for i, s in enumerate(slaves):
        driver = drivers.get(s.server, "zfs")
        if s.receive.properties.override and driver != "zfs":
            raise ConfigError(f"{key}[{i}].receive_set", f"{s.server} uses the {driver} "
                              "driver, which has no properties to set on a receive")


def _policy_name(t: Mapping[str, Any], key: str) -> str | None:
    """``snapshots``: the policy whose snapshots it replicates. The policy's prefix names
    them, its grid prunes the master and its hooks run around them, so ``prefix``,
    ``retention`` and ``hooks`` cannot be given too (``slave_retention`` still thins the
    slaves). Whether the policy exists and
    covers the same volumes is checked where both are known (``policies.binding``)."""
    value = t.get("snapshots")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}.snapshots", 'must be the name of a snapshot policy '
                          '([snapshots.NAME])')
    try:
        validate_object_name(value, "snapshot policy")
    except InvalidName as exc:
        raise ConfigError(f"{key}.snapshots", str(exc)) from None
    for own in ("prefix", "retention"):
        if own in t:
            raise ConfigError(f"{key}.{own}", f"not with snapshots = {value!r}: the policy's "
                              f"{own} names and prunes the snapshots it replicates")
    if "hooks" in t:
        raise ConfigError(f"{key}.hooks", f"not with snapshots = {value!r}: the relationship "
                          f"takes no snapshot; give the hooks to [snapshots.{value}]")
    return value


def _check_tree_slaves(slaves: tuple[SlaveSpec, ...], volume: str, master: str,
                       key: str) -> None:
    """A target root inside the master's own tree on the same server would replicate
    the tree into itself (each cycle a level deeper)."""
    for i, s in enumerate(slaves):
        if s.server == master and (s.target_volume.startswith(volume + "/")
                                   or volume.startswith(s.target_volume + "/")):
            raise ConfigError(f"{key}[{i}].target_volume", f"{s.target_volume} and the "
                              f"tree {volume} nest on the same server")


#: The longest label a relationship makes after its prefix: a failover's snapshot, with
#: a counter should the same second be taken (cycle._label, failover).
LONGEST_LABEL_SUFFIX = "failover-20260101T000000Z-99"


def _check_label_room(prefix: str, volumes: list[str], key: str) -> None:
    """Every snapshot the relationship will make must fit ZFS's 255-byte name limit."""
    check_label_room(prefix, LONGEST_LABEL_SUFFIX, volumes, key)


def _slaves(value: Any, key: str, servers: Collection[str], volume: str,
            master: str, receive: ReceiveSettings) -> tuple[SlaveSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of slaves, each a table with "
                          "server (and optionally target_volume, bandwidth_limit)")
    slaves: list[SlaveSpec] = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"server": item}
        if not isinstance(item, Mapping):
            raise ConfigError(k, "must be a server name or a table")
        reject_unknown(item, f"{k}.", _SLAVE_KEYS)
        server = _server(item.get("server"), f"{k}.server", servers)
        target = _volume(item.get("target_volume", volume), f"{k}.target_volume",
                         required=True)
        if server == master and target == volume:
            raise ConfigError(f"{k}.target_volume", "a slave on the master's server needs "
                              "a different target_volume")
        if any(s.server == server for s in slaves):
            raise ConfigError(f"{k}.server", f"{server} is already a slave of this "
                              "relationship")
        limit = item.get("bandwidth_limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit <= 0):
            raise ConfigError(f"{k}.bandwidth_limit", "must be a positive number of bytes "
                              "per second")
        path = item.get("path", "auto")
        if path not in SLAVE_PATHS:
            raise ConfigError(f"{k}.path", f"must be one of {', '.join(SLAVE_PATHS)}")
        slaves.append(SlaveSpec(server, target, limit, path,
                                parse_receive(item, f"{k}.", receive)))
    return tuple(slaves)


def _deadline(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if value == "never":
        return float("inf")
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(key, "must be positive (or \"never\")")
    return seconds


def overlapping(spec: RelationshipSpec, others: Iterable[RelationshipSpec]) -> str | None:
    """The name of a relationship in ``others`` whose master sends some dataset that
    ``spec``'s master also sends to the same slave server, or None. Two relationships
    sending one member to one slave would fight over its snapshots. (Two single-volume
    relationships of one volume are left as they always were.)"""
    mine = spec.selection or TreeSelection(spec.volume)
    for other in others:
        if other.name == spec.name or other.master != spec.master \
                or not (spec.is_tree or other.is_tree):
            continue
        theirs = other.selection or TreeSelection(other.volume)
        if not trees_overlap(mine, theirs):
            continue
        if {s.server for s in spec.slaves} & {s.server for s in other.slaves}:
            return other.name
    return None
