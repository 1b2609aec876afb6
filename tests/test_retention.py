"""Grid retention as pure logic: tiers, stability, and what is never destroyed."""

from __future__ import annotations

import pytest

from cerssd.parsing import ConfigError
from cerssd.replication.logic.retention import parse_grid, to_destroy
from cerssd.storage.values import Snapshot

H, D = 3600, 86400
NOW = 1_800_000_000 - (1_800_000_000 % D)  # midnight, so buckets are easy to reason about
GRID = parse_grid(["1h:all", "1d:1h", "1w:1d"])


def snap(label: str, age: float, guid: str | None = None) -> Snapshot:
    return Snapshot(name=f"p/v@{label}", volume="p/v", label=label, guid=guid or label,
                    creation=int(NOW - age), used=0, referenced=0, userrefs=0)


def every_15_minutes(hours: float, prefix: str = "rel-") -> list[Snapshot]:
    count = int(hours * 4)
    return [snap(f"{prefix}{i}", (count - i) * 900) for i in range(count)]


def labels(snaps: list[Snapshot]) -> set[str]:
    return {s.label for s in snaps}


def test_recent_snapshots_all_kept() -> None:
    snaps = every_15_minutes(1)
    assert to_destroy(snaps, GRID, now=NOW, prefix="rel-") == []


def test_hourly_tier_keeps_one_per_hour() -> None:
    snaps = every_15_minutes(24)
    doomed = to_destroy(snaps, GRID, now=NOW, prefix="rel-")
    kept = [s for s in snaps if s not in doomed]
    older_than_1h = [s for s in kept if NOW - s.creation > H]
    hours = {s.creation // H for s in older_than_1h}
    assert len(older_than_1h) == len(hours)  # exactly one per hour bucket
    assert all(NOW - s.creation <= H for s in kept if s not in older_than_1h)


def test_older_than_last_tier_destroyed_but_newest_never() -> None:
    old = [snap("rel-a", 8 * D), snap("rel-b", 9 * D)]
    assert labels(to_destroy(old, GRID, now=NOW, prefix="rel-")) == {"rel-a"}


def test_foreign_and_protected_snapshots_survive() -> None:
    snaps = [snap("manual", 30 * D), snap("rel-base", 20 * D, guid="g-base"),
             snap("rel-old", 10 * D), snap("rel-new", 0)]
    doomed = to_destroy(snaps, GRID, now=NOW, prefix="rel-", protected={"g-base"})
    assert labels(doomed) == {"rel-old"}


def test_thinning_is_stable_over_time() -> None:
    snaps = every_15_minutes(48)
    first = to_destroy(snaps, GRID, now=NOW, prefix="rel-")
    kept = [s for s in snaps if s not in first]
    later = to_destroy(kept, GRID, now=NOW + 2 * H, prefix="rel-")
    # two hours on, only snapshots that aged into a coarser tier may go
    assert later, "some hourly snapshots age into the daily tier"
    for s in later:
        assert _tier(NOW - s.creation) != _tier(NOW + 2 * H - s.creation), s.label
    assert to_destroy([s for s in kept if s not in later], GRID, now=NOW + 2 * H,
                      prefix="rel-") == []  # and a second pass at the same time is a no-op


def _tier(age: float) -> int:
    return next((i for i, t in enumerate(GRID) if age <= t.age), len(GRID))


@pytest.mark.parametrize("spec", [[], ["1h"], ["1h:0"], ["1d:1h", "1h:all"], ["x:all"]])
def test_bad_grids_name_the_key(spec: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_grid(spec, "relationships.r1.retention")
    assert info.value.key.startswith("relationships.r1.retention")
