"""``cerssctl volume create|clone|revert|extend|delete`` and the pools' space of
``cerssctl servers``.

Like the other command modules: it renders the API's documents and nothing else. Each
volume verb follows its activity to the end (as ``snapshot`` does: they take
milliseconds), ``--no-wait`` returns once the activity exists. Sizes may be given as
bytes or with a unit (``10G``, ``512MiB``; binary units).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..human import size as size_text
from ..parsing import ConfigError, parse_size
from .client import Client, CliError, quote
from .output import Output
from .watch import submitted


def _size(text: str) -> int:
    """An argparse type: bytes, or a number with K, M, G (or KiB, MiB, GiB)."""
    try:
        return parse_size(text.upper().replace("IB", "iB"), "size", minimum=1)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def add_parsers(sub: Any) -> None:
    v = sub.add_parser("volume", help="create, clone, revert, extend or delete a volume")
    verbs = v.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = verbs.add_parser("create", help="a new filesystem, or a block volume (--block)")
    c.add_argument("name", help="pool/name (its parent must exist)")
    c.add_argument("--size", type=_size, help="a block volume's size, a filesystem's quota")
    c.add_argument("--block", action="store_true", help="a block volume (ZFS: a zvol)")
    k = verbs.add_parser("clone", help="a writable volume from a snapshot")
    k.add_argument("snapshot", help="pool/volume@label")
    k.add_argument("name", help="the clone: pool/name, in the snapshot's pool")
    r = verbs.add_parser("revert", help="back to a snapshot: later snapshots are destroyed")
    r.add_argument("snapshot", help="pool/volume@label")
    r.add_argument("--force", action="store_true",
                   help="even past a replication's base (its slave then needs a full copy)")
    r.add_argument("--dry-run", action="store_true", help="only say what would be destroyed")
    e = verbs.add_parser("extend", help="grow a block volume's size or a filesystem's quota")
    e.add_argument("name")
    e.add_argument("size", type=_size)
    d = verbs.add_parser("delete", help="destroy a volume and what is below it")
    d.add_argument("name")
    d.add_argument("--force", action="store_true",
                   help="even with clones or relationships depending on it (they go too)")
    for p in (c, k, r, e, d):
        p.add_argument("--server", default="local")
        p.add_argument("--no-wait", action="store_true",
                       help="return once the activity exists")


def run(client: Client, out: Output, args: argparse.Namespace) -> int:
    action = args.action
    if action == "create":
        body: dict[str, Any] = {"name": args.name, "server": args.server,
                                "type": "volume" if args.block else "filesystem"}
        if args.size is not None:
            body["size"] = args.size
        data = client.request("POST", "/v1/volumes", body)
    elif action == "clone":
        data = client.request("POST", "/v1/volumes", {
            "name": args.name, "server": args.server, "from_snapshot": args.snapshot})
    elif action == "revert":
        volume, at, label = args.snapshot.partition("@")
        if not at:
            raise CliError(f"{args.snapshot!r}: give a snapshot as pool/volume@label")
        data = client.request("POST", f"/v1/volumes/{quote(volume)}/revert", {
            "snapshot": label, "server": args.server, "force": args.force,
            "dry_run": args.dry_run})
        if args.dry_run:
            out.emit(data, lambda p: _render_plan(out, p))
            return 0
    elif action == "extend":
        data = client.request("POST", f"/v1/volumes/{quote(args.name)}/extend",
                              {"size": args.size, "server": args.server})
    else:
        force = "&force=true" if args.force else ""
        data = client.request("DELETE", f"/v1/volumes/{quote(args.name)}"
                                        f"?server={quote(args.server)}{force}")
    return submitted(client, out, data, args.no_wait)


def _render_plan(out: Output, plan: dict[str, Any]) -> None:
    gone = plan["destroys_snapshots"]
    out.console.print(f"reverting {plan['volume']} to {plan['snapshot']} destroys "
                      f"{len(gone)} later snapshot(s){': ' if gone else ''}{', '.join(gone)}")
    if plan["replication_bases"]:
        out.console.print(f"replication bases among them (needs --force): "
                          f"{', '.join(plan['replication_bases'])}")


def servers_command(client: Client, out: Output) -> int:
    """The servers, then each one's pools: size, free, allocated, provisioned and the
    thin-provisioning ratio (``--json``: each server's item gets its ``capacity``)."""
    data = client.request("GET", "/v1/servers")
    caps = client.request("GET", "/v1/capabilities")
    for item in data["items"]:
        item["capacity"] = caps.get(item["name"], {}).get("capacity")

    def render(d: dict[str, Any]) -> None:
        out.table(["name", "kind", "available", "storage", "peer daemon", "error"],
                  [(s["name"], s["kind"], s["available"],
                    s.get("zfs_version") or s.get("btrfs_version") or "-",
                    _peer_text(s.get("peer")), s["error"] or "") for s in d["items"]])
        rows: list[Sequence[Any]] = [(s["name"], p["pool"], _sized(p, "total"), _sized(p, "free"),
                 _sized(p, "allocated"), _sized(p, "provisioned"), f"{p['thin_ratio']:.2f}")
                for s in d["items"] for p in (s["capacity"] or {}).get("pools", [])]
        if rows:
            out.console.print()
            out.table(["server", "pool", "size", "free", "allocated", "provisioned",
                       "thin ratio"], rows)

    out.emit(data, render)
    return 0


def _peer_text(peer: dict[str, Any] | None) -> str:
    """The server's own cerssd: whether work is delegated to it now, and why not."""
    if peer is None:
        return "-"
    if peer["mode"] == "true":
        return "delegated (daemon = true)"
    if peer["delegates"]:
        return f"delegated: cerssd {peer['version']} answers (probed)"
    return f"not used: {peer['reason']}"


def _sized(pool: dict[str, Any], key: str) -> str:
    text = size_text(pool[key])
    return text if pool.get("exact", True) or key == "provisioned" else f"~{text}"
