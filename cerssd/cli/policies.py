"""``cerssctl policy list|show|run|prune``: snapshot policies, rendered from the API's
documents (``prune`` as ``cerssctl prune`` renders a relationship's)."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ..human import when
from .client import Client
from .output import Output, print_fields
from .prune import render as render_prune

COMMAND = "policy"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(COMMAND, help="snapshot policies: list, show, run now")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="every snapshot policy and its last run")
    verbs.add_parser("show", help="one policy, its last run and its result").add_argument(
        "name")
    verbs.add_parser("run", help="run a policy now (snapshot, then prune)").add_argument(
        "name")
    prune = verbs.add_parser("prune", help="apply a policy's grid now (--dry-run: what would "
                             "go, what stays, and why)")
    prune.add_argument("name")
    prune.add_argument("--dry-run", action="store_true",
                       help="only list what would go and what stays, and why")


def last_run_text(p: dict[str, Any]) -> str:
    r = p.get("last_result")
    if r is None:
        return "-"
    text = f"{r['outcome']} at {when(r['at'])}"
    if r["outcome"] == "snapshot":
        text += f", {r['destroyed']} pruned"
    if r.get("error"):
        text += f": {r['error']}"
    return text


def rows(items: list[dict[str, Any]]) -> list[Sequence[Any]]:
    return [(p["name"], p["volume"] + (" (tree)" if p["recursive"] or p["property"] else ""),
             p["server"], p["state"], p["schedule"], p["runs"], p["failures"],
             "-" if p["snapshots_kept"] is None else p["snapshots_kept"], last_run_text(p))
            for p in items]


def render_list(out: Output, data: dict[str, Any]) -> None:
    out.table(["policy", "volume", "server", "state", "schedule", "runs", "failures", "kept",
               "last run"], rows(data["items"]))


def render_one(out: Output, p: dict[str, Any]) -> None:
    r = p.get("last_result") or {}
    lines: list[tuple[str, Any]] = [
        ("name", p["name"]), ("volume", f"{p['volume']} on {p['server']}"),
        ("state", p["state"]), ("schedule", p["schedule"]), ("prefix", p["prefix"]),
        ("retention", ", ".join(p["retention"])), ("runs", p["runs"]),
        ("failures", p["failures"]), ("skipped", p["skipped"]),
        ("last run", when(p["last_run_at"])), ("next run", when(p["next_run_at"])),
        ("newest snapshot", p["newest_snapshot"] or "-"),
        ("snapshots kept", "-" if p["snapshots_kept"] is None else p["snapshots_kept"]),
        ("last result", last_run_text(p)),
        ("replicated by", ", ".join(p["relationships"]) or "-"),
        ("activity", p["activity"] or "-"), ("last error", p["last_error"] or "-")]
    if p["recursive"] or p["property"]:
        lines.insert(2, ("tree", _tree_text(p)))
    if r.get("prune_skipped"):
        lines.append(("prune skipped", r["prune_skipped"]))
    for name in r.get("kept_held", []):
        lines.append(("kept (held)", name))
    print_fields(out.console, lines)
    for h in r.get("hooks", []):
        out.console.print(f"hook {h['stage']}: {' '.join(h['argv'])} -> "
                          f"{'timed out' if h['timed_out'] else h['exit_status']}")


def _tree_text(p: dict[str, Any]) -> str:
    parts = ["recursive"] if p["recursive"] else []
    parts += [f"include {', '.join(p['include'])}"] if p["include"] else []
    parts += [f"exclude {', '.join(p['exclude'])}"] if p["exclude"] else []
    parts += [f"property {p['property']}"] if p["property"] else []
    return "; ".join(parts)


def run(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.verb == "list":
        out.emit(client.request("GET", "/v1/policies"), lambda d: render_list(out, d))
        return 0
    path = f"/v1/policies/{urllib.parse.quote(args.name, safe='')}"
    if args.verb == "show":
        out.emit(client.request("GET", path), lambda p: render_one(out, p))
    elif args.verb == "prune":
        data = client.request("POST", f"{path}/prune", {"dry_run": args.dry_run})
        out.emit(data, lambda d: render_prune(out, d))
    else:
        data = client.request("POST", f"{path}/run")
        out.emit(data, lambda p: out.console.print(f"{p['name']}: run requested"))
    return 0
