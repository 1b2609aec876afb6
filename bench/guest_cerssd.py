"""cerssd running inside the OpenZFS guest, next to the peers it is compared with.

The tree benchmark runs syncoid and zfs-autobackup in the guest (they do not run on
zfs-fuse), pushing to the guest's own sshd on 127.0.0.1. For a fair side-by-side cerssd
runs there too: its master server is ``kind = "local"`` (the guest's pools) and its slave
server ``kind = "ssh"`` to root@127.0.0.1, the same loopback path the peers use. A daemon
on the host reaching the guest through two ssh servers would relay every stream
guest -> host -> guest, a handicap the peers do not pay.

The guest has no network: its Python packages are installed by the host's pip into a
directory (``pip install --target``; host and guest are both Debian 12 with Python 3.11,
so the host's wheels run there), cached on the host between runs, and copied in; the
``cerssd`` package itself is copied from this working tree, so the guest runs the code
under test. The bench talks to the daemon through :data:`CLIENT`, a stdlib-only script
run in the guest over the same SSH as every other guest command: it makes the request on
the daemon's unix socket and, for a cycle or a replication, waits in the guest (so one
SSH round trip per timed run, like the peers' one command).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, BenchError, say, wait_until
from guest import Guest

#: The dependencies' ``pip install --target`` directory on the host, reused between runs.
DEPS_CACHE = Path("/var/cache/cerssd/bench-guest-python")
DEPS_DIR = "/opt/cerssd-deps"
CODE_DIR = "/opt/cerssd"
CLIENT_PATH = "/opt/cerssd-bench-client.py"
CONFIG_PATH = "/etc/cerssd-bench.toml"
SOCKET = "/run/cerssd-bench/control.sock"
LOG = "/var/log/cerssd-bench.log"
PIDFILE = "/run/cerssd-bench/pid"
STATE_DIR = "/var/lib/cerssd-bench"
PYTHONPATH = f"{CODE_DIR}:{DEPS_DIR}"

#: Run in the guest: ``client.py get PATH | post PATH [JSON] | cycle REL SLAVE TIMEOUT
#: [--no-trigger] | replicate JSON TIMEOUT``; prints JSON, exits 1 with a message on error.
CLIENT = r'''
import http.client, json, socket, sys, time
SOCK = "@SOCKET@"

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(SOCK)

def api(method, path, body=None, timeout=60):
    c = Conn("localhost", timeout=timeout)
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 400:
        sys.exit(f"{method} {path}: HTTP {r.status} {data.decode(errors='replace')}")
    return json.loads(data) if data else None

def cycle(rel, slave, timeout, trigger):
    """One cycle of tree relationship REL, until every member is in sync on SLAVE."""
    start = time.monotonic()
    want = api("GET", f"/v1/relationships/{rel}")["cycles"] + (1 if trigger else 0)
    if trigger:
        api("POST", f"/v1/relationships/{rel}/sync-now")
    want = max(want, 1)
    while True:
        r = api("GET", f"/v1/relationships/{rel}")
        tree = r.get("tree") or {}
        s = (tree.get("slaves") or {}).get(slave)
        if s and s["failing"]:
            sys.exit(f"{rel}: {s['failing']} member(s) failing: {tree.get('failing')}")
        if (r["cycles"] >= want and s and tree["members"] and s["in_sync"] == tree["members"]
                and not s["behind"] and not s["sending"]):
            print(json.dumps({"seconds": time.monotonic() - start, "cycles": r["cycles"],
                              "tree": tree, "state": r["state"]}))
            return
        if time.monotonic() - start > timeout:
            sys.exit(f"{rel}: cycle {want} not in sync after {timeout} s: {json.dumps(r)}")
        time.sleep(0.5)

def replicate(body, timeout):
    start = time.monotonic()
    a = api("POST", "/v1/replications", body)
    plan = a.get("plan")
    while a["state"] not in ("succeeded", "failed", "cancelled"):
        wait = max(1, min(300, int(start + timeout - time.monotonic())))
        a = api("GET", f"/v1/activities/{a['id']}?wait={wait}", timeout=wait + 30)
        if time.monotonic() - start > timeout:
            sys.exit(f"replication {a['id']} still {a['state']} after {timeout} s")
    a["plan"] = plan
    a["seconds"] = time.monotonic() - start
    print(json.dumps(a))

verb = sys.argv[1]
if verb == "get":
    print(json.dumps(api("GET", sys.argv[2])))
elif verb == "post":
    print(json.dumps(api("POST", sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3
                         else None)))
elif verb == "cycle":
    cycle(sys.argv[2], sys.argv[3], float(sys.argv[4]), "--no-trigger" not in sys.argv)
elif verb == "replicate":
    replicate(json.loads(sys.argv[2]), float(sys.argv[3]))
else:
    sys.exit(f"unknown verb {verb}")
'''.replace("@SOCKET@", SOCKET)


def project_requirements() -> list[str]:
    """The daemon's runtime dependencies, as pyproject.toml states them."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def install(guest: Guest) -> None:
    """The daemon's dependencies (built once on the host, cached) and this tree's code."""
    requirements = project_requirements()
    stamp = DEPS_CACHE / "requirements.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != requirements:
        shutil.rmtree(DEPS_CACHE, ignore_errors=True)
        say(f"pip install --target (host) for the guest: {', '.join(requirements)}")
        subprocess.run(["python3", "-m", "pip", "install", "-q", "--target",
                        str(DEPS_CACHE / "t"), *requirements], check=True,
                       capture_output=True)
        stamp.write_text(json.dumps(requirements))
    say("copying cerssd's dependencies and code into the guest")
    guest.put_tree(DEPS_CACHE / "t", DEPS_DIR)
    work = Path(tempfile.mkdtemp(prefix="cerssd-bench-code-"))
    try:
        shutil.copytree(REPO / "cerssd", work / "cerssd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        guest.put_tree(work, CODE_DIR)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    guest.put_tree(_one_file("client.py", CLIENT), "/opt")
    guest.sh(f"mv /opt/client.py {CLIENT_PATH}")
    say("guest: " + guest.sh(f"PYTHONPATH={PYTHONPATH} python3 -c "
                             "'import sys, cerssd, aiohttp, asyncssh; "
                             "print(sys.version.split()[0], aiohttp.__version__)'")
        .stdout.strip())


def _one_file(name: str, text: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix="cerssd-bench-file-"))
    (work / name).write_text(text)
    return work


def config(relationships: str) -> str:
    """The daemon's config: the guest's pools as ``local``, its sshd as ``standby`` (the
    cipher OpenSSH's client picks by default, as the peers' and the pipeline's ssh do)."""
    return ("[daemon]\n"
            f'control_socket = "{SOCKET}"\n'
            f'state_dir = "{STATE_DIR}"\n'
            'metrics_listen = "off"\n\n'
            '[servers.local]\nkind = "local"\n\n'
            '[servers.standby]\nkind = "ssh"\nhost = "127.0.0.1"\nuser = "root"\n'
            'identity_file = "/root/.ssh/id_ed25519"\n'
            'known_hosts = "/root/.ssh/known_hosts"\n'
            'cipher = "chacha20-poly1305@openssh.com"\n\n' + relationships)


def start(guest: Guest, relationships: str, timeout: float = 300.0) -> None:
    """The daemon in the guest, detached; returns once it answers with both servers up."""
    guest.sh(f"mkdir -p /run/cerssd-bench && cat > {CONFIG_PATH}",
             stdin=config(relationships).encode())
    # a simple command in the background (not an and-list, whose subshell would keep
    # the SSH channel open), every descriptor redirected: the session ends at once
    guest.sh(f"cd /; PYTHONPATH={PYTHONPATH} PYTHONUNBUFFERED=1 setsid python3 -m cerssd "
             f"--config {CONFIG_PATH} >{LOG} 2>&1 </dev/null & echo $! > {PIDFILE}")

    def ready() -> bool:
        alive = guest.sh(f"kill -0 $(cat {PIDFILE})", check=False)
        if alive.returncode != 0:
            raise BenchError(f"cerssd exited in the guest:\n{log_tail(guest)}")
        out = guest.sh(f"test -S {SOCKET} && python3 {CLIENT_PATH} get /v1/status",
                       check=False)
        if out.returncode != 0:
            return False
        servers = json.loads(out.stdout)["servers"]
        return bool(servers.get("local") and servers.get("standby"))

    wait_until(ready, timeout, "cerssd in the guest with both servers", interval=2.0)
    say("cerssd is up in the guest")


def log_tail(guest: Guest, lines: int = 40) -> str:
    return guest.sh(f"tail -n {lines} {LOG}", check=False).stdout


def client(guest: Guest, *args: str, timeout: float = 7200.0) -> Any:
    """Run :data:`CLIENT` in the guest; its JSON answer."""
    out = guest.sh(f"python3 {CLIENT_PATH} " + " ".join(shlex.quote(a) for a in args),
                   check=False, timeout=timeout + 60)
    if out.returncode != 0:
        raise BenchError(f"cerssd in the guest: {(out.stderr or out.stdout).strip()[-2000:]}"
                         f"\n--- daemon log ---\n{log_tail(guest)}")
    return json.loads(out.stdout)
