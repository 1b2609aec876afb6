"""A non-root operator in ``daemon.control_group`` uses cerssctl against a real daemon,
through a runtime directory made the way the shipped unit has systemd make it.

Real accounts (``groupadd``/``useradd``, removed afterwards): the daemon checks
membership in the group database, and the kernel checks the directory and socket modes.
cerssctl runs in a child forked from the test, switched to the operator's uid, gid and
supplementary groups (``initgroups``, what a login does) before it opens the socket: the
venv's interpreter lives under /root, which the operator cannot enter, so it cannot be
exec'd as them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cerssd.daemon import closed_to_group

from .conftest import write_config

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "cerssd.service"


@dataclass(frozen=True)
class Accounts:
    group: str
    member: str
    outsider: str


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    tag = secrets.token_hex(3)
    acc = Accounts(group=f"cerssdg{tag}", member=f"cerssdm{tag}", outsider=f"cerssdo{tag}")
    made: list[list[str]] = []
    try:
        subprocess.run(["groupadd", "--system", acc.group], check=True)
        made.append(["groupdel", acc.group])
        for user, extra in ((acc.member, ["-G", acc.group]), (acc.outsider, [])):
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--shell", "/usr/sbin/nologin", *extra, user], check=True)
            made.insert(0, ["userdel", user])
        yield acc
    finally:
        for cmd in made:
            subprocess.run(cmd, check=False)


def as_user(user: str, *args: str) -> tuple[int, str]:
    """cerssctl ``args`` run as ``user`` (its uid, primary and supplementary groups):
    (exit status, stdout and stderr)."""
    from cerssd.cli.main import main

    pw = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 255
        try:
            # pytest's capture replaced sys.stdout/err: the child writes to the pipe instead
            sys.stdout = sys.stderr = os.fdopen(write_fd, "w", buffering=1)
            os.initgroups(user, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def unit_runtime_mode() -> int:
    match = re.search(r"^RuntimeDirectoryMode=(\d+)$", UNIT.read_text(), re.M)
    assert match, "the unit sets RuntimeDirectoryMode"
    return int(match.group(1), 8)


@contextlib.contextmanager
def runtime_dir(mode: int) -> Iterator[Path]:
    """``/run/cerssd`` as systemd makes it: root:root with the unit's mode, in a 0755
    parent (``/run``)."""
    base = Path(tempfile.mkdtemp(prefix="cerssd-rt-"))
    try:
        base.chmod(0o755)
        run = base / "cerssd"
        run.mkdir()
        os.chown(run, 0, 0)
        run.chmod(mode)
        yield run
    finally:
        shutil.rmtree(base, ignore_errors=True)


def start(start_daemon: Any, tmp_path: Path, run: Path, group: str, name: str) -> Any:
    config = write_config(tmp_path / f"{name}.toml", socket_path=run / "control.sock",
                          state_dir=tmp_path / f"state-{name}",
                          daemon_extra=f'control_group = "{group}"')
    return start_daemon(config_path=config)


def test_a_control_group_member_uses_cerssctl(start_daemon: Any, tmp_path: Path,
                                              accounts: Accounts) -> None:
    with runtime_dir(unit_runtime_mode()) as run:
        d = start(start_daemon, tmp_path, run, accounts.group, "unit")
        sock = str(d.socket_path)
        st = os.stat(sock)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, grp.getgrnam(accounts.group).gr_gid)
        code, out = as_user(accounts.member, "--socket", sock, "status")
        assert code == 0 and "local=up" in out, out
        # a mutating call gets past the permission check: 404 for an unknown id, not 403
        code, out = as_user(accounts.member, "--socket", sock, "suspend", "00ff")
        assert code == 1 and "no activity 00ff" in out, out
        # someone outside the group cannot even connect
        code, out = as_user(accounts.outsider, "--socket", sock, "status")
        assert code == 1 and "cerssctl: permission denied on" in out, out
        assert "cannot reach the socket" not in d.log()


def test_a_closed_runtime_directory_is_reported(start_daemon: Any, tmp_path: Path,
                                               accounts: Accounts) -> None:
    """What the unit's old RuntimeDirectoryMode=0750 did: members locked out, now said."""
    with runtime_dir(0o750) as run:
        d = start(start_daemon, tmp_path, run, accounts.group, "closed")
        code, out = as_user(accounts.member, "--socket", str(d.socket_path), "status")
        assert code == 1 and "cerssctl: permission denied on" in out, out
        line = next(x for x in d.log().splitlines() if "cannot reach the socket" in x)
        assert f'"directory": "{run}"' in line and '"mode": "0750"' in line


def test_closed_to_group() -> None:
    gid = 4242
    with runtime_dir(0o755) as run:
        _closed_to_group(run, gid)


def _closed_to_group(base: Path, gid: int) -> None:
    assert closed_to_group(base, gid) is None
    top = base / "top"
    inner = top / "inner"
    inner.mkdir(parents=True)
    top.chmod(0o755)
    inner.chmod(0o750)
    assert closed_to_group(inner, gid) == inner
    os.chown(inner, 0, gid)
    assert closed_to_group(inner, gid) is None
    inner.chmod(0o740)  # the group may list but not pass
    assert closed_to_group(inner, gid) == inner
    inner.chmod(0o755)
    top.chmod(0o700)
    assert closed_to_group(inner, gid) == top
