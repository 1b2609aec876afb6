"""What a relationship's retention destroys, per place, and why: one document for both
the dry run and the prune itself.

A ``TargetPlan`` is one place (the master, a slave, an object store) with the grid and
``keep_min`` that apply there, every snapshot (or backup) that goes with its reason, how
many of the relationship's own stay, and, when nothing may be pruned there now, why
not (``blocked``). The scheduled retention after a cycle and the operator's
``POST /v1/relationships/{name}/prune`` build it with the same functions, so a dry run
shows what a prune at that moment does; the prune activity then gets the very names
and guids shown (``snapshot_prune``, ``bucket_prune``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ...storage.values import Snapshot
from ..logic.retention import Tier, Verdict, owned, prune_plan


class Place(StrEnum):
    MASTER = "master"
    SLAVE = "slave"
    STORE = "store"


@dataclass(frozen=True)
class TargetPlan:
    place: Place
    #: The server, or the object store.
    name: str
    #: The volume (a tree's root) pruned there.
    volume: str
    grid: tuple[str, ...]
    keep_min: int
    verdicts: tuple[Verdict, ...] = ()
    #: The relationship's own snapshots (backups) that stay.
    kept: int = 0
    #: Why nothing is pruned there now (None: the verdicts go).
    blocked: str | None = None

    def to_json(self, activity: str | None = None) -> dict[str, Any]:
        return {"place": str(self.place), "name": self.name, "volume": self.volume,
                "retention": list(self.grid), "keep_min": self.keep_min,
                "destroy": [v.to_json() for v in self.verdicts], "kept": self.kept,
                "blocked": self.blocked, "activity": activity}

    @property
    def names(self) -> list[str]:
        return [v.snapshot.name for v in self.verdicts]

    @property
    def guids(self) -> list[str]:
        return [v.snapshot.guid for v in self.verdicts]


def grid_text(grid: Sequence[Tier]) -> tuple[str, ...]:
    return tuple(t.text for t in grid)


def volume_plan(place: Place, name: str, volume: str, snapshots: Sequence[Snapshot],
                grid: Sequence[Tier], *, now: float, prefix: str, keep_min: int,
                protected: Collection[str], blocked: str | None = None) -> TargetPlan:
    """One volume's plan; a blocked place lists nothing to destroy."""
    verdicts = () if blocked else tuple(prune_plan(
        snapshots, grid, now=now, prefix=prefix, protected=protected, keep_min=keep_min))
    ours = sum(1 for s in snapshots if owned(s.label, prefix))
    return TargetPlan(place, name, volume, grid_text(grid), keep_min, verdicts,
                      ours - len(verdicts), blocked)


def blocked_plan(place: Place, name: str, volume: str, grid: Sequence[Tier] | Sequence[str],
                 keep_min: int, why: str) -> TargetPlan:
    text = tuple(t if isinstance(t, str) else t.text for t in grid)
    return TargetPlan(place, name, volume, text, keep_min, blocked=why)
