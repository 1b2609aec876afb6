"""``cerssctl status --watch`` and ``cerssctl show ID --follow``: live views of the daemon.

Three parts, so the drawing can be tested without a terminal or a daemon:

* ``fetch`` reads the API's documents once into a ``Frame``;
* ``render`` turns a frame into a rich renderable: a pure function of the frame, the
  time and the outage (if any), nothing else;
* ``watch`` and ``follow`` are the loops around them.

``watch`` redraws in place (``rich.live.Live``) on a terminal. When the daemon stops
answering it keeps the last frame on screen under a "reconnecting…" line and carries on
as soon as the socket answers again, so a daemon restart is a blip, not an exit. Off a
terminal (stdout a pipe or a file) it prints a plain snapshot every interval instead,
like ``top -b``: no escapes and no bars, one timestamped block per refresh, and a single
"reconnecting…" line per outage, so ``cerssctl status --watch --interval 60 >> log``
keeps a readable log. Ctrl-C ends it with status 0.

The view is made to fit 120 columns (``VIEW_WIDTH``, the width of the plain snapshots):
names and errors give way with "…", ids and states never do. What is wrong *now* is
said where it is looked for: a server whose link is retrying or lost says so in the
header (not ``up``), and every link that is not up is listed under "Last errors" with
its error; a healed link's old error is not shown any more.

``follow`` long-polls ``GET /v1/activities/ID?wait=S`` (answered the moment the
activity ends) and draws one progress line on stderr when that is a terminal; it rides
out a daemon restart the same way (``attempt``), saying it is reconnecting.
``exit_status`` turns the finished activity into cerssctl's exit status, and
``wait_for`` (every command's ``--wait``) is ``follow`` and that, printing the activity.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ..human import clock, when
from ..human import duration as lag_text
from ..human import rate as rate_of
from ..human import size as size_text
from .client import Client, Unreachable
from .output import Output, render_activity

#: The states the view lists as under way, in the order they are asked for.
LIVE_STATES = ("running", "retrying", "suspended", "cancelling", "pending")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ERRORS_SHOWN = 5
#: The width the whole view is made to fit (the plain snapshots are printed at it).
VIEW_WIDTH = 120
BAR_WIDTH = 10
#: Long-poll without a live line; below the client's 30 s socket timeout.
FOLLOW_WAIT = 20
#: How often ``follow`` asks again while the daemon does not answer.
RECONNECT_INTERVAL = 1.0

# ``show --follow`` / ``--wait`` exit statuses. 1 is also cerssctl's own failure
# (daemon unreachable, unknown activity): both mean "it did not succeed".
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2

STATE_STYLE = {"running": "green", "pending": "dim", "suspended": "bold yellow",
               "retrying": "bold red", "cancelling": "magenta", "up": "green",
               "lost": "bold red", "in-sync": "green", "syncing": "cyan",
               "behind": "yellow", "error": "bold red", "paused": "bold yellow",
               "stopped": "dim", "stopping": "magenta", "down": "bold red"}
#: Suspended and retrying work is marked in capitals: it stands out in plain text too.
STATE_MARK = {"suspended": "SUSPENDED", "retrying": "RETRYING", "paused": "PAUSED",
              "lost": "LOST", "error": "ERROR", "down": "DOWN"}


@dataclass(frozen=True)
class Frame:
    """The API's documents from one refresh, as they came (``fetched_at`` is Unix time)."""

    status: dict[str, Any]
    relationships: list[dict[str, Any]]
    activities: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    links: list[dict[str, Any]]
    fetched_at: float
    #: Snapshot policies (``GET /v1/policies``); shown only when there are some.
    policies: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Outage:
    """The daemon has not answered since ``since``; ``error`` is the latest reason."""

    since: float
    error: str


def fetch(client: Client) -> Frame:
    """One refresh. Live activities are asked for only in the states the status counts say
    exist, so an idle daemon costs five requests; the listing is per state because a
    relationship's activity is old and would fall off a newest-first page."""
    status = client.request("GET", "/v1/status")
    counts: dict[str, int] = status["activities"]
    live: list[dict[str, Any]] = []
    for state in LIVE_STATES:
        if counts.get(state):
            live += client.request("GET", f"/v1/activities?state={state}&limit=100")["items"]
    # Always asked for: the counts may cover only live work, not history.
    failed = client.request("GET", f"/v1/activities?state=failed&limit={ERRORS_SHOWN}")["items"]
    return Frame(status=status,
                 relationships=client.request("GET", "/v1/relationships")["items"],
                 activities=sorted(live, key=lambda a: a["created_at"]),
                 failed=sorted(failed, key=lambda a: a["finished_at"] or 0, reverse=True),
                 links=client.request("GET", "/v1/links")["items"], fetched_at=time.time(),
                 policies=client.request("GET", "/v1/policies")["items"])


# -- text of single values ---------------------------------------------------------------
def _styled(state: str) -> Text:
    return Text(STATE_MARK.get(state, state), style=STATE_STYLE.get(state, ""))


def _ago(ts: float | None, now: float) -> str:
    return "-" if ts is None else lag_text(max(0.0, now - ts))


def progress_text(p: dict[str, Any], percent: bool = True) -> str:
    """``n of m`` in the activity's unit with a percentage (left out beside a bar, which
    shows it); ``0 of 0`` is open-ended."""
    unit, done, total = p["unit"], p["done"], p["total"]
    amount = size_text if unit == "bytes" else (lambda n: f"{n} {unit}")
    if total == 0:
        text = amount(done) if done else "0 of 0"
    else:
        text = f"{amount(done)} of {amount(total)}"
        text += f" ({100 * done / total:.0f}%)" if percent else ""
    return text + (" est." if p.get("estimated") else "")


def rate_text(a: dict[str, Any]) -> str:
    bps = a["usage"]["rate_bytes_per_second"]
    return rate_of(bps) if bps > 0 and a["state"] == "running" else "-"


def eta_text(a: dict[str, Any]) -> str:
    """Time left at the current rate; only bytes have a rate, only running work an ETA."""
    if a["state"] == "suspended":
        return "paused"
    p, rate = a["progress"], a["usage"]["rate_bytes_per_second"]
    if a["state"] != "running" or p["unit"] != "bytes" or rate <= 0 or p["total"] <= p["done"]:
        return "-"
    return lag_text((p["total"] - p["done"]) / rate)


def link_text(link: dict[str, Any] | None, now: float, server: bool = True) -> str:
    """Empty for a healthy link; otherwise what is wrong, since when, and the next try
    (and the server's name first, unless the row names it already)."""
    if not link or link["state"] == "up":
        return ""
    text = (f"{link['server']} " if server else "") + \
        f"{link['state']} {_ago(link.get('since'), now)}"
    if link.get("attempt"):
        text += f", attempt {link['attempt']}"
    if link.get("next_try_at"):
        text += f", next try in {lag_text(max(0.0, link['next_try_at'] - now))}"
    return text + (f": {link['last_error']}" if link.get("last_error") else "")


def bar(a: dict[str, Any]) -> RenderableType:
    """A bar for n of m; a spinner for 0 of 0 (no anticipated completion)."""
    p = a["progress"]
    if p["total"] == 0:
        return Spinner("dots", style=STATE_STYLE.get(a["state"], ""))
    style = {"suspended": "yellow", "retrying": "red"}.get(a["state"], "bar.complete")
    return ProgressBar(total=p["total"], completed=min(p["done"], p["total"]), width=BAR_WIDTH,
                       complete_style=style)


# -- sections ----------------------------------------------------------------------------
Cell = RenderableType  # str, Text, a bar, a spinner


def _table(columns: Sequence[str], rows: list[list[Cell]], *, keep: Sequence[str] = (),
           free: Sequence[str] = ()) -> Table:
    """A borderless table for a terminal of any width.

    ``free`` columns (names, errors) give way first when it is narrow, their cells
    (``_cut``) ending in "…" instead of wrapping. ``keep`` columns (ids, states) never
    shrink: if even that is too wide, the right edge is cropped instead.
    """
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        widest = max(map(_width, [name, *(row[i] for row in rows)]))
        table.add_column(_cut(name) if name in free else name, no_wrap=name not in free,
                         min_width=widest if name in keep else None)
    for row in rows:
        table.add_row(*row)
    return table


def _cut(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _width(cell: Cell) -> int:
    """The width a cell needs (for ``keep`` columns): text's length, a bar's width."""
    if isinstance(cell, ProgressBar):
        return cell.width or 0
    if isinstance(cell, Text):
        return cell.cell_len
    return len(cell) if isinstance(cell, str) else 1  # a spinner


def server_states(frame: Frame) -> list[tuple[str, str]]:
    """Each server's state for the header, then each object store's: a link that is not
    up says so (a retrying link is ``retrying``, not ``up``); otherwise a server is ``up``
    once probed and ``down`` until then (a local server has no link)."""
    links = {x["server"]: x["state"] for x in frame.links}
    states = [(name, links[name] if links.get(name, "up") != "up"
               else "up" if probed else "down")
              for name, probed in frame.status["servers"].items()]
    return states + [(name, state) for name, state in links.items()
                     if name not in frame.status["servers"]]


def _header(frame: Frame) -> Text:
    """Two lines: the daemon, then what it counts and each server's state."""
    s = frame.status
    counts = ", ".join(f"{k}={v}" for k, v in sorted(s["activities"].items())) or "none"
    text = Text(f"cerssd {s['version']}  pid {s['pid']}  up {lag_text(s['uptime_seconds'])}  "
                f"at {clock(frame.fetched_at)}\nactivities: {counts}  servers: ",
                style="bold")
    for i, (name, state) in enumerate(server_states(frame)):
        text.append(", " if i else "")
        text.append(f"{name} ")
        text.append(_styled(state))
    if s.get("cluster"):
        text.append("\n" + cluster_line(s["cluster"]),
                    style="" if s["cluster"]["etcd_reachable"] else "bold red")
    return text


def cluster_line(c: dict[str, Any]) -> str:
    """A clustered manager in one line: itself, etcd, and who leads each relationship."""
    led = c["relationships"]
    leaders = ", ".join(f"{n}: {r['node'] or 'NO LEADER'}" for n, r in sorted(led.items()))
    etcd = "etcd reachable" if c["etcd_reachable"] else f"etcd UNREACHABLE ({c['last_error']})"
    mine = sum(r["leading"] for r in led.values())
    return (f"cluster node {c['node']}, {etcd}, leading {mine} of {len(led)}"
            + (f" ({leaders})" if leaders else ""))


def relationships_table(items: list[dict[str, Any]], now: float) -> RenderableType:
    """One row per slave. A ``replication`` column (``failed-over``…) appears when some
    relationship's ``replication_status`` is not the plain ``enabled``; ``master`` is the
    active one. The last column is the slave's trouble: its link while that is not up,
    else its last transfer's error, else ``up``."""
    replication = any(r.get("replication_status", "enabled") != "enabled" for r in items)
    rows: list[list[Cell]] = []
    for r in items:
        first: list[Cell] = [r["name"], _cut(r["volume"]), r["master"], _styled(r["state"]),
                             *([str(r.get("replication_status") or "-")] if replication
                               else [])]
        tree = r.get("tree")
        for s in r["slaves"] or [{"server": "-", "state": "-", "lag_seconds": None,
                                 "link": None, "error": None}]:
            down = link_text(s["link"], now, server=False)
            if tree is not None and s["server"] in tree["slaves"]:
                # a tree: how many members are in sync, its worst lag, failing members
                c = tree["slaves"][s["server"]]
                state: Cell = f"{c['in_sync']}/{tree['members']} in sync"
                lag = lag_text(c["worst_lag_seconds"])
                trouble = (_cut(down, "red") if down else
                           _cut(f"{c['failing']} members failing", "red") if c["failing"]
                           else Text("up"))
            else:
                state, lag = _styled(s["state"]), lag_text(s["lag_seconds"])
                trouble = (_cut(down, "red") if down else
                           _cut(s["error"], "red") if s.get("error") else Text("up"))
            rows.append([*first, s["server"], state, lag, trouble])
            first = [""] * len(first)
    return _table(["relationship", "volume", "master", "state",
                   *(["replication"] if replication else []), "slave", "slave state", "lag",
                   "link / error"], rows,
                  keep=("relationship", "slave", "slave state"),
                  free=("volume", "link / error"))


def policies_table(items: list[dict[str, Any]], now: float) -> RenderableType:
    """One row per snapshot policy: when it last ran and runs next, what it keeps, and
    its trouble (its last error, else a skipped run's reason, else ``ok``)."""
    rows: list[list[Cell]] = []
    for p in items:
        result = p.get("last_result") or {}
        trouble = (_cut(p["last_error"], "red") if p.get("last_error")
                   else _cut("pre hook failed: skipped", "yellow")
                   if result.get("outcome") == "skipped" else Text("ok"))
        rows.append([p["name"], _cut(p["volume"]), _styled(p["state"]),
                     _ago(p["last_run_at"], now) if p["last_run_at"] else "-",
                     lag_text(max(0.0, p["next_run_at"] - now)) if p["next_run_at"] else "-",
                     "-" if p["snapshots_kept"] is None else str(p["snapshots_kept"]),
                     str(p["failures"]), trouble])
    return _table(["policy", "volume", "state", "last run", "next in", "kept", "failures",
                   "error"], rows, keep=("policy", "state"), free=("volume", "error"))


def activities_table(items: list[dict[str, Any]], now: float, plain: bool) -> RenderableType:
    """Work under way; bars (and spinners) only on a terminal. A retrying activity's
    link is not repeated here: the link is listed under "Last errors" and "Links"."""
    rows: list[list[Cell]] = []
    for a in items:
        what = (a["volume"] or "-") + (f" → {a['target']}" if a["target"] else "") \
            + (f" [on {a['node']}]" if a.get("node") else "")
        rows.append([a["id"], a["kind"], _styled(a["state"]), *([] if plain else [bar(a)]),
                     progress_text(a["progress"], percent=plain), eta_text(a), rate_text(a),
                     _cut(what)])
    return _table(["id", "kind", "state", *([] if plain else [""]), "progress", "eta", "rate",
                   "volume → target"], rows,
                  keep=("id", "kind", "state", "", "progress"), free=("volume → target",))


def links_table(items: list[dict[str, Any]], now: float) -> RenderableType:
    """Every link; the last error only while the link is not up (a healed link's old
    error is history, not news)."""
    rows: list[list[Cell]] = [
        [x["server"], _styled(x["state"]), _ago(x["since"], now) if x["state"] != "up" else "-",
         str(x["attempt"] or "-"),
         lag_text(max(0.0, x["next_try_at"] - now)) if x["next_try_at"] else "-",
         _cut((x["last_error"] or "") if x["state"] != "up" else "")] for x in items]
    return _table(["link", "state", "since", "attempt", "next try", "last error"], rows,
                  keep=("link", "state"), free=("last error",))


def _clock(ts: float | None, now: float) -> str:
    """The time of day within the last day, the date and time before that."""
    if ts is None:
        return "-"
    return clock(ts) if now - ts < 86400 else when(ts)


def errors_table(links: list[dict[str, Any]], failed: list[dict[str, Any]],
                 now: float) -> RenderableType:
    """What is wrong now, then what went wrong: each link that is not up (since when, why),
    then the latest failed activities."""
    rows: list[list[Cell]] = [
        [_clock(x["since"], now), x["server"], "link", "-",
         _cut(f"{STATE_MARK.get(x['state'], x['state'])}: {x['last_error'] or 'no answer'}",
              "red")] for x in links]
    for a in failed:
        status = a["status"] or {"code": "?", "message": ""}
        rows.append([_clock(a["finished_at"], now), a["id"], a["kind"], _cut(a["volume"] or "-"),
                     _cut(f"{status['code']} {status['message']}", "red")])
    return _table(["at", "id / link", "kind", "volume", "error"], rows, keep=("id / link",),
                  free=("volume", "error"))


def down_links(frame: Frame) -> list[dict[str, Any]]:
    return [x for x in frame.links if x["state"] != "up"]


def render(frame: Frame | None, now: float, outage: Outage | None = None,
           plain: bool = False) -> RenderableType:
    """The whole view. With an outage, a "reconnecting…" line over the last frame seen."""
    parts: list[RenderableType] = []
    if outage is not None:
        parts.append(Text(f"reconnecting… {outage.error} (for {_ago(outage.since, now)})",
                          style="bold red"))
        if frame is not None:
            parts.append(Text(f"last seen at {when(frame.fetched_at)}:", style="dim"))
    if frame is None:
        return Group(*parts or [Text("connecting…")])
    parts.append(_header(frame))
    down = down_links(frame)
    sections: list[tuple[str, list[dict[str, Any]], RenderableType]] = [
        ("Relationships", frame.relationships, relationships_table(frame.relationships, now)),
        *([("Snapshot policies", frame.policies, policies_table(frame.policies, now))]
          if frame.policies else []),
        ("Activities", frame.activities, activities_table(frame.activities, now, plain)),
        ("Links", frame.links, links_table(frame.links, now)),
        ("Last errors", [*down, *frame.failed], errors_table(down, frame.failed, now))]
    for title, items, table in sections:
        parts.append(Text(f"\n{title}" + ("" if items else ": none"), style="bold underline"))
        if items:
            parts.append(table)
    return Group(*parts)


# -- the loops ---------------------------------------------------------------------------
T = TypeVar("T")


def attempt(call: Callable[[], T], outage: Outage | None,
            unreachable: type[Exception]) -> tuple[T | None, Outage | None]:
    """``call()``'s answer, or None and the outage the daemon is now in (kept since its
    start): how both loops ride out a daemon restart."""
    try:
        return call(), None
    except unreachable as exc:
        return None, Outage(outage.since if outage else time.time(), str(exc))


def _poll(client: Client, frame: Frame | None, outage: Outage | None,
          unreachable: type[Exception]) -> tuple[Frame | None, Outage | None]:
    """A fresh frame, or the last one with the outage it is now in."""
    fresh, outage = attempt(lambda: fetch(client), outage, unreachable)
    return fresh or frame, outage


def watch(client: Client, console: Console, interval: float,
          unreachable: type[Exception]) -> int:
    """Refresh every ``interval`` seconds until Ctrl-C (status 0). ``unreachable`` is the
    client's error type: any of it (daemon down, restarting, refusing) means "reconnect",
    never "exit"."""
    with contextlib.suppress(KeyboardInterrupt):
        if console.is_terminal:
            _watch_live(client, console, interval, unreachable)
        else:
            _watch_plain(client, console, interval, unreachable)
    return 0


def _ticks(interval: float) -> Iterator[None]:
    """Forever, every ``interval`` seconds counted from the start (no drift)."""
    start = time.monotonic()
    n = 0
    while True:
        yield
        n += 1
        time.sleep(max(0.0, start + n * interval - time.monotonic()))


def _watch_live(client: Client, console: Console, interval: float,
                unreachable: type[Exception]) -> None:
    frame: Frame | None = None
    outage: Outage | None = None
    with Live(render(None, time.time()), console=console, refresh_per_second=4) as live:
        for _ in _ticks(interval):
            frame, outage = _poll(client, frame, outage, unreachable)
            live.update(render(frame, time.time(), outage), refresh=True)


def _watch_plain(client: Client, console: Console, interval: float,
                 unreachable: type[Exception]) -> None:
    frame: Frame | None = None
    outage: Outage | None = None
    for _ in _ticks(interval):
        was = outage
        frame, outage = _poll(client, frame, outage, unreachable)
        now = time.time()
        if outage is None:
            console.print(f"--- {when(now)}")
            console.print(render(frame, now, plain=True), width=VIEW_WIDTH)
            console.print()
        elif was is None:
            console.print(f"--- {when(now)} reconnecting… {outage.error}")
        console.file.flush()


def follow(client: Client, activity: dict[str, Any], console: Console | None,
           unreachable: type[Exception] = Unreachable) -> dict[str, Any]:
    """Wait for ``activity`` to end; with a ``console``, a live line on it meanwhile.

    With no one watching, each request waits up to FOLLOW_WAIT seconds for the end; with
    a line to draw, one second, so the line moves. While the daemon does not answer
    (``unreachable``: it is restarting) it says "reconnecting…" (on the live line, or
    once per outage on stderr) and asks again every second, as the watch view does: a
    self-restarting activity carries on in the restarted daemon, and so does this.
    """
    path = f"/v1/activities/{urllib.parse.quote(activity['id'], safe='')}"
    wait = 1 if console is not None else FOLLOW_WAIT
    outage: Outage | None = None
    with contextlib.ExitStack() as stack:
        live = None
        if console is not None:
            live = stack.enter_context(Live(console=console, transient=True,
                                            refresh_per_second=4))
        while activity["state"] not in TERMINAL:
            if live is not None:
                live.update(follow_line(activity, time.time(), outage), refresh=True)
            was = outage
            fresh, outage = attempt(lambda: client.request("GET", f"{path}?wait={wait}"),
                                    outage, unreachable)
            if fresh is not None:
                activity = fresh
            if live is None and (outage is None) != (was is None):
                print(f"cerssctl: reconnecting… {outage.error}" if outage else
                      "cerssctl: reconnected", file=sys.stderr, flush=True)
            if outage is not None:
                time.sleep(RECONNECT_INTERVAL)
    return activity


def follow_line(a: dict[str, Any], now: float,
                outage: Outage | None = None) -> RenderableType:
    """One activity's progress on one line: the row of the watch view, without the id;
    during an outage, the "reconnecting…" line over the last one seen."""
    line = Table.grid(padding=(0, 1))
    line.add_row(_styled(a["state"]), bar(a), progress_text(a["progress"]), rate_text(a),
                 f"eta {eta_text(a)}", link_text(a.get("link"), now))
    if outage is None:
        return line
    return Group(Text(f"reconnecting… {outage.error} (for {_ago(outage.since, now)})",
                      style="bold red"), line)


def exit_status(activity: dict[str, Any]) -> int:
    """0 succeeded, 1 failed, 2 cancelled (by an operator or a daemon shutdown)."""
    if activity["state"] == "succeeded":
        return EXIT_SUCCEEDED
    return EXIT_CANCELLED if activity["state"] == "cancelled" else EXIT_FAILED


def wait_for(client: Client, out: Output, activity: dict[str, Any]) -> int:
    """Follow an activity to its end with a live line on a terminal (``--wait``,
    ``--follow``); exit with ``exit_status``: 0 succeeded, 1 failed, 2 cancelled."""
    live = sys.stderr.isatty() and not out.as_json
    activity = follow(client, activity, Console(stderr=True, highlight=False) if live else None)
    out.emit(activity, lambda a: render_activity(out, a))
    return exit_status(activity)


def submitted(client: Client, out: Output, activity: dict[str, Any], no_wait: bool) -> int:
    """A submitted activity: its id and state at once (``--no-wait``), else followed to
    its end (``wait_for``)."""
    if no_wait:
        out.emit(activity, lambda a: out.console.print(f"{a['id']} {a['state']}"))
        return 0
    return wait_for(client, out, activity)


def interval_arg(text: str) -> float:
    """argparse type for ``--interval``: seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the interval must be more than 0 seconds")
    return value
