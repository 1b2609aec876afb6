"""An encrypted dataset backed up raw to S3 and restored raw, on the OpenZFS guest.

zfs-fuse has no native encryption, so this runs where it is real: OpenZFS 2.x in the
QEMU guest (tests/openzfs_guest.py). A backup streams from the node the daemon runs on
(capability ``direct_copy``), so cerssd runs *in the guest*, with this tree's code and
its dependencies copied in (the guest has no network: they are installed on the host
with ``pip install --target``, cached as bench/guest_cerssd.py caches them). The guest
reaches the host's SeaweedFS through a reverse SSH tunnel to a loopback port in the
guest: no other network path is opened.

Checked: the backup is a raw send (``-w``; the activity and the manifest say so); the
bucket holds no byte of a plaintext marker written into the dataset; the chain (full and
incremental) restores as an encrypted dataset with ``keystatus`` ``unavailable``, and
after ``zfs load-key`` the data is the source's.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import wait_until
from .openzfs_guest import OpenZfsGuest
from .seaweed import WeedServer
from .test_private_backups import MARKER, objects_with_marker

pytestmark = pytest.mark.openzfs

REPO = Path(__file__).resolve().parent.parent
#: Shared with bench/guest_cerssd.py: ``t/`` is a ``pip install --target`` of the
#: daemon's dependencies, ``requirements.json`` the list it was made from.
DEPS_CACHE = Path("/var/cache/cerssd/bench-guest-python")
DEPS_DIR = "/opt/cerssd-deps"
CODE_DIR = "/opt/cerssd"
SOCKET = "/run/cerssd-private/control.sock"
CLIENT = "/opt/cerssd-private-client.py"
POOLS = ("prv", "prv2")

#: Run in the guest: ``get PATH`` or ``run PATH JSON`` (POST, then wait until the
#: activity ends); prints the JSON answer.
CLIENT_SCRIPT = r'''
import http.client, json, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect("@SOCKET@")
def api(method, path, body=None):
    c = Conn("localhost", timeout=900)
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None
if sys.argv[1] == "get":
    print(json.dumps(api("GET", sys.argv[2])[1]))
else:
    status, a = api("POST", sys.argv[2], json.loads(sys.argv[3]))
    if status != 202:
        print(json.dumps({"http_status": status, "body": a}))
        sys.exit(0)
    while a["state"] not in ("succeeded", "failed", "cancelled"):
        a = api("GET", f"/v1/activities/{a['id']}?wait=30")[1]
    print(json.dumps(a))
'''.replace("@SOCKET@", SOCKET)


@dataclass
class GuestDaemon:
    vm: OpenZfsGuest

    def sh(self, command: str, *, stdin: bytes | None = None, check: bool = True,
           timeout: float = 900.0) -> str:
        result = subprocess.run(self.vm.ssh_argv("sh", "-c", command), input=stdin,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"guest: {command}: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def ok(self, command: str) -> bool:
        return subprocess.run(self.vm.ssh_argv("sh", "-c", command), capture_output=True,
                              timeout=60).returncode == 0

    def run(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        out = self.sh(f"python3 {CLIENT} run {shlex.quote(path)} "
                      f"{shlex.quote(json.dumps(body))}")
        return json.loads(out)  # type: ignore[no-any-return]

    def get(self, path: str) -> Any:
        return json.loads(self.sh(f"python3 {CLIENT} get {shlex.quote(path)}"))

    def prop(self, name: str, prop: str) -> str:
        return self.sh(f"zfs get -Hp -o value {prop} {name}").strip()

    def put_tree(self, local: Path, remote: str) -> None:
        """Copy a directory's contents into ``remote`` (tar over the SSH channel)."""
        tar = subprocess.run(["tar", "-C", str(local), "-cf", "-", "."], check=True,
                             capture_output=True).stdout
        self.sh(f"mkdir -p {remote} && tar -C {remote} -xf -", stdin=tar)


def dependencies() -> Path:
    """The daemon's dependencies as ``pip install --target`` made them (cached)."""
    requirements = list(tomllib.loads((REPO / "pyproject.toml").read_text())
                        ["project"]["dependencies"])
    stamp = DEPS_CACHE / "requirements.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != requirements:
        shutil.rmtree(DEPS_CACHE, ignore_errors=True)
        DEPS_CACHE.mkdir(parents=True)
        subprocess.run(["python3", "-m", "pip", "install", "-q", "--target",
                        str(DEPS_CACHE / "t"), *requirements], check=True,
                       capture_output=True)
        stamp.write_text(json.dumps(requirements))
    return DEPS_CACHE / "t"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tunnel(vm: OpenZfsGuest, guest_port: int, host_port: int) -> subprocess.Popen[bytes]:
    """``ssh -R``: the guest's 127.0.0.1:guest_port reaches the host's S3 port."""
    argv = vm.ssh_argv("true")
    at = argv.index("root@127.0.0.1")
    argv = [*argv[:at], "-N", "-o", "ExitOnForwardFailure=yes", "-o",
            "ServerAliveInterval=10", "-R", f"127.0.0.1:{guest_port}:127.0.0.1:{host_port}",
            "root@127.0.0.1"]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def in_guest(openzfs_guest: OpenZfsGuest, s3_server: WeedServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuestDaemon, str]]:
    """cerssd in the guest with store ``s3`` (a fresh bucket through the tunnel)."""
    g = GuestDaemon(openzfs_guest)
    a, b = openzfs_guest.disks
    g.sh(f"zpool create -f -o ashift=12 {POOLS[0]} {a} && "
         f"zpool create -f -o ashift=12 {POOLS[1]} {b}")
    s3_server.ensure_started()
    bucket = s3_server.create_bucket()
    guest_port = 20000 + free_port() % 20000
    host_port = int(s3_server.s3.endpoint.rsplit(":", 1)[1])
    ssh = tunnel(openzfs_guest, guest_port, host_port)
    try:
        if g.sh(f"test -d {DEPS_DIR}/aiohttp && echo yes", check=False).strip() != "yes":
            g.put_tree(dependencies(), DEPS_DIR)
        code = tmp_path_factory.mktemp("guest-code")
        shutil.copytree(REPO / "cerssd", code / "cerssd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        g.put_tree(code, CODE_DIR)
        g.sh(f"cat > {CLIENT}", stdin=CLIENT_SCRIPT.encode())
        g.sh("mkdir -p /run/cerssd-private /etc/cerssd-private && "
             "cat > /etc/cerssd-private/s3.key && chmod 600 /etc/cerssd-private/s3.key",
             stdin=(f'access_key_id = "{s3_server.s3.access_key}"\n'
                    f'secret_access_key = "{s3_server.s3.secret_key}"\n').encode())
        config = (f'[daemon]\ncontrol_socket = "{SOCKET}"\n'
                  'state_dir = "/var/lib/cerssd-private"\nmetrics_listen = "off"\n'
                  'retry_max_interval = "5s"\n\n[servers.local]\nkind = "local"\n\n'
                  f'[stores.s3]\nendpoint = "http://127.0.0.1:{guest_port}"\n'
                  f'bucket = "{bucket}"\ncredentials_file = "/etc/cerssd-private/s3.key"\n'
                  'part_size = "5MiB"\n')
        g.sh("cat > /etc/cerssd-private/cerssd.toml", stdin=config.encode())
        wait_until(lambda: ssh.poll() is None and g.ok(
            f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
            f"{guest_port}), 2)\""), 60, 0.5, "the tunnel to S3 in the guest")
        g.sh(f"cd /; PYTHONPATH={CODE_DIR}:{DEPS_DIR} PYTHONUNBUFFERED=1 setsid python3 -m "
             "cerssd --config /etc/cerssd-private/cerssd.toml >/var/log/cerssd-private.log "
             "2>&1 </dev/null & echo $! > /run/cerssd-private/pid")
        wait_until(lambda: g.ok(f"test -S {SOCKET}"), 240, 1.0, "cerssd in the guest")
        yield g, bucket
    finally:
        g.sh("kill $(cat /run/cerssd-private/pid)", check=False)
        ssh.terminate()
        ssh.wait(30)
        g.sh(f"zpool destroy -f {POOLS[0]}; zpool destroy -f {POOLS[1]}", check=False)


def test_encrypted_dataset_is_backed_up_raw_and_restored_locked(
        in_guest: tuple[GuestDaemon, str], s3_server: WeedServer) -> None:
    g, bucket = in_guest
    src, dst = f"{POOLS[0]}/secret", f"{POOLS[1]}/back"
    g.sh("printf 'correct horse battery' > /root/prv.key && "
         "zfs create -o encryption=on -o keyformat=passphrase "
         f"-o keylocation=file:///root/prv.key {src} && "
         f"for i in $(seq 64); do printf '{MARKER.decode()}'; head -c 65536 /dev/urandom; "
         f"done > /{src}/data && zfs snapshot {src}@one")
    first = g.run("/v1/backups", {"snapshot": f"{src}@one"})
    assert first["state"] == "succeeded", first["status"]
    assert first["params"]["raw"] is True and first["params"]["kind"] == "full"
    g.sh(f"echo more > /{src}/more && zfs snapshot {src}@two")
    second = g.run("/v1/backups", {"snapshot": f"{src}@two"})
    assert second["state"] == "succeeded", second["status"]
    assert second["params"]["raw"] is True and second["params"]["kind"] == "incremental"
    items = g.get(f"/v1/backups?volume={src}")["items"]
    assert [(m["raw"], m["send_flags"], m["encryption"]) for m in items] == [
        (True, "-w", "none"), (True, "-w", "none")]
    assert objects_with_marker(s3_server, bucket) == []  # encrypted at rest, keyless

    back = g.run("/v1/restores", {"snapshot": f"{src}@two", "target_volume": dst})
    assert back["state"] == "succeeded", back["status"]
    assert g.prop(dst, "encryption") != "off"
    assert g.prop(dst, "keystatus") == "unavailable"  # came back encrypted, key not loaded
    assert g.prop(f"{dst}@two", "guid") == g.prop(f"{src}@two", "guid")
    g.sh(f"zfs load-key -L file:///root/prv.key {dst} && zfs mount {dst}")
    assert g.sh(f"sha256sum < /{dst}/data") == g.sh(f"sha256sum < /{src}/data")
    assert g.sh(f"cat /{dst}/more").strip() == "more"
