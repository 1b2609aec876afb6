"""How cerssd shows quantities to people: one convention for cerssctl's tables, the watch
view and the daemon's console log lines.

- Sizes in IEC binary units (``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB``), rates in
  the same units per second (``1.0 MiB/s``): ZFS and the kernel count in powers of two, and a
  mix of ``MB`` and ``MiB`` on one screen is a 5 % error waiting to be misread.
- Times in ISO 8601, UTC, to the second, with ``Z``: ``2026-12-07T05:30:00Z`` (the same
  form the JSON logs and the API's snapshot names use, and unambiguous across a fleet in
  several time zones); ``HH:MM:SSZ`` where the date is obvious (the watch view's clock).
- Durations (lags, ages, ETAs) in their largest sensible unit: ``45s``, ``12m``, ``3.5h``.

``--json`` output is never passed through here: scripts get the API's raw numbers.
"""

from __future__ import annotations

import time

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: float) -> str:
    """Bytes in binary units, one decimal above bytes: ``512 B``, ``1.5 GiB``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit returns")


def rate(bytes_per_second: float) -> str:
    """A transfer rate: ``1.0 MiB/s``."""
    return f"{size(bytes_per_second)}/s"


def when(ts: float | None) -> str:
    """A Unix time as ``2026-12-07T05:30:00Z``, or ``-`` when there is none."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def when_precise(ts: float) -> str:
    """A Unix time to the millisecond, for log lines: ``2026-12-07T05:30:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def clock(ts: float | None) -> str:
    """The time of day of a Unix time, UTC: ``05:30:00Z`` (``-`` for none)."""
    if ts is None:
        return "-"
    return time.strftime("%H:%M:%SZ", time.gmtime(ts))


def duration(seconds: float | None) -> str:
    """A lag, an age or an ETA in its largest sensible unit: ``45s``, ``12m``, ``3.5h``,
    ``2.0d`` (``-`` for none)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
