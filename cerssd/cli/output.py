"""How every cerssctl command prints: the API's JSON (``--json``) or tables and
"key  value" blocks for people. Values are formatted by ``cerssd.human`` (IEC sizes, UTC
times with ``Z``), the one convention for people across cerssctl, the watch view and the
daemon's console log."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ..human import duration, rate, size, when


def print_fields(console: Any, lines: Sequence[tuple[str, Any]]) -> None:
    """One "key  value" line per field, the values aligned."""
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        console.print(f"{key:<{width}}  {value}")


def activity_progress(a: dict[str, Any]) -> str:
    """An activity's progress in its unit: ``1.0 MiB of 4.0 MiB (est.)``, ``2 of 5 steps``."""
    p = a["progress"]
    if p["unit"] == "bytes":
        text = (f"{size(p['done'])} of {size(p['total'])}" if p["total"]
                else size(p["done"]))
    else:
        text = f"{p['done']} of {p['total']} {p['unit']}"
    if p["total"] == 0 and p["done"] == 0:
        text = "0 of 0"
    return text + (" (est.)" if p["estimated"] else "")


class Output:
    """Where a command's answer goes: the API document as JSON (``--json``), or its
    rendering for people (tables on ``console``)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # Off a terminal, a wide fixed width keeps table rows (ids above all) unbroken.
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)

    def emit(self, data: Any, render: Any = None) -> None:
        if self.as_json or render is None:
            print(json.dumps(data, indent=2))
        else:
            render(data)

    def table(self, columns: Sequence[str], rows: list[Sequence[Any]], *,
              header: bool = True) -> None:
        table = Table(box=None, pad_edge=False, header_style="bold", show_header=header)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        self.console.print(table)


def render_activity(out: Output, a: dict[str, Any]) -> None:
    status = a["status"]
    lines = [
        ("id", a["id"]), ("kind", a["kind"]), ("state", a["state"]),
        ("volume", a["volume"] or "-"), ("source", a["source"] or "-"),
        ("target", a["target"] or "-"), ("runs on", runs_on(a)),
        ("progress", activity_progress(a)),
        ("self_restarting", str(a["self_restarting"]).lower()),
        ("status", f"{status['code']} {status['message']}" if status else "-"),
        ("created", when(a["created_at"])), ("finished", when(a["finished_at"])),
        ("elapsed", duration(a["usage"]["elapsed_seconds"])),
        ("bytes read", size(a["usage"]["bytes_read"])),
        ("bytes on wire", size(a["usage"]["bytes_on_wire"])),
        ("rate", rate(a["usage"]["rate_bytes_per_second"])),
        ("retries", a["usage"]["retries"]),
    ]
    if a.get("link"):
        link = a["link"]
        lines.append(("link", f"{link['server']} {link['state']}"
                      + (f" ({link['last_error']})" if link.get("last_error") else "")))
    print_fields(out.console, lines)


def runs_on(a: dict[str, Any]) -> str:
    """Where the work runs and how its data moves: ``this daemon (local)``,
    ``this daemon (relayed)`` or ``master (delegated)`` (docs/peers.md)."""
    route = a.get("route", "local")
    return f"{a.get('node') or 'this daemon'} ({route})"


def activity_rows(items: list[dict[str, Any]]) -> list[Sequence[Any]]:
    return [(a["id"], a["kind"], a["state"], a["volume"] or "-", a["target"] or "-",
             runs_on(a), activity_progress(a), a["status"]["code"] if a["status"] else "-")
            for a in items]
