"""``cerssctl stores|backups|backup|restore|prune-backups``: object-store copies.

Like ``relationships``: renders the API's documents and nothing else; ``backup``
and ``restore`` follow their activity with a live line (``--no-wait`` returns at once).
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any

from ..human import duration as lag_text
from ..human import size as size_text
from .client import Client
from .output import Output
from .watch import wait_for

COMMANDS = ("stores", "backups", "backup", "restore", "prune-backups")

def add_parsers(sub: Any) -> None:
    sub.add_parser("stores", help="object stores and their links")
    b = sub.add_parser("backups", help="backups in an object store")
    b.add_argument("volume", nargs="?")
    b.add_argument("--store")
    k = sub.add_parser("backup", help="back up a snapshot straight into an object store")
    k.add_argument("snapshot", help="pool/volume@name")
    k.add_argument("--store")
    k.add_argument("--server", default="local")
    k.add_argument("--full", action="store_true", help="a full stream, not an incremental")
    k.add_argument("--no-wait", action="store_true", help="return once the activity exists")
    r = sub.add_parser("restore", help="restore a backed-up snapshot into a volume")
    r.add_argument("snapshot", help="pool/volume@name as backed up")
    r.add_argument("target_volume")
    r.add_argument("--store")
    r.add_argument("--server", default="local")
    r.add_argument("--identity-file", help="age identity (a path on the daemon's node) "
                   "for an encrypted backup")
    r.add_argument("--no-wait", action="store_true", help="return once the activity exists")
    p = sub.add_parser("prune-backups", help="delete backups a retention grid no longer keeps")
    p.add_argument("volume")
    p.add_argument("--retention", action="append", required=True,
                   help="a grid tier such as 1d:all or 1w:1d (repeat)")
    p.add_argument("--store")
    p.add_argument("--dry-run", action="store_true", help="only list what would go, and why")
    p.add_argument("--keep-min", type=int, default=1,
                   help="never fewer backups of the volume than this (default 1)")


def _with_store(body: dict[str, Any], store: str | None) -> dict[str, Any]:
    return {**body, "store": store} if store else body


def run(client: Client, out: Output, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "stores":
        data = client.request("GET", "/v1/stores")
        out.emit(data, lambda d: out.table(
            ["name", "endpoint", "bucket", "prefix", "compression", "link"],
            [(s["name"], s["endpoint"] or "aws", s["bucket"], s["prefix"], s["compression"],
              (s["link"] or {}).get("state", "-")) for s in d["items"]]))
    elif cmd == "backups":
        query = urllib.parse.urlencode({k: v for k, v in (
            ("store", args.store), ("volume", args.volume)) if v})
        data = client.request("GET", f"/v1/backups?{query}")
        out.emit(data, lambda d: out.table(
            ["snapshot", "kind", "parent", "stored", "stream", "compression", "created"],
            [(m["snapshot"], m["kind"], (m["parent_snapshot"] or "-").partition("@")[2] or "-",
              size_text(m["stream_size"]), size_text(m["raw_size"]), m["compression"],
              m["created_at"]) for m in d["items"]]))
    elif cmd in ("backup", "restore"):
        if cmd == "backup":
            body = _with_store({"snapshot": args.snapshot, "server": args.server,
                                "force_full": args.full}, args.store)
            data = client.request("POST", "/v1/backups", body)
        else:
            body = _with_store({"snapshot": args.snapshot, "target_volume": args.target_volume,
                                "server": args.server}, args.store)
            if args.identity_file:
                body["identity_file"] = os.path.abspath(args.identity_file)
            data = client.request("POST", "/v1/restores", body)
        if not args.no_wait:
            return wait_for(client, out, data)
        out.emit(data, lambda a: out.console.print(f"{a['id']} {a['state']}"))
    elif cmd == "prune-backups":
        body = _with_store({"volume": args.volume, "retention": args.retention,
                            "dry_run": args.dry_run, "keep_min": args.keep_min}, args.store)
        data = client.request("POST", "/v1/backups/prune", body)
        plan = data.get("plan", data)

        def render(_: Any) -> None:
            out.console.print(("would delete: " if args.dry_run else "deleting: ")
                              + (", ".join(plan["delete"]) or "nothing")
                              + f"\nkeeping: {', '.join(plan['keep']) or 'nothing'}",
                              markup=False)
            if plan["destroy"]:
                out.table(["backup", "age", "rule", "reason"],
                          [(v["snapshot"], lag_text(v["age_seconds"]), v["rule"],
                            v["reason"]) for v in plan["destroy"]])
        out.emit(data, render)
    return 0
