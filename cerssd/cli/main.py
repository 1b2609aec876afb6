"""``cerssctl``: the command line, and the commands that are not relationships' or
backups' (those are in ``relationships`` and ``backups``).

Human tables by default, ``--json`` for scripts (the API's own documents). A
daemon that cannot be reached is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse
from typing import Any

from ..human import duration as lag_text
from ..human import size as size_text
from ..human import when
from ..parsing import ConfigError, parse_duration
from . import backups, complete, policies, prune, relationships, volumes, watch
from .client import Client, CliError, quote
from .commands_help import list_all_commands
from .output import Output, activity_rows, render_activity
from .watch import submitted, wait_for

DEFAULT_SOCKET = "/run/cerssd/control.sock"


def _duration(text: str) -> float:
    """An argparse type: a duration such as 90s, 2h or 7d, in seconds."""
    try:
        return parse_duration(text, "duration")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def _unix(ago: float | None) -> int | None:
    """The Unix time ``ago`` seconds before now, for the API's time filters."""
    return None if ago is None else int(time.time() - ago)


def run(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    out = Output(args.json)
    cmd = args.command
    if cmd == "status" and args.watch:
        if args.json:
            raise CliError("--watch draws for people; scripts poll --json status instead")
        return watch.watch(client, out.console, args.interval, CliError)
    if cmd == "status":
        return status_command(client, out)
    if cmd in ("relationships", "relationship"):
        return relationships.run(client, out, args)
    if cmd == policies.COMMAND:
        return policies.run(client, out, args)
    if cmd in backups.COMMANDS:
        return backups.run(client, out, args)
    if cmd in prune.COMMANDS:
        return prune.run(client, out, args)
    elif cmd == "servers":
        return volumes.servers_command(client, out)
    elif cmd == "volume":
        return volumes.run(client, out, args)
    elif cmd == "links":
        data = client.request("GET", "/v1/links")
        out.emit(data, lambda d: out.table(
            ["server", "state", "since", "attempt", "next try", "last error"],
            [(link["server"], link["state"], when(link["since"]), link["attempt"] or "-",
              when(link["next_try_at"]), link["last_error"] or "") for link in d["items"]]))
    elif cmd == "capabilities":
        data = client.request("GET", "/v1/capabilities")
        names = sorted({c for caps in data.values() for c in caps})
        out.emit(data, lambda d: out.table(
            ["capability", *d.keys()],
            [(c, *("yes" if d[s][c] else "no" for s in d)) for c in names]))
    elif cmd == "volumes":
        return volumes_command(client, out, args)
    elif cmd == "snapshots":
        data = client.request("GET",
                              f"/v1/volumes/{quote(args.volume)}/snapshots?server={quote(args.server)}")
        out.emit(data, lambda d: out.table(
            ["name", "guid", "created", "used", "holds"],
            [(s["name"], s["guid"], when(s["creation"]), size_text(s["used"]), _holds(s))
             for s in d["items"]]))
    elif cmd == "activities":
        query = urllib.parse.urlencode({k: v for k, v in (
            ("state", args.state), ("kind", args.kind), ("volume", args.volume),
            ("relationship", args.relationship), ("since", _unix(args.since)),
            ("until", _unix(args.until)), ("limit", args.limit), ("offset", args.offset))
            if v is not None})
        data = client.request("GET", f"/v1/activities?{query}")
        out.emit(data, lambda d: out.table(
            ["id", "kind", "state", "volume", "target", "runs on", "progress", "status"],
            activity_rows(d["items"])))
    elif cmd == "show":
        data = client.request("GET", f"/v1/activities/{quote(args.id)}")
        if args.follow:
            return wait_for(client, out, data)
        out.emit(data, lambda a: render_activity(out, a))
    elif cmd in ("suspend", "resume", "cancel"):
        data = client.request("POST", f"/v1/activities/{quote(args.id)}/{cmd}")
        out.emit(data, lambda a: out.console.print(f"{a['id']} {a['state']}"))
    elif cmd == "snapshot":
        return snapshot_command(client, out, args)
    elif cmd == "replicate":
        body = {"snapshot": args.snapshot, "source": args.source,
                "destination": args.destination, "force_full_copy": args.force_full_copy,
                "overwrite": args.overwrite,
                "intermediates": args.intermediates}
        if args.target_volume:
            body["target_volume"] = args.target_volume
        if args.bandwidth_limit:
            body["bandwidth_limit"] = args.bandwidth_limit
        data = client.request("POST", "/v1/replications", body)
        if args.wait:
            return wait_for(client, out, data)
        out.emit(data, lambda a: out.console.print(f"{a['id']} {a['state']} ({a['plan']})"))
    return 0


def render_cluster(out: Output, c: dict[str, Any]) -> None:
    """This manager, etcd, and who leads each relationship (``[cluster]``)."""
    expires = c["lease_expires_at"]
    out.table(["node", "etcd", "lease expires in", "taken", "lost"],
              [(c["node"], "reachable" if c["etcd_reachable"]
                else f"UNREACHABLE: {c['last_error']}",
                f"{expires - time.time():.1f} s" if expires else "no lease",
                c["leaderships_taken"], c["leaderships_lost"])])
    def lease(at: float | None) -> str:
        return f"{at - time.time():.1f} s" if at else "-"

    out.table(["relationship", "leader", "term", "leader's lease", "here"],
              [(name, r["node"] or "NONE", r["term"] if r["term"] is not None else "-",
                lease(r["lease_expires_at"]), "leading" if r["leading"] else "following")
               for name, r in sorted(c["relationships"].items())])


def status_command(client: Client, out: Output) -> int:
    """The daemon, then every relationship's slaves (state, lag) and every link."""
    data = client.request("GET", "/v1/status")
    data["relationships"] = client.request("GET", "/v1/relationships")["items"]
    data["links"] = client.request("GET", "/v1/links")["items"]

    def render(d: dict[str, Any]) -> None:
        out.table(["version", "pid", "uptime", "activities", "servers"],
                  [(d["version"], d["pid"], lag_text(d['uptime_seconds']),
                    ", ".join(f"{k}={v}" for k, v in sorted(d["activities"].items()))
                    or "none",
                    ", ".join(f"{k}={'up' if v else 'down'}" for k, v in d["servers"].items()))])
        if d.get("cluster"):
            out.console.print()
            render_cluster(out, d["cluster"])
        if d["relationships"]:
            out.console.print()
            relationships.render_list(out, {"items": d["relationships"]})
        if d["links"]:
            out.console.print()
            out.table(["link", "state", "since", "last error"],
                      [(x["server"], x["state"], when(x["since"]), x["last_error"] or "")
                       for x in d["links"]])

    out.emit(data, render)
    return 0


#: Volumes per request when cerssctl pages through a whole listing (the API's maximum):
#: on zfs-fuse every page lists all the names again, so pages are large.
VOLUME_PAGE = 5000
#: How long one page may take: a server's ``zfs list`` of thousands of datasets on a busy
#: node can take longer than the socket's usual 30 s, and a listing is only a read.
VOLUME_PAGE_TIMEOUT = 300.0


def volumes_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    """The volumes page by page, each page's rows printed as it arrives; ``--limit`` and
    ``--offset`` ask for one page. ``--json`` prints one document with every item."""
    offset = args.offset
    items: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    while True:
        limit = VOLUME_PAGE if args.limit is None else min(args.limit, VOLUME_PAGE)
        root = f"&root={quote(args.root)}" if args.root else ""
        data = client.request("GET", f"/v1/volumes?server={quote(args.server)}&limit={limit}"
                                     f"&offset={offset}{root}", timeout=VOLUME_PAGE_TIMEOUT)
        if out.as_json:
            items += data["items"]
        else:
            out.table(["name", "type", "state", "used", "referenced", "guid"],
                      [(v["name"], v["type"], v.get("state", "-"), size_text(v["used"]),
                        size_text(v["referenced"]), v["guid"]) for v in data["items"]],
                      header=offset == args.offset)
        offset += len(data["items"])
        if args.limit is not None or not data["items"] or offset >= data["total"]:
            break
    if out.as_json:
        out.emit({**data, "items": items, "offset": args.offset, "limit": args.limit})
    else:
        roots = ", ".join(data.get("roots") or []) or "every pool"
        out.console.print(f"{offset - args.offset} of {data.get('total', 0)} volumes "
                          f"({roots})")
    return 0


def snapshot_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    volume, at, label = args.name.partition("@")
    if not at:
        raise CliError(f"{args.name!r}: give a snapshot as pool/volume@name")
    if args.action == "create":
        data = client.request("POST", f"/v1/volumes/{quote(volume)}/snapshots",
                              {"name": label, "server": args.server})
    else:
        data = client.request("DELETE", f"/v1/volumes/{quote(volume)}/snapshots/{quote(label)}"
                                        f"?server={quote(args.server)}")
    return submitted(client, out, data, args.no_wait)


def _holds(snapshot: dict[str, Any]) -> str:
    """A snapshot's hold count, and how many of them are not cerssd's."""
    foreign = snapshot.get("foreign_holds") or 0
    return f"{snapshot['userrefs']} ({foreign} not cerssd's)" if foreign \
        else str(snapshot["userrefs"])


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cerssctl", description="Control a running cerssd.")
    p.add_argument("--socket", default=os.environ.get("CERSSD_SOCKET", DEFAULT_SOCKET),
                   help=f"control socket (default $CERSSD_SOCKET or {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print the API's JSON documents")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", help="the daemon, its relationships and links (--watch: "
                        "a live view)")
    st.add_argument("--watch", action="store_true",
                    help="a live view until Ctrl-C (plain snapshots when not a terminal)")
    st.add_argument("--interval", type=watch.interval_arg, default=1.0, metavar="SECONDS",
                    help="refresh period of --watch (default 1)")
    sub.add_parser("servers", help="configured servers and their pools' space")
    sub.add_parser("capabilities", help="capabilities per server")
    sub.add_parser("links", help="link health of remote servers")
    v = sub.add_parser("volumes", help="volumes on a server (all of them, page by page)")
    v.add_argument("--server", default="local")
    v.add_argument("--root", help="only this dataset and those below it")
    v.add_argument("--limit", type=_positive, help="only this many (at most 5000)")
    v.add_argument("--offset", type=_natural, default=0, help="skip this many first")
    s = sub.add_parser("snapshots", help="snapshots of a volume")
    s.add_argument("volume")
    s.add_argument("--server", default="local")
    a = sub.add_parser("activities", help="list activities")
    a.add_argument("--state")
    a.add_argument("--kind")
    a.add_argument("--volume")
    a.add_argument("--relationship")
    a.add_argument("--since", metavar="AGO", type=_duration,
                   help="created at most this long ago, e.g. 2h")
    a.add_argument("--until", metavar="AGO", type=_duration,
                   help="created at least this long ago, e.g. 1d")
    a.add_argument("--limit", type=int, help="page size (default 100, at most 1000)")
    a.add_argument("--offset", type=int, help="skip this many (the next page)")
    for verb in ("show", "suspend", "resume", "cancel"):
        sub.add_parser(verb, help=f"{verb} an activity").add_argument("id")
    sub.choices["show"].add_argument(
        "--follow", action="store_true",
        help="follow it to its end; exit 0 succeeded, 1 failed, 2 cancelled")
    snap = sub.add_parser("snapshot", help="create or destroy a snapshot")
    snap.add_argument("action", choices=("create", "destroy"))
    snap.add_argument("name", help="pool/volume@name")
    snap.add_argument("--server", default="local")
    snap.add_argument("--no-wait", action="store_true", help="return once the activity exists")
    r = sub.add_parser("replicate", help="replicate a snapshot to another server")
    r.add_argument("snapshot")
    r.add_argument("source")
    r.add_argument("destination")
    r.add_argument("--target-volume")
    r.add_argument("--force-full-copy", action="store_true")
    r.add_argument("--overwrite", action="store_true",
                   help="with --force-full-copy: replace an existing target")
    r.add_argument("--intermediates", action="store_true", help="send -I")
    r.add_argument("--bandwidth-limit", type=int, metavar="BYTES_PER_SECOND")
    r.add_argument("--wait", action="store_true", help="follow it to the end")
    relationships.add_parsers(sub)
    policies.add_parsers(sub)
    backups.add_parsers(sub)
    prune.add_parsers(sub)
    volumes.add_parsers(sub)
    list_all_commands(p)
    return p


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    complete.autocomplete(cli)  # a shell's completion request is answered here, then exits
    args = cli.parse_args(argv)
    try:
        code = run(args)
    except CliError as exc:
        print(f"cerssctl: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
