"""Many relationships with the same interval, through a real daemon on zfs-fuse: their
cycles are spread over the interval (each at its own offset) and no more than
``daemon.max_concurrent_cycles`` run at once; the others wait their turn, and say so.

The master's ``zfs`` is the real one behind a wrapper (``zfs_command``) that writes down
when each ``zfs snapshot`` starts and ends and makes it last a second, so that cycles
last long enough to overlap: a cycle takes exactly one snapshot, so the most snapshot
commands running at once is the most cycles running at once.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

from cerssd.replication.logic.schedule import spread_offset

from .conftest import DaemonProcess, wait_until, zfs

INTERVAL = 20
NAMES = [f"r{i}" for i in range(6)]
LIMIT = 2


def snapshot_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "snapshots.log"
    log.touch()
    wrapper = tmp_path / "zfs-timed"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = snapshot ]; then
    echo "start $(date +%s.%N) $2" >> {log}
    sleep 1
    {shutil.which("zfs")} "$@"; rc=$?
    echo "end $(date +%s.%N) $2" >> {log}
    exit $rc
fi
exec {shutil.which("zfs")} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper, log


def most_at_once(log: Path) -> int:
    events = sorted((float(t), +1 if what == "start" else -1)
                    for what, t, _ in (line.split() for line in log.read_text().splitlines()))
    return max(itertools.accumulate(step for _, step in events))


def relationships(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in d.api("GET", "/v1/relationships")["items"]}


def test_cycles_are_spread_over_the_interval_and_capped(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    src, dst = make_pool(), make_pool()
    wrapper, log = snapshot_wrapper(tmp_path)
    config = (f'[servers.local]\nkind = "local"\nzfs_command = "{wrapper}"\n'
              '[servers.b]\nkind = "local"\n')
    for name in NAMES:
        zfs("create", f"{src}/{name}")
        config += (f'[relationships.{name}]\nvolume = "{src}/{name}"\n'
                   f'interval = "{INTERVAL}s"\n'
                   f'slaves = [{{server = "b", target_volume = "{dst}/{name}"}}]\n')
    d = start_daemon(extra=config, daemon_extra=f"max_concurrent_cycles = {LIMIT}")

    # All six are new, so all six first cycles are due at once: two at a time go in,
    # and the ones waiting say since when.
    waiting = wait_until(lambda: [r for r in relationships(d).values()
                                  if r["cycle_waiting_since"]], 30,
                         what="a relationship waiting for its turn")
    assert waiting[0]["state"] == "running"
    wait_until(lambda: all(r["cycles"] >= 1 for r in relationships(d).values()), 60,
               what="every first cycle")
    assert "cycle waits for its turn" in d.log()
    assert most_at_once(log) == LIMIT  # the cap is reached, never passed

    # The second cycles fall at each relationship's own offset within the interval.
    seconds = wait_until(lambda: (rs := relationships(d)) and all(
        r["cycles"] >= 2 for r in rs.values()) and rs, 3 * INTERVAL,
        what="every second cycle")
    starts = {name: r["last_cycle_at"] for name, r in seconds.items()}
    late = {name: round((start - spread_offset(name, INTERVAL)) % INTERVAL, 2)
            for name, start in starts.items()}  # seconds after its slot
    # Each started at its slot, on its own grid. One whose slot is seconds from every
    # other's starts right then; r0, r2 and r3 fall within 0.7 s of each other, so with
    # two turns and a second per snapshot the third waits (longer on a busy machine).
    offsets = {name: spread_offset(name, INTERVAL) for name in NAMES}
    alone = [n for n in NAMES if all(abs(offsets[n] - offsets[o]) >= 2
                                     for o in NAMES if o != n)]
    assert alone == ["r1", "r4", "r5"], offsets
    assert all(late[n] < 1.5 for n in alone), late
    assert all(0 <= x < INTERVAL / 2 for x in late.values()), late
    assert len({int(start) for start in starts.values()}) >= 4, starts
    assert max(starts.values()) - min(starts.values()) >= INTERVAL / 4, starts
    assert most_at_once(log) == LIMIT
    assert all(r["cycle_waiting_since"] is None for r in seconds.values())
