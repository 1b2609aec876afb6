"""A receive that hangs after the whole stream arrived is a stall, retried, not a wait for ever.

The destination is this machine's zfs-fuse behind a ``zfs_command`` wrapper whose first
``zfs receive`` takes the whole stream and commits it, then stops itself (SIGSTOP)
instead of exiting: what a receive whose mount never returns looks like to the daemon.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from .conftest import replicate, write_file, zfs
from .test_replicate_local import guid

HANG_ONCE = """#!/bin/sh
# zfs whose first receive commits the stream, then hangs (stopped) instead of exiting.
if [ "$1" = receive ] && mkdir "{marker}" 2>/dev/null; then
    zfs "$@" || exit
    kill -STOP $$
fi
exec zfs "$@"
"""


def test_receive_hung_after_the_stream_is_reported_and_retried(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    write_file(f"/{src}/data/f", 4)
    zfs("snapshot", f"{src}/data@s1")
    wrapper = tmp_path / "zfs-hangs"
    wrapper.write_text(HANG_ONCE.format(marker=tmp_path / "hung-once"))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    d = start_daemon(
        daemon_extra='stall_timeout = "3s"\nretry_max_interval = "2s"\n',
        extra=('[servers.local]\nkind = "local"\n'
               f'[servers.hangs]\nkind = "local"\nzfs_command = "{wrapper}"\n'))
    aid = replicate(d, f"{src}/data@s1", "local", "hangs", f"{dst}/data").body["id"]
    retrying = d.wait_activity(aid, lambda a: a["state"] == "retrying", timeout=60,
                               what="the hung receive reported as a stall")
    assert (tmp_path / "hung-once").is_dir()  # it was the hanging receive, not another fault
    assert "did not exit" in retrying["link"]["last_error"]
    done = d.wait_done(aid, timeout=120)
    assert done["state"] == "succeeded", done["status"]
    assert done["usage"]["retries"] >= 1
    assert guid(f"{dst}/data@s1") == guid(f"{src}/data@s1")
    assert '"replication interrupted; retrying"' in d.log()
