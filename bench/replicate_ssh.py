"""Benchmark: replicating a ZFS snapshot over SSH, cerssd against a plain shell pipeline.

What it measures, on the same machine and the same data, in the same run:

* **baseline**: ``zfs send SNAP | ssh -c CIPHER ... root@127.0.0.1 zfs receive TARGET``,
  run by ``bash -c`` with ``set -o pipefail``, timed wall clock;
* **cerssd**: a real ``cerssd`` daemon whose ``[servers.remote]`` is ``kind = "ssh"``
  (pointing at this benchmark's own sshd), driven through its control socket:
  ``POST /v1/replications``, then ``GET /v1/activities/{id}`` until the state is terminal;
  timed wall clock from the POST to the terminal state.

Two cases: **full** (``--size`` MiB of random data, snapshot ``s1``, full stream into a fresh
target) and **incremental** (``--incr`` MiB more, snapshot ``s2``, ``s1 -> s2`` into a target
that already holds ``s1``; the target is made to hold ``s1`` by an untimed full send of the
same method and rolled back to ``s1`` after each run). Each method receives into its own
target volume. Every measurement is repeated ``--runs`` times, alternating baseline and
cerssd, and the median is reported as MB/s (MB = 10^6 bytes of the send stream, measured
once with ``zfs send SNAP | wc -c``; the "send only" column is that command's own rate, an
upper bound for both methods). cerssd's ssh streams share one ControlMaster connection that
its first stream opens, so its first full run pays that handshake; the baseline pays one
per run.

Everything it needs is set up here and removed afterwards, also on error or Ctrl-C, by pid:
zfs-fuse (started only if ``zpool list`` fails, and then stopped), one pool on a sparse file,
a private sshd on 127.0.0.1 with its own host and client keys, and the daemon with its own
state directory and socket.

Run as root from the repository (cerssd installed, e.g. ``pip install -e .``)::

    python bench/replicate_ssh.py                # 1 GiB full, 256 MiB incremental, 3 runs
    python bench/replicate_ssh.py --quick        # 64 MiB, 16 MiB, 1 run: a smoke test
    python bench/replicate_ssh.py --cipher chacha20-poly1305@openssh.com
    python bench/replicate_ssh.py --daemon-log /tmp/cerssd.log --workdir /var/tmp

Progress goes to stderr; the report (machine, date, table) is Markdown on stdout, ready to
paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cerssd.cli import Client, CliError

REPO = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")
MIB = 1 << 20
HOLD_TAG = "cerssd:remote"  # cerssd's hold tag for destination "remote"


class BenchError(Exception):
    """A step of the benchmark failed; printed as one message, exit status 1."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"`{shlex.join(argv)}` exited {result.returncode}: "
                         f"{(result.stderr or result.stdout).strip()}")
    return result


def bash(script: str) -> subprocess.CompletedProcess[str]:
    """Run a pipeline with pipefail, so a failing ``zfs send`` fails the whole command.

    The pipeline gets its own process group: if the benchmark is interrupted, the whole
    group (bash, zfs send, ssh) is stopped, not only bash.
    """
    proc = subprocess.Popen(["bash", "-c", f"set -o pipefail; {script}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
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


def zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["zfs", *args], check=check)


def zpool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["zpool", *args], check=check)


def guid(snapshot: str) -> str:
    return zfs("get", "-H", "-o", "value", "guid", snapshot).stdout.strip()


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
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r",
              volume).stdout
    return [name for name in out.split() if name.startswith(f"{volume}@")]


def release_holds(snapshots: list[str]) -> None:
    """Release the user holds on ``snapshots`` (cerssd holds the common base on both sides).

    zfs-fuse's ``zfs holds`` does not work (it wants pyzfs), so where it fails the tag
    cerssd uses for destination "remote" is released by name.
    """
    for snapshot in snapshots:
        if zfs("get", "-H", "-o", "value", "userrefs", snapshot).stdout.strip() in ("0", "-"):
            continue
        listed = zfs("holds", "-H", snapshot, check=False)
        tags = ([line.split("\t")[1] for line in listed.stdout.splitlines() if "\t" in line]
                if listed.returncode == 0 else [HOLD_TAG])
        for tag in tags:
            zfs("release", tag, snapshot, check=False)
        if zfs("get", "-H", "-o", "value", "userrefs", snapshot).stdout.strip() != "0":
            raise BenchError(f"{snapshot} still has user holds after releasing {tags}")


def destroy_volume(volume: str) -> None:
    release_holds(snapshots_of(volume))
    retry_busy(lambda: zfs("destroy", "-r", volume, check=False),
               lambda: zfs("list", "-H", volume, check=False).returncode != 0,
               f"{volume} to be destroyed")


def write_random(path: Path, mib: int) -> None:
    """Incompressible data, so that the stream is as large as the data."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


# -- the environment ---------------------------------------------------------------------

def zfs_answers() -> bool:
    return zpool("list", "-H", check=False).returncode == 0


def ensure_zfs_fuse(stack: contextlib.ExitStack, scratch: Path) -> None:
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


def make_pool(stack: contextlib.ExitStack, scratch: Path, size_mib: int) -> str:
    name = f"bench{secrets.token_hex(4)}"
    image = scratch / f"{name}.img"
    run(["truncate", "-s", f"{size_mib}M", str(image)])
    zpool("create", "-m", f"/{name}", name, str(image))

    def destroy() -> None:
        retry_busy(lambda: zpool("destroy", "-f", name, check=False),
                   lambda: zpool("list", name, check=False).returncode != 0,
                   f"pool {name} to be destroyed")
        image.unlink(missing_ok=True)

    cleanup(stack, destroy)
    say(f"pool {name} on {image} ({size_mib} MiB sparse)")
    return name


@dataclass(frozen=True)
class Sshd:
    port: int
    client_key: Path
    known_hosts: Path
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(stack: contextlib.ExitStack) -> Sshd:
    """A private sshd on 127.0.0.1 that lets root in with its own client key."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        raise BenchError("sshd is not installed (apt-get install openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-sshd-"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    for key in ("host_key", "client_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)])
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    host_pub = " ".join((root / "host_key.pub").read_text().split()[:2])
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\n"
        f"PidFile {root}/sshd.pid\nAuthorizedKeysFile {root}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 64\n"
        "MaxStartups 64\nClientAliveInterval 5\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    run([sshd_bin, "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")])
    pidfile = root / "sshd.pid"
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         "sshd's pid file"))
    cleanup(stack, terminate_pid, pid, "sshd")
    say(f"sshd on 127.0.0.1:{port} (pid {pid})")
    return Sshd(port, root / "client_key", root / "known_hosts", pid)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    root: Path
    socket_path: Path
    log_path: Path
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(str(self.socket_path))

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.request(method, path, body)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"cerssd exited {self.proc.returncode}:\n{self.log_tail()}")


def start_daemon(stack: contextlib.ExitStack, sshd: Sshd, cipher: str,
                 keep_log: Path | None = None) -> Daemon:
    # Unix socket paths must stay under 108 bytes: a short directory directly in /tmp.
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-", dir="/tmp"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    socket_path = root / "control.sock"
    config = root / "cerssd.toml"
    config.write_text(
        "[daemon]\n"
        f'control_socket = "{socket_path}"\n'
        f'state_dir = "{root / "state"}"\n'
        'metrics_listen = "off"\n\n'
        '[servers.local]\nkind = "local"\n\n'
        '[servers.remote]\nkind = "ssh"\nhost = "127.0.0.1"\n'
        f'port = {sshd.port}\nuser = "root"\n'
        f'identity_file = "{sshd.client_key}"\n'
        f'known_hosts = "{sshd.known_hosts}"\n'
        f'cipher = "{cipher}"\n')
    log_path = root / "cerssd.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cerssd", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)  # Ctrl-C reaches us; we stop it
    daemon = Daemon(proc, root, socket_path, log_path)
    cleanup(stack, stop_daemon, daemon, keep_log)
    say(f"cerssd started (pid {proc.pid}), state in {root}")
    wait_ready(daemon)
    return daemon


def wait_ready(daemon: Daemon, timeout: float = 60.0) -> None:
    def ready() -> dict[str, Any] | None:
        daemon.check_alive()
        try:
            status: dict[str, Any] = daemon.api("GET", "/v1/status")
        except CliError:
            return None
        return status

    status = wait_until(ready, timeout, "cerssd to answer on its socket")
    if not all(status["servers"].get(name) for name in ("local", "remote")):
        servers = daemon.api("GET", "/v1/servers")
        errors = "; ".join(f"{s['name']}: {s['error']}" for s in servers["items"]
                           if not s["available"])
        raise BenchError(f"cerssd is up but a server is unavailable: {errors}")
    say("cerssd is ready; servers local and remote available")


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
    # cerssd stops its ssh ControlMaster on shutdown; make sure, by its control socket.
    control_dir = daemon.socket_path.parent / "ssh"
    if control_dir.is_dir():
        for sock in control_dir.iterdir():
            if sock.is_socket():
                say(f"an ssh ControlMaster outlived cerssd ({sock.name}); stopping it")
                run(["ssh", "-S", str(sock), "-O", "exit", "cerssd-bench"], check=False)
    if keep_log is not None:
        shutil.copyfile(daemon.log_path, keep_log)
        say(f"cerssd's log copied to {keep_log}")


# -- the measurements --------------------------------------------------------------------

@dataclass
class Case:
    name: str
    snapshot: str  # what is sent
    base: str | None  # incremental from this snapshot, or a full stream
    stream_bytes: int = 0
    send_only_seconds: float = 0.0
    baseline: list[float] = field(default_factory=list)
    cerssd: list[float] = field(default_factory=list)

    def send_argv(self) -> list[str]:
        return ["zfs", "send", *(["-i", self.base] if self.base else []), self.snapshot]


def measure_stream(case: Case) -> None:
    """``zfs send SNAP | wc -c``: the stream's size, and how fast zfs alone produces it."""
    start = time.monotonic()
    out = bash(f"{shlex.join(case.send_argv())} | wc -c")
    case.send_only_seconds = time.monotonic() - start
    case.stream_bytes = int(out.stdout.strip())
    say(f"{case.name}: stream {case.stream_bytes / 1e6:.1f} MB, zfs send | wc -c "
        f"{case.send_only_seconds:.2f} s ({rate(case.stream_bytes, case.send_only_seconds)})")


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.1f} MB/s"


def ssh_command(sshd: Sshd, cipher: str, remote: list[str]) -> list[str]:
    return ["ssh", "-c", cipher, "-p", str(sshd.port), "-i", str(sshd.client_key),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={sshd.known_hosts}", "root@127.0.0.1",
            shlex.join(remote)]


def baseline_send(case: Case, sshd: Sshd, cipher: str, target: str,
                  snapshot: str | None = None, base: str | None = None) -> float:
    """The plain pipeline; returns its wall-clock seconds."""
    send = ["zfs", "send", *(["-i", base] if base else []), snapshot or case.snapshot]
    script = (f"{shlex.join(send)} | "
              f"{shlex.join(ssh_command(sshd, cipher, ['zfs', 'receive', target]))}")
    start = time.monotonic()
    bash(script)
    return time.monotonic() - start


def cerssd_send(daemon: Daemon, snapshot: str, target: str, mode: str,
                expect_bytes: int | None = None,
                timeout: float = 3600.0) -> tuple[float, dict[str, Any]]:
    """POST a replication and wait for its end; returns wall-clock seconds and the record.

    ``mode`` is the plan cerssd must answer with ("full" or "incremental"), so that a
    changed planner cannot make the comparison unfair unnoticed.
    """
    body = {"snapshot": snapshot, "source": "local", "destination": "remote",
            "target_volume": target}
    start = time.monotonic()
    activity: dict[str, Any] = daemon.api("POST", "/v1/replications", body)
    if activity.get("plan", mode) != mode:
        raise BenchError(f"cerssd planned {activity['plan']!r} for {snapshot} -> {target}, "
                         f"expected {mode!r}")
    while activity["state"] not in TERMINAL:
        if time.monotonic() - start > timeout:
            raise BenchError(f"replication {activity['id']} still {activity['state']} "
                             f"after {timeout:.0f}s")
        # long-poll: answered the moment the activity ends, so no polling load on the
        # daemon (which shares the two CPUs with the stream) and no polling granularity
        activity = daemon.api("GET", f"/v1/activities/{activity['id']}?wait=60")
    elapsed = time.monotonic() - start
    status = activity.get("status") or {}
    if activity["state"] != "succeeded" or status.get("code") != 0:
        raise BenchError(f"cerssd replication {snapshot} -> {target} ended "
                         f"{activity['state']}: {status.get('message')}\n{daemon.log_tail()}")
    moved = activity["usage"]["bytes_read"]
    if expect_bytes is not None and moved != expect_bytes:
        say(f"note: cerssd counted {moved} bytes, zfs send | wc -c gave {expect_bytes}")
    return elapsed, activity


def check_received(source_snapshot: str, target: str) -> None:
    received = f"{target}@{source_snapshot.partition('@')[2]}"
    if guid(received) != guid(source_snapshot):
        raise BenchError(f"{received} does not have the guid of {source_snapshot}")


def bench_full(case: Case, runs: int, pool: str, sshd: Sshd, cipher: str,
               daemon: Daemon) -> None:
    for i in range(1, runs + 1):
        plain, ours = f"{pool}/plain_full_{i}", f"{pool}/cerssd_full_{i}"
        seconds = baseline_send(case, sshd, cipher, plain)
        check_received(case.snapshot, plain)
        destroy_volume(plain)
        case.baseline.append(seconds)
        say(f"full run {i}/{runs}: baseline {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)})")
        seconds, activity = cerssd_send(daemon, case.snapshot, ours, "full", case.stream_bytes)
        check_received(case.snapshot, ours)
        destroy_volume(ours)
        case.cerssd.append(seconds)
        say(f"full run {i}/{runs}: cerssd   {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)}; daemon's elapsed "
            f"{activity['usage']['elapsed_seconds']:.2f} s)")


def bench_incremental(case: Case, runs: int, pool: str, sshd: Sshd, cipher: str,
                      daemon: Daemon) -> None:
    assert case.base is not None
    plain, ours = f"{pool}/plain_incr", f"{pool}/cerssd_incr"
    # Untimed: each target gets s1 by a full send of its own method. The plain target is
    # made read-only like cerssd's replicas, so nothing can modify it between receives.
    say("incremental: giving each target the base snapshot (untimed full sends)")
    baseline_send(case, sshd, cipher, plain, snapshot=case.base)
    zfs("set", "readonly=on", plain)
    cerssd_send(daemon, case.base, ours, "full")
    base_label = case.base.partition("@")[2]
    for i in range(1, runs + 1):
        seconds = baseline_send(case, sshd, cipher, plain, base=case.base)
        check_received(case.snapshot, plain)
        rollback(f"{plain}@{base_label}")
        case.baseline.append(seconds)
        say(f"incremental run {i}/{runs}: baseline {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)})")
        seconds, activity = cerssd_send(daemon, case.snapshot, ours, "incremental",
                                        case.stream_bytes)
        check_received(case.snapshot, ours)
        rollback(f"{ours}@{base_label}")
        case.cerssd.append(seconds)
        say(f"incremental run {i}/{runs}: cerssd   {seconds:.2f} s "
            f"({rate(case.stream_bytes, seconds)}; daemon's elapsed "
            f"{activity['usage']['elapsed_seconds']:.2f} s)")


def rollback(snapshot: str) -> None:
    """Back to the base, destroying the received snapshot, for the next incremental run."""
    volume = snapshot.partition("@")[0]
    later = snapshots_of(volume)
    release_holds(later[later.index(snapshot) + 1:])
    retry_busy(lambda: zfs("rollback", "-r", snapshot, check=False),
               lambda: snapshots_of(volume)[-1] == snapshot,
               f"{volume} to roll back")


# -- the report --------------------------------------------------------------------------

def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = run(["nproc"], check=False).stdout.strip() or str(os.cpu_count())
    ssh_version = run(["ssh", "-V"], check=False).stderr.strip()
    return {"nproc": nproc, "cpu": model, "kernel": platform.release(), "ssh": ssh_version}


def report(cases: list[Case], args: argparse.Namespace, info: dict[str, str],
           started: dt.datetime, wall: float) -> str:
    lines = [
        f"### Replication over SSH: cerssd vs `zfs send | ssh | zfs receive` "
        f"({started:%Y-%m-%d})",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `python bench/replicate_ssh.py "
        f"--size {args.size} --incr {args.incr} --runs {args.runs} --cipher {args.cipher}` "
        f"({wall:.0f} s in all)",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, kernel {info['kernel']}, "
        f"{info['ssh']}, zfs-fuse, sshd on 127.0.0.1 (same host)",
        f"- data: {args.size} MiB random (full), {args.incr} MiB more (incremental); median of "
        f"{args.runs} run(s), alternating baseline and cerssd; MB = 10^6 bytes of send stream",
        "",
        "| case | stream MB | baseline MB/s | cerssd MB/s | cerssd/baseline | send only MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        mb = case.stream_bytes / 1e6
        base = mb / statistics.median(case.baseline)
        ours = mb / statistics.median(case.cerssd)
        send_only = mb / case.send_only_seconds
        lines.append(f"| {case.name} | {mb:.1f} | {base:.1f} | {ours:.1f} | "
                     f"{ours / base:.2f} | {send_only:.1f} |")
    lines.append("")
    for case in cases:
        lines.append(f"- {case.name} seconds per run: baseline "
                     f"{', '.join(f'{s:.2f}' for s in case.baseline)}; cerssd "
                     f"{', '.join(f'{s:.2f}' for s in case.cerssd)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time ZFS replication over SSH: cerssd against zfs send | ssh | zfs receive.")
    parser.add_argument("--size", type=int, default=1024, help="MiB of data for the full case")
    parser.add_argument("--incr", type=int, default=256,
                        help="MiB of data added for the incremental case")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com",
                        help="ssh cipher for both methods")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: --size 64 --incr 16 --runs 1")
    parser.add_argument("--daemon-log", type=Path, default=None,
                        help="keep a copy of cerssd's log here (it is removed otherwise)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the pool's sparse file goes (default: the temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.incr, args.runs = 64, 16, 1
    for name in ("size", "incr", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the clean-up


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[str, Sshd, Daemon]]:
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="cerssd-bench-pool-", dir=args.workdir))
        cleanup(stack, shutil.rmtree, scratch, ignore_errors=True)
        pool_mib = 4 * (args.size + args.incr) + 1024
        needed = 3 * (args.size + args.incr) * MIB * 1.1
        if shutil.disk_usage(scratch).free < needed:
            say(f"warning: {scratch} has less than {needed / MIB:.0f} MiB free")
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, pool_mib)
        sshd = start_sshd(stack)
        daemon = start_daemon(stack, sshd, args.cipher, args.daemon_log)
        try:
            yield pool, sshd, daemon
        finally:
            say("cleaning up")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("replicate_ssh: must run as root (zfs, sshd)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    try:
        with environment(args) as (pool, sshd, daemon):
            src = f"{pool}/src"
            zfs("create", src)
            say(f"writing {args.size} MiB of random data")
            write_random(Path(f"/{src}/data1"), args.size)
            zfs("snapshot", f"{src}@s1")
            full = Case("full", f"{src}@s1", None)
            measure_stream(full)
            bench_full(full, args.runs, pool, sshd, args.cipher, daemon)

            say(f"writing {args.incr} MiB more")
            write_random(Path(f"/{src}/data2"), args.incr)
            zfs("snapshot", f"{src}@s2")
            incr = Case("incremental", f"{src}@s2", f"{src}@s1")
            measure_stream(incr)
            bench_incremental(incr, args.runs, pool, sshd, args.cipher, daemon)
            daemon.check_alive()
    except (BenchError, CliError) as exc:
        print(f"replicate_ssh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("replicate_ssh: interrupted; cleaned up", file=sys.stderr)
        return 130
    info = machine()
    print(report([full, incr], args, info, started, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
