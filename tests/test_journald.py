"""The daemon's events reach a real systemd-journald as journal fields.

This machine's PID 1 is not systemd, but ``systemd-journald`` runs on its own: each test
starts one in a private mount namespace (tmpfs over ``/run/systemd`` and ``/run/log``, so
the host's paths are untouched) and runs cerssd under ``systemd-cat``, whose stdout is a
journal stream, with ``JOURNAL_STREAM`` set to that stream as systemd sets it for a
unit. ``journalctl -o json`` on the namespace's journal is then what ``journalctl -u cerssd
-o json`` shows an operator.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cerssd.cli.client import Client

from .conftest import wait_until, write_config, zfs

JOURNALD = Path("/lib/systemd/systemd-journald")
CERSSD = str(Path(sys.executable).parent / "cerssd")

#: Runs in the new mount namespace: journald, then cerssd under systemd-cat; when cerssd
#: has ended, the journal as JSON into $OUT.
SCRIPT = r"""
set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
/lib/systemd/systemd-journald &
journald=$!
while [ ! -S /run/systemd/journal/stdout ]; do sleep 0.05; done
systemd-cat -t cerssd sh -c 'echo $$ > "$PIDFILE"
    export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/1)
    exec "$@"' sh "$@" || true
journalctl -D /run/log/journal -o json --no-pager > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
kill $journald
"""


@dataclass
class JournaldRun:
    proc: subprocess.Popen[bytes]
    pid_file: Path
    out: Path
    socket_path: Path

    def daemon_pid(self) -> int:
        return int(wait_until(lambda: self.pid_file.exists() and self.pid_file.read_text().strip(),
                              what="cerssd to start"))

    def entries(self) -> list[dict[str, Any]]:
        """Stop cerssd, then every entry of the namespace's journal."""
        os.kill(self.daemon_pid(), signal.SIGTERM)
        self.proc.wait(timeout=60)
        return [json.loads(line) for line in self.out.read_text().splitlines()]


@pytest.fixture
def journald_daemon(tmp_path: Path, zfs_fuse: None) -> Iterator[JournaldRun]:
    if not JOURNALD.exists() or shutil.which("systemd-cat") is None:
        pytest.fail("systemd-journald/systemd-cat are missing: .ci/run installs systemd")
    short = Path(tempfile.mkdtemp(prefix="cerssd-j-"))
    socket_path = short / "control.sock"
    config = write_config(tmp_path / "cerssd.toml", socket_path=socket_path,
                          state_dir=tmp_path / "state")
    run = JournaldRun(proc=subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh", CERSSD,
         "--config", str(config)],
        env={**os.environ, "PIDFILE": str(tmp_path / "cerssd.pid"),
             "OUT": str(tmp_path / "journal.json")}),
        pid_file=tmp_path / "cerssd.pid", out=tmp_path / "journal.json",
        socket_path=socket_path)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            if run.pid_file.exists():
                os.kill(int(run.pid_file.read_text()), signal.SIGTERM)
            run.proc.wait(timeout=60)
        shutil.rmtree(short, ignore_errors=True)


def test_events_are_journal_fields(journald_daemon: JournaldRun, pool: str) -> None:
    run = journald_daemon
    wait_until(run.socket_path.exists, what="the control socket")
    client = Client(str(run.socket_path))
    zfs("create", f"{pool}/j")
    aid = client.request("POST", f"/v1/volumes/{pool}/j/snapshots", {"name": "s1"})["id"]
    wait_until(lambda: client.request("GET", f"/v1/activities/{aid}")["state"] == "succeeded",
               what="the snapshot")
    mine = [e for e in run.entries() if e.get("SYSLOG_IDENTIFIER") == "cerssd"]
    # natively sent, not lines on the stdout stream
    assert mine and all(e["_TRANSPORT"] == "journal" for e in mine), mine[:3]
    listening = next(e for e in mine if e.get("CERSSD_EVENT") == "control socket listening")
    assert listening["PATH"] == str(run.socket_path) and listening["PRIORITY"] == "6"
    assert listening["MESSAGE"].startswith("control socket listening  path=")
    states = [e for e in mine if e.get("ACTIVITY_ID") == aid]
    assert states, "the activity's events carry ACTIVITY_ID"
    assert all(e["VOLUME"] == f"{pool}/j" for e in states)
    assert any(e.get("STATE") == "succeeded" for e in states), states
    # nothing was logged as a JSON string
    assert not any(e["MESSAGE"].lstrip().startswith("{") for e in mine)


#: In the namespace: journald, then one entry sent by cerssd.journald with a multi-line
#: field and one too large for a datagram (the memfd path), then the journal as JSON.
DIRECT = r"""
set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
/lib/systemd/systemd-journald >/dev/null 2>&1 &
journald=$!
while [ ! -S /run/systemd/journal/socket ]; do sleep 0.05; done
"$PYTHON" -c '
from cerssd.journald import Journal
j = Journal()
j.send({"MESSAGE": "two\nlines", "SYSLOG_IDENTIFIER": "cerssd-test", "N": 1})
j.send({"MESSAGE": "big", "SYSLOG_IDENTIFIER": "cerssd-test", "BLOB": "x" * 400000})
'
journalctl -D /run/log/journal -o json --all --no-pager SYSLOG_IDENTIFIER=cerssd-test
kill $journald
"""


def test_native_protocol_newlines_and_large_entries(tmp_path: Path) -> None:
    if not JOURNALD.exists():
        pytest.fail("systemd-journald is missing: .ci/run installs systemd")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", DIRECT],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["MESSAGE"] for e in entries] == ["two\nlines", "big"], entries
    assert entries[0]["N"] == "1" and entries[0]["_TRANSPORT"] == "journal"
    assert entries[1]["BLOB"] == "x" * 400000  # more than one datagram holds


def test_encode() -> None:
    from cerssd.journald import encode

    assert encode({"A": "b", "N": 3}) == b"A=b\nN=3\n"
    assert encode({"M": "x\ny"}) == b"M\n" + (3).to_bytes(8, "little") + b"x\ny\n"
    assert encode({"U": "é"}) == "U=é\n".encode()
