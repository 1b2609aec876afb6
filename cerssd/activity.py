"""The activity contract as plain values: states, allowed transitions, progress, usage.

Sans-IO on purpose: the engine (``cerssd.engine``) owns the asyncio side, this
module only says what an activity *is* and which state changes are legal, so the
rules can be tested exhaustively without a loop, a journal or ZFS.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class State(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    RETRYING = "retrying"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})

#: Every legal state change. Anything else raises IllegalTransition (HTTP 409).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RUNNING, State.CANCELLED, State.FAILED}),
    State.RUNNING: frozenset({State.SUSPENDED, State.RETRYING, State.CANCELLING,
                              State.SUCCEEDED, State.FAILED}),
    State.SUSPENDED: frozenset({State.RUNNING, State.CANCELLING, State.FAILED}),
    State.RETRYING: frozenset({State.RUNNING, State.SUSPENDED, State.CANCELLING,
                               State.FAILED}),
    State.CANCELLING: frozenset({State.CANCELLED, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}


class LinkCondition(enum.StrEnum):
    """The state of a link to a server or an object store: up; lost (a call failed,
    retries continue); retrying (the next retry is scheduled). Also the API's schema."""

    UP = "up"
    LOST = "lost"
    RETRYING = "retrying"


class DataRoute(enum.StrEnum):
    """How an activity's data moves, as the API's ``route`` says: ``local`` (this daemon's
    node is an end: its processes move the bytes), ``relayed`` (two remote ends: the
    bytes pass through this daemon's node), ``delegated`` (a peer daemon on the node
    that holds the data runs the work as its own activity; ``node`` names it)."""

    LOCAL = "local"
    RELAYED = "relayed"
    DELEGATED = "delegated"


class StatusCode(enum.IntEnum):
    """``status`` of a finished activity: 0 is success, anything else an error."""

    OK = 0
    ERROR = 1
    CANCELLED = 2
    INTERRUPTED = 3
    CONFLICT = 4
    NOT_FOUND = 5
    LINK = 6
    ROLLBACK_FAILED = 7


class IllegalTransition(Exception):
    def __init__(self, activity_id: str, current: State, wanted: State) -> None:
        super().__init__(f"activity {activity_id} is {current}; it cannot become {wanted}")
        self.current = current
        self.wanted = wanted


def check_transition(activity_id: str, current: State, wanted: State) -> None:
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(activity_id, current, wanted)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` in ``unit``; 0 of 0 means "no anticipated completion"."""

    done: int = 0
    total: int = 0
    unit: str = "bytes"
    estimated: bool = False

    def advanced(self, done: int) -> Progress:
        # Never report n > m: an estimate that turned out low is raised and stays flagged.
        total = self.total
        if self.total and done > self.total:
            return replace(self, done=done, total=done, estimated=True)
        return replace(self, done=done, total=total)


@dataclass(frozen=True)
class Usage:
    elapsed_seconds: float = 0.0
    bytes_read: int = 0
    bytes_on_wire: int = 0
    retries: int = 0
    rate_bytes_per_second: float = 0.0


@dataclass(frozen=True)
class LinkHealth:
    """What the activity's link looks like: ``up``, ``lost`` or ``retrying``."""

    server: str
    state: LinkCondition = LinkCondition.UP
    since: float | None = None
    attempt: int = 0
    next_try_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Status:
    """``reason`` is a short stable word for the kind of error (metrics label)."""

    code: int
    message: str
    reason: str | None = None


@dataclass(frozen=True)
class ActivityRecord:
    """One activity as the API and the journal see it (an immutable snapshot)."""

    id: str
    kind: str
    volume: str | None
    source: str | None
    target: str | None
    created_at: float
    state: State = State.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = field(default_factory=Progress)
    status: Status | None = None
    usage: Usage = field(default_factory=Usage)
    self_restarting: bool = False
    link: LinkHealth | None = None
    params: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    #: The server whose cerssd runs the work (a peer daemon), or None: this daemon.
    node: str | None = None
    route: DataRoute = DataRoute.LOCAL

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        data["route"] = str(self.route)
        data["progress"]["text"] = f"{self.progress.done} of {self.progress.total}"
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActivityRecord:
        progress = {k: v for k, v in data["progress"].items() if k != "text"}
        return cls(
            id=data["id"], kind=data["kind"], volume=data.get("volume"),
            source=data.get("source"), target=data.get("target"),
            created_at=data["created_at"], state=State(data["state"]),
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            progress=Progress(**progress),
            status=Status(**data["status"]) if data.get("status") else None,
            usage=Usage(**data["usage"]),
            self_restarting=data.get("self_restarting", False),
            link=(LinkHealth(**{**data["link"], "state": LinkCondition(data["link"]["state"])})
                  if data.get("link") else None),
            params=data.get("params", {}), restarts=data.get("restarts", 0),
            node=data.get("node"), route=DataRoute(data.get("route", "local")),
        )
