"""``cerssctl status --watch`` and ``cerssctl show ID --follow`` against a real daemon.

The rows come from real work: a bandwidth-limited local replication (running), a second
one suspended, and a relationship whose slave is an SSH server on a port nothing listens
on, so its link is lost and its transfer retries, for real. The terminal tests run the
real ``cerssctl`` in a pseudo-terminal it takes as its controlling terminal, so Ctrl-C
is the byte a keyboard would send.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cerssd.cli import watch as cli_watch
from cerssd.cli.client import CliError, Unreachable
from cerssd.cli.main import parser

from .conftest import (
    DaemonProcess,
    post_json,
    wait_until,
    write_file,
    zfs,
)
from .sshd import free_port as _free_port
from .sshd import ssh_server_section

MiB = 1 << 20
CTL = [sys.executable, "-m", "cerssd.cli"]


def servers_with_a_lost_link(tmp_path: Path) -> str:
    """The local server, and ``gone``: SSH to a loopback port nothing listens on."""
    key = tmp_path / "gone_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = tmp_path / "gone_known_hosts"
    known.write_text("")
    return ('[servers.local]\nkind = "local"\n'
            + ssh_server_section("gone", "127.0.0.1", _free_port(), key, known))


def replicate_slowly(d: DaemonProcess, snapshot: str, target: str, limit: int) -> str:
    r = post_json(d, "/v1/replications", {"snapshot": snapshot, "source": "local",
                                          "destination": "local", "target_volume": target,
                                          "bandwidth_limit": limit})
    assert r.status == 202, r.body
    return str(r.body["id"])


def row(text: str, activity_id: str) -> str:
    lines = [line for line in text.splitlines() if activity_id in line]
    assert len(lines) == 1, f"{activity_id} not one row in:\n{text}"
    return lines[0]


def section(text: str, title: str) -> list[str]:
    """The lines under a section title, up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


# -- the view, from a real daemon ---------------------------------------------------------
def test_view_shows_running_suspended_retrying_lost_link_and_errors(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/vol")
    write_file(f"/{src}/vol/big", 16)
    zfs("snapshot", f"{src}/vol@s1")
    d = start_daemon(extra=servers_with_a_lost_link(tmp_path) + (
        f'[relationships.hot]\nvolume = "{src}/vol"\ninterval = "1h"\n'
        'slaves = [{server = "gone", target_volume = "ghost/vol"}]\n'))
    running = replicate_slowly(d, f"{src}/vol@s1", f"{dst}/run", MiB // 2)
    suspended = replicate_slowly(d, f"{src}/vol@s1", f"{dst}/susp", MiB // 2)
    try:
        d.wait_activity(suspended, lambda a: a["progress"]["done"] > 0, what="bytes to flow")
        d.api("POST", f"/v1/activities/{suspended}/suspend")
        d.wait_activity(running, lambda a: a["usage"]["rate_bytes_per_second"] > 0,
                        what="a measured rate")
        retrying = wait_until(lambda: [
            a for a in d.api("GET", "/v1/activities?state=retrying&kind=replicate")["items"]
            if a["target"] == "gone:ghost/vol"], what="the transfer to the lost slave retrying")
        bad = post_json(d, f"/v1/volumes/{src}/vol/snapshots", {"name": "s1"}).body["id"]
        assert d.wait_done(bad)["state"] == "failed"

        frame = cli_watch.fetch(d.client)
        console = Console(record=True, width=250, color_system="truecolor")
        console.print(cli_watch.render(frame, time.time()))
        text = console.export_text()
        narrow = _text(cli_watch.render(frame, time.time()), width=cli_watch.VIEW_WIDTH)
    finally:
        for aid in (running, suspended):
            d.api("POST", f"/v1/activities/{aid}/cancel")
            assert d.wait_done(aid)["state"] == "cancelled"

    run_row = row(text, running)
    assert " running " in run_row and re.search(r" of 16\.\d MiB ", run_row)
    assert re.search(r" \d+s +\d+\.\d KiB/s ", run_row)  # ETA and rate
    assert "━" in run_row  # a bar
    susp_row = row(text, suspended)
    assert " SUSPENDED " in susp_row and " paused " in susp_row
    retry_row = row(text, retrying[0]["id"])
    assert " RETRYING " in retry_row and "→ gone:ghost/vol" in retry_row
    relationship = next(a for a in frame.activities if a["kind"] == "relationship")
    assert "0 of 0" in row(text, relationship["id"])  # open-ended: a spinner, not a bar
    rel = section(text, "Relationships")
    assert rel[1].split()[:3] == ["hot", f"{src}/vol", "local"]
    assert "gone" in rel[1].split() and " LOST " in rel[1]
    gone = next(line for line in section(text, "Links") if line.startswith("gone "))
    assert gone.split()[1] in ("LOST", "RETRYING") and "cannot reach" in gone
    errors = "\n".join(section(text, "Last errors"))
    assert "already exists" in row(errors, bad)
    down = row(errors, "gone ").split()  # the lost link is an error now, with its reason
    assert down[2] == "link" and down[4].rstrip(":") in ("LOST", "RETRYING"), down
    assert "cannot reach" in row(errors, "gone ")
    assert f"pid {d.proc.pid}" in text
    assert re.search(r"servers: .*gone (LOST|RETRYING)", text), text  # not "up", not "DOWN"
    # The same frame in 120 columns: nothing wider, ids and states whole.
    assert max(map(len, narrow.splitlines())) <= cli_watch.VIEW_WIDTH, narrow
    for aid in (running, suspended, retrying[0]["id"], bad):
        assert aid in narrow
    assert " SUSPENDED " in row(narrow, suspended)
    assert " RETRYING " in row(narrow, retrying[0]["id"])


# -- the view, from recorded JSON: what the live daemon cannot be made to show cheaply ------
def _activity(aid: str, state: str, done: int, total: int, **extra: Any) -> dict[str, Any]:
    return {"id": aid, "kind": "replicate", "state": state, "volume": "tank/vol",
            "target": "s1", "created_at": 100.0, "finished_at": None, "status": None,
            "progress": {"done": done, "total": total, "unit": "bytes", "estimated": False},
            "usage": {"rate_bytes_per_second": extra.pop("rate", 0.0)}, "link": None, **extra}


def _frame(relationships: list[dict[str, Any]],
           activities: list[dict[str, Any]]) -> cli_watch.Frame:
    return cli_watch.Frame(
        status={"version": "0.1.0", "pid": 42, "uptime_seconds": 90.0,
                "activities": {"running": len(activities)}, "servers": {"local": True}},
        relationships=relationships, activities=activities, failed=[], links=[],
        fetched_at=1000.0)


def _text(renderable: Any, width: int = 250) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_replication_status_is_shown_only_when_it_says_something() -> None:
    slave = {"server": "s1", "state": "in-sync", "lag_seconds": 12.0,
             "link": {"server": "s1", "state": "up"}, "error": None}
    rel = {"name": "hot", "volume": "tank/vol", "master": "local", "state": "running",
           "slaves": [slave]}
    for shown in (rel, {**rel, "replication_status": "enabled", "active_server": "local"}):
        text = _text(cli_watch.render(_frame([shown], []), 1000.0))
        assert "replication" not in text and "active server" not in text
        assert section(text, "Relationships")[1].split() == [
            "hot", "tank/vol", "local", "running", "s1", "in-sync", "12s", "up"]
    failed_over = {**rel, "master": "s1", "replication_status": "failed-over",
                   "active_server": "s1"}
    shown = section(_text(cli_watch.render(_frame([failed_over], []), 1000.0)),
                    "Relationships")
    assert shown[0].split()[:5] == ["relationship", "volume", "master", "state", "replication"]
    assert shown[1].split()[2:5] == ["s1", "running", "failed-over"]


def test_header_last_errors_and_links_say_what_is_wrong_now() -> None:
    """A retrying link is retrying in the header, a down link is an error, and a healed
    link's old error is gone from the view."""
    retrying = {"server": "s1", "state": "retrying", "since": 940.0, "attempt": 4,
                "next_try_at": 1008.0, "last_error": "Connection refused"}
    healed = {"server": "s2", "state": "up", "since": None, "attempt": 0,
              "next_try_at": None, "last_error": "Connection timed out"}
    store = {"server": "s3", "state": "lost", "since": 990.0, "attempt": 0,
             "next_try_at": None, "last_error": "store unreachable"}
    frame = replace(_frame([], []), links=[retrying, healed, store], status={
        "version": "0.1.0", "pid": 42, "uptime_seconds": 90.0, "activities": {},
        "servers": {"local": True, "s1": True, "s2": True, "idle": False}})
    text = _text(cli_watch.render(frame, 1000.0))
    header = text.splitlines()[1]
    assert "servers: local up, s1 RETRYING, s2 up, idle DOWN, s3 LOST" in header, header
    errors = section(text, "Last errors")
    assert errors[0].split() == ["at", "id", "/", "link", "kind", "volume", "error"]
    assert row("\n".join(errors), "s1 ").split()[1:] == [
        "s1", "link", "-", "RETRYING:", "Connection", "refused"]
    assert "store unreachable" in row("\n".join(errors), "s3 ")
    assert "s2" not in "\n".join(errors)
    assert "timed out" not in text  # healed: its old error is not shown anywhere
    links = section(text, "Links")
    assert row("\n".join(links), "s2 ").split() == ["s2", "up", "-", "-", "-"]
    assert "Connection refused" in row("\n".join(links), "s1 ")
    healed_only = replace(frame, links=[healed])
    assert "Last errors: none" in _text(cli_watch.render(healed_only, 1000.0))


def test_a_busy_view_fits_120_columns() -> None:
    """Long names, a failover, every kind of trouble: each line fits, names give way
    with "…", ids, states and numbers never do."""
    link = {"server": "standby-two", "state": "retrying", "since": 900.0, "attempt": 7,
            "next_try_at": 1030.0,
            "last_error": "ssh: connect to host 10.0.0.2 port 22: Connection refused"}
    long_volume = "tank/projects/engineering/builds/nightly-artifacts"
    slave = {"server": "standby-two", "state": "behind", "lag_seconds": 3600.0, "link": link,
             "error": "cannot receive incremental stream: destination has been modified"}
    rel = {"name": "projects-hourly", "volume": long_volume, "master": "standby-one",
           "state": "running", "replication_status": "failed-over",
           "active_server": "standby-one",
           "slaves": [slave, {**slave, "server": "primary", "state": "in-sync", "link": None,
                              "error": None, "lag_seconds": 30.0}]}
    acts = [_activity("0123456789abcdef", "running", 4 * MiB, 16 * MiB, rate=3.0 * MiB,
                      volume=long_volume, target=f"standby-two:{long_volume}"),
            _activity("fedcba9876543210", "retrying", 5 * MiB, 1 << 40, link=link,
                      volume=long_volume, target=f"standby-two:{long_volume}"),
            _activity("aaaabbbbccccdddd", "suspended", 0, 0, kind="relationship")]
    failed = [{**_activity("1111222233334444", "failed", 0, 0), "finished_at": 990.0,
               "status": {"code": 1, "message": slave["error"]}}]
    frame = cli_watch.Frame(
        status={"version": "0.1.0", "pid": 12345, "uptime_seconds": 3 * 86400.0,
                "activities": {"running": 1, "retrying": 1, "suspended": 1},
                "servers": {"local": True, "primary": True, "standby-one": True,
                            "standby-two": True}},
        relationships=[rel], activities=acts, failed=failed, links=[link],
        fetched_at=1000.0)
    for plain in (False, True):
        text = _text(cli_watch.render(frame, 1000.0, plain=plain), width=120)
        assert max(map(len, text.splitlines())) <= 120, text
        assert "standby-two RETRYING" in text.splitlines()[1] + text.splitlines()[2]
        for a in [*acts, *failed]:
            assert a["id"] in text
        assert " RETRYING " in row(text, "fedcba9876543210")
        assert " SUSPENDED " in row(text, "aaaabbbbccccdddd")
        assert "4.0 MiB of 16.0 MiB" in row(text, "0123456789abcdef")
        rels = section(text, "Relationships")
        first = rels[1].split()
        assert first[0] == "projects-hourly" and first[1].startswith("tank/projects/")
        assert first[1].endswith("…") and first[2:5] == ["standby-one", "running",
                                                          "failed-over"], rels
        assert "retrying 100s" in rels[1]
        assert " link " in row("\n".join(section(text, "Last errors")), "  standby-two  ")


def test_progress_rate_eta_and_the_follow_line() -> None:
    a = _activity("a1", "running", 4 * MiB, 16 * MiB, rate=2.0 * MiB)
    assert cli_watch.progress_text(a["progress"]) == "4.0 MiB of 16.0 MiB (25%)"
    assert (cli_watch.rate_text(a), cli_watch.eta_text(a)) == ("2.0 MiB/s", "6s")
    line = _text(cli_watch.follow_line(a, 1000.0))
    assert line.split()[0] == "running" and "━" in line and "eta 6s" in line
    lost = {**a, "state": "retrying", "link": {"server": "s1", "state": "retrying",
                                               "since": 990.0, "attempt": 3,
                                               "next_try_at": 1002.0,
                                               "last_error": "Connection refused"}}
    assert cli_watch.eta_text(lost) == "-"
    assert cli_watch.link_text(lost["link"], 1000.0) == \
        "s1 retrying 10s, attempt 3, next try in 2s: Connection refused"
    plain = _text(cli_watch.render(_frame([], [a, {**lost, "id": "a2"}]), 1000.0,
                                   plain=True))
    assert "━" not in plain and "RETRYING" in row(plain, "a2")
    assert "(25%)" in row(plain, "a1")  # no bar: the percentage says it
    terminal = _text(cli_watch.render(_frame([], [a]), 1000.0))
    assert "━" in row(terminal, "a1") and "(25%)" not in terminal
    outage = cli_watch.Outage(since=995.0, error="cannot reach cerssd")
    stale = _text(cli_watch.render(_frame([], [a]), 1000.0, outage)).splitlines()
    assert stale[0] == "reconnecting… cannot reach cerssd (for 5s)"
    assert any("a1" in line for line in stale)  # the last frame stays on screen
    lines = _text(cli_watch.follow_line(a, 1000.0, outage)).splitlines()
    assert lines[0] == "reconnecting… cannot reach cerssd (for 5s)" and "eta 6s" in lines[1]


def test_follow_off_a_terminal_says_reconnecting_once_per_outage(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_watch, "RECONNECT_INTERVAL", 0.0)
    answers: list[Any] = [Unreachable("cannot reach cerssd"), Unreachable("still not"),
                          _activity("a1", "running", 1, 2),
                          Unreachable("gone again"), _activity("a1", "succeeded", 2, 2)]

    class Client:
        def request(self, method: str, path: str) -> Any:
            assert (method, path) == ("GET", f"/v1/activities/a1?wait={cli_watch.FOLLOW_WAIT}")
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    done = cli_watch.follow(Client(), _activity("a1", "running", 0, 2), None,  # type: ignore[arg-type]
                            Unreachable)
    assert done["state"] == "succeeded" and not answers
    assert capsys.readouterr().err.splitlines() == [
        "cerssctl: reconnecting… cannot reach cerssd", "cerssctl: reconnected",
        "cerssctl: reconnecting… gone again", "cerssctl: reconnected"]
    with pytest.raises(CliError):  # anything else (an unknown activity) still ends it
        answers[:] = [CliError("Not Found: no activity a1")]
        cli_watch.follow(Client(), _activity("a1", "running", 0, 2), None,  # type: ignore[arg-type]
                         Unreachable)


def test_interval_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert parser().parse_args(["status", "--watch", "--interval", "0.5"]).interval == 0.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            parser().parse_args(["status", "--watch", "--interval", bad])
    assert "interval" in capsys.readouterr().err


# -- the real command in a terminal, and through a pipe ------------------------------------

def default_sigint() -> None:
    """In the child: SIGINT as a terminal's user has it. A test run started as a background
    job of a script (some CI runners) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

class Pty:
    """``cerssctl`` with a pseudo-terminal as its controlling terminal and all of stdio."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 220, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        # setsid --ctty: a session of its own with the pty as controlling terminal, so the
        # ^C byte written below reaches it as SIGINT the way a keyboard's would.
        self.proc = subprocess.Popen(["setsid", "--ctty", *CTL, *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env,
                                     preexec_fn=default_sigint)
        os.close(slave)
        self.output = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's last user has gone
                return
            if not data:
                return
            with self.lock:
                self.output += data

    def text(self, start: int = 0) -> str:
        with self.lock:
            return self.output[start:].decode(errors="replace")

    def mark(self) -> int:
        with self.lock:
            return len(self.output)

    def wait_for(self, needle: str, start: int = 0, timeout: float = 30.0) -> None:
        wait_until(lambda: needle in self.text(start), timeout,
                   what=f"{needle!r} on the terminal; it shows:\n{self.text(start)[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        os.close(self.master)


@pytest.fixture
def pty_ctl() -> Iterator[Callable[[list[str]], Pty]]:
    made: list[Pty] = []

    def start(args: list[str]) -> Pty:
        made.append(Pty(args))
        return made[-1]

    yield start
    for p in made:
        p.close()


def test_watch_in_a_terminal_redraws_survives_a_restart_and_ends_on_ctrl_c(
        start_daemon: Any, pool: str, tmp_path: Path, pty_ctl: Any) -> None:
    d = start_daemon(extra=servers_with_a_lost_link(tmp_path))
    term = pty_ctl(["--socket", str(d.socket_path), "status", "--watch", "--interval", "0.2"])
    term.wait_for(f"pid {d.proc.pid}")
    term.wait_for("LOST")  # the gone server's link row
    term.wait_for("\x1b[1A")  # the cursor went up: the next refresh redrew in place
    assert "Traceback" not in term.text()

    down = term.mark()
    assert d.stop() == 0
    term.wait_for("reconnecting…", down)
    assert "cannot reach cerssd" in term.text(down)
    back = term.mark()
    d2 = start_daemon(config_path=d.config_path)
    term.wait_for(f"pid {d2.proc.pid}", back)

    os.write(term.master, b"\x03")  # Ctrl-C
    assert term.proc.wait(15) == 0
    assert "Traceback" not in term.text() and "KeyboardInterrupt" not in term.text()


def test_watch_prints_plain_snapshots_into_a_pipe(start_daemon: Any, pool: str,
                                                   tmp_path: Path) -> None:
    d = start_daemon(extra=servers_with_a_lost_link(tmp_path))
    proc = subprocess.Popen([*CTL, "--socket", str(d.socket_path), "status", "--watch",
                             "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        def blocks(pid: int) -> int:
            return sum(f"pid {pid} " in line for line in list(lines))

        wait_until(lambda: blocks(d.proc.pid) >= 2, what="two snapshots in the pipe")
        assert d.stop() == 0
        wait_until(lambda: any("reconnecting…" in line for line in list(lines)),
                   what="the outage line")
        d2 = start_daemon(config_path=d.config_path)
        wait_until(lambda: blocks(d2.proc.pid) >= 1, what="snapshots again after the restart")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert "\x1b" not in out and "━" not in out  # no escapes, no bars
    assert sum("reconnecting…" in line for line in lines) == 1  # once per outage
    first = out.split("--- ")[1]
    assert first.splitlines()[1].startswith("cerssd ") and "\nLinks\n" in first
    gone = next(line for line in first.splitlines() if line.startswith("gone "))
    assert gone.split()[1] in ("LOST", "RETRYING")
    assert "Traceback" not in proc.stderr.read()


# -- show --follow --------------------------------------------------------------------------
def follow(d: DaemonProcess, aid: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, "--socket", str(d.socket_path), *flags, "show", aid,
                           "--follow"], capture_output=True, text=True, timeout=120)


def test_follow_exits_with_the_activity_status(daemon: DaemonProcess, make_pool: Any,
                                               pty_ctl: Any) -> None:
    pool, dst = daemon.pool, make_pool()  # type: ignore[attr-defined]
    write_file(f"/{pool}/vol/data", 6)
    zfs("snapshot", f"{pool}/vol@s1")

    ok = replicate_slowly(daemon, f"{pool}/vol@s1", f"{dst}/ok", MiB)
    term = pty_ctl(["--socket", str(daemon.socket_path), "show", ok, "--follow"])
    term.wait_for("━")  # the live progress line, drawn while it runs
    assert term.proc.wait(60) == 0, term.text()
    term.reader.join(5)
    assert "state            succeeded" in term.text() and "status           0 " in term.text()

    bad = post_json(daemon, f"/v1/volumes/{pool}/vol/snapshots", {"name": "s1"}).body["id"]
    failed = follow(daemon, bad, "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["state"] == "failed"
    assert "already exists" in json.loads(failed.stdout)["status"]["message"]

    slow = replicate_slowly(daemon, f"{pool}/vol@s1", f"{dst}/slow", MiB // 2)
    proc = subprocess.Popen([*CTL, "--socket", str(daemon.socket_path), "show", slow,
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        daemon.wait_activity(slow, lambda a: a["progress"]["done"] > 0, what="bytes to flow")
        assert proc.poll() is None  # still following
        daemon.api("POST", f"/v1/activities/{slow}/cancel")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out + err
    assert "state            cancelled" in out and "Traceback" not in err


def test_follow_rides_out_a_daemon_restart(start_daemon: Any, make_pool: Any,
                                           pty_ctl: Any) -> None:
    """The daemon is stopped and started again while ``show --follow`` draws its line: it
    says it is reconnecting, carries on, and exits with the status of the activity, which
    the restarted daemon ran to its end."""
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/vol")
    write_file(f"/{src}/vol/data", 4)
    zfs("snapshot", f"{src}/vol@s1")
    d = start_daemon()
    aid = replicate_slowly(d, f"{src}/vol@s1", f"{dst}/copy", MiB)
    term = pty_ctl(["--socket", str(d.socket_path), "show", aid, "--follow"])
    term.wait_for("━")  # following: the live line is drawn
    down = term.mark()
    assert d.stop() == 0
    term.wait_for("reconnecting…", down)
    assert "cannot reach cerssd" in term.text(down)
    assert term.proc.poll() is None  # still following, with no daemon
    d2 = start_daemon(config_path=d.config_path)
    assert term.proc.wait(120) == 0, term.text()
    term.reader.join(5)
    text = term.text()
    assert f"id               {aid}" in text and "state            succeeded" in text
    assert "Traceback" not in text
    done = d2.api("GET", f"/v1/activities/{aid}")
    assert (done["state"], done["restarts"]) == ("succeeded", 1)


def test_snapshot_policies_are_listed_when_there_are_some() -> None:
    assert "Snapshot policies" not in _text(cli_watch.render(_frame([], []), 1000.0))
    ok = {"name": "hourly", "volume": "tank/vol", "state": "running", "last_run_at": 940.0,
          "next_run_at": 4540.0, "snapshots_kept": 24, "failures": 0, "last_error": None,
          "last_result": {"outcome": "snapshot"}}
    skipped = {**ok, "name": "db", "last_result": {"outcome": "skipped"}}
    failing = {**ok, "name": "far", "failures": 3, "snapshots_kept": None,
               "last_error": "run failed on s1: connection refused"}
    frame = replace(_frame([], []), policies=[ok, skipped, failing])
    rows = section(_text(cli_watch.render(frame, 1000.0)), "Snapshot policies")
    assert rows[0].split() == ["policy", "volume", "state", "last", "run", "next", "in",
                               "kept", "failures", "error"]
    assert rows[1].split() == ["hourly", "tank/vol", "running", "60s", "59m", "24", "0",
                               "ok"]
    assert rows[2].split()[0] == "db" and "pre hook failed: skipped" in rows[2]
    assert rows[3].split()[5:7] == ["-", "3"] and "connection refused" in rows[3]
