"""``cerssctl``: the operator's command line, a thin client of the control socket.

Human tables by default, ``--json`` for scripts (the API's own documents). A
daemon that cannot be reached is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from . import cli_backups, cli_relationships, cli_watch
from .cli_format import print_fields
from .cli_format import size_text as _size
from .cli_format import when as _ago
from .parsing import ConfigError, parse_duration

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


class CliError(Exception):
    """Printed as one line; exits 1."""


class Unreachable(CliError):
    """The daemon did not answer (not running, restarting, shutting down): a loop that
    follows it (``show --follow``, ``--wait``) waits for it to come back instead of
    exiting."""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Client:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> Any:
        conn = UnixHTTPConnection(self.socket_path, timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unreachable(f"cannot reach cerssd at {self.socket_path}: {exc.strerror} "
                              "(is the daemon running?)") from None
        except PermissionError:
            raise CliError(f"permission denied on {self.socket_path} "
                           "(run as root or a member of the control group)") from None
        except OSError as exc:  # reset, closed mid-answer, timed out
            raise Unreachable(f"cannot talk to cerssd at {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        if response.status >= 400:
            try:
                problem = json.loads(data)
            except json.JSONDecodeError:
                raise CliError(f"HTTP {response.status}: {data.decode(errors='replace')}") \
                    from None
            message = f"{problem.get('title', response.reason)}: {problem.get('detail', '')}"
            if (response.status, problem.get("title")) == (503, "Shutting Down"):
                raise Unreachable(message)  # going away: it will be back
            raise CliError(message)
        if not data:  # 204 No Content
            return None
        if response.getheader("Content-Type", "").startswith("text/plain"):
            return data.decode()
        return json.loads(data)


def _q(path: str) -> str:
    return urllib.parse.quote(path, safe="/@")


def _progress(a: dict[str, Any]) -> str:
    p = a["progress"]
    if p["unit"] == "bytes":
        text = f"{_size(p['done'])} of {_size(p['total'])}" if p["total"] else _size(p["done"])
    else:
        text = f"{p['done']} of {p['total']} {p['unit']}"
    if p["total"] == 0 and p["done"] == 0:
        text = "0 of 0"
    return text + (" (est.)" if p["estimated"] else "")


class Output:
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
        ("target", a["target"] or "-"), ("progress", _progress(a)),
        ("self_restarting", str(a["self_restarting"]).lower()),
        ("status", f"{status['code']} {status['message']}" if status else "-"),
        ("created", _ago(a["created_at"])), ("finished", _ago(a["finished_at"])),
        ("elapsed", f"{a['usage']['elapsed_seconds']:.1f} s"),
        ("bytes read", _size(a["usage"]["bytes_read"])),
        ("bytes on wire", _size(a["usage"]["bytes_on_wire"])),
        ("rate", f"{_size(a['usage']['rate_bytes_per_second'])}/s"),
        ("retries", a["usage"]["retries"]),
    ]
    if a.get("link"):
        link = a["link"]
        lines.append(("link", f"{link['server']} {link['state']}"
                      + (f" ({link['last_error']})" if link.get("last_error") else "")))
    print_fields(out.console, lines)


def activity_rows(items: list[dict[str, Any]]) -> list[Sequence[Any]]:
    return [(a["id"], a["kind"], a["state"], a["volume"] or "-", a["target"] or "-",
             _progress(a), a["status"]["code"] if a["status"] else "-") for a in items]


def wait_for(client: Client, out: Output, activity: dict[str, Any]) -> int:
    """Follow an activity to its end with a live line on a terminal (``--wait``,
    ``--follow``); exit with ``cli_watch.exit_status``: 0 succeeded, 1 failed, 2 cancelled."""
    live = sys.stderr.isatty() and not out.as_json
    activity = cli_watch.follow(client, activity,
                                Console(stderr=True, highlight=False) if live else None,
                                Unreachable)
    out.emit(activity, lambda a: render_activity(out, a))
    return cli_watch.exit_status(activity)


def run(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    out = Output(args.json)
    cmd = args.command
    if cmd == "status" and args.watch:
        if args.json:
            raise CliError("--watch draws for people; scripts poll --json status instead")
        return cli_watch.watch(client, out.console, args.interval, CliError)
    if cmd == "status":
        return status_command(client, out)
    if cmd in ("relationships", "relationship"):
        return cli_relationships.run(client, out, args)
    if cmd in cli_backups.COMMANDS:
        return cli_backups.run(client, out, args, wait_for)
    elif cmd == "servers":
        data = client.request("GET", "/v1/servers")
        out.emit(data, lambda d: out.table(
            ["name", "kind", "available", "zfs", "error"],
            [(s["name"], s["kind"], s["available"], s.get("zfs_version", "-"),
              s["error"] or "") for s in d["items"]]))
    elif cmd == "links":
        data = client.request("GET", "/v1/links")
        out.emit(data, lambda d: out.table(
            ["server", "state", "since", "attempt", "next try", "last error"],
            [(link["server"], link["state"], _ago(link["since"]), link["attempt"] or "-",
              _ago(link["next_try_at"]), link["last_error"] or "") for link in d["items"]]))
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
                              f"/v1/volumes/{_q(args.volume)}/snapshots?server={_q(args.server)}")
        out.emit(data, lambda d: out.table(
            ["name", "guid", "created", "used", "holds"],
            [(s["name"], s["guid"], _ago(s["creation"]), _size(s["used"]), _holds(s))
             for s in d["items"]]))
    elif cmd == "activities":
        query = urllib.parse.urlencode({k: v for k, v in (
            ("state", args.state), ("kind", args.kind), ("volume", args.volume),
            ("relationship", args.relationship), ("since", _unix(args.since)),
            ("until", _unix(args.until)), ("limit", args.limit), ("offset", args.offset))
            if v is not None})
        data = client.request("GET", f"/v1/activities?{query}")
        out.emit(data, lambda d: out.table(
            ["id", "kind", "state", "volume", "target", "progress", "status"],
            activity_rows(d["items"])))
    elif cmd == "show":
        data = client.request("GET", f"/v1/activities/{_q(args.id)}")
        if args.follow:
            return wait_for(client, out, data)
        out.emit(data, lambda a: render_activity(out, a))
    elif cmd in ("suspend", "resume", "cancel"):
        data = client.request("POST", f"/v1/activities/{_q(args.id)}/{cmd}")
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


def status_command(client: Client, out: Output) -> int:
    """The daemon, then every relationship's slaves (state, lag) and every link."""
    data = client.request("GET", "/v1/status")
    data["relationships"] = client.request("GET", "/v1/relationships")["items"]
    data["links"] = client.request("GET", "/v1/links")["items"]

    def render(d: dict[str, Any]) -> None:
        out.table(["version", "pid", "uptime", "activities", "servers"],
                  [(d["version"], d["pid"], f"{d['uptime_seconds']:.0f} s",
                    ", ".join(f"{k}={v}" for k, v in sorted(d["activities"].items()))
                    or "none",
                    ", ".join(f"{k}={'up' if v else 'down'}" for k, v in d["servers"].items()))])
        if d["relationships"]:
            out.console.print()
            cli_relationships.render_list(out, {"items": d["relationships"]})
        if d["links"]:
            out.console.print()
            out.table(["link", "state", "since", "last error"],
                      [(x["server"], x["state"], _ago(x["since"]), x["last_error"] or "")
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
        root = f"&root={_q(args.root)}" if args.root else ""
        data = client.request("GET", f"/v1/volumes?server={_q(args.server)}&limit={limit}"
                                     f"&offset={offset}{root}", timeout=VOLUME_PAGE_TIMEOUT)
        if out.as_json:
            items += data["items"]
        else:
            out.table(["name", "type", "state", "used", "referenced", "guid"],
                      [(v["name"], v["type"], v.get("state", "-"), _size(v["used"]),
                        _size(v["referenced"]), v["guid"]) for v in data["items"]],
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
        data = client.request("POST", f"/v1/volumes/{_q(volume)}/snapshots",
                              {"name": label, "server": args.server})
    else:
        data = client.request("DELETE", f"/v1/volumes/{_q(volume)}/snapshots/{_q(label)}"
                                        f"?server={_q(args.server)}")
    if args.no_wait:
        out.emit(data, lambda a: out.console.print(f"{a['id']} {a['state']}"))
        return 0
    return wait_for(client, out, data)


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
    st = sub.add_parser("status", help="daemon status")
    st.add_argument("--watch", action="store_true",
                    help="a live view until Ctrl-C (plain snapshots when not a terminal)")
    st.add_argument("--interval", type=cli_watch.interval_arg, default=1.0, metavar="SECONDS",
                    help="refresh period of --watch (default 1)")
    sub.add_parser("servers", help="configured servers")
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
    cli_relationships.add_parsers(sub)
    cli_backups.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
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
