#!/usr/bin/env python3
"""Benchmark: one snapshot policy run over a tree, cerssd vs the shell's two commands.

Issue 17's snapshot policies take one atomic snapshot of every member of a tree per run
and drop the label the grid no longer keeps. This measures one run over a tree of
``--members`` filesystems (default 200, ``mountpoint=none``) on zfs-fuse, against the
least a shell script must run for the same result, in the same run, rounds interleaved
(the order alternates each round):

* **cerssd**: ``POST /v1/policies/tree/run`` on a daemon with ``[snapshots.tree]``
  (``recursive = true``, ``retention = ["1s:all"]``, so each run also destroys the
  previous run's label from every member), timed from the request until the policy
  reports the run (``runs`` counted up), and the run's own ``seconds``. Every ``zfs``
  command the daemon runs goes through a wrapper (``zfs_command``) that logs it, so each
  run's commands are counted;
* **shell**: ``zfs snapshot -r ROOT@L`` then ``zfs destroy -r ROOT@PREVIOUS``.

The first cerssd run (a full listing of the tree's snapshots, to learn its labels) is
reported apart and not in the rounds. Each run's result is checked: the new label on
every member, the previous one gone. Run as root from the repository::

    .venv/bin/python bench/policy_tree.py --members 200 --rounds 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Daemon,
    announced_stack,
    bench_main,
    ensure_zfs_fuse,
    load_average,
    make_pool,
    say,
    scratch_dir,
    start_daemon,
    wait_until,
    zfs,
)


def labels_of(root: str) -> Counter[str]:
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", root).stdout.split()
    return Counter(name.partition("@")[2] for name in out)


def cerssd_run(d: Daemon, log: Path, runs: int) -> tuple[float, float, list[str], str]:
    log.write_text("")
    started = time.monotonic()
    d.api("POST", "/v1/policies/tree/run")
    p = wait_until(lambda: (q := d.api("GET", "/v1/policies/tree"))["runs"] > runs and q,
                   600, "the policy's run")
    wall = time.monotonic() - started
    return wall, p["last_result"]["seconds"], log.read_text().splitlines(), \
        p["newest_snapshot"]


def shell_run(root: str, n: int, previous: str | None) -> tuple[float, str]:
    label = f"shell-{n}"
    started = time.monotonic()
    zfs("snapshot", "-r", f"{root}@{label}")
    if previous is not None:
        zfs("destroy", "-r", f"{root}@{previous}")
    return time.monotonic() - started, label


def body(args: argparse.Namespace) -> str:
    with announced_stack() as stack:
        scratch = scratch_dir(stack, args.workdir, 1 << 30)
        ensure_zfs_fuse(stack, scratch)
        pool = make_pool(stack, scratch, 1024, "pol")
        root = f"{pool}/tree"
        zfs("create", "-o", "mountpoint=none", root)
        say(f"creating {args.members} members")
        for i in range(args.members - 1):
            zfs("create", f"{root}/m{i:04d}")
        wrapper = scratch / "zfs-logged"
        log = scratch / "zfs.log"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("zfs")} "$@"\n')
        wrapper.chmod(0o755)
        policy = (f'zfs_command = "{wrapper}"\n\n[snapshots.tree]\nvolume = "{root}"\n'
                  'recursive = true\ninterval = "1h"\nretention = ["1s:all"]\n')
        d = start_daemon(stack, None, "aes128-gcm@openssh.com", [],  # type: ignore[arg-type]
                         local_extra=policy)
        first = wait_until(lambda: (q := d.api("GET", "/v1/policies/tree"))["runs"] >= 1
                           and q, 600, "the first run")
        lines = [f"policy run over a tree of {args.members} members on zfs-fuse; load "
                 f"before: {load_average()}",
                 f"first run (full listing): {first['last_result']['seconds']:.2f} s"]
        runs, previous_shell = 1, None
        ours: list[float] = []
        own: list[float] = []
        theirs: list[float] = []
        counts: list[int] = []
        kinds: Counter[str] = Counter()
        for n in range(args.rounds):
            order = ("cerssd", "shell") if n % 2 == 0 else ("shell", "cerssd")
            for method in order:
                time.sleep(1.1)  # the previous label is then older than the 1 s grid
                if method == "cerssd":
                    wall, seconds, cmds, label = cerssd_run(d, log, runs)
                    own.append(seconds)
                    if n == 0:
                        say("one run's commands:\n  " + "\n  ".join(c[:150] for c in cmds))
                    runs += 1
                    have = labels_of(root)
                    assert have[label] == args.members, (label, have[label])
                    assert sum(c for x, c in have.items() if x.startswith("cerssd-")) \
                        == args.members, "the previous label was not dropped"
                    ours.append(wall)
                    counts.append(len(cmds))
                    kinds.update(" ".join(c.split()[:2]) for c in cmds)
                else:
                    seconds, previous_shell = shell_run(root, n, previous_shell)
                    theirs.append(seconds)
        ratios = [s / c for c, s in zip(ours, theirs, strict=True)]
        lines += [
            f"cerssd run (wall, request to reported): median {statistics.median(ours):.2f} s "
            f"(min {min(ours):.2f}, max {max(ours):.2f})",
            f"cerssd run (the run's own seconds, listing to prune): median "
            f"{statistics.median(own):.2f} s (min {min(own):.2f}, max {max(own):.2f})",
            f"shell snapshot -r + destroy -r: median {statistics.median(theirs):.2f} s "
            f"(min {min(theirs):.2f}, max {max(theirs):.2f})",
            f"speed ratio shell/cerssd: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)",
            f"zfs commands per cerssd run: {sorted(set(counts))} "
            f"({', '.join(f'{k}: {v / len(counts):g}' for k, v in kinds.most_common())})",
            f"load after: {load_average()}"]
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="policy_tree.py", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    return bench_main("policy_tree.py", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
