"""The ``openzfs_guest`` fixture: a real OpenZFS 2.x server in a QEMU guest, over SSH.

``scripts/openzfs-guest build`` makes (once per machine, cached outside the repo) a Debian
bookworm image with zfs-dkms. Each test session boots a throwaway copy-on-write overlay of
it with two fresh raw disks for pools, under software emulation (TCG), with user-mode
networking restricted to a single forwarded port on 127.0.0.1: the guest reaches nothing
and only its sshd is reached. The guest is powered off by pid afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .sshd import ssh_server_section

REPO = Path(__file__).resolve().parent.parent
GUEST_SCRIPT = REPO / "scripts" / "openzfs-guest"
BOOT_TIMEOUT = 180.0
DISK_SIZE = 1 << 30


@dataclass(frozen=True)
class OpenZfsGuest:
    """A booted guest: root over SSH on ``127.0.0.1:port``, pool disks ``disks``."""

    port: int
    client_key: Path
    known_hosts: Path
    disks: tuple[str, str]
    console_log: Path

    def ssh_argv(self, *argv: str, connect_timeout: int = 10) -> list[str]:
        """The OpenSSH command line that runs ``argv`` (shell-quoted) in the guest."""
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
                "root@127.0.0.1", "--", shlex.join(argv)]

    def ssh(self, *argv: str, input: str | None = None,
            timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the guest; the result is returned whatever its exit status."""
        return subprocess.run(self.ssh_argv(*argv), input=input, capture_output=True,
                              text=True, timeout=timeout)

    def server_config(self, name: str, *, extra: str = "", user: str = "root") -> str:
        """A cerssd ``[servers.NAME]`` section for this guest (as ``user``)."""
        return ssh_server_section(name, "127.0.0.1", self.port, self.client_key,
                                  self.known_hosts, extra, user)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _power_off(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the QEMU process (not our child: it daemonized), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _console_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def _build_image() -> Path:
    """The cached base image; built here on a machine that has none."""
    result = subprocess.run([str(GUEST_SCRIPT), "build"], capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"scripts/openzfs-guest build failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _boot(image: Path, root: Path) -> tuple[int, int]:
    """Start QEMU on an overlay of ``image``; returns (pid, forwarded port)."""
    cache = image.parent
    overlay = root / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image), str(overlay)], check=True)
    for disk in ("disk1.img", "disk2.img"):
        with open(root / disk, "wb") as f:
            f.truncate(DISK_SIZE)
    pidfile = root / "qemu.pid"
    error = ""
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = _free_port()
        result = subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
             "-m", "2048", "-smp", "2",
             "-kernel", str(cache / "vmlinuz"), "-initrd", str(cache / "initrd.img"),
             "-append", "root=/dev/vda rw console=ttyS0",
             "-drive", f"file={overlay},if=virtio,format=qcow2",
             "-drive", f"file={root / 'disk1.img'},if=virtio,format=raw",
             "-drive", f"file={root / 'disk2.img'},if=virtio,format=raw",
             "-nic", f"user,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
             "-display", "none", "-serial", f"file:{root / 'console.log'}",
             "-daemonize", "-pidfile", str(pidfile)],
            capture_output=True, text=True)
        if result.returncode == 0:
            return int(pidfile.read_text().strip()), port
        error = result.stderr
    raise RuntimeError(f"qemu-system-x86_64 did not start: {error}")


@pytest.fixture(scope="session")
def openzfs_guest() -> Iterator[OpenZfsGuest]:
    image = _build_image()
    root = Path(tempfile.mkdtemp(prefix="cerssd-openzfs-"))
    pid = 0
    try:
        # copies: a rebuild of the cache during the session must not change them
        key = root / "client_key"
        shutil.copyfile(image.parent / "client_key", key)
        key.chmod(0o600)
        host_key = " ".join((image.parent / "host_key.pub").read_text().split()[:2])
        pid, port = _boot(image, root)
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        guest = OpenZfsGuest(port, key, known_hosts, ("/dev/vdb", "/dev/vdc"),
                             root / "console.log")
        deadline = time.monotonic() + BOOT_TIMEOUT
        last = ""
        while True:
            if not _alive(pid):
                pytest.fail(f"QEMU exited during boot:\n{_console_tail(guest.console_log)}")
            try:
                probe = subprocess.run(guest.ssh_argv("test", "-e", "/dev/zfs",
                                                      connect_timeout=5),
                                       capture_output=True, text=True, timeout=30)
                if probe.returncode == 0:
                    break
                last = f"ssh exit {probe.returncode}: {probe.stderr.strip()}"
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            if time.monotonic() > deadline:
                pytest.fail(f"guest sshd with /dev/zfs not up after {BOOT_TIMEOUT:.0f}s "
                            f"({last}); console:\n{_console_tail(guest.console_log)}")
            time.sleep(2)
        yield guest
    finally:
        if pid:
            _power_off(pid)
        shutil.rmtree(root, ignore_errors=True)
