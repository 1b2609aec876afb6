"""Each volume's own state, kept apart from its activities' states (DESIGN.md, "Stateless
vs stateful").

A volume is ``available`` or ``in-use`` when nothing holds it, or in a busy state
(``backing-up``, ``replicating``, ``restoring``, ``failing-over``, ``pruning``,
``rejoining``, and the volume operations' ``creating``, ``reverting``, ``extending``,
``deleting``) while an activity does.

Why two regimes. ZFS snapshots cost nothing and every activity reads from (or receives
into) a snapshot, so on a server that publishes ``stateless_snapshots`` activities never
change the volume's state and any number of them may act on one volume at once (a backup
while it replicates to two slaves). A server configured ``stateless = false`` models a
driver without zero-cost snapshots and gets the old behaviour: an activity holds the
volume in a busy state for its whole life, and a conflicting action is refused (HTTP 409
naming the holder) until it ends. Flows decide from the capability, never from the
config key, and backends never learn who calls them.

What ``in-use`` means for a ZFS dataset: a writable filesystem that is mounted, or a
writable zvol; a client could be writing to it right now. Anything else (read-only like
a replica or a fenced old master, or unmounted) is ``available``. Both facts come from the
one ``zfs get`` that lists the volumes, so a state costs no extra command.

Holds live in memory keyed by (server, volume). They are also in the holding activity's
params (``volume_holds``) from its first journal write on, so a daemon restart, even
after a kill -9 right after the submit, rebuilds them from the activities the engine
recovered (a self-restarting replication comes back still holding its volumes); an
engine listener releases them when the activity reaches a terminal state. Check, submit
and hold run as one synchronous step, with no ``await`` between them, so two requests on
the event loop cannot both pass the check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from .activity import ActivityRecord
from .engine import Activity, ActivityEngine
from .servers import ServerRegistry
from .storage.names import validate_snapshot
from .storage.values import Volume

log = structlog.get_logger("cerssd.volume_states")


class VolumeState(enum.StrEnum):
    """A volume's state: available or in-use while nothing holds it; backing-up,
    replicating, restoring, failing-over, pruning, rejoining, creating, reverting,
    extending or deleting while an activity holds it on a stateful server. Also the
    API's schema."""

    AVAILABLE = "available"
    IN_USE = "in-use"
    BACKING_UP = "backing-up"
    REPLICATING = "replicating"
    RESTORING = "restoring"
    FAILING_OVER = "failing-over"
    PRUNING = "pruning"
    REJOINING = "rejoining"
    #: The volume operations (``cerssd.volumes``): a create or clone holds the new name.
    CREATING = "creating"
    REVERTING = "reverting"
    EXTENDING = "extending"
    DELETING = "deleting"


#: The members by their short names, as the flows and handlers that hold volumes say them.
AVAILABLE = VolumeState.AVAILABLE
IN_USE = VolumeState.IN_USE
BACKING_UP = VolumeState.BACKING_UP
REPLICATING = VolumeState.REPLICATING
RESTORING = VolumeState.RESTORING
FAILING_OVER = VolumeState.FAILING_OVER
PRUNING = VolumeState.PRUNING
REJOINING = VolumeState.REJOINING
CREATING = VolumeState.CREATING
REVERTING = VolumeState.REVERTING
EXTENDING = VolumeState.EXTENDING
DELETING = VolumeState.DELETING
BUSY_STATES = frozenset({BACKING_UP, REPLICATING, RESTORING, FAILING_OVER, PRUNING,
                         REJOINING, CREATING, REVERTING, EXTENDING, DELETING})

#: A busy state as the action that would wait for it ("a backup must wait...").
_ACTIONS: dict[str, str] = {
    BACKING_UP: "a backup", REPLICATING: "a replication", RESTORING: "a restore",
    FAILING_OVER: "a failover", PRUNING: "a prune", REJOINING: "a rejoin",
    CREATING: "a create", REVERTING: "a revert", EXTENDING: "an extend",
    DELETING: "a delete"}

#: The activity param that carries an activity's holds across a daemon restart.
PARAM = "volume_holds"

VolumeKey = tuple[str, str]  # (server, volume)
H = TypeVar("H", bound=Hashable)


@dataclass(frozen=True)
class Hold:
    """``activity_id`` keeps ``volume`` on ``server`` in the busy ``state`` until it ends."""

    server: str
    volume: str
    state: VolumeState
    activity_id: str
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "volume": self.volume, "state": self.state,
                "activity": {"id": self.activity_id, "kind": self.kind}}


class VolumeBusy(Exception):
    """A stateful server's volume is held by another activity (HTTP 409 with the holder)."""

    def __init__(self, hold: Hold, action: str) -> None:
        super().__init__(
            f"volume {hold.volume} on server {hold.server} is {hold.state} (activity "
            f"{hold.activity_id}, {hold.kind}); the server has no stateless_snapshots, so "
            f"{_ACTIONS.get(action, action)} must wait until that activity ends")
        self.hold = hold
        self.action = action


def idle_state(volume: Volume) -> VolumeState:
    """``in-use`` or ``available``: whether a client could be writing to ``volume`` now."""
    if volume.readonly:
        return AVAILABLE
    if volume.type == "filesystem" and not volume.mounted:
        return AVAILABLE
    return IN_USE


class VolumeStates:
    """The holds on stateful servers' volumes, and each volume's state derived from them."""

    def __init__(self, engine: ActivityEngine, servers: ServerRegistry) -> None:
        self._engine = engine
        self._servers = servers
        self._holds: dict[VolumeKey, Hold] = {}
        #: Relationship members refused a start, by (queue, member): when first refused.
        #: The longest-waiting goes first next round, so no slave starves behind another.
        self._waiting: dict[tuple[Hashable, Hashable], int] = {}
        self._rounds = 0
        engine.add_listener(self._on_change)

    # -- queries ------------------------------------------------------------------------
    def stateful(self, server: str) -> bool:
        """Whether activities hold ``server``'s volumes: it lacks ``stateless_snapshots``.

        A server whose capabilities are not known yet (unreachable since start-up)
        publishes nothing, so it counts as stateful: without the capability the old,
        safe behaviour applies.
        """
        return not self._servers.entry(server).backend.capabilities.stateless_snapshots

    def holder(self, server: str, volume: str) -> Hold | None:
        return self._holds.get((server, volume))

    def holds(self) -> list[Hold]:
        return list(self._holds.values())

    def state_of(self, server: str, volume: Volume) -> VolumeState:
        hold = self._holds.get((server, volume.name))
        return hold.state if hold is not None else idle_state(volume)

    # -- the entry points flows call ----------------------------------------------------
    def check(self, volumes: Iterable[VolumeKey], action: str) -> list[VolumeKey]:
        """The stateful ones among ``volumes``; raises VolumeBusy if one of them is held."""
        return self._free(volumes, action, frozenset())

    def submit_holding(self, *, holds: Iterable[VolumeKey], busy: VolumeState,
                       submit: Callable[[], ActivityRecord],
                       preempt: Iterable[str] = ()) -> ActivityRecord:
        """Check ``holds``, ``submit()``, and hold the stateful ones as ``busy`` for the
        activity's life. Raises VolumeBusy (nothing submitted) if one is held already,
        except by an activity in ``preempt`` (one the new activity stops itself, as a
        failover stops its relationship's transfers): those holds pass to the new one.

        Synchronous on purpose: nothing else runs between the check and the hold.
        """
        if busy not in BUSY_STATES:
            raise ValueError(f"{busy!r} is not a busy state")
        keys = self._free(holds, busy, frozenset(preempt))
        if not keys:
            return submit()
        held = {"state": busy, "volumes": [list(k) for k in keys]}
        with self._engine.submitting(**{PARAM: held}):  # journaled with the record
            record = submit()
        self._take(record.id, record.kind, busy, keys)
        return record

    def try_submit(self, holds: Iterable[VolumeKey], busy: VolumeState,
                   submit: Callable[[], ActivityRecord], logger: Any = log,
                   ) -> ActivityRecord | None:
        """``submit_holding`` for a loop that skips a busy volume (logged) instead of failing."""
        try:
            return self.submit_holding(holds=holds, busy=busy, submit=submit)
        except VolumeBusy as exc:
            logger.info("not started: volume held", **exc.hold.to_json())
            return None

    def admit(self, candidates: Sequence[H], holds_of: Callable[[H], Iterable[VolumeKey]],
              queue: Hashable, logger: Any = log) -> list[H]:
        """The candidates (e.g. a relationship cycle's slaves) that may start together now.

        A candidate is skipped (and logged) if a volume it needs is held, or claimed by a
        candidate admitted before it in this round: on a stateful master, one slave's
        transfer at a time. Candidates skipped before go first, longest-waiting first.
        """
        self._rounds += 1
        order = sorted(candidates, key=lambda c: self._waiting.get((queue, c), self._rounds))
        claimed: set[VolumeKey] = set()
        admitted: list[H] = []
        for candidate in order:
            keys = set(self._stateful(holds_of(candidate)))
            held = next((self._holds[k] for k in keys if k in self._holds), None)
            waiting_key = (queue, candidate)
            if held is not None or keys & claimed:
                self._waiting.setdefault(waiting_key, self._rounds)
                logger.info("skipped this round: volume held on a stateful server",
                            candidate=str(candidate),
                            **(held.to_json() if held else {"held_by": "another start"}))
                continue
            self._waiting.pop(waiting_key, None)
            claimed |= keys
            admitted.append(candidate)
        return admitted

    # -- restart and release ------------------------------------------------------------
    def rebuild(self, activities: Iterable[Activity]) -> int:
        """After the engine's recovery: the holds of the live activities it restarted."""
        count = 0
        for activity in activities:
            record = activity.record
            held = record.params.get(PARAM)
            if record.state.terminal or not isinstance(held, dict):
                continue
            keys = [(str(s), str(v)) for s, v in held.get("volumes", [])]
            self._take(record.id, record.kind, VolumeState(str(held.get("state"))), keys)
            count += len(keys)
            log.info("volume holds restored", activity_id=record.id, kind=record.kind,
                     state=held.get("state"), volumes=[f"{s}:{v}" for s, v in keys])
        return count

    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        if record.state.terminal:
            for key, hold in list(self._holds.items()):
                if hold.activity_id == record.id:
                    del self._holds[key]
                    log.info("volume released", server=key[0], volume=key[1],
                             activity_id=record.id, state=hold.state)

    # -- internals ----------------------------------------------------------------------
    def _stateful(self, volumes: Iterable[VolumeKey]) -> list[VolumeKey]:
        seen = dict.fromkeys(volumes)  # ordered, without duplicates
        return [key for key in seen if self.stateful(key[0])]

    def _free(self, volumes: Iterable[VolumeKey], action: str,
              preempt: frozenset[str]) -> list[VolumeKey]:
        keys = self._stateful(volumes)
        for key in keys:
            hold = self._holds.get(key)
            if hold is not None and hold.activity_id not in preempt:
                raise VolumeBusy(hold, action)
        return keys

    def _take(self, activity_id: str, kind: str, state: VolumeState, keys: Iterable[VolumeKey],
              ) -> None:
        for server, volume in keys:
            self._holds[(server, volume)] = Hold(server, volume, state, activity_id, kind)
            log.info("volume held", server=server, volume=volume, state=state,
                     activity_id=activity_id, kind=kind)


# -- which volumes each action holds ------------------------------------------------------
# The requests are described by what is read of them, not imported: the activities in
# replication/ depend on this module, never the other way round.
class ReplicationLike(Protocol):
    """What a replication's holds are read from
    (``replication.flows.replicate.ReplicationRequest``)."""

    @property
    def snapshot(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def target_volume(self) -> str: ...


class BackupLike(Protocol):
    """What a backup's holds are read from (``replication.flows.backup.BackupRequest``)."""

    @property
    def snapshot(self) -> str: ...
    @property
    def server(self) -> str: ...


class RestoreLike(Protocol):
    """What a restore's holds are read from (``replication.flows.restore.RestoreRequest``)."""

    @property
    def server(self) -> str: ...
    @property
    def target_volume(self) -> str: ...


class SlaveLike(Protocol):
    @property
    def server(self) -> str: ...
    @property
    def target_volume(self) -> str: ...


class RelationshipLike(Protocol):
    """What a cycle's holds are read from (``replication.logic.spec.RelationshipSpec``)."""

    @property
    def master(self) -> str: ...
    @property
    def volume(self) -> str: ...
    @property
    def slaves(self) -> Sequence[SlaveLike]: ...


def replication_holds(req: ReplicationLike) -> list[VolumeKey]:
    """A replication holds its source volume and the target volume on the destination."""
    return [(req.source, validate_snapshot(req.snapshot).volume),
            (req.destination, req.target_volume)]


def backup_holds(req: BackupLike) -> list[VolumeKey]:
    return [(req.server, validate_snapshot(req.snapshot).volume)]


def restore_holds(req: RestoreLike) -> list[VolumeKey]:
    return [(req.server, req.target_volume)]


def prune_holds(server: str, volume: str) -> list[VolumeKey]:
    """A prune destroys snapshots of ``volume`` on ``server``: it holds that volume."""
    return [(server, volume)]


def backup_prune_holds(servers: Iterable[str], volume: str) -> list[VolumeKey]:
    """A backup prune deletes a bucket's backups of ``volume``. The bucket names them by
    volume alone, not by server, so any server's backup or restore of that volume may
    be the chain it is cutting: it holds the volume on every (stateful) server."""
    return [(server, volume) for server in servers]


def rejoin_holds(server: str, volume: str) -> list[VolumeKey]:
    """A rejoin rolls the fenced old master's volume back: it holds that volume."""
    return [(server, volume)]


def cycle_holds(spec: RelationshipLike, member: str) -> list[VolumeKey]:
    """What a relationship cycle's start for ``member`` holds: a slave's transfer holds the
    master's volume and the slave's target; a store's backup, the master's volume."""
    master = (spec.master, spec.volume)
    slaves = {s.server: s for s in spec.slaves}
    if member in slaves:
        return [master, (member, slaves[member].target_volume)]
    return [master]
