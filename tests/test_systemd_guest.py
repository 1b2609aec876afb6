"""cerssd under a real systemd: the built Debian package installed in the OpenZFS guest
(a full Debian bookworm booted with systemd as PID 1), driven with ``systemctl``.

What the unit promises, each checked against systemd itself rather than an emulated
notify socket: ``start`` returns only after READY (Type=notify); ``reload`` applies a
changed config and keeps the old one when the new one is broken (the refusal visible in
``systemctl status`` and the journal); the watchdog restarts a daemon whose event loop is
stopped; ``stop`` ends a running transfer within the stop timeout and the transfer
resumes after ``start``; a config error exits 78 and is not restarted; a member of the
``cerssd`` group uses the control socket; the journal carries the structured fields.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cerssd import __version__

from .conftest import wait_until
from .openzfs_guest import OpenZfsGuest
from .packaging import REPO, Built

pytestmark = pytest.mark.openzfs

MiB = 1 << 20
CONFIG = "/etc/cerssd/cerssd.toml"
DROPIN = "/etc/systemd/system/cerssd.service.d/test.conf"

#: The node's own config: its OpenZFS pools as one local server, one relationship
#: between them (a standby pool on the same node keeps the test to one guest).
NODE_CONFIG = """\
[daemon]
control_group = "cerssd"

[servers.node]
kind = "local"

[relationships.data]
master = "node"
volume = "tank/data"
interval = "1h"
slaves = [{{server = "node", target_volume = "tank2/data"{slave}}}]
{extra}
"""


class Node:
    """Shell helpers for the guest as a cerssd node."""

    def __init__(self, vm: OpenZfsGuest) -> None:
        self.vm = vm

    def sh(self, command: str, check: bool = True, timeout: float = 600.0) -> str:
        result = self.vm.ssh("sh", "-c", command, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"guest: {command}: exit {result.returncode}: "
                                 f"{result.stderr}{result.stdout}")
        return result.stdout

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.vm.ssh("sh", "-c", command)

    def put(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            subprocess.run(self.vm.ssh_argv("sh", "-c", f"cat > {remote}"), stdin=f,
                           check=True, timeout=600)

    def write(self, path: str, text: str) -> None:
        result = self.vm.ssh("sh", "-c", f"cat > {path}", input=text)
        assert result.returncode == 0, result.stderr

    def show(self, *props: str) -> dict[str, str]:
        """``systemctl show`` of the unit's properties."""
        out = self.sh("systemctl show cerssd -p " + ",".join(props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def ctl(self, *args: str, user: str | None = None) -> Any:
        """``cerssctl --json ARGS`` on the node (as ``user`` with runuser)."""
        prefix = f"runuser -u {user} -- " if user else ""
        return json.loads(self.sh(prefix + "cerssctl --json " + " ".join(args)))

    def journal(self, since_cursor: str | None = None) -> list[dict[str, Any]]:
        after = f" --after-cursor='{since_cursor}'" if since_cursor else ""
        out = self.sh(f"journalctl -u cerssd -o json --no-pager{after}")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def cursor(self) -> str:
        out = self.sh("journalctl -u cerssd -o json -n 1 --no-pager")
        lines = [line for line in out.splitlines() if line.strip()]
        return str(json.loads(lines[-1])["__CURSOR"]) if lines else ""


@pytest.fixture(scope="module")
def node(openzfs_guest: OpenZfsGuest, cerssd_deb: Built) -> Iterator[Node]:
    """The package installed on the guest, its pools made; purged afterwards."""
    n = Node(openzfs_guest)
    deb = cerssd_deb.path
    a, b = openzfs_guest.disks
    n.sh(f"zpool create -f -o ashift=12 tank {a} && zpool create -f -o ashift=12 tank2 {b}")
    n.put(deb, "/root/cerssd.deb")
    n.sh("DEBIAN_FRONTEND=noninteractive dpkg -i /root/cerssd.deb")
    yield n
    n.sh("systemctl stop cerssd; rm -f " + DROPIN + "; systemctl daemon-reload; "
         "dpkg --purge cerssd; userdel -r op 2>/dev/null; "
         "zpool destroy -f tank; zpool destroy -f tank2", check=False)


def configure(node: Node, extra: str = "", slave: str = "") -> None:
    node.write(CONFIG, NODE_CONFIG.format(extra=extra, slave=slave))


@pytest.fixture
def started(node: Node) -> Iterator[Node]:
    node.sh("zfs create -p tank/data && zfs list tank/data >/dev/null")
    configure(node)
    node.sh("systemctl restart cerssd")
    yield node
    node.sh("systemctl stop cerssd; systemctl reset-failed cerssd; "
            "zfs destroy -rf tank2/data; zfs destroy -rf tank/data", check=False)


def test_the_package_installs_what_systemd_runs(node: Node) -> None:
    unit = node.sh("systemctl cat cerssd")
    assert "Type=notify" in unit and "/usr/local/bin" not in unit
    exec_start = node.show("ExecStart")["ExecStart"]
    path = exec_start.split("path=")[1].split(" ;")[0]
    assert node.run(f"test -x {path}").returncode == 0, exec_start
    assert "cerssd" in node.sh("getent group cerssd")
    assert node.sh("dpkg-query -W -f='${Conffiles}' cerssd").count(CONFIG) == 1


def test_start_returns_after_ready_and_the_socket_answers(started: Node) -> None:
    props = started.show("ActiveState", "SubState", "Type", "StatusText", "NotifyAccess")
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith("serving"), props
    # start returned, so READY was sent: the control socket answers at once
    status = started.ctl("status")
    assert "data" in json.dumps(status)
    # systemd's own "Started" line comes after the daemon opened its socket (READY=1)
    entries = started.journal()
    started_at = max(int(e["__MONOTONIC_TIMESTAMP"]) for e in entries
                     if str(e.get("MESSAGE", "")).startswith("Started cerssd"))
    listening = [int(e["__MONOTONIC_TIMESTAMP"]) for e in entries
                 if "control socket listening" in str(e.get("MESSAGE", ""))]
    assert listening and max(listening) <= started_at


def test_reload_applies_a_change_and_keeps_the_old_config_when_broken(started: Node) -> None:
    started.sh("zfs create tank/more")
    configure(started, '[relationships.more]\nmaster = "node"\nvolume = "tank/more"\n'
                       'interval = "1h"\nslaves = [{server = "node", '
                       'target_volume = "tank2/more"}]\n')
    started.sh("systemctl reload cerssd")
    wait_until(lambda: "more" in {r["name"] for r in
                                  started.ctl("relationships")["items"]},
               60, what="the reloaded relationship")
    pid = started.show("MainPID")["MainPID"]
    cursor = started.cursor()
    more = ('[relationships.more]\nmaster = "node"\nvolume = "tank/more"\n'
            'interval = "1h"\nslaves = [{server = "node", target_volume = "tank2/more"}]\n')
    started.write(CONFIG, NODE_CONFIG.format(extra=more, slave="")
                  .replace('interval = "1h"', 'interval = "soon"', 1))
    started.sh("systemctl reload cerssd")
    wait_until(lambda: "reload failed" in started.show("StatusText")["StatusText"], 60,
               what="the refused reload in systemctl status")
    status = started.sh("systemctl status cerssd --no-pager", check=False)
    assert "reload failed" in status and "interval" in status, status
    assert started.show("MainPID")["MainPID"] == pid  # the same process, still serving
    names = {r["name"] for r in started.ctl("relationships")["items"]}
    assert names == {"data", "more"}, names  # the old config stays in force
    assert any("interval" in json.dumps(e) for e in started.journal(cursor))
    started.sh("zfs destroy -rf tank/more; zfs destroy -rf tank2/more", check=False)


def test_the_watchdog_restarts_a_daemon_whose_loop_is_stopped(started: Node) -> None:
    started.sh(f"mkdir -p {Path(DROPIN).parent} && "
               f"printf '[Service]\\nWatchdogSec=6\\nRestartSec=1\\n' > {DROPIN} && "
               "systemctl daemon-reload && systemctl restart cerssd")
    try:
        before = started.show("MainPID", "NRestarts")
        started.sh(f"kill -STOP {before['MainPID']}")
        wait_until(lambda: started.show("MainPID")["MainPID"] not in
                   (before["MainPID"], "0") and
                   started.show("ActiveState")["ActiveState"] == "active",
                   90, what="systemd's watchdog to restart the stopped daemon")
        after = started.show("NRestarts")
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
        assert any("watchdog" in str(e.get("MESSAGE", "")).lower()
                   for e in started.journal())
        started.ctl("status")
    finally:
        started.sh(f"rm -f {DROPIN} && systemctl daemon-reload && systemctl restart cerssd")


def test_stop_ends_a_transfer_in_time_and_it_resumes_after_start(started: Node) -> None:
    started.sh(f"head -c {48 * MiB} /dev/urandom > /tank/data/f")
    configure(started, slave=f", bandwidth_limit = {2 * MiB}")
    started.sh("systemctl restart cerssd")
    started.ctl("relationship", "sync-now", "data")

    def running() -> dict[str, Any] | None:
        items = started.ctl("activities", "--kind", "replicate", "--state", "running")
        moving = [a for a in items["items"] if a["progress"]["done"] > 2 * MiB]
        return moving[0] if moving else None

    activity = wait_until(running, 300, what="a replication to be under way")
    t0 = time.monotonic()
    started.sh("systemctl stop cerssd", timeout=120)
    stopped_in = time.monotonic() - t0
    props = started.show("ActiveState", "Result", "TimeoutStopUSec")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
    assert stopped_in < 45, stopped_in
    configure(started)  # no bandwidth limit: the resumed transfer finishes
    started.sh("systemctl start cerssd")
    done = wait_until(
        lambda: (a := started.ctl("show", activity["id"]))["state"] in
        ("succeeded", "failed") and a, 600, what="the interrupted replication to finish")
    assert done["state"] == "succeeded", done
    assert done["restarts"] >= 1, done
    src = started.sh("zfs get -Hp -o value guid tank/data@" + done["params"]["snapshot"]
                     .split("@")[1])
    dst = started.sh("zfs get -Hp -o value guid tank2/data@" + done["params"]["snapshot"]
                     .split("@")[1])
    assert src == dst


def test_a_config_error_exits_78_and_is_not_restarted(node: Node) -> None:
    node.write(CONFIG, "[daemon]\nlog_level = 'loud'\n")
    try:
        result = node.run("systemctl restart cerssd")
        assert result.returncode != 0
        props = node.show("ActiveState", "Result", "NRestarts", "ExecMainStatus")
        assert props["ActiveState"] == "failed", props
        assert "78" in node.sh("systemctl status cerssd --no-pager", check=False)
        restarts = props["NRestarts"]
        # RestartSec is 5 s: had systemd meant to restart it, it would have by now
        time.sleep(8)
        again = node.show("ActiveState", "NRestarts")
        assert again == {"ActiveState": "failed", "NRestarts": restarts}, again
        assert any("log_level" in str(e.get("MESSAGE", "")) for e in node.journal())
    finally:
        configure(node)
        node.sh("systemctl reset-failed cerssd", check=False)


def test_a_member_of_the_cerssd_group_uses_the_socket(started: Node) -> None:
    started.sh("id op >/dev/null 2>&1 || useradd -m op; "
               "id other >/dev/null 2>&1 || useradd -m other; usermod -aG cerssd op")
    assert "data" in json.dumps(started.ctl("status", user="op"))
    refused = started.run("runuser -u other -- cerssctl status")
    assert refused.returncode != 0
    assert "ermission" in refused.stderr + refused.stdout


def test_the_journal_carries_structured_fields(started: Node) -> None:
    started.ctl("relationship", "sync-now", "data")
    wait_until(lambda: started.ctl("activities", "--kind", "replicate",
                                   "--state", "succeeded")["items"], 300,
               what="a replication to succeed")
    entries = started.journal()
    with_fields = [e for e in entries if "ACTIVITY_ID" in e and "VOLUME" in e]
    assert with_fields, entries[-5:]
    assert all(not str(e["MESSAGE"]).startswith("{") for e in with_fields)


# -- upgrade and downgrade (issue 19, item 6) ------------------------------------------

#: The journal migration version N+1 carries: a real step on the real mechanism
#: (cerssd.journal.MIGRATIONS), taking the journal from schema 3 to 4.
NEXT_MIGRATION = '''
SCHEMA_VERSION = 4
MIGRATIONS[4] = "ALTER TABLE relationships ADD COLUMN upgraded_note TEXT;\\n"
'''


def _bumped(version: str) -> str:
    major, minor, patch = version.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


@pytest.fixture(scope="module")
def next_deb(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Version N+1: a copy of this tree (not a git checkout) with the version bumped and
    one more journal migration step, built by scripts/build-deb with this checkout's
    venv (CERSSD_VENV)."""
    tree = tmp_path_factory.mktemp("next") / "cerssd"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    init = tree / "cerssd" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"',
                                             f'"{_bumped(__version__)}"'))
    journal = tree / "cerssd" / "journal.py"
    journal.write_text(journal.read_text() + NEXT_MIGRATION)
    t0 = time.monotonic()
    result = subprocess.run([str(tree / "scripts" / "build-deb")], cwd=tree,
                            env={**os.environ, "CERSSD_VENV": str(REPO / ".venv")},
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    (deb,) = (tree / "dist").glob(f"cerssd_{_bumped(__version__)}_*.deb")
    return Built(deb, time.monotonic() - t0)


def _schema(node: Node) -> int:
    return int(node.sh("python3 -c 'import sqlite3; print(sqlite3.connect("
                       "\"/var/lib/cerssd/journal.sqlite3\").execute("
                       "\"PRAGMA user_version\").fetchone()[0])'").strip())


def test_an_upgrade_keeps_the_journal_migrates_it_and_resumes_transfers(
        started: Node, next_deb: Built) -> None:
    """Version N with a relationship that has succeeded once and a transfer under way;
    ``dpkg -i`` of N+1 restarts the enabled unit (the postinst), which migrates the
    journal to schema 4: every activity and the relationship's state are still there
    and the interrupted transfer finishes."""
    node = started
    node.sh("systemctl enable cerssd")
    configure(node, slave=f", bandwidth_limit = {32 * 1024}")
    node.sh("systemctl restart cerssd")

    def in_sync() -> dict[str, Any] | None:
        slave: dict[str, Any] = node.ctl("relationship", "show", "data")["slaves"][0]
        return slave if slave["state"] == "in-sync" and slave["last_snapshot"] else None

    slave_before = wait_until(in_sync, 300, what="the relationship in sync under N")
    assert _schema(node) == 3
    # a second cycle with data to move, slowly: under way when the upgrade comes
    # 5 MiB at 32 KiB/s: 160 s, which spans dpkg's unpack, py3compile (~70 s here) and
    # restart; the resumed rest keeps the activity's limit, so no more than needed
    node.sh(f"head -c {5 * MiB} /dev/urandom > /tank/data/f")
    node.ctl("relationship", "sync-now", "data")

    def moving() -> dict[str, Any] | None:
        items = node.ctl("activities", "--kind", "replicate", "--state", "running")
        return next((a for a in items["items"] if a["progress"]["done"] > 0), None)

    activity = wait_until(moving, 300, what="a replication under way")
    before = node.ctl("activities", "--limit", "1000")
    configure(node)  # N+1 starts without the limit: the resumed transfer finishes
    node.put(next_deb.path, "/root/cerssd-next.deb")
    pid = node.show("MainPID")["MainPID"]
    out = node.sh("DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "
                  "/root/cerssd-next.deb 2>&1")
    assert "Unpacking cerssd" in out and _bumped(__version__) in out, out
    props = node.show("ActiveState", "MainPID")
    assert props["ActiveState"] == "active" and props["MainPID"] != pid, props
    assert node.ctl("status")["version"] == _bumped(__version__)
    assert _schema(node) == 4
    after = {a["id"]: a for a in node.ctl("activities", "--limit", "1000")["items"]}
    assert {a["id"] for a in before["items"]} <= set(after), "activities were lost"
    assert all(after[i]["state"] == a["state"] for i, a in
               ((a["id"], a) for a in before["items"]) if a["state"] == "succeeded")
    slave = node.ctl("relationship", "show", "data")["slaves"][0]
    assert slave["last_success_at"] >= slave_before["last_success_at"], slave
    done = wait_until(
        lambda: (a := node.ctl("show", activity["id"]))["state"] in
        ("succeeded", "failed") and a, 600, what="the interrupted replication to finish")
    assert done["state"] == "succeeded" and done["restarts"] >= 1, done
    node.sh("rm -f /tank/data/f")


def test_a_downgrade_is_refused_and_the_unit_does_not_flap(started: Node,
                                                           cerssd_deb: Built) -> None:
    """N over N+1: the older daemon will not open the journal N+1 migrated; it says why
    (status, journal) and exits 78, which the unit does not restart."""
    node = started
    assert _schema(node) == 4, "runs after the upgrade test"
    cursor = node.cursor()
    node.sh("DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /root/cerssd.deb")
    wait_until(lambda: node.show("ActiveState")["ActiveState"] == "failed", 60,
               what="the downgraded daemon to stop")
    props = node.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props["ExecMainStatus"] == "78" and props["NRestarts"] == "0", props
    status = node.sh("systemctl status cerssd --no-pager -n 20", check=False)
    assert "newer than this cerssd understands" in status, status
    assert any("newer than this cerssd" in str(e.get("MESSAGE", ""))
               for e in node.journal(cursor))
    time.sleep(8)  # RestartSec is 5 s: a restart would have happened by now
    assert node.show("ActiveState", "NRestarts") == {"ActiveState": "failed",
                                                     "NRestarts": "0"}
    assert _schema(node) == 4  # not touched
