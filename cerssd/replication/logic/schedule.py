"""When a continuous-replication relationship takes its next snapshot, as plain logic.

A relationship is on a fixed ``interval`` (``"15m"``) or a ``cron`` schedule
(``"*/15 * * * *"``, always in UTC so that a DST change never skips or repeats a
cycle). Both answer one question: given when the last cycle ran (``None`` if it never
did) and the time now, at what Unix time should the next cycle start?

Downtime is caught up **once**, not once per missed slot: replication is
incremental, so a single cycle brings the slaves to the present and a burst of
back-to-back snapshots would only churn the retention grid. The rules:

* ``Interval``: the first cycle is immediate; after that cycles fall on the
  relationship's own grid, the times ``offset + k * seconds``. If the slot after the
  last cycle has already passed (the daemon was down, or a cycle overran) the answer is
  ``now``, and the cycle after that catch-up is back on the grid, at the first slot at
  least half an interval later (so two cycles are never closer than that).
* ``Cron``: the first cycle waits for the next matching minute; if a matching minute
  passed after ``last`` without a cycle, the answer is ``now``; otherwise the next
  matching minute after now.

The caller should keep the deadline it was given rather than recompute it on
waking: ``next_after(None, now)`` is always in the future, so recomputing it a few
milliseconds after the deadline would move the first cron cycle on by a slot.

Why a grid with an offset. Fifty relationships on ``interval = "1m"`` anchored to
their last cycles start together for ever once something lines them up (a daemon
restart catches them all up in the same second). Each relationship's ``offset`` is a
stable fraction of its interval taken from a hash of its name (``spread_offset``), so
their cycles are spread evenly over the interval, and a restart cannot line them up:
after the catch-up each goes back to its own slot. A cron schedule runs at the minutes
it names; relationships that should not start together are given different minutes.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from datetime import date

from ...parsing import ConfigError, parse_duration

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MINUTES_PER_DAY = 1440

# A timer can fire a hair early by the wall clock (asyncio sleeps on the monotonic
# clock). A cycle started this close before a cron slot counts as that slot's cycle,
# or the slot would look missed and be caught up right after it.
_EARLY_FIRE_TOLERANCE = 1.0

# No search ever gets here: impossible expressions are rejected when parsed, and a
# possible one matches within a few decades (a Feb 29 that is also a given weekday,
# across the non-leap 2100, is the worst case). The Gregorian calendar repeats
# every 400 years, so this bound is a backstop, not a limit.
_SEARCH_DAYS = 400 * 366

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun",
                "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Feb counts 29: a day that exists only in leap years still exists.
_MONTH_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_FIELDS = (
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day-of-month", 1, 31, {}),
    _FieldSpec("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTH_NAMES)}),
    _FieldSpec("day-of-week", 0, 7, {n: i for i, n in enumerate(_DAY_NAMES)}),
)


@dataclass(frozen=True)
class Interval:
    """A cycle every ``seconds``, on the grid ``offset + k * seconds`` (Unix time)."""

    seconds: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError("interval", "must be a positive duration")

    def next_after(self, last: float | None, now: float) -> float:
        """Unix time of the next cycle.

        ``now`` when there was no cycle yet, or when the slot after ``last`` has
        passed: a daemon that was down for a day takes one catch-up snapshot. The
        slot after ``last`` is the first grid time more than half an interval after
        it: a cycle that started late (it waited its turn, or fired a hair early)
        still counts as its slot's, and a catch-up is followed by a slot, not by a
        second cycle moments later. If the clock was stepped back (``last`` lies in
        the future), the next slot after ``now``: waiting for ``last``'s would stall
        replication.
        """
        if last is None:
            return now
        if last > now:
            return self._first_after(now)
        due = self._first_after(last + self.seconds / 2)
        return now if due <= now else due

    def _first_after(self, t: float) -> float:
        """The first grid time strictly after ``t``."""
        return self.offset + (math.floor((t - self.offset) / self.seconds) + 1) * self.seconds


def spread_offset(name: str, seconds: float) -> float:
    """A stable offset in ``[0, seconds)`` for the relationship ``name``: the first 8
    bytes of the SHA-256 of its name as a fraction of the interval. Stable across
    restarts and machines (Python's ``hash`` is salted per process) and evenly spread
    over the interval however the names look alike."""
    fraction = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0**64
    return fraction * seconds


@dataclass(frozen=True)
class Cron:
    """A cron schedule in UTC: ``minute hour day-of-month month day-of-week``.

    Each field is ``*``, ``N``, ``N-M``, ``*/S`` or ``N-M/S``, or a comma list of
    those; months and weekdays also take names (``jan``, ``mon``, case-insensitive).
    Day-of-week runs 0-7 with both 0 and 7 meaning Sunday.

    As in Vixie cron and cronie, when both day-of-month and day-of-week are
    restricted a day matches if *either* does (``0 0 1 * mon``: the 1st and every
    Monday); a field that starts with ``*`` (``*``, ``*/2``) is unrestricted, and
    then a day must match both.

    ``Cron("0 0 * * *", key)`` parses and validates; errors are ConfigError naming
    ``key`` and the offending field. The expression is kept with its whitespace
    normalised, for ``describe``.
    """

    expression: str
    key: InitVar[str] = "cron"
    # Derived from the expression, so left out of repr: logs show just the text.
    minutes: frozenset[int] = field(init=False, repr=False)
    hours: frozenset[int] = field(init=False, repr=False)
    days: frozenset[int] = field(init=False, repr=False)
    months: frozenset[int] = field(init=False, repr=False)
    weekdays: frozenset[int] = field(init=False, repr=False)  # 0 = Sunday .. 6 = Saturday
    days_or_weekdays: bool = field(init=False, repr=False)  # both restricted: the OR rule
    _times: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _month_list: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self, key: str) -> None:
        parts = self.expression.split()
        if len(parts) != len(_FIELDS):
            raise ConfigError(key, f"expected 5 fields (minute hour day-of-month month "
                                   f"day-of-week), got {len(parts)} in {self.expression!r}")
        minutes, hours, days, months, weekdays = (
            _parse_field(text, spec, key) for text, spec in zip(parts, _FIELDS, strict=True))
        weekdays = frozenset(d % 7 for d in weekdays)
        days_or_weekdays = not parts[2].startswith("*") and not parts[4].startswith("*")
        if not days_or_weekdays and min(days) > max(_MONTH_MAX_DAYS[m - 1] for m in months):
            # With the OR rule every weekday occurs in every month; otherwise the
            # day-of-month must exist in some month. Any such (month, day) falls on
            # every weekday in some year, so this is the whole feasibility check.
            raise ConfigError(key, f"no date ever matches {' '.join(parts)!r}: "
                                   f"the day-of-month field {parts[2]!r} names no day that "
                                   f"exists in the month field {parts[3]!r}")
        values = {
            "expression": " ".join(parts), "minutes": minutes, "hours": hours, "days": days,
            "months": months, "weekdays": weekdays, "days_or_weekdays": days_or_weekdays,
            "_times": tuple(sorted(h * 60 + m for h in hours for m in minutes)),
            "_month_list": tuple(sorted(months)),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def next_after(self, last: float | None, now: float) -> float:
        """Unix time of the next cycle.

        With no cycle yet: the first matching minute strictly after ``now``. If a
        matching minute passed after ``last`` and at or before ``now`` (the daemon
        was down, or the previous cycle overran the next slot): ``now``, a single
        catch-up however many slots were missed. Otherwise the first matching
        minute after ``now``. A cycle that started up to a second before its slot
        (an early timer) counts as that slot's cycle.
        """
        if last is not None and self._first_after(last + _EARLY_FIRE_TOLERANCE) <= now:
            return now
        return self._first_after(now)

    def _first_after(self, t: float) -> float:
        """The first matching minute boundary strictly after ``t``.

        Walks days, not minutes: whole months outside the month field are skipped,
        and within a matching day the minute is found by bisection, so even
        ``0 0 29 2 *`` seen from just after a leap day costs a few hundred steps.
        """
        minute = math.floor(t / 60) + 1
        ordinal, time = _EPOCH_ORDINAL + minute // _MINUTES_PER_DAY, minute % _MINUTES_PER_DAY
        stop = ordinal + _SEARCH_DAYS
        while ordinal <= stop:
            d = date.fromordinal(ordinal)
            if d.month not in self.months:
                ordinal, time = self._first_day_of_next_month(d), 0
                continue
            if self._day_matches(d.day, ordinal % 7):
                i = bisect_left(self._times, time)
                if i < len(self._times):
                    return _timestamp(ordinal, self._times[i])
            ordinal, time = ordinal + 1, 0
        raise RuntimeError(f"cron {self.expression!r}: no match in 400 years")  # pragma: no cover

    def _day_matches(self, day: int, weekday: int) -> bool:
        if self.days_or_weekdays:
            return day in self.days or weekday in self.weekdays
        return day in self.days and weekday in self.weekdays

    def _first_day_of_next_month(self, d: date) -> int:
        i = bisect_right(self._month_list, d.month)
        if i < len(self._month_list):
            return date(d.year, self._month_list[i], 1).toordinal()
        return date(d.year + 1, self._month_list[0], 1).toordinal()


Schedule = Interval | Cron


def parse_schedule(interval: object, cron: object, key: str, name: str | None = None,
                   ) -> Schedule:
    """The schedule of the relationship at ``key`` from its ``interval`` and ``cron``.

    Exactly one must be given (``None`` means absent): both would leave it unclear
    which one the operator meant, and neither would mean never replicating. An
    interval gets the offset of the relationship ``name`` (``spread_offset``).
    """
    if interval is None and cron is None:
        raise ConfigError(key, 'needs a schedule: interval (such as "15m") or cron '
                               '(such as "*/15 * * * *")')
    if interval is not None and cron is not None:
        raise ConfigError(key, "give either interval or cron, not both")
    if cron is not None:
        if not isinstance(cron, str):
            raise ConfigError(f"{key}.cron", 'must be a string such as "*/15 * * * *"')
        return Cron(cron, f"{key}.cron")
    seconds = parse_duration(interval, f"{key}.interval")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}.interval", "must be a positive duration such as 15m")
    return Interval(seconds, spread_offset(name, seconds) if name is not None else 0.0)


def describe(schedule: Schedule) -> str:
    """A short human form for the API and CLI: ``every 5m`` or ``cron */5 * * * *``.

    Intervals use the largest unit that divides them evenly, so the text is also a
    valid config value (``90m``, not ``1h30m``, which parse_duration does not take).
    """
    if isinstance(schedule, Cron):
        return f"cron {schedule.expression}"
    return f"every {_format_duration(schedule.seconds)}"


def _format_duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    millis = seconds * 1000
    if millis == int(millis):
        return f"{int(millis)}ms"
    return f"{seconds:g}s"


def _parse_field(text: str, spec: _FieldSpec, key: str) -> frozenset[int]:
    """The values one cron field selects; ConfigError says which field and why."""

    def fail(why: str) -> ConfigError:
        return ConfigError(key, f"{spec.name} field {text!r}: {why}")

    def value(token: str) -> int:
        lowered = token.lower()
        if lowered in spec.names:
            return spec.names[lowered]
        if not token.isascii() or not token.isdigit():
            allowed = f"a number {spec.low}-{spec.high}"
            if spec.names:
                allowed += f" or a name ({', '.join(spec.names)})"
            raise fail(f"{token!r} is not {allowed}")
        number = int(token)
        if not spec.low <= number <= spec.high:
            raise fail(f"{number} is out of range {spec.low}-{spec.high}")
        return number

    selected: set[int] = set()
    for item in text.split(","):
        if not item:
            raise fail("empty element in the list")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
                raise fail(f"the step in {item!r} must be a whole number of at least 1")
            step = int(step_text)
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            start, _, end = base.partition("-")
            low, high = value(start), value(end)
            if low > high:
                raise fail(f"the range {base!r} runs backwards (write it as two ranges "
                           f"or a list)")
        elif slash:
            raise fail(f"a step needs * or a range to step through, as in "
                       f"{base}-{spec.high}/{step_text}")
        else:
            low = high = value(base)
        selected.update(range(low, high + 1, step))
    return frozenset(selected)


def _timestamp(ordinal: int, minute_of_day: int) -> float:
    return float((ordinal - _EPOCH_ORDINAL) * 86400 + minute_of_day * 60)
