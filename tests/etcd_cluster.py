"""A real 3-member etcd cluster (Debian's ``etcd-server``) on free loopback ports.

Each member is its own ``etcd`` process with its own data directory; the cluster is
ready once every member serves a v3 range through its JSON gateway. Members can be
stopped (a lost quorum, two of three down) and started again on the same ports and
data, and ``wait_healthy`` waits for the quorum to come back.

``client_hosts`` adds addresses the members also serve clients on (each member's own
port on each of them): the host side of test namespaces' veths, so that daemons inside
those namespaces reach etcd over their own link.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import free_port

START_TIMEOUT = 30.0


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    root: Path
    members: list[EtcdMember] = field(default_factory=list)
    client_hosts: tuple[str, ...] = ()

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def endpoints_on(self, host: str) -> list[str]:
        """Every member's client URL on ``host`` (one of ``client_hosts``)."""
        assert host in self.client_hosts, host
        return [f"http://{host}:{m.client_port}" for m in self.members]

    def toml(self) -> str:
        """The ``etcd`` value of a ``[cluster]`` table naming every member."""
        return json.dumps(self.endpoints)

    def start(self) -> None:
        for i in range(3):
            self.members.append(EtcdMember(f"m{i}", free_port(), free_port(),
                                           self.root / f"m{i}", self.root / f"m{i}.log"))
        for m in self.members:
            self.start_member(m)
        self.wait_healthy()

    def start_member(self, m: EtcdMember) -> None:
        initial = ",".join(f"{o.name}=http://127.0.0.1:{o.peer_port}" for o in self.members)
        listen = ",".join([m.url, *(f"http://{h}:{m.client_port}" for h in self.client_hosts)])
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                ["etcd", "--name", m.name, "--data-dir", str(m.data_dir),
                 "--listen-client-urls", listen, "--advertise-client-urls", m.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", self.root.name,
                 "--heartbeat-interval", "100", "--election-timeout", "1000"],
                stdout=log, stderr=subprocess.STDOUT)

    def stop_member(self, m: EtcdMember) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            m.proc.wait(timeout=15)
        m.proc = None

    def answers(self, m: EtcdMember) -> bool:
        """Whether ``m`` serves a linearizable read (it is in a quorum)."""
        req = urllib.request.Request(m.url + "/v3/kv/range", data=b'{"key": "AA=="}',
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.answers(m) for m in self.members if m.proc is not None):
                return
            time.sleep(0.2)
        logs = "\n".join(m.log_path.read_text()[-2000:] for m in self.members)
        raise AssertionError(f"etcd cluster not healthy in {timeout} s:\n{logs}")

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(root: Path, client_hosts: tuple[str, ...] = ()) -> EtcdCluster:
    if shutil.which("etcd") is None:
        raise AssertionError("etcd is not installed: run scripts/setup "
                             "(apt-get install etcd-server etcd-client)")
    cluster = EtcdCluster(root, client_hosts=client_hosts)
    cluster.start()
    return cluster
