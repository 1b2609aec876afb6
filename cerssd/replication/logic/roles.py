"""Who is master of a relationship, how a failover swaps the roles, and its status.

A relationship's definition (config file or API) names the *home* master. A
failover makes a slave the master and the old master a slave (planned) or a
*fenced* server that must rejoin explicitly (unplanned: it may hold writes the new
master never saw). The roles in force are kept in the journal's database, never
written back into the config file, and laid over the definition at start-up, so a
restarted daemon never forgets who the master is.

The replication status follows Cinder's values:

* ``failing-over`` / ``failing-back``: a failover activity is under way (back to the
  home master is a failback);
* ``failover-error``: the last failover failed and was rolled back; the roles are
  unchanged;
* ``failed-over``: the active master is not the home master;
* ``disabled``: replication is paused or stopped;
* ``enabled``: replicating from the home master.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .spec import RelationshipSpec, SlaveSpec


class ReplicationStatus(enum.StrEnum):
    """A relationship's replication status: enabled (replicating from the home master),
    disabled (paused or stopped), failing-over or failing-back (a failover under way),
    failed-over (the master is not the home master), failover-error (the last failover
    failed and was rolled back). Cinder's values; also the API's schema."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    FAILING_OVER = "failing-over"
    FAILED_OVER = "failed-over"
    FAILOVER_ERROR = "failover-error"
    FAILING_BACK = "failing-back"


class FailoverStatus(enum.StrEnum):
    """Where a relationship's failover stands, while it is news: under way (over or
    back), or failed and rolled back. These are also replication statuses."""

    FAILING_OVER = "failing-over"
    FAILING_BACK = "failing-back"
    FAILOVER_ERROR = "failover-error"


STATUSES = tuple(ReplicationStatus)
IN_PROGRESS = (FailoverStatus.FAILING_OVER, FailoverStatus.FAILING_BACK)


class RolesInvalid(Exception):
    """Remembered roles that the current config can no longer express."""


@dataclass(frozen=True)
class Fenced:
    """An old master cut off by an unplanned failover: kept read-only until it rejoins."""

    server: str
    volume: str
    since: float
    #: When the fence (``readonly=on``) was last confirmed on the server; None while
    #: the server has not been reachable since the failover.
    applied_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataLoss:
    """What an unplanned failover may have lost: writes after ``snapshot`` on the old
    master, a window of ``window_seconds`` up to the failover."""

    snapshot: str | None
    snapshot_created: float | None
    failed_over_at: float

    @property
    def window_seconds(self) -> float | None:
        if self.snapshot_created is None:
            return None
        return round(max(0.0, self.failed_over_at - self.snapshot_created), 1)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "window_seconds": self.window_seconds}


@dataclass
class FailoverState:
    """The failover facts of one relationship, remembered across restarts."""

    #: ``failing-over``, ``failing-back`` or ``failover-error``; None otherwise.
    status: FailoverStatus | None = None
    activity: str | None = None
    error: str | None = None
    last_failover_at: float | None = None
    data_loss: DataLoss | None = None
    fenced: dict[str, Fenced] = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS

    def remembered(self) -> dict[str, Any]:
        return {"status": self.status, "activity": self.activity, "error": self.error,
                "last_failover_at": self.last_failover_at,
                "data_loss": asdict(self.data_loss) if self.data_loss else None,
                "fenced": {n: f.to_json() for n, f in self.fenced.items()}}

    def to_json(self) -> dict[str, Any]:
        """What the API shows: the remembered facts, the window and fences spelled out."""
        return {"activity": self.activity, "error": self.error,
                "last_failover_at": self.last_failover_at,
                "data_loss": self.data_loss.to_json() if self.data_loss else None,
                "fenced": [f.to_json() for f in self.fenced.values()]}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> FailoverState:
        loss = data.get("data_loss")
        status = data.get("status")
        return cls(status=FailoverStatus(status) if status else None,
                   activity=data.get("activity"),
                   error=data.get("error"), last_failover_at=data.get("last_failover_at"),
                   data_loss=DataLoss(**loss) if loss else None,
                   fenced={n: Fenced(**f) for n, f in data.get("fenced", {}).items()})


def replication_status(spec: RelationshipSpec, home: str, failover: FailoverState, *,
                       replicating: bool) -> ReplicationStatus:
    if failover.status is not None:
        return ReplicationStatus(failover.status)
    if spec.master != home:
        return ReplicationStatus.FAILED_OVER
    return ReplicationStatus.ENABLED if replicating else ReplicationStatus.DISABLED


def promoted(spec: RelationshipSpec, to: str, *, keep_old_master: bool) -> RelationshipSpec:
    """The roles after ``to`` (a slave) becomes master.

    The old master follows as a slave of its own volume (planned failover) or is
    left out, to be fenced (unplanned); the other slaves follow the new master.
    """
    new_master = spec.slave(to)
    followers = [s for s in spec.slaves if s.server != to]
    if keep_old_master:
        followers.insert(0, SlaveSpec(spec.master, spec.volume, receive=spec.receive))
    return _rooted(replace(spec, master=new_master.server, volume=new_master.target_volume,
                           slaves=tuple(followers)))


def _rooted(spec: RelationshipSpec) -> RelationshipSpec:
    """A tree's selection follows its master's volume: the same members, by the same
    names relative to the root, under the new master's copy of the root."""
    if spec.selection is None or spec.selection.root == spec.volume:
        return spec
    return replace(spec, selection=replace(spec.selection, root=spec.volume))


def with_slave(spec: RelationshipSpec, slave: SlaveSpec) -> RelationshipSpec:
    return replace(spec, slaves=(*spec.slaves, slave))


def roles_json(spec: RelationshipSpec) -> dict[str, Any]:
    return {"master": spec.master, "volume": spec.volume,
            "slaves": [s.to_json() for s in spec.slaves]}


def apply_roles(spec: RelationshipSpec, roles: Mapping[str, Any],
                servers: Collection[str]) -> RelationshipSpec:
    """The definition with remembered roles laid over it.

    Refuses (rather than silently falling back to the home master, which could make
    two masters) when a server the roles name is no longer configured.
    """
    named = [roles["master"], *(s["server"] for s in roles["slaves"])]
    missing = [n for n in named if n not in servers]
    if missing:
        raise RolesInvalid(f"after a failover this relationship's roles name servers no "
                           f"longer in the config: {', '.join(missing)}")
    # a server the definition names as a slave receives as its table says; another one
    # (the home master, following) as the relationship does
    receive = {s.server: s.receive for s in spec.slaves}
    return _rooted(replace(spec, master=roles["master"], volume=roles["volume"],
                           slaves=tuple(SlaveSpec(s["server"], s["target_volume"],
                                                  s.get("bandwidth_limit"),
                                                  s.get("path", "auto"),
                                                  receive.get(s["server"], spec.receive))
                                        for s in roles["slaves"])))
