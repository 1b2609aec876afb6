"""An OpenZFS 2.x guest for benchmarks that zfs-fuse cannot serve, and what to install in it.

The peers cerssd is compared with on trees (syncoid, zfs-autobackup) do not run against
zfs-fuse 0.7 (bench/RESULTS.md, "Tree cycle vs peers": ``zfs get -t`` is refused, and
syncoid's fallback for it breaks over SSH), so the tree benchmark runs them where users
run them: on OpenZFS, inside the guest that ``scripts/openzfs-guest`` builds for the tests.
Both pools (master and slave) live in one guest; the peers run in the guest and reach
"the other machine" through the guest's own sshd on its loopback, as a push or pull
between two hosts would, less the network.

The guest is booted from a throwaway copy-on-write overlay of the cached image, with two
raw disks of ``disk_mib`` each, KVM when the host offers it (TCG otherwise), and
user-mode networking that forwards ``ports`` host ports on 127.0.0.1 to the guest's sshd
(one per cerssd server, so a master and a slave get a connection each). The guest reaches
nothing outside. It is powered off by pid when the ExitStack unwinds.

Packages are brought in from the host, never fetched by the guest: Debian packages are
downloaded by the host's apt with the guest's dpkg status (so exactly the missing closure
comes), Python packages are installed by the host's pip into a directory (``--target``)
that is copied in and put on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, BenchError, cleanup, free_port, run, say, terminate_pid, wait_until

GUEST_SCRIPT = REPO / "scripts" / "openzfs-guest"
#: Debian packages downloaded for the guest are kept here between runs.
DEB_CACHE = Path("/var/cache/cerssd/bench-guest-debs")
#: ``-cpu host`` and ``max`` fail under this machine's KVM (an MSR write is refused, and
#: QEMU aborts); the plain model boots.
KVM_CPU = ["-accel", "kvm", "-cpu", "qemu64"]


@dataclass(frozen=True)
class Guest:
    """A booted guest: root over SSH on ``127.0.0.1:ports[i]``, pool disks ``disks``."""

    ports: tuple[int, ...]
    client_key: Path
    known_hosts: Path
    disks: tuple[str, str]
    root: Path
    accel: str

    @property
    def port(self) -> int:
        return self.ports[0]

    def ssh_argv(self, command: str, port: int | None = None) -> list[str]:
        """OpenSSH running the shell ``command`` in the guest as root."""
        return ["ssh", "-F", "/dev/null", "-p", str(port or self.port),
                "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", "root@127.0.0.1", "--", command]

    def sh(self, command: str, *, check: bool = True, stdin: bytes | None = None,
           timeout: float = 3600.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` under the guest's shell; with ``check``, a failure is a
        BenchError quoting its stderr."""
        result = subprocess.run(self.ssh_argv(command), input=stdin, capture_output=True,
                                timeout=timeout)
        out = subprocess.CompletedProcess(result.args, result.returncode,
                                          result.stdout.decode(errors="replace"),
                                          result.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise BenchError(f"guest: `{command[:300]}` exited {out.returncode}: "
                             f"{(out.stderr or out.stdout).strip()[-2000:]}")
        return out

    def put_tree(self, local: Path, remote_dir: str) -> None:
        """Copy the directory ``local``'s contents into ``remote_dir`` in the guest."""
        tar = subprocess.run(["tar", "-C", str(local), "-cf", "-", "."], capture_output=True,
                             check=True)
        self.sh(f"mkdir -p {shlex.quote(remote_dir)} && tar -C {shlex.quote(remote_dir)} -xf -",
                stdin=tar.stdout)


def kvm_usable() -> bool:
    """Whether QEMU can start a KVM machine here (nested virtualisation may be absent).

    A machine that starts stays up (paused, ``-S``) until the probe's timeout ends it; one
    that cannot exits at once with an error (or aborts, as ``-cpu host`` does here).
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        subprocess.run(["qemu-system-x86_64", *KVM_CPU, "-m", "64", "-display", "none",
                        "-nodefaults", "-monitor", "none", "-serial", "none"],
                       capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        return True
    return False


def image() -> Path:
    """The cached guest image, built (about 8 minutes, once per machine) if missing."""
    result = subprocess.run([str(GUEST_SCRIPT), "build"], capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        raise BenchError(f"scripts/openzfs-guest build failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def boot(stack: contextlib.ExitStack, *, disk_mib: int, ports: int = 1, memory_mib: int = 4096,
         accel: str = "auto", boot_timeout: float = 300.0) -> Guest:
    """Boot a throwaway guest with two raw pool disks; powered off when ``stack`` unwinds."""
    base = image()
    root = Path(tempfile.mkdtemp(prefix="cerssd-bench-guest-", dir="/var/tmp"))
    cleanup(stack, shutil.rmtree, root, ignore_errors=True)
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    key = root / "client_key"
    shutil.copyfile(base.parent / "client_key", key)
    key.chmod(0o600)
    host_key = " ".join((base.parent / "host_key.pub").read_text().split()[:2])
    overlay = root / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
         str(overlay)])
    for disk in ("disk1.img", "disk2.img"):
        with open(root / disk, "wb") as f:
            f.truncate(disk_mib * (1 << 20))
    chosen: list[int] = []
    while len(chosen) < ports:
        if (port := free_port()) not in chosen:
            chosen.append(port)
    forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{p}-:22" for p in chosen)
    cpu = KVM_CPU if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    pidfile = root / "qemu.pid"
    run(["qemu-system-x86_64", *cpu, "-m", str(memory_mib), "-smp", "2",
         "-kernel", str(base.parent / "vmlinuz"), "-initrd", str(base.parent / "initrd.img"),
         "-append", "root=/dev/vda rw console=ttyS0",
         "-drive", f"file={overlay},if=virtio,format=qcow2",
         "-drive", f"file={root / 'disk1.img'},if=virtio,format=raw,cache=unsafe",
         "-drive", f"file={root / 'disk2.img'},if=virtio,format=raw,cache=unsafe",
         "-nic", f"user,restrict=on,{forwards}",
         "-display", "none", "-serial", f"file:{root / 'console.log'}",
         "-daemonize", "-pidfile", str(pidfile)])
    pid = int(pidfile.read_text().strip())
    cleanup(stack, terminate_pid, pid, "the OpenZFS guest (qemu)")
    known_hosts = root / "known_hosts"
    known_hosts.write_text("".join(f"[127.0.0.1]:{p} {host_key}\n" for p in chosen))
    guest = Guest(tuple(chosen), key, known_hosts, ("/dev/vdb", "/dev/vdc"), root, accel)
    say(f"booting the OpenZFS guest ({accel}, pid {pid}, ssh on 127.0.0.1:"
        f"{', '.join(map(str, chosen))})")
    start = time.monotonic()

    def up() -> bool:
        if not os.path.exists(f"/proc/{pid}"):
            console = (root / "console.log").read_text(errors="replace")[-3000:]
            raise BenchError(f"QEMU exited during boot:\n{console}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            return guest.sh("test -e /dev/zfs", check=False, timeout=30).returncode == 0
        return False

    wait_until(up, boot_timeout, "the guest's sshd with /dev/zfs", interval=2.0)
    say(f"guest up in {time.monotonic() - start:.0f} s: "
        f"{guest.sh('zfs version | head -n1').stdout.strip()}")
    return guest


def describe(guest: Guest, path: Path) -> None:
    """Write what :func:`attach` needs to reach ``guest`` from another process."""
    path.write_text(f"{guest.port} {guest.client_key} {guest.known_hosts} {guest.root} "
                    f"{guest.accel}\n")


def attach(path: Path) -> Guest:
    """A guest booted by another process (``python bench/guest.py FILE`` or
    :func:`describe`): booting under TCG costs minutes that a re-run need not pay again.
    The caller starts from what that guest holds; it is not powered off here."""
    port, key, known_hosts, root, accel = path.read_text().split()
    guest = Guest((int(port),), Path(key), Path(known_hosts), ("/dev/vdb", "/dev/vdc"),
                  Path(root), accel)
    say(f"attached to the guest on 127.0.0.1:{port}: "
        f"{guest.sh('zfs version | head -n1').stdout.strip()}")
    return guest


def loopback_ssh(guest: Guest) -> None:
    """Let root in the guest ssh to root@127.0.0.1 in the guest (the peers' transport)."""
    host_key = " ".join((image().parent / "host_key.pub").read_text().split()[:2])
    guest.sh("set -e; test -e /root/.ssh/id_ed25519 || "
             "ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519; "
             "cat /root/.ssh/id_ed25519.pub >> /root/.ssh/authorized_keys; "
             f"echo {shlex.quote('127.0.0.1 ' + host_key)} > /root/.ssh/known_hosts; "
             "ssh -o BatchMode=yes root@127.0.0.1 true")


def install_debs(guest: Guest, packages: list[str], mask_units: list[str] = ()) -> None:
    """Install Debian ``packages`` (and whatever they need that the guest lacks).

    The host's apt resolves against the guest's dpkg status and downloads the closure into
    :data:`DEB_CACHE`; the debs are copied in and installed with dpkg. ``mask_units``
    (timers a package would enable) are masked first, so nothing runs behind the bench.
    """
    work = Path(tempfile.mkdtemp(prefix="cerssd-bench-debs-"))
    try:
        (work / "status").write_text(guest.sh("cat /var/lib/dpkg/status").stdout)
        DEB_CACHE.joinpath("partial").mkdir(parents=True, exist_ok=True)
        # against an empty archive directory, so that debs cached earlier are listed too
        (work / "none" / "partial").mkdir(parents=True)
        listing = run(["apt-get", "install", "-y", "-q", "--print-uris", "--no-install-recommends",
                       "-o", f"Dir::State::status={work / 'status'}",
                       "-o", f"Dir::Cache::archives={work / 'none'}", *packages]).stdout
        names = [line.split()[1] for line in listing.splitlines() if line.startswith("'")]
        if not names:
            say(f"the guest has {', '.join(packages)} already")
            return
        run(["apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends",
             "-o", f"Dir::State::status={work / 'status'}",
             "-o", f"Dir::Cache::archives={DEB_CACHE}", "-o", "Debug::NoLocking=1", *packages])
        (work / "debs").mkdir()
        for name in names:
            shutil.copyfile(DEB_CACHE / name, work / "debs" / name)
        say(f"installing {len(names)} Debian packages in the guest for {', '.join(packages)}")
        guest.put_tree(work / "debs", "/var/tmp/debs")
        masks = "".join(f"ln -sf /dev/null /etc/systemd/system/{u}; " for u in mask_units)
        guest.sh(f"set -e; {masks}cd /var/tmp/debs && "
                 "DEBIAN_FRONTEND=noninteractive dpkg -i *.deb >/var/tmp/dpkg.log 2>&1 "
                 "|| { tail -n 30 /var/tmp/dpkg.log; exit 1; }; rm -rf /var/tmp/debs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install_python(guest: Guest, requirements: list[str], remote_dir: str) -> None:
    """``pip install --target`` on the host (the guest's Python is the same minor version),
    copied into ``remote_dir``; run it with ``PYTHONPATH=remote_dir python3``."""
    work = Path(tempfile.mkdtemp(prefix="cerssd-bench-pip-"))
    try:
        run(["python3", "-m", "pip", "install", "-q", "--target", str(work / "t"),
             *requirements])
        guest.put_tree(work / "t", remote_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Boot a guest, describe it in FILE (for ``--attach``), keep it up until SIGTERM."""
    import signal
    import sys
    if len(argv) != 2:
        print("usage: bench/guest.py FILE [as root]; keeps a guest up for --attach",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        guest = boot(stack, disk_mib=8192)
        describe(guest, Path(argv[1]))
        say(f"guest described in {argv[1]}; SIGTERM powers it off")
        signal.pause()
    return 0


if __name__ == "__main__":
    import sys
    raise SystemExit(main(sys.argv))
