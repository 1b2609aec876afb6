"""Private sshd servers for tests and benchmarks: on 127.0.0.1, or in a network namespace.

Plain functions, not fixtures, so that ``tests/conftest.py``'s fixtures and the chaos
benchmark (``bench/chaos.py``) build the same servers from the same code. A namespace
server is reached over a veth pair with addresses from 192.0.2.0/24 (TEST-NET-1) only;
its link is cut with ``ip link set … down`` on the host side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: sshd_config lines every test sshd gets. This machine's root runs ``pyenv init`` from
#: ~/.bashrc in every SSH session; concurrent sessions queued on pyenv's rehash lock for
#: up to 60 s each (seen as slow probes and test timeouts). A 1 s limit makes a blocked
#: rehash give up instead.
SESSION_ENV = "SetEnv PYENV_REHASH_TIMEOUT=1\n"


def ssh_server_section(name: str, host: str, port: int, identity_file: Path,
                       known_hosts: Path, extra: str = "", user: str = "root") -> str:
    """A cerssd ``[servers.NAME]`` section for ``user`` (root) over SSH with a key."""
    return (f"[servers.{name}]\nkind = \"ssh\"\nhost = \"{host}\"\nport = {port}\n"
            f"user = \"{user}\"\nidentity_file = \"{identity_file}\"\n"
            f"known_hosts = \"{known_hosts}\"\n{extra}\n")


@dataclass(frozen=True)
class SshServer:
    """A private sshd on 127.0.0.1 that lets root in with ``client_key``."""

    port: int
    client_key: Path
    known_hosts: Path
    wrong_known_hosts: Path
    pid: int

    host = "127.0.0.1"

    def config(self, name: str, *, known_hosts: Path | None = None, extra: str = "",
               user: str = "root") -> str:
        return ssh_server_section(name, self.host, self.port, self.client_key,
                                  known_hosts or self.known_hosts, extra, user)


@dataclass(frozen=True)
class NetnsSshServer(SshServer):
    """An sshd inside a network namespace, reached over a veth pair (TEST-NET-1 only)."""

    namespace: str = ""
    host_veth: str = ""
    address: str = ""
    root: Path = Path("/nonexistent")

    @property
    def host(self) -> str:  # type: ignore[override]
        return self.address

    @property
    def host_address(self) -> str:
        """The host side of the veth pair (192.0.2.(4n+1)): what the namespace reaches."""
        prefix, last = self.address.rsplit(".", 1)
        return f"{prefix}.{int(last) - 1}"

    @property
    def ns_veth(self) -> str:
        return "cn" + self.host_veth.removeprefix("ch")

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.host_veth, "down"], check=True)

    def drop(self) -> None:
        """Lose every packet both ways with the link left up (a ``blackhole`` qdisc on
        each end: this kernel has no netem), as a dead path behind a switch would."""
        subprocess.run(["tc", "qdisc", "add", "dev", self.host_veth, "root", "blackhole"],
                       check=True)
        subprocess.run(["ip", "netns", "exec", self.namespace, "tc", "qdisc", "add", "dev",
                        self.ns_veth, "root", "blackhole"], check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "link", "set", self.host_veth, "up"], check=True)
        subprocess.run(["tc", "qdisc", "del", "dev", self.host_veth, "root"],
                       capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.namespace, "tc", "qdisc", "del", "dev",
                        self.ns_veth, "root"], capture_output=True)

    def kill_sshd(self) -> None:
        """Kill sshd and every process in the namespace (its sessions, a zfs receive)."""
        kill_namespace(self.namespace)

    def start_sshd(self) -> None:
        (self.root / "sshd.pid").unlink(missing_ok=True)
        start_sshd_in(self.namespace, self.root)


@dataclass(frozen=True)
class RemoteUser:
    """A non-root account the test sshd lets in with its client key (every sshd here
    reads one ``AuthorizedKeysFile`` for all users), allowed ``zfs`` and ``zpool``
    through sudo by the line docs/least-privilege.md gives, and nothing else."""

    name: str
    home: Path
    sudoers: Path

    @property
    def sudoers_line(self) -> str:
        return sudoers_line(self.name)


def sudoers_line(user: str) -> str:
    """The sudoers entry docs/least-privilege.md documents, for ``user``."""
    tools = ", ".join(shutil.which(t) or f"/usr/sbin/{t}" for t in ("zfs", "zpool"))
    return f"{user} ALL=(root) NOPASSWD: {tools}\n"


def create_remote_user(name: str) -> RemoteUser:
    """Add the account (home in a temporary directory, a usable but password-less
    login: ``*``, not the locked ``!`` that sshd refuses without PAM) and its sudoers
    file; :func:`remove_remote_user` takes both away."""
    home = Path(tempfile.mkdtemp(prefix="cerssd-user-"))
    sudoers = Path(f"/etc/sudoers.d/{name}")
    user = RemoteUser(name, home, sudoers)
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home),
                        "--shell", "/bin/sh", "--password", "*", name], check=True)
        shutil.chown(home, name, name)
        sudoers.write_text(user.sudoers_line)
        sudoers.chmod(0o440)
        subprocess.run(["visudo", "-c", "-q", "-f", str(sudoers)], check=True)
    except BaseException:
        remove_remote_user(user)
        raise
    return user


def remove_remote_user(user: RemoteUser) -> None:
    user.sudoers.unlink(missing_ok=True)
    subprocess.run(["userdel", user.name], capture_output=True)
    shutil.rmtree(user.home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)


def sshd_binary() -> str:
    return shutil.which("sshd") or "/usr/sbin/sshd"


def wait_pidfile(path: Path, timeout: float = 10.0) -> int:
    """The pid sshd writes once it listens; an error naming the file after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not write {path} within {timeout}s")
        time.sleep(0.05)


def kill_namespace(ns: str) -> None:
    left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for leftover in left.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(leftover), signal.SIGKILL)


def start_sshd_in(ns: str, root: Path) -> int:
    # nsenter joins only the network namespace; `ip netns exec` would also give sshd a
    # mount namespace of its own, where zfs-fuse cannot mount what it receives.
    subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sshd_binary(), "-f",
                    str(root / "sshd_config"), "-E", str(root / "sshd.log")], check=True)
    return wait_pidfile(root / "sshd.pid")


_netns_counter = iter(range(1, 60))


def free_subnet() -> int:
    """The next /30 of 192.0.2.0/24 no other process on this machine is using (two test
    or benchmark runs at once would otherwise give two veths the same address)."""
    for n in _netns_counter:
        used = subprocess.run(["ip", "-o", "addr", "show", "to", f"192.0.2.{4 * n + 1}/32"],
                              capture_output=True, text=True).stdout
        if not used.strip():
            return n
    raise RuntimeError("no free /30 left in 192.0.2.0/24 for a test namespace")


def create_netns_sshd() -> NetnsSshServer:
    """sshd in a new namespace at 192.0.2.(4n+2), the host side at 192.0.2.(4n+1)/30.

    What it made is removed by :func:`remove_netns_sshd`, also when this fails halfway
    (the namespace is created first, so removing it takes the veth pair with it).
    """
    n = free_subnet()
    tag = f"{os.getpid() % 10000}x{n}"
    ns, host_if, ns_if = f"cerssd{tag}", f"ch{tag}", f"cn{tag}"
    host_ip, ns_ip = f"192.0.2.{4 * n + 1}", f"192.0.2.{4 * n + 2}"
    root = Path(tempfile.mkdtemp(prefix="cerssd-netns-"))
    server = NetnsSshServer(22, root / "client_key", root / "known_hosts",
                            root / "wrong_known_hosts", 0, ns, host_if, ns_ip, root)

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True)

    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        for key in ("host_key", "client_key"):
            keygen(root / key)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        host_pub = " ".join((root / "host_key.pub").read_text().split()[:2])
        (root / "known_hosts").write_text(f"{ns_ip} {host_pub}\n")
        (root / "wrong_known_hosts").write_text("")
        (root / "sshd_config").write_text(
            f"Port 22\nListenAddress {ns_ip}\nHostKey {root}/host_key\n"
            f"PidFile {root}/sshd.pid\nAuthorizedKeysFile {root}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 64\n"
            "ClientAliveInterval 2\nClientAliveCountMax 2\n" + SESSION_ENV)
        Path("/run/sshd").mkdir(exist_ok=True)
        pid = start_sshd_in(ns, root)
    except BaseException:
        remove_netns_sshd(server)
        raise
    return NetnsSshServer(22, server.client_key, server.known_hosts,
                          server.wrong_known_hosts, pid, ns, host_if, ns_ip, root)


def remove_netns_sshd(server: NetnsSshServer) -> None:
    """Kill what runs in the namespace, remove it (and its veth pair) and its files."""
    kill_namespace(server.namespace)
    subprocess.run(["ip", "link", "del", server.host_veth], capture_output=True)
    subprocess.run(["ip", "netns", "del", server.namespace], capture_output=True)
    shutil.rmtree(server.root, ignore_errors=True)
