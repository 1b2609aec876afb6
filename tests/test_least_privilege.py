"""A remote server reached as a non-root user (docs/least-privilege.md), on real zfs-fuse
behind the test sshd.

zfs-fuse cannot delegate: its ``zfs allow`` needs a helper Debian does not ship, and its
control socket (``/run/zfs/zfs_socket``, in a directory only root may enter) refuses
anyone else, so a non-root account runs ``zfs`` through ``sudo -n`` with the one
sudoers line the guide gives. Delegation with ``zfs allow`` on OpenZFS is in
``test_openzfs.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import ServerConfig
from cerssd.storage.errors import BackendError
from cerssd.storage.zfs import ZfsBackend
from cerssd.transport.ssh import SshRunner

from .conftest import SshServer, write_file, zfs
from .sshd import RemoteUser
from .test_relationships import wait_in_sync
from .test_replicate_local import guid


def runner(sshd: SshServer, user: RemoteUser, tmp_path: Path) -> SshRunner:
    cfg = ServerConfig(name="remote", kind="ssh", host=sshd.host, port=sshd.port,
                       user=user.name, identity_file=sshd.client_key,
                       known_hosts=sshd.known_hosts)
    return SshRunner(cfg, tmp_path / "ssh")


def test_zfs_fuse_cannot_delegate_so_a_non_root_user_needs_sudo(
        sshd: SshServer, remote_user: RemoteUser, make_pool: Any, tmp_path: Path) -> None:
    pool = make_pool()
    denied = zfs("allow", remote_user.name, "send,snapshot,hold", pool, check=False)
    assert denied.returncode != 0 and "pyzfs.py" in denied.stdout + denied.stderr

    async def probe(sudo: bool) -> ZfsBackend:
        ssh = runner(sshd, remote_user, tmp_path)
        try:
            # a non-root login's PATH has no /usr/sbin (sudo's secure_path has)
            backend = ZfsBackend(ssh, sudo=sudo, zfs="/usr/sbin/zfs", zpool="/usr/sbin/zpool")
            await backend.probe()
            assert pool in await backend.pools()
            return backend
        finally:
            await ssh.close()

    with pytest.raises(BackendError) as exc:
        asyncio.run(probe(sudo=False))
    assert "Permission denied" in str(exc.value) and "sudoers" in str(exc.value)
    assert asyncio.run(probe(sudo=True)).capabilities.holds


def test_relationships_replicate_to_and_from_a_non_root_user_through_sudo(
        sshd: SshServer, remote_user: RemoteUser, make_pool: Any,
        start_daemon: Any) -> None:
    here, there = make_pool(), make_pool()
    zfs("create", f"{here}/out")
    zfs("create", f"{there}/in")
    write_file(f"/{here}/out/f", 2)
    write_file(f"/{there}/in/f", 2)
    d = start_daemon(extra=(
        '[servers.local]\nkind = "local"\n'
        + sshd.config("remote", user=remote_user.name, extra="sudo = true")
        + f'[relationships.push]\nvolume = "{here}/out"\ninterval = "1h"\n'
        f'slaves = [{{server = "remote", target_volume = "{there}/copy"}}]\n'
        f'[relationships.pull]\nmaster = "remote"\nvolume = "{there}/in"\n'
        f'interval = "1h"\nslaves = [{{server = "local", target_volume = "{here}/copy"}}]\n'))
    for name, copy in (("push", f"{there}/copy"), ("pull", f"{here}/copy")):
        r = wait_in_sync(d, name)
        label = r["newest_snapshot"].split("@")[1]
        assert guid(f"{copy}@{label}") == guid(r["newest_snapshot"])
        # the base is pinned on both ends (on the remote one by the user through sudo)
        for held in (r["newest_snapshot"], f"{copy}@{label}"):
            assert int(zfs("get", "-Hp", "-o", "value", "userrefs", held).stdout) == 1
        assert zfs("get", "-H", "-o", "value", "mounted", copy).stdout.strip() == "no"
    log = (sshd.client_key.parent / "sshd.log").read_text()
    assert f"Accepted publickey for {remote_user.name}" in log
