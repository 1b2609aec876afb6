"""Grid retention: which of a relationship's snapshots to destroy, and why, as plain logic.

A grid is a list of tiers ``AGE:EVERY``: snapshots younger than ``AGE`` are thinned
to one per ``EVERY`` (``all`` keeps every one), and anything older than the last
tier goes. ``["1h:all", "1d:1h", "1w:1d"]`` keeps everything for an hour, hourly
snapshots for a day and daily ones for a week.

Buckets are aligned to absolute time (``creation // EVERY``) and the oldest
snapshot of a bucket is the one kept, so a snapshot that is kept today is still
the one kept tomorrow: thinning never flips between candidates.

Never destroyed, whatever the grid says:

* snapshots cerssd did not make: a label counts as the relationship's only when it is
  the prefix followed by what cerssd puts there (``owned``: a UTC time such as
  ``20261207T014700Z``, a failover's ``failover-`` time, a ``-N`` counter). An operator's
  ``cerssd-data-keep`` is not taken for a cycle snapshot because it shares the prefix;
* snapshots whose guid is protected (the common base of a slave or a backup);
* the newest snapshot of the volume;
* the newest ``keep_min`` of the relationship's own snapshots: when the grid would
  leave fewer (a relationship paused for longer than its grid covers, a clock jump),
  the newest of the doomed ones are spared until ``keep_min`` remain.

Every doomed snapshot comes with its reason (``Verdict``): the rule, the tier and its
age, and for a thinned one the snapshot kept for its interval instead. A dry run shows
exactly these, and the real prune destroys exactly these. ``prune_decision`` also says
what stays that the grid would drop, or that is not cerssd's, and why (``Kept``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ...parsing import ConfigError, parse_duration
from ...storage.values import Snapshot

#: What cerssd puts after a relationship's prefix (``cycle_label``, failovers).
OWN_SUFFIX = re.compile(r"(?:failover-)?\d{8}T\d{6}Z(?:-\d+)?")
#: ``keep_min`` when the config says nothing: the newest of cerssd's snapshots (the rule
#: that held before ``keep_min`` existed, so an upgrade prunes nothing differently).
DEFAULT_KEEP_MIN = 1
MAX_KEEP_MIN = 100_000


@dataclass(frozen=True)
class Tier:
    age: float
    every: float | None  # None: keep all
    #: As written (``"1d:1h"``): what a prune's reason names.
    text: str = field(default="", compare=False)


class Rule(StrEnum):
    """Why the grid lets a snapshot go."""

    #: Older than the grid's last tier.
    BEYOND_GRID = "beyond-grid"
    #: Another snapshot is kept for its interval of its tier.
    THINNED = "thinned"


@dataclass(frozen=True)
class Verdict:
    """One snapshot a prune destroys, and why."""

    snapshot: Snapshot
    rule: Rule
    age: float
    #: The tier that thins it (``"1d:1h"``), or the grid's last one for ``beyond-grid``.
    tier: str
    #: For ``thinned``: the label kept for the same interval.
    kept_instead: str | None = None

    def reason(self) -> str:
        if self.rule is Rule.BEYOND_GRID:
            return f"older than the grid's last tier ({self.tier}): {_age(self.age)} old"
        return (f"tier {self.tier} keeps one per interval: {self.kept_instead} is kept "
                f"for this one ({_age(self.age)} old)")

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"snapshot": s.name, "guid": s.guid, "created": s.creation,
                "age_seconds": round(self.age), "rule": str(self.rule), "tier": self.tier,
                "kept_instead": self.kept_instead, "reason": self.reason()}


def owned(label: str, prefix: str | None) -> bool:
    """Whether a snapshot label is one cerssd made under ``prefix`` (None: every label,
    for an operator's explicit prune of a bucket)."""
    if prefix is None:
        return True
    return label.startswith(prefix) and OWN_SUFFIX.fullmatch(label[len(prefix):]) is not None


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
        tiers.append(Tier(age, every, item.strip()))
    if not tiers:
        raise ConfigError(key, "needs at least one tier")
    return tiers


def parse_keep_min(value: Any, key: str) -> int:
    """``keep_min``: a whole number of snapshots, at least 1 (the newest is always kept;
    0 would read as "the grid may take them all", which it never may)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, "must be a whole number of snapshots (at least 1)")
    if not 1 <= value <= MAX_KEEP_MIN:
        raise ConfigError(key, f"must be at least 1 and at most {MAX_KEEP_MIN}, not {value}")
    return value


class KeepRule(StrEnum):
    """Why a snapshot stays that a dry run names (the grid's own keeps are not listed)."""

    #: Not the relationship's (policy's) label: never pruned.
    NOT_OURS = "not-ours"
    #: The newest snapshot of the volume, which the grid would drop.
    NEWEST = "newest"
    #: A slave's or store's base, which the grid would drop.
    BASE = "base"
    #: The grid would drop it, but fewer than ``keep_min`` would stay.
    KEEP_MIN = "keep-min"


@dataclass(frozen=True)
class Kept:
    """One snapshot a prune leaves although the grid alone, or its label, says otherwise."""

    snapshot: Snapshot
    rule: KeepRule
    age: float
    #: The prefix (``not-ours``) or the ``keep_min`` (``keep-min``) that keeps it.
    detail: str = ""

    def reason(self) -> str:
        if self.rule is KeepRule.NOT_OURS:
            return (f"not cerssd's: its label is not {self.detail!r} followed by a UTC "
                    "time, so no prune ever takes it")
        if self.rule is KeepRule.NEWEST:
            return "the newest snapshot of the volume is never destroyed"
        if self.rule is KeepRule.BASE:
            return "a slave's or store's newest common base (the next transfer starts here)"
        return (f"keep_min {self.detail}: the grid would drop it, but then fewer than "
                f"{self.detail} of cerssd's own would stay")

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {"snapshot": s.name, "guid": s.guid, "created": s.creation,
                "age_seconds": round(self.age), "rule": str(self.rule),
                "reason": self.reason()}


@dataclass(frozen=True)
class Decision:
    """A prune's decision on one volume: what goes (with why), and what stays that the
    grid would drop or that is not cerssd's (with why)."""

    doomed: list[Verdict]
    kept: list[Kept]


def prune_decision(snapshots: Sequence[Snapshot], grid: Sequence[Tier], *, now: float,
                   prefix: str | None, protected: Collection[str] = (),
                   keep_min: int = DEFAULT_KEEP_MIN) -> Decision:
    """The snapshots (of one volume, oldest first) the grid no longer keeps, with why,
    and those spared (``Kept``): the one decision both a dry run and a prune use."""
    if not snapshots:
        return Decision([], [])
    newest = snapshots[-1]
    doomed: list[Verdict] = []
    spared: list[Kept] = []
    kept_buckets: dict[tuple[int, int], str] = {}
    ours = 0
    for snap in snapshots:  # oldest first: the first one seen in a bucket is kept
        age = now - snap.creation
        if not owned(snap.label, prefix):
            spared.append(Kept(snap, KeepRule.NOT_OURS, age, prefix or ""))
            continue
        ours += 1
        tier_index = _tier_of(grid, age)
        every = grid[tier_index].every if tier_index is not None else None
        bucket = (tier_index, int(snap.creation // every)) if tier_index is not None \
            and every is not None else None
        # a copy the generic path made is protected by its origin, the master's guid
        if snap is newest or not snap.identities.isdisjoint(protected):
            if tier_index is None or (bucket is not None and bucket in kept_buckets):
                spared.append(Kept(snap, KeepRule.NEWEST if snap is newest
                                   else KeepRule.BASE, age))
            continue
        if tier_index is None:
            doomed.append(Verdict(snap, Rule.BEYOND_GRID, age, grid[-1].text))
            continue
        if bucket is None:
            continue
        if bucket in kept_buckets:
            doomed.append(Verdict(snap, Rule.THINNED, age, grid[tier_index].text,
                                  kept_buckets[bucket]))
        else:
            kept_buckets[bucket] = snap.label
    short = keep_min - (ours - len(doomed))
    if short > 0:
        cut = max(0, len(doomed) - short)
        spared += [Kept(v.snapshot, KeepRule.KEEP_MIN, v.age, str(keep_min))
                   for v in doomed[cut:]]
        doomed = doomed[:cut]
        order = {id(snap): i for i, snap in enumerate(snapshots)}
        spared.sort(key=lambda k: order[id(k.snapshot)])
    return Decision(doomed, spared)


def prune_plan(snapshots: Sequence[Snapshot], grid: Sequence[Tier], *, now: float,
               prefix: str | None, protected: Collection[str] = (),
               keep_min: int = DEFAULT_KEEP_MIN) -> list[Verdict]:
    """The snapshots (of one volume, oldest first) the grid no longer keeps, with why."""
    return prune_decision(snapshots, grid, now=now, prefix=prefix, protected=protected,
                          keep_min=keep_min).doomed


def to_destroy(snapshots: Sequence[Snapshot], grid: Sequence[Tier], *, now: float,
               prefix: str | None, protected: Collection[str] = (),
               keep_min: int = DEFAULT_KEEP_MIN) -> list[Snapshot]:
    """The snapshots (of one volume, oldest first) that the grid no longer keeps."""
    return [v.snapshot for v in prune_plan(snapshots, grid, now=now, prefix=prefix,
                                           protected=protected, keep_min=keep_min)]


def _tier_of(grid: Sequence[Tier], age: float) -> int | None:
    for i, tier in enumerate(grid):
        if age <= tier.age:
            return i
    return None


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}{_rest(seconds % size, unit)}"
    return f"{seconds}s"


def _rest(seconds: int, unit: str) -> str:
    """The next smaller unit, once: ``1d3h``, ``2h5m``, ``4m10s``."""
    nxt = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
    n = seconds // nxt[1]
    return f"{n}{nxt[0]}" if n else ""
