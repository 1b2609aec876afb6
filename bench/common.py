"""What the benchmarks in bench/ share: a throwaway ZFS/SSH/cerssd environment and a report.

Every benchmark here compares cerssd with a plain shell pipeline on the same machine, in
the same run, so both see the same disks, CPUs and noise. To make that comparison mean
something the environment must be the same for both and must not leak into the next run,
so everything is created here and registered for removal on a ``contextlib.ExitStack``
the moment it exists (also on error, Ctrl-C or SIGTERM, and only by the pid we started):

* zfs-fuse, started only if ``zpool list`` fails (and then stopped again);
* pools on sparse files, destroyed with their files;
* a private sshd on 127.0.0.1 with its own host and client keys, on one or more ports;
* a real ``cerssd`` daemon with its own config, state directory and control socket.

The daemon is driven through its control socket by :class:`SocketClient`, a small HTTP
client of our own rather than ``cerssd.cli.client.Client``: a long-poll (``?wait=S``) must be
allowed to outlast the CLI's 30 s socket timeout, and the benchmark should not break when
the CLI changes.

Progress goes to stderr (:func:`say`), the report to stdout, so ``> results.md`` captures
only the report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cerssd.cli.client import UnixHTTPConnection

REPO = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")
MIB = 1 << 20


class BenchError(Exception):
    """A step of the benchmark failed; printed as one message, exit status 1."""


def say(message: str) -> None:
    """Progress on stderr, so that stdout carries nothing but the Markdown report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, a failure becomes a BenchError quoting its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"`{shlex.join(argv)}` exited {result.returncode}: "
                         f"{(result.stderr or result.stdout).strip()}")
    return result


def bash(script: str, *, env: dict[str, str] | None = None,
         watch: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    """Run a pipeline with pipefail, so a failing ``zfs send`` fails the whole command.

    The pipeline gets its own process group: if the benchmark is interrupted, the whole
    group (bash, zfs send, ssh) is stopped, not only bash. ``watch(pid)`` is a context
    (an RSS sampler, say) held while the pipeline runs.
    """
    proc = subprocess.Popen(["bash", "-c", f"set -o pipefail; {script}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        with watch(proc.pid) if watch else contextlib.nullcontext():
            out, err = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError(f"`{script}` exited {proc.returncode}: {err.strip()}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true; a timeout names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cleanup(stack: contextlib.ExitStack, action: Callable[..., Any], *args: Any,
            **kwargs: Any) -> None:
    """Register a clean-up step whose failure is reported but does not stop the others."""

    def step() -> None:
        try:
            action(*args, **kwargs)
        except Exception as exc:
            say(f"clean-up step {getattr(action, '__name__', action)} failed: {exc}")

    stack.callback(step)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_pid(pid: int, what: str, timeout: float = 30.0) -> None:
    """SIGTERM one process we started, SIGKILL it if it does not go within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        say(f"{what} (pid {pid}) ignored SIGTERM; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- ZFS ---------------------------------------------------------------------------------

def zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["zfs", *args], check=check)


def zpool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["zpool", *args], check=check)


def guid(snapshot: str) -> str:
    """The exact guid: without ``-p`` zfs-fuse prints it rounded (``14.1E``), and two
    different snapshots would compare equal."""
    return zfs("get", "-Hp", "-o", "value", "guid", snapshot).stdout.strip()


def check_received(source_snapshot: str, target: str, label: str | None = None) -> None:
    """The target's copy must be the very snapshot that was sent (same guid)."""
    received = f"{target}@{label or source_snapshot.partition('@')[2]}"
    if guid(received) != guid(source_snapshot):
        raise BenchError(f"{received} does not have the guid of {source_snapshot}")


def retry_busy(action: Callable[[], subprocess.CompletedProcess[str]],
               gone: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """zfs-fuse calls a dataset or pool busy for a moment after it was used."""
    last: list[str] = []

    def attempt() -> bool:
        result = action()
        last[:] = [(result.stderr or result.stdout).strip()]
        return result.returncode == 0 or gone()

    try:
        wait_until(attempt, timeout, what, interval=0.2)
    except BenchError as exc:
        raise BenchError(f"{exc} (last error: {last[0] if last else '-'})") from None


def snapshots_of(volume: str) -> list[str]:
    """The volume's own snapshots (not its children's), oldest first."""
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r",
              volume).stdout
    return [name for name in out.split() if name.startswith(f"{volume}@")]


def release_holds(snapshots: Iterable[str], tags: Sequence[str]) -> None:
    """Release the user holds on ``snapshots`` (cerssd holds its common bases).

    zfs-fuse's ``zfs holds`` does not work (it wants pyzfs), so where it fails the tags
    cerssd would use (``cerssd:<destination>``, given as ``tags``) are released by name.
    """
    for snapshot in snapshots:
        if zfs("get", "-H", "-o", "value", "userrefs", snapshot).stdout.strip() in ("0", "-"):
            continue
        listed = zfs("holds", "-H", snapshot, check=False)
        found = ([line.split("\t")[1] for line in listed.stdout.splitlines() if "\t" in line]
                 if listed.returncode == 0 else list(tags))
        for tag in found:
            zfs("release", tag, snapshot, check=False)
        if zfs("get", "-H", "-o", "value", "userrefs", snapshot).stdout.strip() != "0":
            raise BenchError(f"{snapshot} still has user holds after releasing {found}")


def destroy_volume(volume: str, hold_tags: Sequence[str] = ()) -> None:
    """Destroy a target and its snapshots; cerssd's holds would refuse it, so release first."""
    release_holds(snapshots_of(volume), hold_tags)
    retry_busy(lambda: zfs("destroy", "-r", volume, check=False),
               lambda: zfs("list", "-H", volume, check=False).returncode != 0,
               f"{volume} to be destroyed")


def destroy_snapshot(snapshot: str, hold_tags: Sequence[str] = ()) -> None:
    """Destroy one snapshot cerssd made (and holds) on the master between runs."""
    release_holds([snapshot], hold_tags)
    retry_busy(lambda: zfs("destroy", snapshot, check=False),
               lambda: zfs("list", "-H", snapshot, check=False).returncode != 0,
               f"{snapshot} to be destroyed")


def write_random(path: Path, mib: int) -> None:
    """Incompressible data, so that the stream is as large as the data."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def stream_size(snapshot: str) -> tuple[int, float]:
    """``zfs send SNAP | wc -c``: the stream's bytes, and the seconds zfs alone takes."""
    start = time.monotonic()
    out = bash(f"zfs send {shlex.quote(snapshot)} | wc -c")
    return int(out.stdout.strip()), time.monotonic() - start


def _sectors_written() -> int:
    """Sectors written to whole disks so far (partitions and device-mapper left out)."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            fields = line.split()
            if len(fields) > 9 and Path(f"/sys/block/{fields[2]}/device").exists():
                total += int(fields[9])
    return total


def settle(what: str, mb_per_s: float = 5.0, timeout: float = 90.0) -> None:
    """Wait until the disks are quiet, so a measurement does not pay for the last one.

    zfs-fuse writes a pool's data out in transaction groups after ``zfs receive`` (or a
    file write) has returned, and frees a destroyed dataset's blocks in the background;
    on a small machine that write-out takes seconds and slows whatever runs next. Both
    methods start from quiet disks. Other people's writes may keep a disk busy: then we
    go on after ``timeout`` with a note.
    """
    deadline = time.monotonic() + timeout
    # Pages still dirty in the cache (the last measurement's writes the kernel has not
    # written yet) are writes too, not counted by the disks until written: write them now
    # rather than during the next measurement (the first of a pair paid for them). Twice:
    # a filesystem on a loop device (the btrfs benches') writes into its image file's
    # pages, and the filesystem holding the image may have been synced before that.
    os.sync()
    os.sync()
    before = _sectors_written()
    while True:
        time.sleep(1.0)
        now = _sectors_written()
        if (now - before) * 512 / 1e6 < mb_per_s:
            return
        if time.monotonic() > deadline:
            say(f"note: the disks did not quieten within {timeout:.0f}s before {what}")
            return
        before = now


def zfs_answers() -> bool:
    """Whether a ZFS (zfs-fuse here) answers: if so it is not ours to start or stop."""
    return zpool("list", "-H", check=False).returncode == 0


def ensure_zfs_fuse(stack: contextlib.ExitStack, scratch: Path) -> None:
    """Start zfs-fuse only if no ZFS answers; one that was running is never touched."""
    if zfs_answers():
        say("zfs-fuse is already running; leaving it alone")
        return
    if shutil.which("zfs-fuse") is None:
        raise BenchError("zfs-fuse is not installed (apt-get install zfs-fuse)")
    pidfile = scratch / "zfs-fuse.pid"
    say("starting zfs-fuse")
    run(["zfs-fuse", "--pidfile", str(pidfile)])
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30,
                         "zfs-fuse's pid file"))
    cleanup(stack, terminate_pid, pid, "zfs-fuse")
    wait_until(zfs_answers, 30, "zfs-fuse to answer")


def make_pool(stack: contextlib.ExitStack, scratch: Path, size_mib: int,
              role: str = "", *, mounted: bool = True) -> str:
    """A pool on a sparse file, with a random name so it cannot collide with anyone's.

    ``mounted=False``: ``mountpoint=none`` from the start, for benches whose datasets are
    never read as files: nothing is mounted, so nothing has to be unmounted either
    (zfs-fuse mounts ~1,000 filesystems at most, and a mount it has not answered leaves
    every later unmount hanging)."""
    name = f"bench{role}{secrets.token_hex(4)}"
    image = scratch / f"{name}.img"
    run(["truncate", "-s", f"{size_mib}M", str(image)])
    zpool("create", "-m", f"/{name}" if mounted else "none", name, str(image))

    def destroy() -> None:
        retry_busy(lambda: zpool("destroy", "-f", name, check=False),
                   lambda: zpool("list", name, check=False).returncode != 0,
                   f"pool {name} to be destroyed")
        image.unlink(missing_ok=True)

    cleanup(stack, destroy)
    say(f"pool {name} on {image} ({size_mib} MiB sparse)")
    return name


def scratch_dir(stack: contextlib.ExitStack, workdir: Path, need_bytes: float) -> Path:
    """A directory for the pools' sparse files; warns if they may not fit."""
    scratch = Path(tempfile.mkdtemp(prefix="cerssd-bench-pool-", dir=workdir))
    cleanup(stack, shutil.rmtree, scratch, ignore_errors=True)
    if shutil.disk_usage(scratch).free < need_bytes:
        say(f"warning: {scratch} has less than {need_bytes / MIB:.0f} MiB free")
    return scratch


def loop_btrfs(stack: contextlib.ExitStack, scratch: Path, size: int) -> Path:
    """A btrfs on a sparse file of ``size`` bytes, mounted; returns the mount point.

    The loop device does direct I/O: it writes to the image as a disk is written, not
    into a second page cache (the image file's) whose write-out the kernel does later,
    during whichever measurement runs next (seen as the second method of each round
    paying 1-3 s more for the same flush)."""
    if shutil.which("mkfs.btrfs") is None:
        raise BenchError("btrfs-progs is not installed (apt-get install btrfs-progs)")
    image, mnt = scratch / "btrfs.img", scratch / "mnt"
    mnt.mkdir()
    run(["truncate", "-s", str(size), str(image)])
    run(["mkfs.btrfs", "-q", str(image)])
    device = run(["losetup", "--direct-io=on", "--find", "--show", str(image)]).stdout.strip()
    cleanup(stack, run, ["losetup", "-d", device], check=False)
    run(["mount", device, str(mnt)])
    cleanup(stack, run, ["umount", str(mnt)], check=False)
    return mnt


# -- SSH ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sshd:
    ports: tuple[int, ...]
    client_key: Path
    known_hosts: Path
    pid: int

    @property
    def port(self) -> int:
        return self.ports[0]


def free_port() -> int:
    """A port nobody listens on now (sshd binds it a moment later; a clash fails loudly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(stack: contextlib.ExitStack, ports: int = 1, extra: str = "") -> Sshd:
    """A private sshd on 127.0.0.1 that lets root in with its own client key.

    It can listen on several ports: OpenSSH multiplexes streams to the same host, port
    and user over one connection, so servers that stand for different machines need
    different ports to get a connection each, as they would in real life. ``extra``:
    more sshd_config lines.
    """
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        raise BenchError("sshd is not installed (apt-get install openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-sshd-"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    for key in ("host_key", "client_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)])
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    chosen: list[int] = []
    while len(chosen) < ports:
        if (port := free_port()) not in chosen:
            chosen.append(port)
    host_pub = " ".join((root / "host_key.pub").read_text().split()[:2])
    (root / "known_hosts").write_text("".join(f"[127.0.0.1]:{p} {host_pub}\n" for p in chosen))
    # PYENV_REHASH_TIMEOUT: as tests/sshd.py's SESSION_ENV says (pyenv's lock, 60 s waits)
    (root / "sshd_config").write_text(
        "".join(f"Port {p}\n" for p in chosen)
        + f"ListenAddress 127.0.0.1\nHostKey {root}/host_key\n"
        f"PidFile {root}/sshd.pid\nAuthorizedKeysFile {root}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 64\n"
        "MaxStartups 64\nClientAliveInterval 5\nSetEnv PYENV_REHASH_TIMEOUT=1\n" + extra)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    warn_stale_pyenv_lock()
    run([sshd_bin, "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")])
    pidfile = root / "sshd.pid"
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         "sshd's pid file"))
    cleanup(stack, terminate_pid, pid, "sshd")
    say(f"sshd on 127.0.0.1 port(s) {', '.join(map(str, chosen))} (pid {pid})")
    return Sshd(tuple(chosen), root / "client_key", root / "known_hosts", pid)


#: pyenv's rehash lock, taken by every shell that runs ``pyenv init`` (root's ~/.bashrc
#: on these machines, which bash reads for every SSH session's command).
PYENV_LOCK = Path.home() / ".pyenv" / "shims" / ".pyenv-shim"


def warn_stale_pyenv_lock(older_than: float = 300.0) -> None:
    """Say so when a pyenv rehash lock was left behind by a killed shell: every SSH
    session then waits out ``PYENV_REHASH_TIMEOUT`` (1 s) before its command runs, which
    a baseline's single session and cerssd's several pay differently (found 2026-12-07:
    a lock 7 hours old; the generic-path baseline took 1 s longer per copy)."""
    with contextlib.suppress(OSError):
        age = time.time() - PYENV_LOCK.stat().st_mtime
        if age > older_than:
            say(f"warning: {PYENV_LOCK} is {age / 3600:.1f} h old, a stale pyenv lock: every "
                "SSH session waits 1 s for it and the figures are off; remove it (no pyenv "
                "rehash is running)")


def ssh_command(sshd: Sshd, cipher: str, remote: list[str], port: int | None = None,
                ) -> list[str]:
    """The baseline's ssh: a new connection per pipeline, as a shell script would make."""
    return ["ssh", "-c", cipher, "-p", str(port or sshd.port), "-i", str(sshd.client_key),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={sshd.known_hosts}", "root@127.0.0.1",
            shlex.join(remote)]


def plain_pipeline(snapshot: str, sshd: Sshd, cipher: str, target: str,
                   base: str | None = None, port: int | None = None) -> float:
    """``zfs send [-i BASE] SNAP | ssh ... zfs receive TARGET``; returns its wall seconds."""
    send = ["zfs", "send", *(["-i", base] if base else []), snapshot]
    script = (f"{shlex.join(send)} | "
              f"{shlex.join(ssh_command(sshd, cipher, ['zfs', 'receive', target], port))}")
    start = time.monotonic()
    bash(script)
    return time.monotonic() - start


# -- the daemon --------------------------------------------------------------------------

class ApiError(BenchError):
    """The daemon answered with an HTTP error (a problem document)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DaemonUnreachable(BenchError):
    """Nothing answers on the control socket (yet)."""


class SocketClient:
    """HTTP over the daemon's unix socket: JSON in and out, text for /metrics.

    One connection per request, as cerssctl does: the benchmark makes few requests, and
    a long-poll must not hold up anything else.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = str(socket_path)

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
            raise DaemonUnreachable(f"nothing answers on {self.socket_path}: "
                                    f"{exc.strerror}") from None
        except OSError as exc:
            raise BenchError(f"{method} {path} on {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        if response.status >= 400:
            try:
                problem = json.loads(data)
                detail = f"{problem.get('title', response.reason)}: {problem.get('detail')}"
            except ValueError:
                detail = data.decode(errors="replace")
            raise ApiError(response.status, f"{method} {path}: HTTP {response.status} {detail}")
        if not data:  # 204 No Content
            return None
        if response.getheader("Content-Type", "").startswith("text/plain"):
            return data.decode()
        return json.loads(data)


@dataclass(frozen=True)
class SshServer:
    """One ``kind = "ssh"`` server of the daemon's config, pointing at the bench sshd."""

    name: str
    port: int
    #: More lines for its section (a backend other than ZFS: ``backend``, ``root``).
    extra: str = ""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    root: Path
    socket_path: Path
    log_path: Path
    client: SocketClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = SocketClient(self.socket_path)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            timeout: float = 30.0) -> Any:
        return self.client.request(method, path, body, timeout=timeout)

    def wait_activity(self, activity_id: str, timeout: float = 3600.0) -> dict[str, Any]:
        """The activity's record once it is terminal.

        Long-polls (``?wait=``, answered the moment the activity ends) rather than polls:
        a benchmark that asks every few ms competes with the stream for the CPUs and the
        daemon's GIL, and measures its own polling granularity (bench/RESULTS.md).
        """
        deadline = time.monotonic() + timeout
        while True:
            wait = max(1, min(300, int(deadline - time.monotonic())))
            record: dict[str, Any] = self.api("GET", f"/v1/activities/{activity_id}"
                                              f"?wait={wait}", timeout=wait + 30)
            if record["state"] in TERMINAL:
                return record
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"activity {activity_id} still {record['state']} after "
                                 f"{timeout:.0f}s")

    def metric(self, name: str) -> float:
        """One unlabelled sample from the daemon's /metrics (on its socket)."""
        text: str = self.api("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(f"{name} ") or line.startswith(f"{name}{{}} "):
                return float(line.rsplit(" ", 1)[1])
        raise BenchError(f"cerssd's /metrics has no {name}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"cerssd exited {self.proc.returncode}:\n{self.log_tail()}")


def daemon_config(root: Path, sshd: Sshd, cipher: str, servers: Sequence[SshServer],
                  local_extra: str = "") -> str:
    """``[servers.local]`` plus one ssh server per entry, all with the same cipher as the
    baseline's ``ssh -c``, keys and known_hosts of the bench sshd."""
    text = ("[daemon]\n"
            f'control_socket = "{root / "control.sock"}"\n'
            f'state_dir = "{root / "state"}"\n'
            'metrics_listen = "off"\n\n'
            f'[servers.local]\nkind = "local"\n{local_extra}')
    for server in servers:
        text += (f'\n[servers.{server.name}]\nkind = "ssh"\nhost = "127.0.0.1"\n'
                 f'port = {server.port}\nuser = "root"\n'
                 f'identity_file = "{sshd.client_key}"\n'
                 f'known_hosts = "{sshd.known_hosts}"\n'
                 f'cipher = "{cipher}"\n{server.extra}')
    return text


def start_daemon(stack: contextlib.ExitStack, sshd: Sshd, cipher: str,
                 servers: Sequence[SshServer], keep_log: Path | None = None,
                 local_extra: str = "") -> Daemon:
    """A real cerssd with its own socket and state; stopped (SIGTERM) on the way out."""
    # Unix socket paths must stay under 108 bytes: a short directory directly in /tmp.
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-", dir="/tmp"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    config = root / "cerssd.toml"
    config.write_text(daemon_config(root, sshd, cipher, servers, local_extra))
    log_path = root / "cerssd.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)  # Ctrl-C reaches us; we stop it
    daemon = Daemon(proc, root, root / "control.sock", log_path)
    cleanup(stack, stop_daemon, daemon, keep_log)
    say(f"cerssd started (pid {proc.pid}), state in {root}")
    wait_ready(daemon, ["local", *(s.name for s in servers)])
    return daemon


def wait_ready(daemon: Daemon, names: Sequence[str], timeout: float = 60.0) -> None:
    """Until the daemon answers and has probed every server: a benchmark that starts
    while a server is still unknown would time the probe too."""

    def ready() -> dict[str, Any] | None:
        daemon.check_alive()
        try:
            status: dict[str, Any] = daemon.api("GET", "/v1/status")
        except DaemonUnreachable:
            return None
        return status

    status = wait_until(ready, timeout, "cerssd to answer on its socket")
    if not all(status["servers"].get(name) for name in names):
        servers = daemon.api("GET", "/v1/servers")
        errors = "; ".join(f"{s['name']}: {s['error']}" for s in servers["items"]
                           if not s["available"])
        raise BenchError(f"cerssd is up but a server is unavailable: {errors}")
    say(f"cerssd is ready; servers {', '.join(names)} available")


def stop_daemon(daemon: Daemon, keep_log: Path | None) -> None:
    proc = daemon.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            say(f"cerssd (pid {proc.pid}) ignored SIGTERM; killing it")
            proc.kill()
            proc.wait()
    # cerssd stops its ssh ControlMasters on shutdown; make sure, by their sockets.
    control_dir = daemon.socket_path.parent / "ssh"
    if control_dir.is_dir():
        for sock in control_dir.iterdir():
            if sock.is_socket():
                say(f"an ssh ControlMaster outlived cerssd ({sock.name}); stopping it")
                run(["ssh", "-S", str(sock), "-O", "exit", "cerssd-bench"], check=False)
    if keep_log is not None:
        shutil.copyfile(daemon.log_path, keep_log)
        say(f"cerssd's log copied to {keep_log}")


# -- CPU accounting ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Stat:
    comm: str
    ppid: int
    ticks: int  # utime + stime, in clock ticks


def _stat(stat_path: str) -> _Stat | None:
    """A process's or thread's name, parent and CPU time from its /proc stat file."""
    try:
        with open(stat_path) as f:
            text = f.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return _Stat(comm, int(fields[1]), int(fields[11]) + int(fields[12]))


def _busy_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return sum(cpu[:8]) - idle, idle


@dataclass
class CpuUse:
    """Where the CPU time of a window went: machine-wide busy share and per process."""

    seconds: float = 0.0
    busy: float = 0.0  # CPU-seconds used by everything on the machine
    capacity: float = 0.0  # CPU-seconds available (wall x CPUs)
    by_name: dict[str, float] = field(default_factory=dict)
    threads: dict[str, list[float]] = field(default_factory=dict)  # per named process

    def scaled(self, factor: float) -> CpuUse:
        """Every figure times ``factor`` (1/runs gives the figures of an average run)."""
        return CpuUse(self.seconds * factor, self.busy * factor, self.capacity * factor,
                      {name: value * factor for name, value in self.by_name.items()},
                      {name: [v * factor for v in values]
                       for name, values in self.threads.items()})

    def add(self, other: CpuUse) -> None:
        self.seconds += other.seconds
        self.busy += other.busy
        self.capacity += other.capacity
        for name, value in other.by_name.items():
            self.by_name[name] = self.by_name.get(name, 0.0) + value
        for name, values in other.threads.items():
            mine = self.threads.setdefault(name, [])
            mine.extend([0.0] * (len(values) - len(mine)))
            for i, value in enumerate(sorted(values, reverse=True)):
                mine[i] += value


class CpuSampler:
    """CPU seconds per process name while a measurement runs, from /proc.

    pidstat is not installed everywhere; /proc has the same counters. The sampler reads
    the utime + stime of the benchmark's processes every ``interval`` seconds in a thread
    of its own, so a short-lived ``zfs send`` or ``ssh`` is counted up to its last sample
    (losing at most one interval of it). ``named`` pids (the daemon, zfs-fuse) get their
    own label and a per-thread breakdown, to tell an event loop from its worker threads.

    Other people's processes may share the machine. A process is the benchmark's if it
    descends from one of ``roots`` (this script, its sshd, the daemon) or its command line
    contains one of ``markers`` (cerssd's ssh ControlMasters detach from the daemon but
    name its control directory); only those are read at every sample, which keeps the
    sampler cheap however busy the machine is. The rest is reported as one figure, the
    machine's busy time minus the benchmark's.
    """

    OTHERS = "everything else (busy - the above)"
    MAX_THREADS = 64  # more than this: threads read at the start and end only

    def __init__(self, named: dict[int, str], roots: Iterable[int] = (),
                 markers: Iterable[str] = (), interval: float = 0.1) -> None:
        self.named = named
        self.roots = {os.getpid(), *roots, *named}
        self.markers = tuple(markers)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._start: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], _Stat] = {}
        self._ours: dict[int, bool] = {}
        self._crowded: set[int] = set()
        self._t0 = 0.0
        self._cpu0 = (0, 0)
        self.result = CpuUse()

    def _owned(self, pid: int, depth: int = 0) -> bool:
        """Whether ``pid`` is the benchmark's; decided once per pid, when first seen."""
        known = self._ours.get(pid)
        if known is not None:
            return known
        if pid in self.roots:
            ours = True
        else:
            stat = _stat(f"/proc/{pid}/stat")
            ours = stat is not None and (
                self._has_marker(pid)
                or (stat.ppid > 1 and depth < 64 and self._owned(stat.ppid, depth + 1)))
        self._ours[pid] = ours
        return ours

    def _has_marker(self, pid: int) -> bool:
        if not self.markers:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return any(marker in cmdline for marker in self.markers)

    def _scan(self, threads_too: bool = False) -> dict[tuple[int, int], _Stat]:
        """One sample: (pid, 0) for processes, (pid, tid) for the threads of named ones.

        zfs-fuse runs thousands of threads when many pools exist (other people's tests);
        reading them all every sample would make the sampler the busiest process, so
        the threads of such a process are read only at the start and the end
        (``threads_too``), which suits its long-lived worker threads.
        """
        seen: dict[tuple[int, int], _Stat] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or not self._owned(pid := int(entry)):
                continue
            if (got := _stat(f"/proc/{pid}/stat")) is not None:
                seen[(pid, 0)] = got
            if pid in self.named and (threads_too or pid not in self._crowded):
                with contextlib.suppress(OSError):
                    tids = os.listdir(f"/proc/{pid}/task")
                    if len(tids) > self.MAX_THREADS:
                        self._crowded.add(pid)
                    for tid in tids:
                        got = _stat(f"/proc/{pid}/task/{tid}/stat")
                        if got is not None:
                            seen[(pid, int(tid))] = got
        return seen

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._scan())

    def __enter__(self) -> CpuSampler:
        self._start = {key: stat.ticks for key, stat in self._scan(True).items()}
        self._last = {}
        self._t0 = time.monotonic()
        self._cpu0 = _busy_idle()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._scan(True))
        hz = os.sysconf("SC_CLK_TCK")
        busy, idle = _busy_idle()
        busy, idle = busy - self._cpu0[0], idle - self._cpu0[1]
        use = CpuUse(seconds=time.monotonic() - self._t0, busy=busy / hz,
                     capacity=(busy + idle) / hz)
        ours = 0.0
        for (pid, tid), stat in self._last.items():
            spent = (stat.ticks - self._start.get((pid, tid), 0)) / hz
            if spent <= 0:
                continue
            name = self.named.get(pid, stat.comm)
            if tid == 0:  # the whole process
                ours += spent
                use.by_name[name] = use.by_name.get(name, 0.0) + spent
                continue
            use.threads.setdefault(name, []).append(spent)
            if tid == pid:
                label = f"{name} main thread"
                use.by_name[label] = use.by_name.get(label, 0.0) + spent
        use.by_name[self.OTHERS] = max(0.0, use.busy - ours)
        self.result = use


def pids_named(comm: str) -> list[int]:
    """Processes whose command name is ``comm`` (to label them, never to signal them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    found.append(int(entry))
    return found


def cpu_table(uses: dict[str, CpuUse], top: int = 8) -> list[str]:
    """Markdown: CPU-seconds per process name and method, averaged per run."""
    names: dict[str, float] = {}
    for use in uses.values():
        for name, value in use.by_name.items():
            names[name] = max(names.get(name, 0.0), value)
    rows = sorted(names, key=lambda n: -names[n])[:top]
    methods = list(uses)
    lines = ["| CPU-seconds | " + " | ".join(methods) + " |",
             "| --- |" + " ---: |" * len(methods),
             "| wall seconds | " + " | ".join(f"{uses[m].seconds:.2f}" for m in methods) + " |",
             "| machine busy (all CPUs) | " + " | ".join(
                 f"{uses[m].busy:.2f} ({100 * uses[m].busy / max(uses[m].capacity, 1e-9):.0f}%)"
                 for m in methods) + " |"]
    lines += [f"| {name} | " + " | ".join(f"{uses[m].by_name.get(name, 0.0):.2f}"
                                           for m in methods) + " |" for name in rows]
    return lines


# -- the report --------------------------------------------------------------------------

def machine() -> dict[str, str]:
    """What the figures depend on: CPUs, kernel, OpenSSH/OpenSSL, zfs-fuse."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = run(["nproc"], check=False).stdout.strip() or str(os.cpu_count())
    ssh_version = run(["ssh", "-V"], check=False).stderr.strip()
    zfs_fuse = run(["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"],
                   check=False).stdout.strip()
    return {"nproc": nproc, "cpu": model, "kernel": platform.release(), "ssh": ssh_version,
            "zfs_fuse": f"zfs-fuse {zfs_fuse}" if zfs_fuse else "zfs-fuse"}


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def rate(nbytes: float, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.1f} MB/s"


def seconds_list(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def command_line() -> str:
    return shlex.join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the clean-up


def bench_main(prog: str, body: Callable[[], str]) -> int:
    """Run one benchmark: as root, cleaned up on SIGTERM and Ctrl-C; the report on stdout.

    ``body`` builds its environment inside its own ExitStack and returns the report,
    which is printed only after the clean-up, so a half-finished run prints nothing.
    """
    if os.geteuid() != 0:
        print(f"{prog}: must run as root (zfs, sshd)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        report = body()
    except BenchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; cleaned up", file=sys.stderr)
        return 130
    print(report)
    return 0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every SSH benchmark takes, with the same meaning."""
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com",
                        help="ssh cipher for both methods")
    parser.add_argument("--daemon-log", type=Path, default=None,
                        help="keep a copy of cerssd's log here (it is removed otherwise)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the pools' sparse files go (default: the temp dir)")


@contextlib.contextmanager
def announced_stack() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose unwinding is announced, so a slow clean-up is not a mystery."""
    with contextlib.ExitStack() as stack:
        try:
            yield stack
        finally:
            say("cleaning up")
