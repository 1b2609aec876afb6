"""What an operator sees of a relationship's slaves: state, lag, last success.

The facts (last replicated snapshot, last success, bytes) are kept per slave and
remembered across restarts; the *state* is derived when asked, from those facts,
the live transfer and the link, so it can never go stale:

* ``lost``: the link to the slave is down, or its transfer is retrying;
* ``syncing``: a transfer to it is under way (or suspended);
* ``error``: its last transfer failed and none has succeeded since;
* ``in-sync``: it has the master's newest snapshot of the relationship;
* ``behind``: anything else (it is older and nothing is sending to it yet).

Lag is the age of the newest snapshot the slave has: how much the master's data
the slave would lose were it promoted now (the RPO actually achieved).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ...activity import ActivityRecord, LinkCondition, State
from ...links import LinkState


class SlaveState(enum.StrEnum):
    """A slave's state, derived when asked: in-sync, syncing, behind, lost (its link is
    down or its transfer retrying), error (its last transfer failed). Also the API's
    schema and a metric's label."""

    IN_SYNC = "in-sync"
    SYNCING = "syncing"
    BEHIND = "behind"
    LOST = "lost"
    ERROR = "error"


STATES = tuple(SlaveState)


class RelationshipState(enum.StrEnum):
    """A relationship's state, from its activity's: running, paused (suspended),
    retrying, stopping (cancelling), stopped (no activity). Also the API's schema."""

    RUNNING = "running"
    #: Running, but some members of its tree fail (the others keep in sync).
    DEGRADED = "degraded"
    PAUSED = "paused"
    RETRYING = "retrying"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class SlaveStatus:
    server: str
    target_volume: str
    last_snapshot: str | None = None
    last_snapshot_guid: str | None = None
    last_snapshot_created: float | None = None
    last_success_at: float | None = None
    last_cycle_bytes: int = 0
    error: str | None = None

    def remembered(self) -> dict[str, Any]:
        return {"last_snapshot": self.last_snapshot,
                "last_snapshot_guid": self.last_snapshot_guid,
                "last_snapshot_created": self.last_snapshot_created,
                "last_success_at": self.last_success_at,
                "last_cycle_bytes": self.last_cycle_bytes, "error": self.error}

    def restore(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if key in self.remembered():
                setattr(self, key, value)

    def lag(self, now: float) -> float | None:
        if self.last_snapshot_created is None:
            return None
        return max(0.0, now - self.last_snapshot_created)


def slave_state(status: SlaveStatus, *, newest_guid: str | None,
                transfer: ActivityRecord | None, link: LinkState | None) -> SlaveState:
    if (link is not None and link.state != LinkCondition.UP) or (
            transfer is not None and transfer.state == State.RETRYING):
        return SlaveState.LOST
    if transfer is not None and not transfer.state.terminal:
        return SlaveState.SYNCING
    if status.error:
        return SlaveState.ERROR
    if newest_guid is not None and status.last_snapshot_guid == newest_guid:
        return SlaveState.IN_SYNC
    return SlaveState.BEHIND


def slave_json(status: SlaveStatus, *, now: float, state: SlaveState,
               transfer: ActivityRecord | None, link: LinkState | None) -> dict[str, Any]:
    lag = status.lag(now)
    return {
        "server": status.server, "target_volume": status.target_volume, "state": state,
        "last_snapshot": status.last_snapshot,
        "last_snapshot_created": status.last_snapshot_created,
        "lag_seconds": None if lag is None else round(lag, 1),
        "last_success_at": status.last_success_at,
        "last_cycle_bytes": status.last_cycle_bytes, "error": status.error,
        "activity": transfer.id if transfer is not None else None,
        "progress": transfer.to_json()["progress"] if transfer is not None else None,
        "link": link.to_json() if link is not None else {"server": status.server,
                                                          "state": LinkCondition.UP,
                                                          "local": True},
    }
