"""Replication schedules as pure logic: cron fields, the next cycle, catch-up, errors."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta

import pytest

from cerssd.parsing import ConfigError, parse_duration
from cerssd.replication.logic.schedule import (
    Cron,
    Interval,
    describe,
    parse_schedule,
    spread_offset,
)

KEY = "relationships.db"


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
       second: float = 0) -> float:
    whole = int(second)
    return datetime(year, month, day, hour, minute, whole, tzinfo=UTC).timestamp() + (
        second - whole)


def when(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def upcoming(cron: Cron, start: float, count: int) -> Iterator[datetime]:
    """The next ``count`` slots after ``start``, as a fresh daemon would see them."""
    t = start
    for _ in range(count):
        t = cron.next_after(None, t)
        yield when(t)


def brute_force_matches(cron: Cron, dt: datetime) -> bool:
    """Vixie cron's matching rule, written out plainly as the reference."""
    weekday = dt.isoweekday() % 7
    dom, dow = dt.day in cron.days, weekday in cron.weekdays
    day_ok = (dom or dow) if cron.days_or_weekdays else (dom and dow)
    return (dt.minute in cron.minutes and dt.hour in cron.hours
            and dt.month in cron.months and day_ok)


# --- field forms --------------------------------------------------------------------


def test_star_selects_the_whole_range() -> None:
    c = Cron("* * * * *")
    assert c.minutes == set(range(60))
    assert c.hours == set(range(24))
    assert c.days == set(range(1, 32))
    assert c.months == set(range(1, 13))
    assert c.weekdays == set(range(7))


def test_single_values() -> None:
    c = Cron("5 3 17 8 2")
    assert [c.minutes, c.hours, c.days, c.months, c.weekdays] == [
        {5}, {3}, {17}, {8}, {2}]


def test_ranges_and_lists() -> None:
    c = Cron("1,5,10-12 8-17 1-3,15 6-8 1-5")
    assert c.minutes == {1, 5, 10, 11, 12}
    assert c.hours == set(range(8, 18))
    assert c.days == {1, 2, 3, 15}
    assert c.months == {6, 7, 8}
    assert c.weekdays == {1, 2, 3, 4, 5}


def test_steps_over_star_and_ranges() -> None:
    c = Cron("*/15 */6 */10 */5 */2")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {0, 6, 12, 18}
    assert c.days == {1, 11, 21, 31}  # day-of-month counts from 1
    assert c.months == {1, 6, 11}
    assert c.weekdays == {0, 2, 4, 6}
    assert Cron("10-30/10,59 9-17/4 * * *").minutes == {10, 20, 30, 59}
    assert Cron("10-30/10 9-17/4 * * *").hours == {9, 13, 17}
    assert Cron("0-10/100 * * * *").minutes == {0}  # a step past the end keeps the start


def test_month_and_weekday_names_case_insensitive() -> None:
    c = Cron("0 0 * jan,MAR-May,Dec mon-fri")
    assert c.months == {1, 3, 4, 5, 12}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert Cron("0 0 * * sun,sat").weekdays == {0, 6}
    assert Cron("0 0 * jan-dec/3 *").months == {1, 4, 7, 10}


def test_weekday_seven_is_sunday() -> None:
    assert Cron("0 0 * * 7").weekdays == {0}
    assert Cron("0 0 * * 5-7").weekdays == {5, 6, 0}
    assert Cron("0 0 * * 0,7").weekdays == {0}


def test_expression_whitespace_is_normalised() -> None:
    c = Cron("  */5\t*  * *   * ")
    assert c.expression == "*/5 * * * *"
    assert c == Cron("*/5 * * * *")
    assert repr(c) == "Cron(expression='*/5 * * * *')"


def test_cron_is_frozen() -> None:
    c = Cron("0 * * * *")
    with pytest.raises(FrozenInstanceError):
        c.expression = "1 * * * *"  # type: ignore[misc]


# --- invalid expressions ------------------------------------------------------------


@pytest.mark.parametrize(("expression", "words"), [
    ("60 * * * *", ("minute field", "60 is out of range 0-59")),
    ("* 24 * * *", ("hour field", "24 is out of range 0-23")),
    ("* * 0 * *", ("day-of-month field", "0 is out of range 1-31")),
    ("* * 32 * *", ("day-of-month field", "32 is out of range 1-31")),
    ("* * * 13 *", ("month field", "13 is out of range 1-12")),
    ("* * * * 8", ("day-of-week field", "8 is out of range 0-7")),
    ("*/0 * * * *", ("minute field", "step", "at least 1")),
    ("*/x * * * *", ("minute field", "step")),
    ("5/15 * * * *", ("minute field", "a step needs * or a range", "5-59/15")),
    ("30-10 * * * *", ("minute field", "runs backwards")),
    ("* * * * sat-sun", ("day-of-week field", "runs backwards")),
    ("1,,2 * * * *", ("minute field", "empty element")),
    ("* * * foo *", ("month field", "'foo' is not a number 1-12 or a name", "jan")),
    ("* * * * monday", ("day-of-week field", "'monday'")),
    ("* jan * * *", ("hour field", "'jan' is not a number 0-23")),
    ("-5 * * * *", ("minute field", "'' is not a number")),
    ("* * * *", ("expected 5 fields", "got 4")),
    ("* * * * * *", ("expected 5 fields", "got 6")),
    ("", ("expected 5 fields", "got 0")),
    ("@daily", ("expected 5 fields", "got 1")),
])
def test_invalid_cron_names_key_and_field(expression: str, words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule(None, expression, KEY)
    assert err.value.key == f"{KEY}.cron"
    for word in words:
        assert word in err.value.problem


@pytest.mark.parametrize("expression", [
    "0 0 31 2 *", "0 0 30 2 *", "0 0 30,31 feb *", "0 0 31 4,6,9,11 *",
    "0 0 31 2 */2",  # a day-of-week starting with * does not relax day-of-month
])
def test_impossible_date_rejected_at_parse_time(expression: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule(None, expression, KEY)
    assert err.value.key == f"{KEY}.cron"
    assert "no date ever matches" in err.value.problem
    assert "day-of-month" in err.value.problem and "month field" in err.value.problem


@pytest.mark.parametrize("expression", [
    "0 0 29 2 *",  # leap years only, still possible
    "0 0 31 2 mon",  # the OR rule: every Monday in February
    "0 0 31 1-2 *",
])
def test_rare_but_possible_dates_accepted(expression: str) -> None:
    assert isinstance(parse_schedule(None, expression, KEY), Cron)


def test_direct_construction_uses_default_key() -> None:
    with pytest.raises(ConfigError) as err:
        Cron("61 * * * *")
    assert err.value.key == "cron"
    with pytest.raises(ConfigError) as err:
        Interval(0)
    assert err.value.key == "interval"


# --- parse_schedule -----------------------------------------------------------------


def test_parse_interval() -> None:
    assert parse_schedule("5m", None, KEY) == Interval(300.0)
    assert parse_schedule(90, None, KEY) == Interval(90.0)
    assert parse_schedule(0.5, None, KEY) == Interval(0.5)


def test_parse_cron() -> None:
    assert parse_schedule(None, "*/5 * * * *", KEY) == Cron("*/5 * * * *")


def test_neither_interval_nor_cron() -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule(None, None, KEY)
    assert err.value.key == KEY
    assert "interval" in err.value.problem and "cron" in err.value.problem


def test_both_interval_and_cron() -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule("5m", "*/5 * * * *", KEY)
    assert err.value.key == KEY
    assert "not both" in err.value.problem


@pytest.mark.parametrize("interval", ["0s", 0, "-5m", -1, "soon", True, float("inf"),
                                      float("nan"), [5]])
def test_bad_interval_names_interval_key(interval: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule(interval, None, KEY)
    assert err.value.key == f"{KEY}.interval"


@pytest.mark.parametrize("cron", [5, ["*/5", "*", "*", "*", "*"], True])
def test_non_string_cron_names_cron_key(cron: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule(None, cron, KEY)
    assert err.value.key == f"{KEY}.cron"
    assert "must be a string" in err.value.problem


# --- Cron.next_after: finding the next slot -----------------------------------------


def test_next_minute_step() -> None:
    c = Cron("*/5 * * * *")
    assert when(c.next_after(None, ts(2025, 6, 10, 12, 3, 10))) == when(ts(2025, 6, 10, 12, 5))
    assert when(c.next_after(None, ts(2025, 6, 10, 12, 4, 59.9))) == when(
        ts(2025, 6, 10, 12, 5))


def test_next_is_strictly_after_now() -> None:
    c = Cron("*/5 * * * *")
    assert c.next_after(None, ts(2025, 6, 10, 12, 5)) == ts(2025, 6, 10, 12, 10)


def test_hour_day_rollover() -> None:
    assert Cron("30 * * * *").next_after(None, ts(2025, 6, 10, 12, 45)) == ts(
        2025, 6, 10, 13, 30)
    assert Cron("0 0 * * *").next_after(None, ts(2025, 6, 10, 23, 59, 59)) == ts(
        2025, 6, 11)
    assert Cron("15 8,20 * * *").next_after(None, ts(2025, 6, 10, 21)) == ts(
        2025, 6, 11, 8, 15)


def test_month_rollover_and_short_months() -> None:
    assert Cron("0 0 1 * *").next_after(None, ts(2025, 1, 31, 12)) == ts(2025, 2, 1)
    # Day 31: April and June have none, so May 31 then July 31.
    c = Cron("0 12 31 * *")
    assert list(upcoming(c, ts(2025, 4, 1), 3)) == [
        when(ts(2025, 5, 31, 12)), when(ts(2025, 7, 31, 12)), when(ts(2025, 8, 31, 12))]


def test_year_rollover() -> None:
    assert Cron("0 0 1 1 *").next_after(None, ts(2025, 6, 1)) == ts(2026, 1, 1)
    assert Cron("59 23 31 12 *").next_after(None, ts(2025, 12, 31, 23, 59, 30)) == ts(
        2026, 12, 31, 23, 59)
    assert Cron("0 6 * jan,jul *").next_after(None, ts(2025, 7, 31, 7)) == ts(2026, 1, 1, 6)


def test_month_names_in_search() -> None:
    c = Cron("0 0 1 jul *")
    assert c.next_after(None, ts(2025, 7, 1, 0, 0, 30)) == ts(2026, 7, 1)


def test_leap_day() -> None:
    c = Cron("0 0 29 2 *")
    assert c.next_after(None, ts(2025, 1, 1)) == ts(2028, 2, 29)
    assert c.next_after(None, ts(2024, 2, 29, 0, 0, 30)) == ts(2028, 2, 29)
    assert c.next_after(None, ts(2024, 2, 28, 23, 59)) == ts(2024, 2, 29)
    # 2100 is not a leap year: eight years between leap days.
    assert c.next_after(None, ts(2096, 3, 1)) == ts(2104, 2, 29)


def test_weekdays() -> None:
    friday_evening = ts(2025, 6, 13, 18)  # 2025-06-13 is a Friday
    assert when(friday_evening).isoweekday() == 5
    c = Cron("0 9 * * mon-fri")
    assert c.next_after(None, friday_evening) == ts(2025, 6, 16, 9)  # Monday
    assert Cron("0 0 * * 7").next_after(None, friday_evening) == ts(2025, 6, 15)  # Sunday
    assert Cron("0 0 * * sun").next_after(None, friday_evening) == ts(2025, 6, 15)


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    c = Cron("0 0 1 * mon")
    assert c.days_or_weekdays
    # October 2025: the 1st is a Wednesday; Mondays are 6, 13, 20, 27; Nov 1 is a
    # Saturday and Nov 3 a Monday.
    assert [d.date().isoformat() for d in upcoming(c, ts(2025, 9, 30, 12), 7)] == [
        "2025-10-01", "2025-10-06", "2025-10-13", "2025-10-20", "2025-10-27",
        "2025-11-01", "2025-11-03"]


def test_day_of_month_and_day_of_week_when_one_starts_with_star() -> None:
    c = Cron("0 0 */2 * mon")  # odd days that are Mondays, as in Vixie cron
    assert not c.days_or_weekdays
    days = list(upcoming(c, ts(2025, 1, 1), 12))
    assert all(d.day % 2 == 1 and d.isoweekday() == 1 for d in days)
    assert days[0] == when(ts(2025, 1, 13))
    assert not Cron("0 0 13 * *").days_or_weekdays
    assert not Cron("0 0 * * fri").days_or_weekdays
    assert Cron("0 0 * * fri").next_after(None, ts(2025, 6, 10)) == ts(2025, 6, 13)


@pytest.mark.parametrize("expression", [
    "*/7 */5 * * *", "0,30 9-17 * * mon-fri", "0 0 1,15 * wed", "5 4 */3 * *",
    "0 12 * */2 sun", "59 23 28-31 * *", "0 0 1 * mon",
])
def test_agrees_with_minute_by_minute_reference(expression: str) -> None:
    c = Cron(expression)
    start = ts(2025, 2, 20, 13, 7, 30)
    expected: list[datetime] = []
    day = when(start).replace(hour=0, minute=0, second=0, microsecond=0)
    while len(expected) < 25:  # every minute of every day that could match
        if brute_force_matches(c, day.replace(hour=min(c.hours), minute=min(c.minutes))):
            expected += [t for t in (day + timedelta(minutes=m) for m in range(1440))
                         if t.timestamp() > start and brute_force_matches(c, t)]
        day += timedelta(days=1)
    assert list(upcoming(c, start, 25)) == expected[:25]


@pytest.mark.parametrize(("expression", "now", "expected"), [
    ("0 0 29 2 *", ts(2096, 3, 1), ts(2104, 2, 29)),
    # Feb 29 on a Sunday: 2088 then, 2100 not being a leap year, 2128.
    ("0 0 29 2 */7", ts(2088, 3, 1), ts(2128, 2, 29)),
    ("59 23 31 12 *", ts(2025, 1, 1), ts(2025, 12, 31, 23, 59)),
])
def test_rare_slots_found_fast(expression: str, now: float, expected: float) -> None:
    c = Cron(expression)
    assert c.next_after(None, now) == expected
    best = float("inf")
    for _ in range(5):  # CPU time: a busy machine makes the wall clock wait, not this
        started = time.process_time()
        c.next_after(None, now)
        best = min(best, time.process_time() - started)
    assert best < 0.005


# --- Cron.next_after: catch-up ------------------------------------------------------


def test_cron_first_cycle_waits_for_a_slot() -> None:
    c = Cron("0 * * * *")
    assert c.next_after(None, ts(2025, 6, 10, 12, 20)) == ts(2025, 6, 10, 13)


def test_cron_regular_cycle() -> None:
    c = Cron("0 * * * *")
    last = ts(2025, 6, 10, 12, 0, 2)
    assert c.next_after(last, ts(2025, 6, 10, 12, 0, 30)) == ts(2025, 6, 10, 13)
    assert c.next_after(last, ts(2025, 6, 10, 12, 59, 59)) == ts(2025, 6, 10, 13)


def test_cron_downtime_caught_up_once() -> None:
    c = Cron("0 * * * *")
    last = ts(2025, 6, 9, 12, 0, 2)
    now = ts(2025, 6, 10, 15, 20)  # 27 slots missed
    assert c.next_after(last, now) == now
    # The catch-up cycle ran at `now`: back to the regular slots.
    assert c.next_after(now, now + 45) == ts(2025, 6, 10, 16)


def test_cron_overrun_cycle_caught_up() -> None:
    c = Cron("*/5 * * * *")
    last = ts(2025, 6, 10, 12, 0, 1)
    now = ts(2025, 6, 10, 12, 7)  # the cycle took seven minutes: the 12:05 slot passed
    assert c.next_after(last, now) == now


def test_cron_slot_due_exactly_now() -> None:
    c = Cron("0 * * * *")
    now = ts(2025, 6, 10, 13)
    assert c.next_after(ts(2025, 6, 10, 12, 0, 1), now) == now


def test_cron_early_timer_is_not_a_missed_slot() -> None:
    c = Cron("0 * * * *")
    last = ts(2025, 6, 10, 12, 59, 59.6)  # the 13:00 cycle, fired 0.4 s early
    assert c.next_after(last, ts(2025, 6, 10, 13, 0, 20)) == ts(2025, 6, 10, 14)


def test_cron_clock_stepped_back() -> None:
    c = Cron("0 * * * *")
    now = ts(2025, 6, 10, 12, 20)
    assert c.next_after(now + 3 * 3600, now) == ts(2025, 6, 10, 13)


# --- Interval.next_after ------------------------------------------------------------


def test_interval_first_cycle_is_immediate() -> None:
    now = ts(2025, 6, 10, 12)
    assert Interval(300).next_after(None, now) == now


def test_interval_regular_cycle() -> None:
    last = ts(2025, 6, 10, 12)
    assert Interval(300).next_after(last, last + 10) == last + 300


def test_interval_due_exactly_now() -> None:
    last = ts(2025, 6, 10, 12)
    assert Interval(300).next_after(last, last + 300) == last + 300


def test_interval_downtime_caught_up_once_then_regular() -> None:
    i = Interval(300)
    last = ts(2025, 6, 9, 12)
    now = ts(2025, 6, 10, 15, 3, 17)  # hundreds of intervals missed
    assert i.next_after(last, now) == now
    # Back on the grid (offset 0: every 5 minutes past the hour), at least 150 s later.
    assert i.next_after(now, now + 20) == ts(2025, 6, 10, 15, 10)
    assert i.next_after(ts(2025, 6, 10, 15, 8, 17), ts(2025, 6, 10, 15, 8, 18)) == \
        ts(2025, 6, 10, 15, 15)


def test_interval_overrun_runs_next_cycle_now() -> None:
    last = ts(2025, 6, 10, 12)
    assert Interval(300).next_after(last, last + 301) == last + 301


def test_interval_clock_stepped_back_waits_at_most_one_interval() -> None:
    now = ts(2025, 6, 10, 12)
    assert Interval(300).next_after(now + 3600, now) == now + 300


def test_interval_cycles_fall_on_the_relationships_own_offset() -> None:
    i = Interval(300, offset=47.5)
    slot = ts(2025, 6, 10, 12, 0, 47.5)
    assert i.next_after(slot, slot + 1) == slot + 300
    assert i.next_after(slot - 0.01, slot) == slot + 300  # a timer a hair early: its slot
    assert i.next_after(slot + 140, slot + 141) == slot + 300  # started late: its slot
    assert i.next_after(slot + 200, slot + 201) == slot + 600  # never < 150 s apart
    # A first cycle (at once), then the grid: every later start is at the offset.
    t, starts = ts(2025, 6, 10, 12, 3, 11), []
    for _ in range(5):
        t = i.next_after(starts[-1] if starts else None, t)
        starts.append(t)
    assert starts[0] == ts(2025, 6, 10, 12, 3, 11)
    assert [round((x - 47.5) % 300, 6) for x in starts[1:]] == [0.0] * 4
    assert all(b - a >= 150 for a, b in itertools.pairwise(starts))


def test_spread_offset_is_stable_in_range_and_spreads_like_names() -> None:
    assert spread_offset("web", 60) == spread_offset("web", 60)
    assert spread_offset("web", 60) != spread_offset("web2", 60)
    assert spread_offset("web", 120) == pytest.approx(2 * spread_offset("web", 60))
    assert parse_schedule("1m", None, KEY, "web") == Interval(60.0, spread_offset("web", 60))
    assert parse_schedule(None, "* * * * *", KEY, "web") == Cron("* * * * *")
    # Fifty look-alike names on a one-minute interval: spread over the minute, not in
    # one second. (A hash is not a perfect spacing: a few may share a second.)
    offsets = [spread_offset(f"vol-{n:02d}", 60) for n in range(50)]
    assert all(0 <= o < 60 for o in offsets)
    per_second = [sum(int(o) == s for o in offsets) for s in range(60)]
    assert max(per_second) <= 4, per_second
    assert sum(1 for c in per_second if c) >= 30, per_second
    assert min(offsets) < 6 and max(offsets) > 54  # the whole minute is used


# --- describe -----------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (300, "every 5m"), (3600, "every 1h"), (5400, "every 90m"), (86400, "every 1d"),
    (604800, "every 1w"), (1209600, "every 2w"), (90, "every 90s"), (1, "every 1s"),
    (0.5, "every 500ms"), (1.25, "every 1250ms"), (0.0005, "every 0.0005s"),
])
def test_describe_interval(seconds: float, text: str) -> None:
    assert describe(Interval(seconds)) == text
    assert parse_duration(text.removeprefix("every "), "k") == pytest.approx(seconds)


def test_describe_cron() -> None:
    assert describe(Cron("*/5  * * *  *")) == "cron */5 * * * *"
    assert describe(parse_schedule(None, "0 9 * * mon-fri", KEY)) == "cron 0 9 * * mon-fri"
