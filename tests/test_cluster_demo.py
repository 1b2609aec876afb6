"""docs/cluster.md's walkthrough of a clustered pair, run as a reader runs it: `make
demo-cluster` (``scripts/cluster-demo``), start to end.

The script starts a 3-member etcd, an sshd and two managing daemons with the same
clustered relationship, shows who leads, kills the leader with ``kill -9``, shows the
other take over and run the next cycle, and removes everything. The test checks that it
succeeds, that every command the walkthrough shows (``$ ...`` lines) is one the script
ran, in the same order, that the output shows what the walkthrough says it shows, and
that nothing is left: no pool, no process, no directory.

The test gives the demo pools of its own names and free ports (the script's environment
overrides), and reads the walkthrough's commands with its pool names; it refuses to run
beside a demo that is up (the directory ./cluster-sandbox is fixed).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .conftest import SLOW
from .test_readme_demo import port_free, processes_naming

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "cluster-sandbox"
DOCUMENTED_POOLS = "cerssd-cluster"
DOC = REPO / "docs" / "cluster.md"
HEADING = "## Walkthrough: a clustered pair on one machine"


def free_ports() -> dict[str, str]:
    """An sshd port, and an etcd base whose +0..2 (clients) and +10..12 (peers) are free,
    away from the defaults and below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        ssh, etcd = rng.randrange(25000, 26000), rng.randrange(26000, 27000)
        if all(port_free(p) for p in (ssh, *range(etcd, etcd + 3), *range(etcd + 10, etcd + 13))):
            return {"CERSSD_CLUSTER_SSH_PORT": str(ssh), "CERSSD_CLUSTER_ETCD_PORT": str(etcd)}
    raise AssertionError("no free ports for the cluster demo")


def existing_pools(prefix: str) -> list[str]:
    listed = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                            text=True).stdout.split()
    return [p for p in listed if p.startswith(f"{prefix}-")]


def demo_processes() -> list[str]:
    """Processes whose command line names the demo's directory (of this checkout)."""
    return processes_naming("cluster-sandbox/", REPO)


def documented_commands() -> list[str]:
    """The commands the walkthrough shows as run (``$ ...`` lines of its output blocks)."""
    text = DOC.read_text()
    assert HEADING in text, f"docs/cluster.md lost its walkthrough ({HEADING!r})"
    body = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```text\n(.*?)^```$", body, re.M | re.S)
    return [line[2:] for block in blocks for line in block.splitlines()
            if line.startswith("$ ")]


def test_the_cluster_walkthrough_runs_as_documented() -> None:
    if os.geteuid() != 0:
        pytest.fail("the demo needs root (zfs-fuse, pools, sshd)")
    if DEMO_DIR.exists():
        pytest.fail(f"a cluster demo is already up ({DEMO_DIR} exists): "
                    "scripts/cluster-demo down")
    prefix = f"cdt{uuid.uuid4().hex[:8]}"
    documented = [c.replace(f"{DOCUMENTED_POOLS}-", f"{prefix}-")
                  for c in documented_commands()]
    assert len(documented) >= 8, documented
    assert "make demo-cluster" in DOC.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERSSD_")}
    env.update(free_ports(), CERSSD_CLUSTER_POOLS=prefix)
    before = set(demo_processes())
    started = time.monotonic()
    try:
        done = subprocess.run(["make", "demo-cluster"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=4 * SLOW)
    finally:
        if DEMO_DIR.exists():  # failed or timed out before its own clean-up
            subprocess.run([str(REPO / "scripts" / "cluster-demo"), "down"], env=env,
                           timeout=300, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    out = done.stdout
    print(out)
    print(f"make demo-cluster took {elapsed:.0f} s")
    assert done.returncode == 0, out[-6000:]
    # Every command the walkthrough shows ran, in its order.
    ran = [line[2:] for line in out.splitlines() if line.startswith("$ ")]
    assert ran == documented, f"the script ran {ran}; docs/cluster.md shows {documented}"
    # What the walkthrough says each step shows.
    steps = re.split(r"^== ", out, flags=re.M)
    step = {s.splitlines()[0]: s for s in steps[1:]}

    def shown(title: str) -> str:
        found = [text for name, text in step.items() if name.startswith(title)]
        assert found, f"no step {title!r} in:\n{out}"
        return found[0]

    who = shown("Which manager leads?")
    assert re.search(r"^m1\s+reachable\s", who, re.M), who
    assert re.search(r"^data\s+m1\s+\d+\s+[\d.]+ s\s+leading", who, re.M), who
    assert re.search(r"^data\s.*\s1\s+slave in-sync lag", who, re.M), who  # its first cycle
    follows = shown("m2 follows")
    assert re.search(r"^m2\s+reachable\s", follows, re.M), follows
    assert re.search(r"^data\s+m1\s+\d+\s+[\d.]+ s\s+following", follows, re.M), follows
    killed = shown("Kill the leader")
    taken = re.search(r"^m2 leads ([\d.]+) s after the kill", killed, re.M)
    assert taken, killed
    assert re.search(r"^data\s+m2\s+\d+\s+[\d.]+ s\s+leading", killed, re.M), killed
    terms = re.findall(r"^data\s+m\d\s+(\d+)\s", who + killed, re.M)
    assert len(terms) == 2 and int(terms[1]) > int(terms[0]), terms  # a new term
    cycle = shown("The new leader runs the next cycle")
    assert re.search(rf"^slave\s+{prefix}-slave/data\s+in-sync", cycle, re.M), cycle
    assert re.search(r"^cycles\s+2$", cycle, re.M), cycle
    # Both cycles' snapshots are on the slave, each with its master's guid.
    guids = dict(re.findall(rf"^{prefix}-(?:master|slave)(/data@\S+)\t(\d+)$", cycle, re.M))
    pairs = re.findall(rf"^{prefix}-(master|slave)(/data@\S+)\t(\d+)$", cycle, re.M)
    assert len(pairs) == 4 and len(guids) == 2, cycle
    assert all(guids[snap] == guid for _, snap, guid in pairs), cycle
    assert "cluster-demo: done, everything removed" in out
    print(f"takeover {taken.group(1)} s after kill -9 (lease_ttl 3 s)")
    # Nothing is left behind.
    assert existing_pools(prefix) == [], "pools left behind"
    assert not DEMO_DIR.exists()
    assert set(demo_processes()) - before == set()
