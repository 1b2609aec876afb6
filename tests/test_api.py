"""Every control API route against a real daemon on real zfs-fuse, errors included."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from cerssd.api.app import ROUTES
from cerssd.api.openapi import openapi_path

from .conftest import DaemonProcess, raw_request, wait_until, zfs

PROBLEM = "application/problem+json"


def req(d: DaemonProcess, method: str, path: str, body: Any = None, *,
        raw_body: bytes | None = None) -> Any:
    payload = raw_body if raw_body is not None else (
        json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    return raw_request(d.socket_path, method, path, payload, headers)


def assert_problem(r: Any, status: int, detail_part: str) -> None:
    assert r.status == status, r.body
    assert r.content_type.startswith(PROBLEM)
    assert r.body["status"] == status and detail_part in r.body["detail"], r.body
    assert r.body["title"] and r.body["instance"]


def test_status_servers_capabilities(daemon: DaemonProcess) -> None:
    status = req(daemon, "GET", "/v1/status").body
    assert status["pid"] == daemon.proc.pid and status["servers"] == {"local": True}
    assert status["daemon"]["log_level"] == "info"
    servers = req(daemon, "GET", "/v1/servers").body["items"]
    assert servers[0]["name"] == "local" and servers[0]["zfs_version"] == "pool version 23"
    assert "incremental_send" in servers[0]["capabilities"]
    caps = req(daemon, "GET", "/v1/capabilities").body
    assert caps["local"]["stateless_snapshots"] is True
    assert caps["local"]["resumable_send"] is False


def test_volume_listing_is_paginated_and_restricted_to_served_pools(
        start_daemon: Any, make_pool: Any) -> None:
    served, rel_pool, other = make_pool(), make_pool(), make_pool()
    for i in range(5):
        zfs("create", f"{served}/v{i}")
    zfs("create", f"{rel_pool}/data")
    zfs("create", f"{other}/hidden")
    zfs("snapshot", "-r", f"{served}@s1")
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\npools = ["{served}"]\n'
                           f'[servers.lab]\nkind = "local"\n'
                           f'[relationships.r]\nvolume = "{rel_pool}/data"\nmaster = "lab"\n'
                           f'slaves = [{{server = "local", target_volume = "{other}/copy"}}]\n'
                           'interval = "1h"\n')
    page = req(d, "GET", "/v1/volumes?limit=2&offset=1").body
    assert page["total"] == 6 and page["roots"] == [served]
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [v["name"] for v in page["items"]] == [f"{served}/v0", f"{served}/v1"]
    assert all(v["state"] == "in-use" for v in page["items"])  # mounted and writable
    lab = req(d, "GET", "/v1/volumes?server=lab").body  # no pools key: the relationship's
    assert lab["roots"] == [rel_pool]
    assert [v["name"] for v in lab["items"]] == [rel_pool, f"{rel_pool}/data"]
    assert not any(other in v["name"] for v in lab["items"] + page["items"])
    narrowed = req(d, "GET", f"/v1/volumes?root={served}/v3").body
    assert [v["name"] for v in narrowed["items"]] == [f"{served}/v3"]
    outside = req(d, "GET", f"/v1/volumes?root={other}").body  # not served: nothing
    assert (outside["roots"], outside["total"]) == ([], 0)
    assert_problem(req(d, "GET", "/v1/volumes?root=-o%20x"), 400, "pool name")
    assert_problem(req(d, "GET", "/v1/volumes?limit=5001"), 400, "at most 5000")
    assert_problem(req(d, "GET", "/v1/volumes?limit=0"), 400, "limit")
    assert_problem(req(d, "GET", "/v1/volumes?offset=-1"), 400, "offset")


def test_volumes_and_snapshot_lifecycle(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    names = [v["name"] for v in req(daemon, "GET", f"/v1/volumes?root={pool}").body["items"]]
    assert f"{pool}/vol" in names
    created = req(daemon, "POST", f"/v1/volumes/{pool}/vol/snapshots", {"name": "s1"})
    assert created.status == 202 and created.body["kind"] == "snapshot"
    done = req(daemon, "GET", f"/v1/activities/{created.body['id']}?wait=30").body  # long-poll
    assert done["state"] == "succeeded" and done["status"]["code"] == 0
    assert done["progress"]["text"] == "1 of 1"
    snaps = req(daemon, "GET", f"/v1/volumes/{pool}/vol/snapshots").body["items"]
    assert [s["label"] for s in snaps] == ["s1"]
    assert snaps[0]["guid"] == zfs("get", "-Hp", "-o", "value", "guid",
                                   f"{pool}/vol@s1").stdout.strip()
    again = daemon.wait_done(req(daemon, "POST", f"/v1/volumes/{pool}/vol/snapshots",
                                 {"name": "s1"}).body["id"])
    assert again["state"] == "failed" and again["status"]["code"] == 4  # conflict
    assert "already exists" in again["status"]["message"]
    destroyed = req(daemon, "DELETE", f"/v1/volumes/{pool}/vol/snapshots/s1")
    assert destroyed.status == 202
    assert daemon.wait_done(destroyed.body["id"])["state"] == "succeeded"
    assert req(daemon, "GET", f"/v1/volumes/{pool}/vol/snapshots").body["items"] == []


def test_client_errors_are_problem_documents(daemon: DaemonProcess, tmp_path: Path) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    assert_problem(req(daemon, "GET", "/v1/activities/0123abcd"), 404, "no activity 0123abcd")
    assert_problem(req(daemon, "GET", "/v1/nowhere"), 404, "Not Found")
    assert_problem(req(daemon, "PUT", "/v1/status"), 405, "Method Not Allowed")
    assert_problem(req(daemon, "GET", f"/v1/volumes/{pool}/missing/snapshots"), 404,
                   "does not exist")
    assert_problem(req(daemon, "GET", "/v1/volumes?server=nosuch"), 404, "no server nosuch")
    marker = tmp_path / "x"
    bad = req(daemon, "POST", f"/v1/volumes/{pool}/vol/snapshots",
              {"name": f"a;touch {marker}"})
    assert_problem(bad, 400, "only letters, digits")
    assert_problem(req(daemon, "POST", "/v1/volumes/bad%20name/snapshots", {"name": "x"}),
                   400, "pool name")
    assert not marker.exists()
    url = f"/v1/volumes/{pool}/vol/snapshots"
    assert_problem(req(daemon, "POST", url, raw_body=b"{nope"), 400, "not valid JSON")
    assert_problem(req(daemon, "POST", url, [1]), 400, "JSON object")
    assert_problem(req(daemon, "POST", url, {}), 422, "name: is required")
    assert_problem(req(daemon, "POST", url, {"name": 5}), 422, "name: must be a string")
    assert_problem(req(daemon, "POST", url, {"name": "x", "colour": 1}), 422, "colour")
    assert_problem(req(daemon, "GET", "/v1/activities?limit=zero"), 400, "limit")
    assert_problem(req(daemon, "GET", "/v1/activities?state=dreaming"), 400, "state")
    assert_problem(req(daemon, "POST", "/v1/replications", {"snapshot": f"{pool}/vol@s",
                                                            "source": "local",
                                                            "destination": "local"}),
                   422, "target_volume")


def test_control_verbs_and_illegal_transitions(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    created = req(daemon, "POST", f"/v1/volumes/{pool}/vol/snapshots", {"name": "c1"})
    aid = daemon.wait_done(created.body["id"])["id"]
    for verb in ("suspend", "resume", "cancel"):
        assert_problem(req(daemon, "POST", f"/v1/activities/{aid}/{verb}"), 409, "succeeded")
    assert_problem(req(daemon, "POST", "/v1/activities/feedbeef/cancel"), 404, "feedbeef")
    # live suspend/resume/cancel on a running activity: test_replicate_local.py


def test_activities_filter_and_pages(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    ids = []
    for i in range(3):
        r = req(daemon, "POST", f"/v1/volumes/{pool}/vol/snapshots", {"name": f"p{i}"})
        ids.append(daemon.wait_done(r.body["id"])["id"])
    r = req(daemon, "DELETE", f"/v1/volumes/{pool}/vol/snapshots/p0")
    daemon.wait_done(r.body["id"])
    page = req(daemon, "GET", "/v1/activities?kind=snapshot&limit=2").body
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2
    assert [a["id"] for a in page["items"]] == ids[::-1][:2]  # newest first
    rest = req(daemon, "GET", "/v1/activities?kind=snapshot&limit=2&offset=2").body
    assert [a["id"] for a in rest["items"]] == [ids[0]]
    destroys = req(daemon, "GET", "/v1/activities?kind=destroy").body
    assert destroys["total"] == 1
    assert req(daemon, "GET", "/v1/activities?state=failed").body["total"] == 0
    assert req(daemon, "GET", f"/v1/activities?volume={pool}/vol").body["total"] == 4
    first = req(daemon, "GET", f"/v1/activities/{ids[0]}").body["created_at"]
    since = req(daemon, "GET", f"/v1/activities?kind=snapshot&since={int(first) + 1}").body
    later = [i for i in ids if req(daemon, "GET", f"/v1/activities/{i}").body["created_at"]
             >= int(first) + 1]
    assert since["total"] == len(later)
    until = req(daemon, "GET", f"/v1/activities?kind=snapshot&until={int(first)}").body
    assert until["total"] == 0
    assert req(daemon, "GET", "/v1/activities?relationship=none").body["total"] == 0
    assert_problem(req(daemon, "GET", "/v1/activities?limit=1001"), 400, "limit")
    for huge in ("since", "until", "offset"):  # bounded before they reach SQLite
        assert_problem(req(daemon, "GET", f"/v1/activities?{huge}={10**30}"), 400, huge)
    one = req(daemon, "GET", f"/v1/activities/{ids[1]}").body
    assert one["target"] == f"{pool}/vol@p1" and one["self_restarting"] is False
    assert set(one["usage"]) == {"elapsed_seconds", "bytes_read", "bytes_on_wire", "retries",
                                 "rate_bytes_per_second"}


def test_openapi_matches_the_routes(daemon: DaemonProcess) -> None:
    doc = req(daemon, "GET", "/v1/openapi.json").body
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = {(r.method, openapi_path(r.path)) for r in ROUTES}
    assert documented == routed
    assert "/v1/activities/{id}/suspend" in doc["paths"]
    params = doc["paths"]["/v1/volumes/{volume}/snapshots/{label}"]["delete"]["parameters"]
    assert {p["name"] for p in params} == {"volume", "label", "server"}
    body = doc["paths"]["/v1/replications"]["post"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]
    replication = schemas[ref.rsplit("/", 1)[1]]
    assert replication["required"] == ["snapshot", "source", "destination"]
    assert replication["additionalProperties"] is False
    # the names carry the daemon's grammar and limits; every route documents its answer
    assert replication["properties"]["snapshot"]["maxLength"] == 255
    assert replication["properties"]["source"]["pattern"].startswith("^")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok and "default" in op["responses"], (method, path)
            if path != "/metrics" and ok != ["204"]:
                assert "content" in op["responses"][ok[0]], (method, path)


def _as_nobody(socket_path: Path, method: str, path: str) -> tuple[int, str]:
    """One request from a forked child that dropped to uid/gid 65534: (status, body)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        response = b"HTTP/1.1 255 child-failed\r\n\r\n"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(socket_path))
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n".encode())
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                response = b"".join(chunks)
        finally:
            os.write(write_fd, response)
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as f:
        head, _, body = f.read().decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_peer_credentials(daemon: DaemonProcess) -> None:
    daemon.socket_path.chmod(0o666)  # let uid 65534 connect; the daemon must still refuse
    assert _as_nobody(daemon.socket_path, "GET", "/v1/status")[0] == 200
    status, body = _as_nobody(daemon.socket_path, "POST", "/v1/activities/00ff/cancel")
    assert status == 403
    problem = json.loads(body)
    assert problem["status"] == 403 and "uid 65534 may read but not change" in problem["detail"]
    # a member of the control group may: reload with control_group = nogroup (gid 65534)
    text = daemon.config_path.read_text().replace("[daemon]\n",
                                                  '[daemon]\ncontrol_group = "nogroup"\n')
    daemon.config_path.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: req(daemon, "GET", "/v1/status").body["daemon"]["control_group"]
               == "nogroup", what="reload")
    assert _as_nobody(daemon.socket_path, "POST", "/v1/activities/00ff/cancel")[0] == 404


def test_reload_keeps_old_config_on_error(daemon: DaemonProcess) -> None:
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good.replace("[daemon]\n", '[daemon]\nlog_level = "loud"\n'))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in daemon.log(), what="the reload error")
    line = next(json.loads(x) for x in daemon.log().splitlines()
                if "config reload failed" in x)
    assert line["key"] == "daemon.log_level" and line["level"] == "error"
    status = req(daemon, "GET", "/v1/status").body
    assert status["daemon"]["log_level"] == "info"  # unchanged, still serving
    daemon.config_path.write_text(good.replace("[daemon]\n",
                                               '[daemon]\nactivity_retention = "2h"\n'))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: req(daemon, "GET", "/v1/status").body["daemon"]["activity_retention"]
               == 7200, what="the good reload")
    # The retry settings are built into running work: a reload says it keeps the old ones.
    daemon.config_path.write_text(good.replace("[daemon]\n", '[daemon]\nretry_deadline = "2h"\n'))
    daemon.proc.send_signal(signal.SIGHUP)
    warning = wait_until(lambda: next((x for x in daemon.log().splitlines()
                                       if "only after a restart" in x), None),
                         what="the restart warning")
    assert "retry_deadline" in warning


def test_metrics_on_socket_and_tcp_pass_promtool(start_daemon: Any, pool: str,
                                                 tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = start_daemon(metrics=f"127.0.0.1:{port}")
    zfs("create", f"{pool}/m")
    d.wait_done(req(d, "POST", f"/v1/volumes/{pool}/m/snapshots", {"name": "x"}).body["id"])
    text = req(d, "GET", "/metrics").body
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        tcp_text = r.read().decode()
    for body in (text, tcp_text):
        assert 'cerssd_activities{kind="snapshot",state="succeeded"} 1.0' in body
        assert 'cerssd_server_capability{capability="holds",server="local"} 1.0' in body
        assert re.search(r"^cerssd_start_time_seconds \d", body, re.M)
        assert shutil.which("promtool"), "promtool comes with Debian's prometheus package"
        check = subprocess.run(["promtool", "check", "metrics"], input=body,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_is_clean(start_daemon: Any) -> None:
    d = start_daemon()
    assert d.socket_path.exists()
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket_path.exists()
    assert "STOPPING=1" in d.next_notify(5)
    assert '"event": "stopped"' in d.log()


def test_second_daemon_on_same_socket_refused(start_daemon: Any, tmp_path: Path) -> None:
    first = start_daemon()
    second = start_daemon(config_path=first.config_path, wait=False)
    assert second.proc.wait(30) == 1
    assert "another cerssd is using" in second.log() or "another daemon" in second.log()
    assert req(first, "GET", "/v1/status").status == 200


def test_journal_from_a_newer_cerssd_is_a_clean_refusal(start_daemon: Any,
                                                       tmp_path: Path) -> None:
    state = tmp_path / "newer-state"
    state.mkdir()
    with sqlite3.connect(state / "journal.sqlite3") as db:
        db.execute("PRAGMA user_version=99")
    d = start_daemon(state_dir=state, wait=False)
    assert d.proc.wait(30) == 78  # EX_CONFIG: the unit does not restart it
    log = d.log()
    assert '"event": "cannot start"' in log and "newer than this cerssd" in log
    assert "Traceback" not in log


def test_bodies_that_are_not_json_are_400_problem_documents(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    url = f"/v1/volumes/{pool}/vol/snapshots"
    deep = b'{"name": "s", "server": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    for raw in (b'{"name": "\xff\xfe"}', b"\xff\xfe\xfd", b'{"name": "\\ud800"}',
                b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000, deep):
        r = req(daemon, "POST", url, raw_body=raw)
        assert r.status in (400, 422) and r.content_type.startswith(PROBLEM), (raw[:20], r)
    assert_problem(req(daemon, "POST", url, raw_body=b'{"name": "\xff"}'), 400, "not valid JSON")
    assert_problem(req(daemon, "POST", url, raw_body=b'{"name": "s"'), 400, "not valid JSON")
    assert_problem(req(daemon, "POST", url, raw_body=b"[" * 100_000), 400, "JSON object")
    assert "Traceback" not in daemon.log() and "api request failed" not in daemon.log()


def test_missing_volume_or_snapshot_is_404_before_any_activity(daemon: DaemonProcess) -> None:
    pool = daemon.pool  # type: ignore[attr-defined]
    before = req(daemon, "GET", "/v1/activities").body["total"]
    assert_problem(req(daemon, "POST", f"/v1/volumes/{pool}/missing/snapshots", {"name": "s"}),
                   404, "does not exist")
    assert_problem(req(daemon, "DELETE", f"/v1/volumes/{pool}/missing/snapshots/s"), 404,
                   "does not exist")
    assert_problem(req(daemon, "DELETE", f"/v1/volumes/{pool}/vol/snapshots/none"), 404,
                   "does not exist")
    assert req(daemon, "GET", "/v1/activities").body["total"] == before


def _zfs_logger(tmp_path: Path) -> tuple[Path, Path]:
    """A zfs_command that records each call's arguments, then runs the real zfs."""
    calls = tmp_path / "zfs-calls"
    wrapper = tmp_path / "zfs-logged"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec zfs "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, calls


def test_hostile_names_are_400_and_reach_no_zfs(start_daemon: Any, pool: str,
                                                tmp_path: Path) -> None:
    """Every name kind, ending in a newline or a CR, holding a NUL, or too long: 400
    naming the field (or the path), no activity, and no zfs command sees it."""
    from urllib.parse import quote

    wrapper, calls = _zfs_logger(tmp_path)
    zfs("create", f"{pool}/vol")
    zfs("snapshot", f"{pool}/vol@s")
    d = start_daemon(extra=f'[servers.local]\nkind = "local"\nzfs_command = "{wrapper}"\n')
    marker = "hostile"
    suffixes = ["\n", "\r", "\x00"]
    vol = f"{pool}/vol"

    def path(text: str) -> str:
        return quote(text, safe="/@")

    cases: list[tuple[str, str, Any, str]] = []  # method, url, body, field or ""
    for bad in suffixes:
        v, lab, name = f"{vol}/{marker}{bad}", f"{marker}{bad}", f"{marker}{bad}"
        cases += [
            ("GET", f"/v1/volumes/{path(v)}/snapshots", None, ""),
            ("POST", f"/v1/volumes/{path(v)}/snapshots", {"name": "s"}, ""),
            ("POST", f"/v1/volumes/{vol}/snapshots", {"name": lab}, "name"),
            ("DELETE", f"/v1/volumes/{vol}/snapshots/{path(lab)}", None, ""),
            ("GET", f"/v1/volumes?server={path(name)}", None, "server"),
            ("POST", f"/v1/volumes/{vol}/snapshots", {"name": "s", "server": name}, "server"),
            ("POST", "/v1/replications", {"snapshot": f"{vol}@{lab}", "source": "local",
                                          "destination": "local",
                                          "target_volume": f"{pool}/c"}, "snapshot"),
            ("POST", "/v1/replications", {"snapshot": f"{vol}@s", "source": "local",
                                          "destination": "local", "target_volume": v},
             "target_volume"),
            ("POST", "/v1/relationships", {"name": name, "volume": vol, "interval": "5m",
                                           "slaves": [{"server": "local",
                                                       "target_volume": f"{pool}/c"}]},
             "name"),
            ("POST", "/v1/relationships", {"name": "r", "volume": v, "interval": "5m",
                                           "slaves": ["local"]}, "volume"),
            ("POST", "/v1/relationships", {"name": "r", "volume": vol, "interval": "5m",
                                           "slaves": [name]}, "slaves[0]"),
            ("POST", f"/v1/relationships/{path(name)}/pause", None, ""),
            ("DELETE", f"/v1/relationships/{path(name)}", None, ""),
            ("GET", f"/v1/backups?store={path(name)}", None, "store"),
            ("POST", "/v1/backups", {"snapshot": f"{vol}@s", "store": name}, "store"),
            ("POST", "/v1/restores", {"snapshot": f"{vol}@{lab}", "target_volume": f"{pool}/r"},
             "snapshot"),
        ]
    long_label = marker + "x" * 250
    cases += [
        ("POST", f"/v1/volumes/{vol}/snapshots", {"name": long_label}, "name"),
        ("POST", f"/v1/volumes/{vol}/snapshots", {"name": marker + "x" * (250 - len(vol))},
         ""),  # a valid label, but with its volume over ZFS's 255
        ("GET", f"/v1/volumes/{vol}/{marker}{'x' * 260}/snapshots", None, ""),
        ("POST", "/v1/relationships", {"name": marker + "x" * 60, "volume": vol,
                                       "slaves": ["local"], "interval": "5m"}, "name"),
        ("GET", f"/v1/volumes?server={marker}{'x' * 60}", None, "server"),
        ("GET", f"/v1/relationships/{marker}{'x' * 60}", None, ""),
    ]
    before = req(d, "GET", "/v1/activities").body["total"]
    for method, url, body, field in cases:
        r = req(d, method, url, body)
        assert r.status == 400, (method, url, body, r.body)
        assert r.content_type.startswith(PROBLEM) and r.body["title"] == "Invalid Name", r.body
        if field:
            assert r.body["field"] == field, (url, body, r.body)
    assert req(d, "GET", "/v1/activities").body["total"] == before
    assert req(d, "GET", "/v1/relationships").body["items"] == []
    assert marker not in calls.read_text()
    # the wrapper does see the names of valid requests
    assert req(d, "GET", f"/v1/volumes/{vol}/snapshots").status == 200
    assert vol in calls.read_text()
    assert marker not in zfs("list", "-H", "-r", "-t", "all", "-o", "name", pool).stdout
