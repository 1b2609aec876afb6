"""The README's walkthrough, run the way a new user would, from README.md itself.

Each shell block of the walkthrough is marked ``<!-- demo: NAME -->``. ``up`` (``make
demo``) runs in the background like the user's first terminal, ``watch`` in a second one
until it is interrupted as with Ctrl-C; every other block runs command by command in one
bash, so what a command sets (``export``, ``ID=$(...)``) is there for the next, as in the
user's third terminal. Each command's output and exit status is checked against what the
README says it shows. Where the README tells the reader to wait for something ("once both
standbys are in-sync"), the test polls the API for it before going on; a command that
merely displays a state is run again until it shows the state it is there to show, as a
reader would. The teardown (``make demo-down``) must leave nothing behind.

The sandbox has fixed pool names (the README names them), so the test refuses to run
beside a sandbox that is up; its ports come from the sandbox's environment overrides and
are chosen free, so other tests' servers are not disturbed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cerssd.cli.client import Client, CliError

# The walkthrough's waits (for a cycle, a retry, a restore, a command) end at their event;
# SLOW is only their failure limit. The README promises seconds on an idle machine, and
# the sandbox's zfs-fuse, sshd, SeaweedFS and cerssd may share two CPUs with other work.
from .conftest import SLOW

#: The sandbox starts zfs-fuse, sshd and SeaweedFS itself (not through the fixtures).
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SANDBOX = REPO / "sandbox"
SOCKET = SANDBOX / "run" / "control.sock"
POOLS = ("cerssd-master", "cerssd-standby1", "cerssd-standby2")
HEX_ID = r"[0-9a-f]{16}"

# ---------------------------------------------------------------------------------------
# What each step of the walkthrough must show, one entry per command of its block.


@dataclass(frozen=True)
class Expect:
    #: Regular expressions the output must match (re.search, multiline).
    shows: tuple[str, ...] = ()
    #: ... and must not.
    hides: tuple[str, ...] = ()
    status: int = 0
    #: A display command: run it again until it shows what it should (a deadline).
    until: bool = False


@dataclass
class Walk:
    """What the test learns along the way, for its waits and checks."""

    client: Client
    notes: dict[str, Any] = field(default_factory=dict)

    def api(self, path: str) -> Any:
        return self.client.request("GET", path)

    def relationship(self) -> dict[str, Any]:
        result: dict[str, Any] = self.api("/v1/relationships/data")
        return result


def both_in_sync(walk: Walk) -> bool:
    r = walk.relationship()
    return all(s["state"] == "in-sync" for s in r["slaves"]) and len(r["slaves"]) == 2


def synced_after_write(walk: Walk) -> bool:
    """A cycle started after the write (sync-now) has reached both standbys."""
    r = walk.relationship()
    newest = (r["newest_snapshot"] or "").partition("@")[2]
    done = (r["cycles"] > walk.notes["cycles_before_write"] and newest
            and all(s["state"] == "in-sync"
                    and (s["last_snapshot"] or "").partition("@")[2] == newest
                    for s in r["slaves"]))
    if done:
        walk.notes["write_snapshot"] = r["newest_snapshot"]
    return bool(done)


def write_backed_up(walk: Walk) -> bool:
    """A backup of the write's snapshot or a later one (which carries the write) is in the bucket.

    A cycle skips its backup while the store's previous one still runs or the volume is held;
    the next cycle's backup then carries the skipped snapshot's data, under its own name.
    """
    written = walk.notes["write_snapshot"].partition("@")[2]
    items = walk.api("/v1/backups?volume=cerssd-master/data")["items"]
    return any(m["snapshot"].partition("@")[2] >= written for m in items)


def tree_has_the_new_member(walk: Walk) -> bool:
    """The tree's cycle after the new volume: 5 members, all in sync on both standbys."""
    tree = walk.api("/v1/relationships/tenants").get("tree") or {}
    return tree.get("members") == 5 and all(
        c["in_sync"] == 5 for c in tree.get("slaves", {}).values()) \
        and len(tree.get("slaves", {})) == 2


def replicate_running(walk: Walk) -> bool:
    return bool(walk.api(f"/v1/activities/{walk.notes['id']}")["state"] == "running")


WAIT_BEFORE: dict[str, Callable[[Walk], bool]] = {
    "look": both_in_sync,  # "Once both standbys are in-sync"
    "replicated": synced_after_write,  # "When the watch shows both standbys in-sync again"
    "restore": write_backed_up,  # every cycle also sent its snapshot to the bucket
    "tree-replicated": tree_has_the_new_member,  # "When the watch shows 5/5 in sync"
}

RELATIONSHIP_HOME = r"^replication\s+enabled \(home master local\)"
STEPS: dict[str, list[Expect]] = {
    "env": [Expect()],
    "look": [
        Expect(shows=(r"standby1=up, standby2=up", r"standby1 in-sync lag \S+; "
                      r"standby2 in-sync", r"^standby1\s+up", r"^s3\s+up")),
        Expect(shows=(r"^data\s+cerssd-master/data\s+local\s+running\s+enabled",
                      r"standby1 in-sync lag \S+; standby2 in-sync")),
        Expect(shows=(RELATIONSHIP_HOME, r"^volume\s+cerssd-master/data on local",
                      r"^newest snapshot\s+cerssd-master/data@cerssd-data-",
                      r"^standby1\s+cerssd-standby1/data\s+in-sync",
                      r"^standby2\s+cerssd-standby2/data\s+in-sync")),
        Expect(shows=(r'^cerssd_replication_lag_seconds\{relationship="data",'
                      r'slave="standby1"\} [\d.]+$',)),
    ],
    "write": [Expect(), Expect(shows=(r"^data running$",))],
    "replicated": [
        Expect(shows=(r"^standby1\s+cerssd-standby1/data\s+in-sync",
                      r"^standby2\s+cerssd-standby2/data\s+in-sync")),
        Expect(shows=(r"\Ahello from the master\nhello from the master\Z",)),
    ],
    "tree": [Expect(), Expect(shows=(r"^tenants running$",))],
    "tree-replicated": [
        Expect(shows=(r"^tree: 5 members", r"^standby1\s+cerssd-standby1/tenants\s+5\s+0\s+0\s+0",
                      r"^standby2\s+cerssd-standby2/tenants\s+5\s+0\s+0\s+0")),
        Expect(shows=(r"^cerssd-master/tenants/umbrella\s+standby1\s+in-sync",
                      r"^cerssd-master/tenants/umbrella\s+standby2\s+in-sync",
                      r"^5 of 5 members")),
        Expect(shows=(r"^cerssd-standby1/tenants/umbrella$", r"^cerssd-standby2/tenants/umbrella$",
                      r"^cerssd-standby1/tenants/acme$")),
    ],
    "replicate": [
        Expect(shows=(r"^kind\s+snapshot", r"^state\s+succeeded")),
        Expect(),
        Expect(shows=(r"^kind\s+replicate", r"^state\s+running",
                      r"^target\s+standby2:cerssd-standby2/copy",
                      r"^progress\s+[\d.]+ \S*B of 64\.\d MiB"), until=True),
    ],
    "suspend": [
        Expect(shows=(rf"^{HEX_ID} suspended$",)),
        Expect(shows=(r"^state\s+suspended",)),
        Expect(shows=(rf"^{HEX_ID} running$",)),
        Expect(shows=(rf"^{HEX_ID} cancell(ing|ed)$",)),
        Expect(shows=(r"^state\s+cancelled", r"^status\s+2 cancelled by operator; rolled back"),
               status=2),
        Expect(shows=(r"^cerssd-standby2/data\s",), hides=(r"copy",)),
    ],
    "cut": [
        Expect(shows=(r"standby1's link is cut",)),
        Expect(shows=(r"^data running$",)),
        Expect(shows=(r"^standby1\s+(lost|retrying)\s.*Connect call failed",
                      r"^standby2\s+up"), until=True),
        Expect(shows=(r"standby1 \S+ lag \S+ link (lost|retrying); standby2 in-sync",),
               until=True),
    ],
    "heal": [
        Expect(shows=(r"standby1's sshd is back",)),
        Expect(shows=(r"^standby1\s+up", r"^standby2\s+up"), until=True),
        Expect(shows=(r"standby1 in-sync lag \S+; standby2 in-sync",), until=True),
    ],
    "restore": [
        Expect(shows=(r"^cerssd-master/data@cerssd-data-\S+\s+full\s",
                      r"^cerssd-master/data@cerssd-data-\S+\s+incremental\s")),
        Expect(),
        Expect(shows=(r"^kind\s+restore", r"^state\s+succeeded", r"^status\s+0 succeeded",
                      r"^volume\s+cerssd-master/restored")),
        Expect(shows=(r"\Aidentical\Z",)),
    ],
    "failover": [
        Expect(shows=(r"^kind\s+failover", r"^state\s+succeeded", r"^status\s+0 succeeded",
                      r"^target\s+standby1:cerssd-standby1/data")),
        Expect(shows=(r"^replication\s+failed-over \(home master local\)",
                      r"^volume\s+cerssd-standby1/data on standby1",
                      r"^local\s+cerssd-master/data\s", r"^standby2\s+cerssd-standby2/data\s",
                      r"^last error\s+backup to s3 not started: server standby1 cannot copy "
                      r"directly"), until=True),
        Expect(),
    ],
    "failback": [
        Expect(shows=(r"^kind\s+failover", r"^state\s+succeeded",
                      r"^target\s+local:cerssd-master/data")),
        Expect(shows=(RELATIONSHIP_HOME, r"^volume\s+cerssd-master/data on local",
                      r"^standby1\s+cerssd-standby1/data\s",
                      r"^standby2\s+cerssd-standby2/data\s")),
        Expect(shows=(r"\Awritten on standby1 while it was the master\Z",)),
        # Only after the failback can a failover's final snapshot reach the bucket.
        Expect(shows=(r"^cerssd-master/data@cerssd-data-failover-\S+\s+incremental\s",),
               until=True),
    ],
}
# Blocks run apart from the one shell: the first terminal, the second, and the end.
SPECIAL = ("up", "watch", "down")
ORDER = ["up", "env", "watch", "look", "write", "replicated", "tree", "tree-replicated",
         "replicate", "suspend", "cut",
         "heal", "restore", "failover", "failback", "down"]


# ---------------------------------------------------------------------------------------
# Reading the README


def walkthrough() -> list[tuple[str, list[str]]]:
    """The marked blocks in order: (name, commands), a command per logical line."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^<!-- demo: (\S+) -->\n```sh\n(.*?)^```$", text, re.M | re.S)
    steps = []
    for name, body in blocks:
        commands: list[str] = []
        pending = ""
        for line in body.splitlines():
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.append(pending.strip())
            pending = ""
        steps.append((name, commands))
    return steps


# ---------------------------------------------------------------------------------------
# A terminal: one bash that keeps its variables, fed a command at a time.


class Terminal:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pending = b""

    def run(self, command: str, timeout: float = SLOW) -> tuple[int, str]:
        """Run ``command`` (stdin closed, as nothing here reads it); its status and output."""
        marker = f"__demo_{uuid.uuid4().hex}__".encode()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"{ " + command.encode() + b"\n} </dev/null\n"
                              b"printf '\\n%s %s\\n' " + marker + b' "$?"\n')
        self.proc.stdin.flush()
        end = re.compile(rb"\n" + marker + rb" (\d+)\n")
        deadline = time.monotonic() + timeout
        while not (found := end.search(self.pending)):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"`{command}` did not finish within {timeout}s:\n"
                                     + self.pending.decode(errors="replace"))
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                self.pending += os.read(self.proc.stdout.fileno(), 65536)
        output = self.pending[:found.start()].decode(errors="replace")
        self.pending = self.pending[found.end():]
        return int(found.group(1)), output

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def bare(command: str) -> str:
    """A command without its trailing ``# comment``."""
    return re.sub(r"\s+#.*$", "", command)


def check(expect: Expect, status: int, output: str) -> str | None:
    """Why ``output`` is not what the README says it shows, or None."""
    output = output.strip()
    if status != expect.status:
        return f"exit status {status}, expected {expect.status}"
    for pattern in expect.shows:
        if not re.search(pattern, output, re.M):
            return f"does not show /{pattern}/"
    for pattern in expect.hides:
        if re.search(pattern, output, re.M):
            return f"shows /{pattern}/"
    return None


def run_step(term: Terminal, name: str, commands: list[str], walk: Walk) -> None:
    expects = STEPS[name]
    assert len(commands) == len(expects), (
        f"README step {name!r} has {len(commands)} commands; the test knows {len(expects)}: "
        "update tests/test_readme_demo.py with the README")
    for command, expect in zip(commands, expects, strict=True):
        deadline = time.monotonic() + SLOW
        while True:
            status, output = term.run(command)
            problem = check(expect, status, output)
            if problem is None:
                break
            if not expect.until or time.monotonic() > deadline:
                raise AssertionError(f"step {name}: `{command}` {problem}:\n{output}")
            time.sleep(0.5)  # a reader glancing at it again
        after_command(term, name, bare(command), walk)


def after_command(term: Terminal, name: str, command: str, walk: Walk) -> None:
    """What the test notes or checks beyond the output, by step."""
    if name == "replicate" and command.startswith("ID="):
        _, output = term.run("echo $ID")  # what the reader's $ID holds
        assert re.fullmatch(HEX_ID, output.strip()), output
        walk.notes["id"] = output.strip()
    if name == "suspend" and command == "cerssctl suspend $ID":
        walk.notes["read_at_suspend"] = _bytes_read(walk)
    if name == "suspend" and command == "cerssctl show $ID":
        # Suspended means no progress: nothing more was read while the reader looked.
        assert _bytes_read(walk) == walk.notes["read_at_suspend"], "a suspended copy moved"


def _bytes_read(walk: Walk) -> int:
    return int(walk.api(f"/v1/activities/{walk.notes['id']}")["usage"]["bytes_read"])


# ---------------------------------------------------------------------------------------
# Ports, processes, what is left


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (a bind succeeds)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports() -> dict[str, str]:
    """Ports for the sandbox away from its defaults (a demo a user runs) and below the
    ephemeral range: ssh base and base+1; S3 base..base+3 and 10000 above those."""
    rng = random.Random()
    for _ in range(200):
        ssh, s3, metrics = rng.randrange(23000, 24000), rng.randrange(20000, 21000), \
            rng.randrange(24000, 25000)
        wanted = [ssh, ssh + 1, metrics, *range(s3, s3 + 4), *range(s3 + 10000, s3 + 10004)]
        if all(port_free(p) for p in wanted):
            return {"CERSSD_SANDBOX_SSH_PORT": str(ssh), "CERSSD_SANDBOX_S3_PORT": str(s3),
                    "CERSSD_SANDBOX_METRICS_PORT": str(metrics)}
    raise AssertionError("no free ports for the sandbox")


def existing_pools() -> list[str]:
    listed = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                            text=True).stdout.split()
    return [p for p in POOLS if p in listed]


def processes_naming(fragment: str, within: Path | None = None) -> list[str]:
    """Processes whose command line names ``fragment`` (a sandbox directory); with
    ``within``, only those whose command line or working directory is under it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if fragment in cmdline and (within is None or str(within) in cmdline
                                        + os.readlink(entry / "cwd")):
                found.append(f"{entry.name} {cmdline}")
    return found


def sandbox_processes() -> list[str]:
    """Processes whose command line names the sandbox directory."""
    return processes_naming(f"{SANDBOX}/")


def sandbox_pids() -> dict[str, int]:
    files = {"cerssd": SANDBOX / "cerssd.pid", "weed": SANDBOX / "s3" / "weed.pid",
             "sshd standby1": SANDBOX / "ssh" / "standby1" / "sshd.pid",
             "sshd standby2": SANDBOX / "ssh" / "standby2" / "sshd.pid"}
    return {name: int(f.read_text()) for name, f in files.items() if f.exists()}


def alive(pid: int) -> bool:
    """Running: a zombie waiting for its parent (here, init) to reap it is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(") ")[2].split()[0] != "Z"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None, log: Path | None = None,
             explain: Callable[[], str] | None = None) -> None:
    """Poll until ``predicate``; a timeout says what ``explain`` shows and the log's tail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited {proc.returncode}:\n"
                                 + (log.read_text()[-4000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f"\n{explain()}" if explain else "")
                                 + (f"\nthe daemon's log ends:\n{log.read_text()[-6000:]}"
                                    if log else ""))
        time.sleep(0.2)


def relationship_now(walk: Walk) -> str:
    """What the relationship says now: why a wait for a state did not end."""
    try:
        return "the relationship now: " + json.dumps(walk.relationship(), indent=1)
    except CliError as exc:
        return f"the relationship cannot be read: {exc}"


def like_a_terminal() -> None:
    """Ctrl-C's default action in the child, as in a user's terminal, even where this test
    runs with SIGINT ignored (a background job of a script, some CI runners): an ignored
    signal stays ignored across exec, and the watch would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def answers(client: Client) -> bool:
    try:
        client.request("GET", "/v1/status")
    except CliError:
        return False
    return True


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of the user's terminals, with free ports; cleans up on failure."""
    if os.geteuid() != 0:
        pytest.fail("the demo needs root (zfs): run as root, as the README says")
    busy = existing_pools()
    if busy or SANDBOX.exists():
        pytest.fail(f"a sandbox is already up on this machine (pools {busy or 'none'}, "
                    f"{SANDBOX} {'exists' if SANDBOX.exists() else 'absent'}): the demo's "
                    "pool names are fixed; `make demo-down` removes it")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERSSD_")}
    env.update(free_ports())
    yield env
    if SANDBOX.exists():  # the test failed before its teardown: do it
        subprocess.run([str(REPO / "scripts" / "sandbox"), "down"], env=env, timeout=180,
                       stdout=subprocess.DEVNULL)


def test_readme_walkthrough(demo_env: dict[str, str], tmp_path: Path) -> None:
    steps = walkthrough()
    assert [name for name, _ in steps] == ORDER, "the README's walkthrough steps changed"
    blocks = dict(steps)
    started: list[subprocess.Popen[bytes]] = []
    term = Terminal(demo_env)
    try:
        _walk(blocks, demo_env, tmp_path, started, term)
    finally:
        term.close()
        for proc in started:  # only on failure are these still running
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)


def _walk(blocks: dict[str, list[str]], env: dict[str, str], tmp_path: Path,
          started: list[subprocess.Popen[bytes]], term: Terminal) -> None:
    # A zfs-fuse an earlier sandbox left for other pools is not this walk's to stop.
    before = set(sandbox_processes())
    # First terminal: `make demo`, left running.
    up_log = tmp_path / "make-demo.log"
    with up_log.open("wb") as out:
        demo = subprocess.Popen(["bash", "-c", "\n".join(blocks["up"])], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(demo)
    walk = Walk(Client(str(SOCKET)))
    wait_for(lambda: answers(walk.client), 2 * SLOW, "make demo's cerssd to answer", demo,
             up_log)

    run_step(term, "env", blocks["env"], walk)

    # Second terminal: the live view, until Ctrl-C.
    watch_log = tmp_path / "watch.log"
    with watch_log.open("wb") as out:
        watch = subprocess.Popen(["bash", "-c", "\n".join(blocks["env"] + blocks["watch"])],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=like_a_terminal)
    started.append(watch)

    for name in ORDER:
        if name in SPECIAL or name == "env":
            continue
        if name in WAIT_BEFORE:
            wait_for(partial(WAIT_BEFORE[name], walk), SLOW,
                     f"the state the README's step {name!r} starts from", demo, up_log,
                     explain=partial(relationship_now, walk))
        if name == "write":
            walk.notes["cycles_before_write"] = walk.relationship()["cycles"]
        run_step(term, name, blocks[name], walk)

    # Ctrl-C the watch: it ends cleanly and has shown the standbys in sync and the cut link.
    os.killpg(watch.pid, signal.SIGINT)
    assert watch.wait(60) == 0, watch_log.read_text()[-3000:]
    seen = watch_log.read_text()
    for shown in ("Relationships", "in-sync", "retrying"):
        assert shown in seen, f"the watch never showed {shown!r}"

    pids = sandbox_pids()
    assert set(pids) == {"cerssd", "weed", "sshd standby1", "sshd standby2"}, pids
    status, output = term.run(" && ".join(blocks["down"]))
    assert status == 0 and "sandbox: removed" in output, output
    assert demo.wait(SLOW) == 0, up_log.read_text()[-3000:]  # cerssd stopped cleanly
    assert existing_pools() == [], "pools left behind"
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert set(sandbox_processes()) - before == set()
    assert not SANDBOX.exists()
