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
import secrets
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..config import ServerConfig
from ..links import Links
from .errors import LinkError, LinkLost
from .runner import CommandFailed, CommandResult, TransportFacts

if TYPE_CHECKING:
    import asyncssh

log = structlog.get_logger("cerssd.ssh")

DEFAULT_CIPHER = "aes128-gcm@openssh.com"
#: SSH keepalives, on both channels: a server that sends nothing for KEEPALIVE_INTERVAL
#: seconds is asked for a reply, and after KEEPALIVE_COUNT_MAX more such silences the
#: connection is declared dead. A cut link is so found within 8 s of the last packet
#: heard (OpenSSH checks on whole seconds: 7-8 s) whatever a stream's rate, and the loss
#: is reported at once. A live server answers a keepalive however slow its stream (a
#: bandwidth limit, a slow disk behind ``zfs receive``), so these do not misfire there;
#: the stall watchdog (``daemon.stall_timeout``) is left for hung processes. Measured
#: with 3 s x 2, a cut was reported in 7.8-8.7 s: too close to the 10 s an operator
#: expects on a busy node.
KEEPALIVE_INTERVAL = 2.0
KEEPALIVE_COUNT_MAX = 3
#: Command shells kept per server; more concurrent commands wait for one.
MAX_SHELLS = 4


class SshError(LinkError):
    """Could not run a command on the remote server."""


class HostKeyRejected(SshError):
    permanent = True


class AuthenticationFailed(SshError):
    permanent = True


class LinkDown(SshError, LinkLost):
    """The server could not be reached, or the connection broke (transient)."""


class SshRunner:
    facts = TransportFacts(connection_loss_reporting=True, direct_copy=False,
                           stream_sessions=True)

    def __init__(self, cfg: ServerConfig, control_dir: Path, *,
                 links: Links | None = None, keepalive_interval: float = KEEPALIVE_INTERVAL,
                 keepalive_count_max: int = KEEPALIVE_COUNT_MAX,
                 connect_timeout: float = 8.0) -> None:
        assert cfg.host is not None and cfg.known_hosts is not None
        self.server = cfg.name
        self.cfg = cfg
        self.control_dir = control_dir
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.connect_timeout = connect_timeout
        self.links = links
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._idle: list[RemoteShell] = []
        self._shells = asyncio.Semaphore(MAX_SHELLS)

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
        import asyncssh  # here: 15 MiB a daemon without SSH servers need not carry

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
            raise LinkDown(f"cannot reach {self.address}: {exc or type(exc).__name__}",
                           self.server) from exc
        log.info("ssh connection established", server=self.server, address=self.address)
        return conn

    async def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run ``argv`` on the server; link loss and recovery are reported to ``links``."""
        async with self._shells:
            try:
                result = await self._run(argv, check)
            except LinkDown as exc:
                if self.links is not None:
                    self.links.lost(self.server, str(exc))
                raise
        if self.links is not None and (link := self.links.get(self.server)) \
                and link.state != "up":
            self.links.up(self.server)
        return result

    async def _run(self, argv: Sequence[str], check: bool) -> CommandResult:
        import asyncssh

        shell = await self._shell()
        try:
            result = await shell.run(shlex.join(argv))
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError, ShellProtocolError) as exc:
            await self._drop_shell(shell)
            raise LinkDown(f"lost the connection to {self.address}: "
                           f"{exc or type(exc).__name__}", self.server) from exc
        except BaseException:  # cancelled mid-command: the shell's state is unknown
            shell.close()
            raise
        self._idle.append(shell)
        if check and result.returncode != 0:
            raise CommandFailed(argv, result.returncode, result.stderr)
        return result

    async def _shell(self) -> RemoteShell:
        """An idle command shell on the server, or a new one."""
        import asyncssh

        while self._idle:
            shell = self._idle.pop()
            if shell.alive and not shell.process.is_closing():
                return shell
            shell.close()  # its connection died meanwhile (keepalives): not worth a try
        conn = await self.connection()
        try:
            return await RemoteShell.start(conn)
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError, ShellProtocolError) as exc:
            self._conn = None
            raise LinkDown(f"cannot start a command shell on {self.address}: {exc}",
                           self.server) from exc

    async def _drop_shell(self, shell: RemoteShell) -> None:
        shell.close()
        self._conn = None  # the next command reconnects (a broken shell means a broken link)

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

    def rsync_shell(self) -> str:
        """rsync's ``-e``: the same OpenSSH client, options and stream multiplexer as the
        streams' (rsync splits it on spaces and honours the quotes ``shlex`` puts)."""
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return shlex.join(self.ssh_argv([])[:-3])

    async def spawn(self, argv: Sequence[str], *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return await asyncio.create_subprocess_exec(
            *self.ssh_argv(argv),
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout, stderr=asyncio.subprocess.PIPE)

    @property
    def mux_key(self) -> tuple[Path, str | None, int, str]:
        """What names the stream multiplexer's socket (``ControlPath`` ``%C`` hashes host,
        port and user): runners with equal keys share one."""
        return self.control_dir, self.cfg.host, self.cfg.port, self.cfg.user

    async def close(self, *, exit_mux: bool = True) -> None:
        """Close the connection and, unless another runner shares it (``exit_mux``
        false), the stream multiplexer with every stream still on it."""
        for shell in self._idle:
            shell.close()
        self._idle.clear()
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None
        if not exit_mux:
            return  # ControlPersist ends it once its streams are done
        # stop the stream multiplexer, if one is running
        opts = self.ssh_argv([])[1:-3]
        proc = await asyncio.create_subprocess_exec(
            "ssh", *opts, "-O", "exit", self.cfg.host or "",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()


class ShellProtocolError(Exception):
    pass


class RemoteShell:
    """One long-lived ``sh`` on the server that runs commands one at a time.

    A new SSH session costs a fork and the login shell's start-up files on the
    server (120-150 ms here, where root's .bashrc runs ``pyenv init``); a replication
    needs a dozen small zfs commands. Reusing one shell makes each cost what the
    command itself costs. Each command's stdout and stderr go to temporary files,
    then a header line with a per-shell marker, the exit status and both sizes is
    printed, followed by exactly those bytes, so output can never be mistaken for
    the protocol.
    """

    def __init__(self, process: asyncssh.SSHClientProcess[bytes], marker: str) -> None:
        self.process = process
        self.marker = marker.encode()
        self.alive = True

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection) -> RemoteShell:
        marker = f"cerssd-{secrets.token_hex(8)}"
        process = await conn.create_process("exec sh", encoding=None)
        shell = cls(process, marker)
        process.stdin.write(
            b'o=$(mktemp) && e=$(mktemp) && trap \'rm -f "$o" "$e"\' EXIT && '
            b'echo ' + shell.marker + b' ready\n')
        line = await process.stdout.readline()
        if line.strip() != shell.marker + b" ready":
            shell.close()
            raise ShellProtocolError(f"unexpected shell greeting {line[:200]!r}")
        return shell

    async def run(self, command: str) -> CommandResult:
        self.alive = False  # until this command's answer has been read completely
        script = (f'{command} </dev/null >"$o" 2>"$e"; rc=$?; '
                  f'printf "%s %s %s %s\\n" {self.marker.decode()} "$rc" '
                  f'"$(wc -c <"$o")" "$(wc -c <"$e")"; cat "$o" "$e"\n')
        self.process.stdin.write(script.encode())
        header = (await self.process.stdout.readline()).split()
        if len(header) != 4 or header[0] != self.marker:
            raise ShellProtocolError(f"unexpected answer {b' '.join(header)[:200]!r}")
        rc, out_len, err_len = (int(x) for x in header[1:])
        out = await self.process.stdout.readexactly(out_len) if out_len else b""
        err = await self.process.stdout.readexactly(err_len) if err_len else b""
        self.alive = True
        return CommandResult(rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def close(self) -> None:
        self.alive = False
        self.process.close()
