"""Grid retention: which of a relationship's snapshots to destroy, as plain logic.

A grid is a list of tiers ``AGE:EVERY``: snapshots younger than ``AGE`` are thinned
to one per ``EVERY`` (``all`` keeps every one), and anything older than the last
tier goes. ``["1h:all", "1d:1h", "1w:1d"]`` keeps everything for an hour, hourly
snapshots for a day and daily ones for a week.

Buckets are aligned to absolute time (``creation // EVERY``) and the oldest
snapshot of a bucket is the one kept, so a snapshot that is kept today is still
the one kept tomorrow: thinning never flips between candidates.

Never destroyed: snapshots this relationship did not make (other label prefix),
snapshots whose guid is protected (the common base of a slave or a backup), and the
newest snapshot of the volume.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ...parsing import ConfigError, parse_duration
from ...storage.values import Snapshot


@dataclass(frozen=True)
class Tier:
    age: float
    every: float | None  # None: keep all


def parse_grid(spec: Sequence[str], key: str = "retention") -> list[Tier]:
    tiers: list[Tier] = []
    for i, item in enumerate(spec):
        if not isinstance(item, str) or ":" not in item:
            raise ConfigError(f"{key}[{i}]", 'must look like "1d:1h" (keep one per hour '
                              'for a day) or "1h:all"')
        age_text, _, every_text = item.partition(":")
        age = parse_duration(age_text, f"{key}[{i}]")
        every = None if every_text.strip() == "all" else parse_duration(every_text,
                                                                         f"{key}[{i}]")
        if every is not None and every <= 0:
            raise ConfigError(f"{key}[{i}]", "the interval must be positive")
        if tiers and age <= tiers[-1].age:
            raise ConfigError(f"{key}[{i}]", "tiers must cover increasing ages")
        tiers.append(Tier(age, every))
    if not tiers:
        raise ConfigError(key, "needs at least one tier")
    return tiers


def to_destroy(snapshots: Sequence[Snapshot], grid: Sequence[Tier], *, now: float,
               prefix: str, protected: Collection[str] = ()) -> list[Snapshot]:
    """The snapshots (of one volume, oldest first) that the grid no longer keeps."""
    if not snapshots:
        return []
    newest = snapshots[-1]
    doomed = []
    kept_buckets: set[tuple[int, int]] = set()
    for snap in snapshots:  # oldest first: the first one seen in a bucket is kept
        # a copy the generic path made is protected by its origin, the master's guid
        if not snap.label.startswith(prefix) or snap is newest or \
                not snap.identities.isdisjoint(protected):
            continue
        tier_index = _tier_of(grid, now - snap.creation)
        if tier_index is None:
            doomed.append(snap)
            continue
        every = grid[tier_index].every
        if every is None:
            continue
        bucket = (tier_index, int(snap.creation // every))
        if bucket in kept_buckets:
            doomed.append(snap)
        else:
            kept_buckets.add(bucket)
    return doomed


def _tier_of(grid: Sequence[Tier], age: float) -> int | None:
    for i, tier in enumerate(grid):
        if age <= tier.age:
            return i
    return None
