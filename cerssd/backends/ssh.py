"""Running commands on a remote server over SSH.

Two channels, each chosen for what it carries:

* control commands (``zfs list``, ``snapshot``, ``hold``...) go over one asyncssh
  connection per server, opened once and reused: a new handshake costs ~0.4 s here,
  more than a small incremental takes to send;
* bulk streams (``zfs send`` / ``zfs receive``) go through the OpenSSH client, whose C
  AES-GCM moves data far faster than Python can, multiplexed over one master
  connection per server (ControlMaster) so a stream does not pay for a handshake.

Both check the host key against the server's configured known_hosts and nothing
else; an unknown or changed key is a permanent error, never accepted. Command
lines are built by ``shlex.join`` from argv lists whose names were validated.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from ..config import ServerConfig
from .runner import CommandFailed, CommandResult

log = structlog.get_logger("cerssd.ssh")

DEFAULT_CIPHER = "aes128-gcm@openssh.com"


class SshError(Exception):
    """Could not run a command on the remote server."""

    permanent = False


class HostKeyRejected(SshError):
    permanent = True


class AuthenticationFailed(SshError):
    permanent = True


class LinkDown(SshError):
    """The server could not be reached, or the connection broke (transient)."""


class SshRunner:
    def __init__(self, cfg: ServerConfig, control_dir: Path, *,
                 keepalive_interval: float = 5.0, keepalive_count_max: int = 3,
                 connect_timeout: float = 10.0) -> None:
        assert cfg.host is not None and cfg.known_hosts is not None
        self.server = cfg.name
        self.cfg = cfg
        self.control_dir = control_dir
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.connect_timeout = connect_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"{self.cfg.user}@{self.cfg.host}:{self.cfg.port}"

    async def connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        cfg = self.cfg
        options: dict[str, Any] = {
            "port": cfg.port, "username": cfg.user, "known_hosts": str(cfg.known_hosts),
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": self.keepalive_count_max,
            "connect_timeout": self.connect_timeout, "agent_path": None,
            "config": [],
        }
        if cfg.identity_file is not None:
            options["client_keys"] = [str(cfg.identity_file)]
        try:
            conn = await asyncssh.connect(cfg.host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRejected(
                f"host key of {cfg.host}:{cfg.port} does not match {cfg.known_hosts} "
                f"(unknown or changed key; it is never accepted automatically): {exc}"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise AuthenticationFailed(
                f"{self.address} refused the key {cfg.identity_file}: {exc}") from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise LinkDown(f"cannot reach {self.address}: {exc or type(exc).__name__}") \
                from exc
        log.info("ssh connection established", server=self.server, address=self.address)
        return conn

    async def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        conn = await self.connection()
        try:
            result = await conn.run(shlex.join(argv), check=False)
        except (OSError, asyncssh.Error) as exc:
            self._conn = None
            raise LinkDown(f"lost the connection to {self.address}: {exc}") from exc
        out = _text(result.stdout)
        err = _text(result.stderr)
        rc = result.exit_status if result.exit_status is not None else 255
        if check and rc != 0:
            raise CommandFailed(argv, rc, err)
        return CommandResult(rc, out, err)

    def ssh_argv(self, argv: Sequence[str]) -> list[str]:
        """The OpenSSH client command line that runs ``argv`` on the server."""
        cfg = self.cfg
        opts = [
            "-p", str(cfg.port), "-l", cfg.user, "-c", cfg.cipher or DEFAULT_CIPHER,
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={cfg.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", f"ServerAliveInterval={max(1, int(self.keepalive_interval))}",
            "-o", f"ServerAliveCountMax={self.keepalive_count_max}",
            "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
            "-o", "ControlPersist=60", "-o", "LogLevel=ERROR", "-F", "/dev/null",
        ]
        if cfg.identity_file is not None:
            opts += ["-i", str(cfg.identity_file)]
        return ["ssh", *opts, "--", cfg.host or "", shlex.join(argv)]

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return await asyncio.create_subprocess_exec(
            *self.ssh_argv(argv),
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout, stderr=asyncio.subprocess.PIPE)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None
        # stop the stream multiplexer, if one is running
        opts = self.ssh_argv([])[1:-3]
        proc = await asyncio.create_subprocess_exec(
            "ssh", *opts, "-O", "exit", self.cfg.host or "",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
