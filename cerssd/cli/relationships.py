"""``cerssctl relationships`` and ``cerssctl relationship ...``: continuous replication.

Kept apart from ``main`` so that module keeps the generic commands; both render the
API's documents and nothing else.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ..human import duration as lag_text
from ..human import size as size_text
from ..human import when
from .client import Client
from .output import Output, print_fields
from .watch import wait_for

VERBS = ("show", "pause", "resume", "remove", "sync-now")


def _render_rejoin(out: Output, d: dict[str, Any]) -> None:
    head = "rejoined" if d["rejoined"] else "dry run (nothing changed)"
    out.console.print(f"{head}: {d['summary']}")
    for name in d["destroys_snapshots"]:
        out.console.print(f"  {'destroyed' if d['rejoined'] else 'would destroy'} {name}")


def slave_summary(slave: dict[str, Any]) -> str:
    link = slave["link"]
    text = f"{slave['server']} {slave['state']} lag {lag_text(slave['lag_seconds'])}"
    return text + (f" link {link['state']}" if link["state"] != "up" else "")


def tree_slave_summary(tree: dict[str, Any]) -> str:
    return "; ".join(f"{server} {c['in_sync']}/{tree['members']} in sync"
                     + (f", {c['failing']} failing" if c["failing"] else "")
                     for server, c in tree["slaves"].items())


def relationship_rows(items: list[dict[str, Any]]) -> list[Sequence[Any]]:
    return [(r["name"], r["volume"], r["master"], r["state"], r["replication_status"],
             r["schedule"], r["cycles"],
             tree_slave_summary(r["tree"]) if r.get("tree") is not None
             else "; ".join(slave_summary(s) for s in r["slaves"]))
            for r in items]


def render_list(out: Output, data: dict[str, Any]) -> None:
    out.table(["name", "volume", "master", "state", "replication", "schedule", "cycles",
               "slaves"],
              relationship_rows(data["items"]))


def render_one(out: Output, r: dict[str, Any]) -> None:
    lines = [("name", r["name"]), ("volume", f"{r['volume']} on {r['master']}"),
             ("state", r["state"]),
             ("replication", f"{r['replication_status']} (home master {r['home_master']})"),
             ("schedule", r["schedule"]), ("prefix", r["prefix"]),
             ("retention", ", ".join(r["retention"])),
             ("keep_min", f"{r['keep_min']} on the master, {r['slave_keep_min']} on each "
              "slave"), ("cycles", r["cycles"]),
             ("last cycle", when(r["last_cycle_at"])),
             ("next cycle", when(r["next_cycle_at"]) if not r.get("cycle_waiting_since")
              else f"cycle waiting for its turn since {when(r['cycle_waiting_since'])} "
                   "(daemon.max_concurrent_cycles)"),
             ("newest snapshot", r["newest_snapshot"] or "-"),
             ("activity", r["activity"] or "-"), ("last error", r["last_error"] or "-")]
    lines += _failover_lines(r["failover"])
    lines += _hook_lines(r)
    print_fields(out.console, lines)
    out.console.print()
    if r.get("tree") is not None:
        render_tree(out, r)
        return
    out.table(["slave", "target", "state", "lag", "last snapshot", "last success", "bytes",
               "link", "transfer"],
              [(s["server"], s["target_volume"], s["state"], lag_text(s["lag_seconds"]),
                s["last_snapshot"] or "-", when(s["last_success_at"]),
                size_text(s["last_cycle_bytes"]),
                _link_text(s["link"]), s["activity"] or "-") for s in r["slaves"]])
    errors = [f"{s['server']}: {s['error']}" for s in r["slaves"] if s["error"]]
    for line in errors:
        out.console.print(f"error  {line}")


def _failover_lines(f: dict[str, Any]) -> list[tuple[str, Any]]:
    lines: list[tuple[str, Any]] = []
    if f["last_failover_at"]:
        lines.append(("last failover", when(f["last_failover_at"])))
    if f["error"]:
        lines.append(("failover error", f["error"]))
    loss = f["data_loss"]
    if loss:
        lines.append(("data-loss window", f"writes after {loss['snapshot']} "
                      f"({lag_text(loss['window_seconds'])} before the failover) may be "
                      "lost"))
    for x in f["fenced"]:
        state = "read-only" if x["applied_at"] else "not reached yet: fenced on return"
        lines.append(("fenced", f"{x['server']}:{x['volume']} ({state}); rejoin with "
                      "cerssctl relationship rejoin"))
    return lines


def _hook_lines(r: dict[str, Any]) -> list[tuple[str, Any]]:
    """The hooks around its snapshots, and what the last ones did (docs/hooks.md)."""
    hooks = r.get("hooks")
    if not hooks:
        return []
    lines: list[tuple[str, Any]] = [("hooks", ", ".join(
        f"{stage} {' '.join(hooks[stage])}" for stage in ("pre", "post") if hooks[stage])
        + f" (timeout {hooks['timeout']:g}s, on pre failure {hooks['on_pre_failure']})")]
    last = r.get("last_hooks")
    if last:
        runs = "; ".join(f"{x['stage']} " + ("timed out" if x["timed_out"] else
                                               f"exit {x['exit_status']}") for x in last["runs"])
        lines.append(("last hooks", f"snapshot {last['outcome']} at {when(last['at'])}: "
                      f"{runs}"))
    if r.get("skipped_cycles"):
        lines.append(("skipped cycles", r["skipped_cycles"]))
    return lines


def _link_text(link: dict[str, Any]) -> str:
    if link["state"] == "up":
        return "up"
    text = f"{link['state']} since {when(link.get('since'))}"
    if link.get("attempt"):
        text += f", attempt {link['attempt']}"
    return text


def render_tree(out: Output, r: dict[str, Any]) -> None:
    """A tree's summary: members, per slave the counts by state and the worst lag, the
    failing members; ``cerssctl relationship volumes NAME`` drills down."""
    tree = r["tree"]
    targets = {s["server"]: s["target_volume"] for s in r["slaves"]}
    out.console.print(f"tree: {tree['members']} members")
    out.table(["slave", "target root", "in sync", "behind", "sending", "failing",
               "worst lag"],
              [(server, targets.get(server, "-"), c["in_sync"], c["behind"], c["sending"],
                c["failing"], lag_text(c["worst_lag_seconds"]))
               for server, c in tree["slaves"].items()])
    for f in tree["failing"]:
        out.console.print(f"failing  {f['member']} on {f['server']}: {f['error']}")
    if tree["failing_total"] > len(tree["failing"]):
        out.console.print(f"... {tree['failing_total'] - len(tree['failing'])} more: "
                          f"cerssctl relationship volumes {r['name']} --state failing")
    stores = tree.get("stores") or {}
    if stores:
        out.table(["store", "backed up", "behind", "sending", "failing", "oldest backup"],
                  [(store, c["backed_up"], c["behind"], c["sending"], c["failing"],
                    lag_text(c["oldest_backup_age_seconds"])) for store, c in stores.items()])
    for store, c in stores.items():
        for f in c["failing_members"]:
            out.console.print(f"failing  {f['member']} backup to {store}: {f['error']}")
    for name in tree["gone"]:
        out.console.print(f"gone     {name} (destroyed on the master; copies kept)")
    for pattern in tree["unmatched_patterns"]:
        out.console.print(f"warning  pattern {pattern!r} matches nothing")


def render_members(out: Output, data: dict[str, Any]) -> None:
    out.table(["member", "slave", "state", "lag", "last snapshot", "error"],
              [(m["name"], s["server"], s["state"], lag_text(s["lag_seconds"]),
                s["last_snapshot"] or "-", s["error"] or "-")
               for m in data["items"] for s in m["slaves"]])
    out.console.print(f"{len(data['items'])} of {data['total']} members")


#: One-line help of the verbs whose name alone does not say it.
VERB_HELP = {"show": "one relationship: its state, schedule, slaves and last error",
             "sync-now": "run a cycle now (snapshot, send to every slave)"}


def add_parsers(sub: Any) -> None:
    sub.add_parser("relationships", help="every relationship: each slave's state, lag, link")
    r = sub.add_parser("relationship", help="create, show, pause, resume, remove, sync-now, "
                       "fail over or rejoin a relationship")
    verbs = r.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        verbs.add_parser(verb, help=VERB_HELP.get(verb, f"{verb} a relationship")
                         ).add_argument("name")
    v = verbs.add_parser("volumes", help="a tree relationship's members, each slave's state")
    v.add_argument("name")
    v.add_argument("--state", choices=["in-sync", "behind", "sending", "failing"])
    v.add_argument("--limit", type=int, default=100)
    v.add_argument("--offset", type=int, default=0)
    c = verbs.add_parser("create", help="keep VOLUME replicated to slaves")
    c.add_argument("name")
    c.add_argument("volume", help="pool/volume on the master")
    c.add_argument("--master", default="local")
    c.add_argument("--slave", action="append", required=True, metavar="SERVER[:TARGET]",
                   help="a slave server, optionally with its target volume (repeat)")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--interval", help="e.g. 5m")
    when.add_argument("--cron", help='five fields in UTC, e.g. "*/15 * * * *"')
    c.add_argument("--prefix")
    c.add_argument("--retention", action="append", metavar="AGE:EVERY",
                   help='a grid tier such as 1d:1h (repeat; default 1h:all 1d:1h 1w:1d)')
    c.add_argument("--retry-deadline", help='e.g. 2h, or "never"')
    c.add_argument("--no-fanout", action="store_true",
                   help="one zfs send per slave instead of one for all")
    c.add_argument("--recursive", action="store_true",
                   help="the volume and every descendant, including ones created later")
    c.add_argument("--include", action="append", metavar="PATTERN",
                   help="tree members must match one of these (repeat)")
    c.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="leave out members matching this (repeat)")
    c.add_argument("--property", metavar="MODULE:NAME",
                   help='members: datasets where this user property is "on" or NAME')
    f = verbs.add_parser("failover", help="promote a slave (or fail back to the home master)")
    f.add_argument("name")
    f.add_argument("--to", required=True, metavar="SERVER", help="the slave to promote")
    f.add_argument("--force", action="store_true",
                   help="the master is down: promote at the slave's last snapshot "
                        "(later writes are lost)")
    f.add_argument("--at", metavar="LABEL",
                   help="a tree with --force: promote every copy at this snapshot label "
                        "(when the copies disagree; ahead ones are rolled back to it)")
    f.add_argument("--wait", action="store_true", help="follow it to the end")
    j = verbs.add_parser("rejoin", help="make a fenced old master a slave again "
                                        "(dry run unless --rollback)")
    j.add_argument("name")
    j.add_argument("server")
    j.add_argument("--rollback", action="store_true",
                   help="consent: roll it back, destroying what the dry run lists")


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    slaves = []
    for item in args.slave:
        server, _, target = item.partition(":")
        slaves.append({"server": server, **({"target_volume": target} if target else {})})
    body: dict[str, Any] = {"name": args.name, "volume": args.volume, "master": args.master,
                            "slaves": slaves, "fanout": not args.no_fanout}
    if args.recursive:
        body["recursive"] = True
    for key in ("interval", "cron", "prefix", "retention", "retry_deadline", "include",
                "exclude", "property"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    return body


def run(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.command == "relationships":
        out.emit(client.request("GET", "/v1/relationships"), lambda d: render_list(out, d))
        return 0
    verb = args.verb
    if verb == "create":
        data = client.request("POST", "/v1/relationships", create_body(args))
        out.emit(data, lambda r: render_one(out, r))
        return 0
    path = f"/v1/relationships/{urllib.parse.quote(args.name, safe='')}"
    if verb == "failover":
        record = client.request("POST", f"{path}/failover", {
            "to": args.to, "force": args.force, **({"at": args.at} if args.at else {})})
        if args.wait:
            return wait_for(client, out, record)
        out.emit(record, lambda a: out.console.print(
            f"failover {a['id']} started: {a['source']} -> {a['target']}"))
    elif verb == "rejoin":
        body = {"server": args.server, "dry_run": not args.rollback,
                "rollback": args.rollback}
        out.emit(client.request("POST", f"{path}/rejoin", body),
                 lambda d: _render_rejoin(out, d))
    elif verb == "volumes":
        query = {"limit": args.limit, "offset": args.offset,
                 **({"state": args.state} if args.state else {})}
        out.emit(client.request("GET", f"{path}/volumes?{urllib.parse.urlencode(query)}"),
                 lambda d: render_members(out, d))
    elif verb == "show":
        out.emit(client.request("GET", path), lambda r: render_one(out, r))
    elif verb == "remove":
        client.request("DELETE", path)
        out.emit({"removed": args.name},
                 lambda d: out.console.print(f"{args.name} removed (its snapshots are kept)"))
    else:
        data = client.request("POST", f"{path}/{verb}")
        out.emit(data, lambda r: out.console.print(f"{r['name']} {r['state']}"))
    return 0
