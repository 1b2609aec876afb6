"""``cerssctl prune RELATIONSHIP [--dry-run] [--only PLACE]``: retention now, or its plan.

Renders ``POST /v1/relationships/{name}/prune``: per place (master, each slave, each
store) the grid and ``keep_min`` in force, then every snapshot or backup that goes with
its age and reason, or why nothing may go there now. A dry run prints the same list the
prune would then carry out. ``render`` also prints a snapshot policy's plan
(``cerssctl policy prune``), which adds what stays and why.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..human import duration as lag_text
from .client import Client
from .output import Output

COMMANDS = ("prune",)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("prune", help="apply a relationship's retention now (--dry-run: what "
                       "would go, and why)")
    p.add_argument("relationship")
    p.add_argument("--dry-run", action="store_true", help="only list what would go, and why")
    p.add_argument("--only", action="append", metavar="PLACE",
                   help='"master", a slave server or a store (repeat; default: all)')


def run(client: Client, out: Output, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if args.only:
        body["only"] = args.only
    data = client.request("POST", f"/v1/relationships/{args.relationship}/prune", body)
    out.emit(data, lambda d: render(out, d))
    return 0


def render(out: Output, data: dict[str, Any]) -> None:
    verb = "would destroy" if data["dry_run"] else "destroying"
    for place in data["places"]:
        head = (f"{place['place']} {place['name']} {place['volume']} (retention "
                f"{', '.join(place['retention']) or '-'}; keep_min {place['keep_min']})")
        if place["blocked"]:
            out.console.print(f"{head}: nothing pruned: {place['blocked']}", markup=False)
            continue
        tail = f", activity {place['activity']}" if place["activity"] else ""
        out.console.print(f"{head}: {verb} {len(place['destroy'])}, keeping "
                          f"{place['kept']}{tail}", markup=False)
        if place["destroy"]:
            out.table(["snapshot", "age", "rule", "reason"],
                      [(v["snapshot"], lag_text(v["age_seconds"]), v["rule"], v["reason"])
                       for v in place["destroy"]])
        if place.get("keep"):  # a policy's plan: what stays although it might seem not to
            out.table(["kept", "age", "rule", "reason"],
                      [(k["snapshot"], lag_text(k["age_seconds"]), k["rule"], k["reason"])
                       for k in place["keep"]])
