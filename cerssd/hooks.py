"""Commands an operator runs around a snapshot (quiesce an application, flush a database).

A relationship's or a snapshot policy's ``hooks`` table names a ``pre`` and a ``post``
command (an argv list: never run through a shell unless the operator writes one), a
``timeout`` and what a failing ``pre`` means (``on_pre_failure``: ``skip`` the snapshot,
the default, or ``continue``). Both callers take their snapshots through
``around_snapshot`` so the rules are the same wherever a snapshot is made.

Interface fixed here first (issue 17); the implementation follows.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_HOOK_TIMEOUT = 30.0


class PreFailure(enum.Enum):
    """What a failing (or timed-out) ``pre`` hook means for the snapshot."""

    SKIP = "skip"
    CONTINUE = "continue"


@dataclass(frozen=True)
class Hooks:
    """A ``hooks`` table, parsed: argv lists, never shell strings."""

    pre: tuple[str, ...] | None = None
    post: tuple[str, ...] | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT
    on_pre_failure: PreFailure = PreFailure.SKIP


@dataclass(frozen=True)
class HookRun:
    """One hook's run, for the log and the activity's result."""

    stage: str  # "pre" | "post"
    argv: tuple[str, ...]
    exit_status: int | None  # None: timed out or could not start
    output: str  # combined stdout/stderr, bounded
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "argv": list(self.argv), "exit_status": self.exit_status,
                "output": self.output, "seconds": round(self.seconds, 3),
                "timed_out": self.timed_out}


class SnapshotSkipped(Exception):
    """The ``pre`` hook failed and ``on_pre_failure = "skip"``: no snapshot was taken."""

    def __init__(self, runs: Sequence[HookRun]) -> None:
        super().__init__("pre hook failed: snapshot skipped")
        self.runs = tuple(runs)


def parse_hooks(value: Any, key: str) -> Hooks | None:
    """Parse a ``hooks`` table (``key`` is its dotted name for errors); None when absent."""
    if value is None:
        return None
    raise NotImplementedError("hooks: parser not built yet")


async def around_snapshot(hooks: Hooks | None, *, volumes: Sequence[str], label: str,
                          take: Callable[[], Awaitable[T]]) -> tuple[T, tuple[HookRun, ...]]:
    """Run ``pre``, ``take()`` the snapshot(s), then ``post`` (always, once pre ran).

    Environment of both hooks: ``CERSSD_VOLUMES`` (space-separated), ``CERSSD_VOLUME``
    (the first), ``CERSSD_SNAPSHOT_LABEL``, ``CERSSD_STAGE``. Raises ``SnapshotSkipped``
    when ``pre`` fails and the policy is ``skip``.
    """
    if hooks is None:
        return await take(), ()
    raise NotImplementedError("hooks: runner not built yet")
