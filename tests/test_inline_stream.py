"""Small streams passed inline: read whole on the sending side, received by one command
through the destination's shell instead of a stream (and an SSH session) of their own.

``transfer`` offered a ``SmallStream`` on plain local commands (fast), ``receive_inline``
on real zfs-fuse over the test sshd, and a tree whose unchanged members go inline while
its changed one streams, over SSH, checked by guid.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import ServerConfig
from cerssd.flow_control import Counters, FlowGate
from cerssd.replication.stream.inline import SmallStream
from cerssd.replication.stream.transfer import TransferFailed, transfer
from cerssd.storage.errors import BackendError
from cerssd.storage.zfs import ZfsBackend
from cerssd.storage.zfs.backend import INLINE_MAX
from cerssd.transport.runner import LocalRunner
from cerssd.transport.ssh import SshRunner
from cerssd.transport.stream import local_command

from .conftest import SshServer, wait_until, write_file, zfs
from .test_trees import all_in_sync, sync_now


class Inline:
    """A ``SmallStream`` that keeps what it is handed."""

    def __init__(self, limit: int = 16, wait: float = 5.0) -> None:
        self.got: list[bytes] = []

        async def deliver(data: bytes) -> None:
            self.got.append(data)
        self.small = SmallStream(limit, deliver, wait)


async def stream(sender: list[str], out: Path, inline: Inline) -> int:
    """``transfer`` from ``sender`` into ``cat > out`` (the stream path), offered inline."""
    receiver = local_command(["sh", "-c", f"cat > {out}"])
    return await transfer(local_command(sender), receiver, counters=Counters(),
                          gate=FlowGate(), stall_timeout=10, small=inline.small)


async def test_a_stream_that_ends_within_the_limit_is_delivered_inline(
        tmp_path: Path) -> None:
    inline = Inline()
    assert await stream(["printf", "a\\000b"], tmp_path / "out", inline) == 3
    assert inline.got == [b"a\0b"]
    assert not (tmp_path / "out").exists()  # no receiver was started
    assert await stream(["true"], tmp_path / "out", inline) == 0
    assert inline.got[-1] == b"" and not (tmp_path / "out").exists()


async def test_a_larger_stream_goes_on_from_the_same_send_with_its_head(
        tmp_path: Path) -> None:
    """What was peeked is passed on ahead of the rest: the receiver gets every byte, in
    order, and the send ran once (it used to be stopped and started again)."""
    count, out = tmp_path / "count", tmp_path / "out"
    expected = "".join(f"{i}\n" for i in range(1, 20001)).encode()
    inline = Inline()
    moved = await stream(["sh", "-c", f"echo started >> {count}; seq 1 20000"], out, inline)
    assert moved == len(expected) and out.read_bytes() == expected
    assert count.read_text() == "started\n" and inline.got == []


async def test_a_slower_stream_is_left_to_the_stream_path(tmp_path: Path) -> None:
    inline = Inline(wait=0.2)
    await stream(["sh", "-c", "sleep 1; echo late"], tmp_path / "out", inline)
    assert (tmp_path / "out").read_bytes() == b"late\n" and inline.got == []


async def test_a_failing_send_fails_as_in_a_transfer(tmp_path: Path) -> None:
    with pytest.raises(TransferFailed, match="no such snapshot") as caught:
        await stream(["sh", "-c", "echo 'no such snapshot' >&2; exit 3"], tmp_path / "out",
                     Inline())
    assert caught.value.side == "send" and caught.value.returncode == 3


def guid_of(snapshot: str) -> str:
    return zfs("get", "-Hp", "-o", "value", "guid", snapshot).stdout.strip()


def copy(snapshot: str, target: str) -> None:
    """``zfs send SNAPSHOT | zfs receive -u TARGET`` (a replica to stream on to)."""
    full = subprocess.run(["zfs", "send", snapshot], capture_output=True, check=True)
    subprocess.run(["zfs", "receive", "-u", target], input=full.stdout, check=True)


@pytest.fixture
async def remote(sshd: SshServer) -> Any:
    cfg = ServerConfig(name="remote", kind="ssh", host="127.0.0.1", port=sshd.port,
                       identity_file=sshd.client_key, known_hosts=sshd.known_hosts)
    runner = SshRunner(cfg, Path(tempfile.mkdtemp(prefix="cerssd-inline-")))
    backend = ZfsBackend(runner)
    await backend.probe()
    try:
        yield backend
    finally:
        await runner.close()


async def test_an_unchanged_members_incremental_goes_inline_over_ssh(
        remote: ZfsBackend, make_pool: Any) -> None:
    """Only over SSH (locally a receive costs the same either way); the stream's bytes
    (NULs and all) arrive intact: ZFS takes the snapshot with its guid."""
    assert remote.inline_limit == INLINE_MAX
    assert ZfsBackend(LocalRunner("local")).inline_limit == 0
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/v")
    write_file(f"/{src}/v/f", 1)
    zfs("snapshot", f"{src}/v@s1")
    zfs("snapshot", f"{src}/v@s2")  # nothing changed in between
    copy(f"{src}/v@s1", f"{dst}/v")
    local = ZfsBackend(LocalRunner("local"))
    inline = Inline(remote.inline_limit)
    await transfer(local.send(f"{src}/v@s2", f"{src}/v@s1"), remote.receive(f"{dst}/v"),
                   counters=Counters(), gate=FlowGate(), small=inline.small)
    [data] = inline.got
    assert b"\0" in data and len(data) < 4096

    await remote.receive_inline(f"{dst}/v", data, unmounted=True)
    assert (await remote.snapshot(f"{dst}/v@s2")).guid == \
        (await local.snapshot(f"{src}/v@s2")).guid
    assert zfs("get", "-H", "-o", "value", "mounted", f"{dst}/v").stdout.strip() == "no"

    # what zfs receive refuses is an error with its own message (here: a cut stream)
    with pytest.raises(BackendError, match="failed to read from stream"):
        await remote.receive_inline(f"{dst}/v", data[:len(data) // 2], unmounted=True)
    with pytest.raises(BackendError, match="too large"):
        await remote.receive_inline(f"{dst}/v", bytes(INLINE_MAX + 1))


def test_a_tree_over_ssh_sends_unchanged_members_inline_and_changed_ones_streamed(
        start_daemon: Any, make_pool: Any, sshd: SshServer) -> None:
    """Steady cycles over SSH: the members with nothing new go inline, the one with a
    MiB new streams; every member's new snapshot is on the slave with its guid."""
    master, slave = make_pool(), make_pool()
    root = f"{master}/t"
    for name in ("", "/a", "/b", "/c"):
        zfs("create", root + name)
    config = (sshd.config("lab1") + '[servers.local]\nkind = "local"\n'
              f'[relationships.t]\nvolume = "{root}"\nrecursive = true\ninterval = "1h"\n'
              f'slaves = [{{server = "lab1", target_volume = "{slave}/t"}}]\n')
    d = start_daemon(extra=config)
    wait_until(lambda: all_in_sync(d, "t", 4, 1), 120, what="the first cycle")
    for cycle in range(2):
        write_file(f"/{root}/b/f{cycle}", 1)
        # the last sync ended, not only its members in sync: a cycle that finds it still
        # finishing leaves the slave to the sync's own follow-up (see the report)
        wait_until(lambda: not [a for a in d.api("GET", "/v1/activities?kind=tree-sync")
                                ["items"] if a["state"] not in ("succeeded", "failed")],
                   60, what="the last tree sync to end")
        target = sync_now(d, "t")
        wait_until(lambda t=target: all_in_sync(d, "t", 4, t), 120,
                   what=f"steady cycle {target}")
    for name in ("", "/a", "/b", "/c"):
        listed = [line for line in zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s",
                                       "createtxg", "-r", root + name).stdout.split()
                  if line.startswith(f"{root}{name}@")]
        replica = f"{slave}/t{name}@{listed[-1].partition('@')[2]}"
        assert guid_of(replica) == guid_of(listed[-1]), replica
    # the two steady cycles: 3 of the 4 members inline (b streamed), and nothing failed
    steady = [json.loads(line) for line in d.log().splitlines()
              if line.startswith("{") and '"members streamed on"' in line]
    assert [(e["moved"], e["inline"], e["failed"]) for e in steady] == [(4, 3, 0)] * 2
