"""Grid retention as pure logic: tiers, stability, and what is never destroyed."""

from __future__ import annotations

import time

import pytest

from cerssd.parsing import ConfigError
from cerssd.replication.logic.retention import (
    KeepRule,
    Rule,
    owned,
    parse_grid,
    parse_keep_min,
    prune_decision,
    prune_plan,
    to_destroy,
)
from cerssd.storage.values import Snapshot

H, D = 3600, 86400
NOW = 1_800_000_000 - (1_800_000_000 % D)  # midnight, so buckets are easy to reason about
GRID = parse_grid(["1h:all", "1d:1h", "1w:1d"])


def snap(label: str, age: float, guid: str | None = None) -> Snapshot:
    return Snapshot(name=f"p/v@{label}", volume="p/v", label=label, guid=guid or label,
                    creation=int(NOW - age), used=0, referenced=0, userrefs=0)


def stamp(age: float, prefix: str = "rel-") -> str:
    """A label as a relationship makes it: its prefix and the UTC time."""
    return prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW - age))


def own(age: float, guid: str | None = None) -> Snapshot:
    return snap(stamp(age), age, guid)


def every_15_minutes(hours: float, prefix: str = "rel-") -> list[Snapshot]:
    count = int(hours * 4)
    return [snap(stamp((count - i) * 900, prefix), (count - i) * 900) for i in range(count)]


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
    old = [own(9 * D), own(8 * D)]
    assert labels(to_destroy(old, GRID, now=NOW, prefix="rel-")) == {old[0].label}


def test_foreign_and_protected_snapshots_survive() -> None:
    snaps = [snap("manual", 30 * D), own(20 * D, guid="g-base"),
             own(10 * D), own(0)]
    doomed = to_destroy(snaps, GRID, now=NOW, prefix="rel-", protected={"g-base"})
    assert labels(doomed) == {snaps[2].label}


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


def test_keep_min_spares_the_newest_of_what_the_grid_drops() -> None:
    """A relationship paused for longer than its grid covers: the grid would leave the
    newest alone; keep_min keeps the newest N of cerssd's, foreign ones not counted."""
    snaps = [snap("manual", 40 * D), *(own(age) for age in (30 * D, 20 * D, 10 * D, 9 * D))]
    assert len(to_destroy(snaps, GRID, now=NOW, prefix="rel-")) == 3
    doomed = to_destroy(snaps, GRID, now=NOW, prefix="rel-", keep_min=3)
    assert labels(doomed) == {snaps[1].label}  # the oldest of the four goes
    assert to_destroy(snaps, GRID, now=NOW, prefix="rel-", keep_min=10) == []


def test_keep_min_counts_protected_snapshots_as_kept() -> None:
    snaps = [own(30 * D), own(20 * D, guid="base"), own(10 * D), own(9 * D)]
    doomed = to_destroy(snaps, GRID, now=NOW, prefix="rel-", protected={"base"}, keep_min=3)
    assert labels(doomed) == {snaps[0].label}  # base and newest kept, one more spared


@pytest.mark.parametrize("label", ["rel-keep", "rel-20261207T014700Z-x", "rel-",
                                   "rel-failover-now", "other-20261207T014700Z"])
def test_labels_cerssd_did_not_make_are_never_destroyed(label: str) -> None:
    snaps = [snap(label, 30 * D), own(20 * D), own(0)]
    assert labels(to_destroy(snaps, GRID, now=NOW, prefix="rel-")) == {snaps[1].label}


@pytest.mark.parametrize("suffix", ["20261207T014700Z", "20261207T014700Z-2",
                                    "failover-20261207T014700Z", "failover-20261207T014700Z-3"])
def test_labels_cerssd_makes_are_its_own(suffix: str) -> None:
    assert owned("rel-" + suffix, "rel-") and owned("anything", None)
    assert not owned("rel-" + suffix, "other-")


def test_each_verdict_says_why() -> None:
    snaps = [own(9 * D), *every_15_minutes(3)]
    plan = prune_plan(snaps, GRID, now=NOW, prefix="rel-")
    beyond = plan[0]
    assert beyond.snapshot is snaps[0] and beyond.rule is Rule.BEYOND_GRID
    assert beyond.tier == "1w:1d" and beyond.age == 9 * D
    assert beyond.reason() == "older than the grid's last tier (1w:1d): 9d old"
    thinned = plan[1:]
    assert thinned and all(v.rule is Rule.THINNED and v.tier == "1d:1h" for v in thinned)
    kept = {s.label for s in snaps} - {v.snapshot.label for v in plan}
    assert all(v.kept_instead in kept for v in thinned)
    assert thinned[0].to_json()["reason"].startswith("tier 1d:1h keeps one per interval: ")


@pytest.mark.parametrize("value", [0, -1, True, "2", 1.5, 10**9])
def test_keep_min_below_one_or_not_a_number_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keep_min(value, "relationships.r1.keep_min")
    assert info.value.key == "relationships.r1.keep_min"


def test_a_decision_goes_as_the_plan_and_says_what_stays_and_why() -> None:
    """The dry runs' ``keep``: a foreign snapshot, one keep_min spares, a base and the
    newest the grid would drop; what goes is exactly ``prune_plan``'s."""
    snaps = [snap("manual", 40 * D), own(30 * D), own(20 * D, guid="base"), own(12 * D),
             own(10 * D), own(9 * D)]
    decision = prune_decision(snaps, GRID, now=NOW, prefix="rel-", protected={"base"},
                              keep_min=3)
    assert decision.doomed == prune_plan(snaps, GRID, now=NOW, prefix="rel-",
                                         protected={"base"}, keep_min=3)
    assert [v.snapshot for v in decision.doomed] == [snaps[1], snaps[3]]
    why = {k.snapshot.label: k.rule for k in decision.kept}
    assert why == {"manual": KeepRule.NOT_OURS, snaps[2].label: KeepRule.BASE,
                   snaps[4].label: KeepRule.KEEP_MIN, snaps[5].label: KeepRule.NEWEST}
    assert [k.snapshot for k in decision.kept] == [snaps[0], snaps[2], snaps[4], snaps[5]]
    text = {k.snapshot.label: k.to_json()["reason"] for k in decision.kept}
    assert text["manual"].startswith("not cerssd's: its label is not 'rel-'")
    assert text[snaps[4].label].startswith("keep_min 3: ")
    # what the grid keeps anyway is not listed: everything recent here
    recent = every_15_minutes(2)
    assert prune_decision(recent, GRID, now=NOW, prefix="rel-").kept == []
