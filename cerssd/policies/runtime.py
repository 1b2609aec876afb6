"""One snapshot policy's live state, and the result of one run, as values.

The definition (``spec.PolicySpec``) says what to snapshot and keep; a ``PolicyRuntime``
is what the daemon knows of it now. The facts a restart needs (when it last ran, how
many runs and failures, the last run's result) are remembered in its activity's params,
which the journal keeps, and read back when the engine restarts the activity.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..hooks import HookRun
from .spec import PolicySpec

#: The activity kind of a policy's long-lived activity (``work.PolicyWork``).
KIND = "snapshot-policy"


class PolicyError(Exception):
    """An operator's request about a policy that cannot be done now (HTTP 409)."""


class UnknownPolicy(KeyError):
    pass


class RunOutcome(enum.StrEnum):
    """How a run ended."""

    SNAPSHOT = "snapshot"  # taken (and pruned)
    SKIPPED = "skipped"  # the pre hook failed: no snapshot (``hooks.SnapshotSkipped``)
    FAILED = "failed"  # the server or a command failed: retried with back-off
    EMPTY = "empty"  # a tree without members (nothing to snapshot)


@dataclass(frozen=True)
class RunResult:
    """What one run did, for the API, the log and the activity's params."""

    outcome: RunOutcome
    at: float
    seconds: float
    label: str | None = None
    #: Volumes snapshotted (a tree's members; 1 for a volume).
    volumes: int = 0
    destroyed: int = 0
    #: Snapshots ZFS refused to destroy (held), by name: never forced.
    kept_held: tuple[str, ...] = ()
    #: Why no pruning was done this run (a relationship's base unknown, a stream reads).
    prune_skipped: str | None = None
    error: str | None = None
    hooks: tuple[HookRun, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "at": self.at, "seconds": round(self.seconds, 3),
                "label": self.label, "volumes": self.volumes, "destroyed": self.destroyed,
                "kept_held": list(self.kept_held), "prune_skipped": self.prune_skipped,
                "error": self.error, "hooks": [h.to_json() for h in self.hooks]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunResult:
        """Read back from the journal (hook runs are not: they were logged)."""
        return cls(outcome=RunOutcome(d["outcome"]), at=float(d["at"]),
                   seconds=float(d.get("seconds", 0.0)), label=d.get("label"),
                   volumes=int(d.get("volumes", 0)), destroyed=int(d.get("destroyed", 0)),
                   kept_held=tuple(d.get("kept_held", ())),
                   prune_skipped=d.get("prune_skipped"), error=d.get("error"))


@dataclass
class PolicyRuntime:
    """One policy's live state; ``spec`` is its definition."""

    spec: PolicySpec
    activity_id: str | None = None
    #: Start of the last run that took (or was told to skip) its snapshot.
    last_run_at: float | None = None
    next_run_at: float | None = None
    runs: int = 0
    #: Runs that failed (server unreachable, a command refused), since it was defined.
    failures: int = 0
    skipped: int = 0
    last_result: RunResult | None = None
    #: The newest snapshot label it made, and when.
    newest: tuple[str, float] | None = None
    #: Its labels now on the server (label -> creation), known once a run listed them:
    #: a tree's retention works on these without listing every snapshot of every member.
    labels: dict[str, float] | None = None
    #: A prune by label was refused: the next run lists the snapshots again.
    relist: bool = False
    #: A reload changed the schedule: the wait is computed again.
    rescheduled: bool = False
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kept(self) -> int | None:
        """Its snapshot labels on the server (for a tree, one label is one atomic
        snapshot of every member); None until a run has listed them."""
        return None if self.labels is None else len(self.labels)

    def remembered(self) -> dict[str, Any]:
        return {"last_run_at": self.last_run_at, "runs": self.runs, "failures": self.failures,
                "skipped": self.skipped,
                "last_result": self.last_result.to_json() if self.last_result else None}

    def restore(self, params: Mapping[str, Any]) -> None:
        """Facts an earlier run of its activity remembered (a daemon restart)."""
        self.last_run_at = params.get("last_run_at")
        self.runs = int(params.get("runs", 0))
        self.failures = int(params.get("failures", 0))
        self.skipped = int(params.get("skipped", 0))
        last = params.get("last_result")
        self.last_result = RunResult.from_json(last) if isinstance(last, Mapping) else None

    def redefine(self, spec: PolicySpec) -> None:
        """A reload changed the definition (same server, volume and kind): its next run
        uses it; the labels known stay (a new prefix lists them again)."""
        if spec.prefix != self.spec.prefix or spec.selection != self.spec.selection:
            self.labels = None
        self.spec = spec
