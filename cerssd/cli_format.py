"""Formatting shared by the cerssctl commands: times and "key  value" blocks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def when(ts: float | None) -> str:
    """A Unix time as local date and time, or "-" when there is none."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_fields(console: Any, lines: Sequence[tuple[str, Any]]) -> None:
    """One "key  value" line per field, the values aligned."""
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        console.print(f"{key:<{width}}  {value}")


def size_text(n: float) -> str:
    """Bytes in binary units, one decimal: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
