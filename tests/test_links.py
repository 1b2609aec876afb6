"""Connection loss: a slave's link cut mid-transfer is reported at once while retries go on.

The slave's sshd runs in a network namespace the test makes (veth pair, 192.0.2.0/24);
the link is cut with `ip link set … down` on the host side, or every packet is dropped
with the link left up. The daemon runs with the shipped detection defaults (no
``stall_timeout`` here): a cut must be reported within 10 s by SSH keepalives, whatever
the stream's rate, and a slow but live stream must never be reported lost.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.links import Links
from cerssd.transport.ssh import LinkDown, SshRunner

from .conftest import (
    DaemonProcess,
    NetnsSshServer,
    raw_request,
    wait_until,
    write_file,
    zfs,
)
from .test_replicate_local import guid

MiB = 1 << 20
KiB = 1 << 10

#: Quick retries; detection (keepalives, stall_timeout) is left at the shipped defaults.
FAST_RETRIES = 'retry_max_interval = "2s"\nretry_deadline = "5m"\n'
#: What an operator is promised: a cut reported within this many seconds.
REPORTED_WITHIN = 10.0


def link(d: DaemonProcess, server: str) -> dict[str, Any]:
    return next(x for x in d.api("GET", "/v1/links")["items"] if x["server"] == server)


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str]:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    return src, dst


def submit(d: DaemonProcess, body: dict[str, Any]) -> str:
    aid: str = raw_request(d.socket_path, "POST", "/v1/replications",
                           json.dumps(body).encode(),
                           {"Content-Type": "application/json"}).body["id"]
    return aid


def reported_after(d: DaemonProcess, aid: str, fault: Any) -> tuple[float, dict[str, Any]]:
    """Apply ``fault``; seconds until the activity shows ``retrying`` with its link lost."""
    fault()
    cut_at = time.monotonic()
    retrying = d.wait_activity(aid, lambda a: a["state"] == "retrying", timeout=40,
                               what="the activity to report the lost link")
    seconds = time.monotonic() - cut_at
    print(f"reported lost {seconds:.1f} s after the fault")  # the figure, with pytest -s
    return seconds, retrying


def test_cut_link_is_reported_and_transfer_completes(
        start_daemon: Any, netns_sshd: NetnsSshServer, pools: tuple[str, str]) -> None:
    src, dst = pools
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon(daemon_extra=FAST_RETRIES,
                     extra=netns_sshd.config("slave") + '[servers.local]\nkind = "local"\n')
    assert link(d, "slave")["state"] == "up"
    body = {"snapshot": f"{src}/data@s1", "source": "local", "destination": "slave",
            "target_volume": f"{dst}/data", "bandwidth_limit": 3 * MiB}
    aid = submit(d, body)
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 3 * MiB, what="bytes to flow")
    seconds, retrying = reported_after(d, aid, netns_sshd.cut)
    assert seconds < REPORTED_WITHIN
    assert retrying["link"]["server"] == "slave"
    assert retrying["link"]["state"] in ("lost", "retrying") and retrying["link"]["last_error"]
    assert link(d, "slave")["state"] in ("lost", "retrying")
    assert 'cerssd_link_up{server="slave"} 0.0' in d.api("GET", "/metrics")
    wait_until(lambda: link(d, "slave")["state"] == "retrying", 20, what="a retry scheduled")
    assert '"link lost; retrying"' in d.log()
    netns_sshd.restore()
    done = d.wait_done(aid, timeout=180)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] >= 1
    assert guid(f"{dst}/data@s1") == guid(f"{src}/data@s1")
    assert link(d, "slave")["state"] == "up"
    assert 'cerssd_link_up{server="slave"} 1.0' in d.api("GET", "/metrics")
    assert '"link restored"' in d.log()
    lines = [x for x in d.api("GET", "/metrics").splitlines()
             if x.startswith('cerssd_link_retries_total{server="slave"}')]
    assert lines and float(lines[0].split()[-1]) >= 1


def test_unreachable_server_is_lost_until_it_answers(
        start_daemon: Any, netns_sshd: NetnsSshServer) -> None:
    netns_sshd.cut()
    d = start_daemon(daemon_extra=FAST_RETRIES, extra=netns_sshd.config("slave"))
    lost = link(d, "slave")
    assert lost["state"] == "lost" and lost["last_error"]
    servers = {s["name"]: s for s in d.api("GET", "/v1/servers")["items"]}
    assert servers["slave"]["available"] is False
    netns_sshd.restore()
    # Used again (a listing of a pool that is not there: cheap): probed again, link up.
    assert d.api("GET", "/v1/volumes?server=slave&root=nosuchpool")["total"] == 0
    assert link(d, "slave")["state"] == "up"


@pytest.mark.parametrize(("fault", "limit"), [("drop", 3 * MiB), ("cut", 4 * KiB)],
                         ids=["packets-dropped", "slow-stream-cut"])
def test_loss_is_reported_within_10s_whatever_the_fault_and_rate(
        start_daemon: Any, netns_sshd: NetnsSshServer, pools: tuple[str, str],
        fault: str, limit: int) -> None:
    """Every packet lost with the link up (no carrier change to notice), and a cut under
    a stream of 4 KiB/s (which sends too little for any byte-silence timer to be quick)."""
    src, dst = pools
    write_file(f"/{src}/data/big", 24)
    zfs("snapshot", f"{src}/data@s1")
    d = start_daemon(daemon_extra=FAST_RETRIES,
                     extra=netns_sshd.config("slave") + '[servers.local]\nkind = "local"\n')
    aid = submit(d, {"snapshot": f"{src}/data@s1", "source": "local", "destination": "slave",
                     "target_volume": f"{dst}/data", "bandwidth_limit": limit})
    d.wait_activity(aid, lambda a: a["progress"]["done"] > min(3 * MiB, 16 * limit),
                    what="bytes to flow")
    seconds, retrying = reported_after(d, aid, getattr(netns_sshd, fault))
    assert seconds < REPORTED_WITHIN, seconds
    assert retrying["link"]["server"] == "slave" and retrying["link"]["last_error"]
    assert link(d, "slave")["state"] in ("lost", "retrying")
    assert 'cerssd_link_up{server="slave"} 0.0' in d.api("GET", "/metrics")
    netns_sshd.restore()
    d.api("POST", f"/v1/activities/{aid}/cancel")
    ended = d.wait_done(aid, timeout=120)
    assert ended["state"] == "cancelled", (ended["status"], d.log()[-3000:])


THROTTLE = """#!/bin/sh
# zfs, whose receive takes its stream at RATE bytes/s and stops taking it for PAUSE s
# once (a slow disk, then one that stalls for a while): the sink is slow, the link live.
if [ "$1" = receive ]; then
    python3 -c '
import os, sys, time
rate, pause, out = {rate}, {pause}, os.fdopen(1, "wb", 0)
start, moved, paused = time.monotonic(), 0, False
while chunk := sys.stdin.buffer.read(4096):
    out.write(chunk)
    moved += len(chunk)
    if not paused and moved >= 64 * 1024:
        time.sleep(pause)
        paused, start, moved = True, time.monotonic(), 0
    time.sleep(max(0.0, start + moved / rate - time.monotonic()))
' | zfs "$@"
    exit
fi
exec zfs "$@"
"""


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_slow_but_live_streams_are_never_reported_lost(
        start_daemon: Any, netns_sshd: NetnsSshServer, make_pool: Any,
        tmp_path: Path) -> None:
    """A stream limited to 4 KiB/s, and a receive that takes 32 KiB/s and stops reading
    for 12 s (longer than the keepalives' 8 s): both go on, nothing is reported lost."""
    src, dst1, dst2 = make_pool(), make_pool(), make_pool()
    zfs("create", f"{src}/data")
    with open(f"/{src}/data/small", "wb") as f:
        f.write(os.urandom(256 * KiB))
    zfs("snapshot", f"{src}/data@s1")
    slow_disk = executable(tmp_path / "zfs-slow-disk", THROTTLE.format(rate=32 * KiB, pause=12))
    d = start_daemon(daemon_extra=FAST_RETRIES, extra=(
        netns_sshd.config("limited") + netns_sshd.config(
            "slowdisk", extra=f'zfs_command = "{slow_disk}"')
        + '[servers.local]\nkind = "local"\n'))
    limited = submit(d, {"snapshot": f"{src}/data@s1", "source": "local",
                         "destination": "limited", "target_volume": f"{dst1}/data",
                         "bandwidth_limit": 4 * KiB})
    slow = submit(d, {"snapshot": f"{src}/data@s1", "source": "local",
                      "destination": "slowdisk", "target_volume": f"{dst2}/data"})
    for aid in (limited, slow):
        d.wait_activity(aid, lambda a: a["progress"]["done"] > 0, what="bytes to flow")
    watched_until = time.monotonic() + 20
    seen: set[tuple[str, str, str]] = set()
    while time.monotonic() < watched_until:
        for aid, server in ((limited, "limited"), (slow, "slowdisk")):
            a = d.api("GET", f"/v1/activities/{aid}")
            seen.add((server, a["state"], link(d, server)["state"]))
        time.sleep(0.5)
    assert {state for _, state, _ in seen} <= {"running", "succeeded"}, seen
    assert {state for _, _, state in seen} == {"up"}, seen
    assert "link lost" not in d.log() and "stalled" not in d.log()
    done = d.wait_done(slow, timeout=120)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] == 0
    assert guid(f"{dst2}/data@s1") == guid(f"{src}/data@s1")
    still = d.api("GET", f"/v1/activities/{limited}")
    assert still["state"] == "running" and still["usage"]["retries"] == 0
    assert still["progress"]["done"] > 60 * KiB  # ~4 KiB/s for 20 s and more: it moved
    d.api("POST", f"/v1/activities/{limited}/cancel")
    assert d.wait_done(limited, timeout=60)["state"] == "cancelled"


async def test_command_on_a_dead_link_fails_within_10s(
        netns_sshd: NetnsSshServer, tmp_path: Path) -> None:
    """The control connection (commands) with its default keepalives: a command sent
    after every packet starts being lost fails as a lost link, not after TCP's minutes."""
    cfg = parse_config({"servers": {"slave": {
        "host": netns_sshd.host, "port": netns_sshd.port,
        "identity_file": str(netns_sshd.client_key),
        "known_hosts": str(netns_sshd.known_hosts)}}}).servers["slave"]
    links = Links(["slave"])
    runner = SshRunner(cfg, tmp_path / "ssh", links=links)
    try:
        assert (await runner.run(["echo", "up"])).stdout == "up\n"
        netns_sshd.drop()
        dropped_at = time.monotonic()
        with pytest.raises(LinkDown):
            await runner.run(["echo", "lost"])
        assert time.monotonic() - dropped_at < REPORTED_WITHIN
        lost = links.get("slave")
        assert lost is not None and lost.state == "lost" and lost.last_error
        netns_sshd.restore()
        assert (await runner.run(["echo", "back"])).stdout == "back\n"
        restored = links.get("slave")
        assert restored is not None and restored.state == "up"
    finally:
        await runner.close()
