"""The unit file verifies cleanly, and the daemon speaks the notify protocol it declares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "cerssd.service"


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify checks that ExecStart exists: point it at the cerssd this test run uses
    # The venv's scripts sit next to its python, which need not be on PATH.
    cerssd = shutil.which("cerssd", path=f"{Path(sys.executable).parent}{os.pathsep}"
                          f"{os.environ.get('PATH', '')}")
    assert cerssd, "the cerssd console script must be installed (pip install -e .)"
    unit = tmp_path / "cerssd.service"
    unit.write_text(unit_text.replace("/usr/local/bin/cerssd", cerssd))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)


@pytest.fixture
def analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package")


def test_unit_verifies_cleanly(analyze: None, tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0
    assert "cerssd.service" not in result.stderr, result.stderr


def test_verify_would_catch_a_broken_unit(analyze: None, tmp_path: Path) -> None:
    result = verify(UNIT.read_text().replace("Type=notify", "Type=notfy"), tmp_path)
    assert "Failed to parse service type" in result.stderr


def test_unit_declares_notify_watchdog_reload_and_dirs() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=60", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RuntimeDirectory=cerssd", "StateDirectory=cerssd",
                 "RestartPreventExitStatus=78", "NoNewPrivileges=yes"):
        assert line in text.splitlines(), line
    assert "ProtectSystem" not in text.replace("(ProtectSystem", "")  # see the unit's note


def test_daemon_sends_watchdog_pings(start_daemon: Any) -> None:
    d = start_daemon(env={"WATCHDOG_USEC": "400000"})  # 0.4 s → a ping every 0.2 s
    pings = [d.next_notify() for _ in range(3)]
    assert all("WATCHDOG=1" in p for p in pings), pings
    assert any("READY=1" in m and "STATUS=serving" in m for m in d.messages)
