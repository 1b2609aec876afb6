"""Connection loss: a slave's link cut mid-transfer is reported at once while retries go on.

The slave's sshd runs in a network namespace the test makes (veth pair, 192.0.2.0/24);
the link is cut with `ip link set … down` on the host side.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .conftest import DaemonProcess, NetnsSshServer, raw_request, wait_until, write_file, zfs
from .test_replicate_local import guid

MiB = 1 << 20

FAST_RETRIES = 'stall_timeout = "5s"\nretry_max_interval = "2s"\nretry_deadline = "5m"\n'


def link(d: DaemonProcess, server: str) -> dict[str, Any]:
    return next(x for x in d.api("GET", "/v1/links")["items"] if x["server"] == server)


@pytest.fixture
def pools(make_pool: Any) -> tuple[str, str]:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    return src, dst


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
    aid = raw_request(d.socket_path, "POST", "/v1/replications", json.dumps(body).encode(),
                      {"Content-Type": "application/json"}).body["id"]
    d.wait_activity(aid, lambda a: a["progress"]["done"] > 3 * MiB, what="bytes to flow")
    netns_sshd.cut()
    cut_at = time.monotonic()
    retrying = d.wait_activity(aid, lambda a: a["state"] == "retrying", timeout=20,
                               what="the activity to report the lost link")
    assert time.monotonic() - cut_at < 10
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
