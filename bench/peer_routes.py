#!/usr/bin/env python3
"""Peer daemons (issue 18): what delegating to the node that holds the data saves.

A "node" is a server the managing cerssd reaches over SSH (the bench sshd on 127.0.0.1,
one port per node, so each gets its own connection, as separate machines would). The
master's node runs a cerssd of its own (the peer: its own config, journal and socket,
reached by the managing daemon through its SSH connection). In the same run, rounds
interleaved, on the same data:

* **backup of a remote master's volume** (``--mib``, default 1024, random data):
  - *delegated*: ``POST /v1/backups {"server": "nodeA"}`` on the managing daemon; the
    peer streams ``zfs send`` straight to the bucket;
  - *baseline*: ``ssh -c CIPHER nodeA zfs send SNAP | aws s3 cp - s3://…`` run on the
    managing node, which is what an operator without peers would script (cerssd itself
    refuses a backup of a plain remote server: there is no relayed cerssd backup);
* **remote -> remote replication** (``--rr-mib``, default 512) of the same kind of data
  from the master's node to a second node:
  - *delegated*: source ``nodeA`` (the peer sends over its own SSH connection);
  - *relayed*: source ``plainA`` (the same node without its daemon: the stream comes
    to the managing node and goes out again).

For each it reports wall seconds, the speed ratio (other / delegated seconds: above 1
means delegation is faster) per round as median (min-max), and the **managing node's
CPU seconds**: the managing daemon with its reaped children and its live ssh processes
(ControlMasters included) for cerssd, the pipeline's own processes (``ssh`` and ``aws``,
from ``getrusage``) for the baseline. Everything runs on one machine, so the node's own
work (``zfs send``, sshd) competes with the managing side for the same CPUs: the CPU
figures say what each route costs the managing node, the wall times what it costs in all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MIB,
    REPO,
    BenchError,
    Daemon,
    SshServer,
    bash,
    cleanup,
    destroy_volume,
    ensure_zfs_fuse,
    load_average,
    machine,
    make_pool,
    say,
    scratch_dir,
    settle,
    ssh_command,
    start_daemon,
    start_sshd,
    write_random,
    zfs,
)
from tests.seaweed import WeedServer

AWS = REPO / ".venv-awscli" / "bin" / "aws"
TICK = os.sysconf("SC_CLK_TCK")
#: The tags a replica's base may be held with (zfs-fuse cannot list them).
HOLD_TAGS = ("cerssd:local", "cerssd:nodeA", "cerssd:plainA", "cerssd:nodeB")


@dataclass(frozen=True)
class Run:
    seconds: float
    manager_cpu: float


def daemon_cpu(daemon: Daemon) -> float:
    """The managing daemon's CPU seconds so far: itself, its reaped children, and its live
    ssh processes (their command lines name the daemon's own directory)."""
    stat = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(f) for f in stat[11:15])
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == daemon.proc.pid:
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"ssh" in cmdline.split(b"\0", 1)[0] and str(daemon.root).encode() in cmdline:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def timed_api(manager: Daemon, path: str, body: dict[str, object], *,
              moves: int) -> Run:
    """The activity, timed until it has succeeded; it must have moved ``moves`` bytes
    at least (a whole stream of the data, not an up-to-date answer)."""
    cpu0, t0 = daemon_cpu(manager), time.monotonic()
    accepted = manager.api("POST", path, body)
    done = manager.wait_activity(accepted["id"])
    seconds = time.monotonic() - t0
    if done["state"] != "succeeded":
        raise BenchError(f"{path} {body}: {done['state']}: {done['status']}")
    if done["progress"]["done"] < moves:
        raise BenchError(f"{path} {body} moved {done['progress']['done']} bytes, "
                         f"less than the data's {moves}")
    return Run(seconds, daemon_cpu(manager) - cpu0)


def timed_pipeline(script: str, env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    bash(script, env=env)
    seconds = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(seconds, cpu)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="backup size (MiB)")
    parser.add_argument("--rr-mib", type=int, default=512, help="replication size (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    if not AWS.exists():
        raise BenchError(f"{AWS} is missing: run bench/s3_backup.py once (it makes it)")
    say(f"machine: {machine()}; load average {load_average()}")
    with contextlib.ExitStack() as stack:
        scratch = scratch_dir(stack, args.workdir, 3.5 * (args.mib + args.rr_mib) * MIB)
        ensure_zfs_fuse(stack, scratch)
        tag = secrets.token_hex(3)
        src_pool = make_pool(stack, scratch, args.mib + args.rr_mib + 512, f"pa{tag}")
        dst_pool = make_pool(stack, scratch, args.rr_mib * (args.rounds * 2 + 1) + 512,
                             f"pb{tag}")
        weed_root = scratch / "weed"
        weed_root.mkdir()
        weed = WeedServer(weed_root, max_volumes=2000)
        cleanup(stack, weed.stop)
        weed.start()
        bucket = weed.create_bucket(f"cerssd-peers-{tag}")
        key_file = scratch / "s3.key"
        key_file.write_text(f'access_key_id = "{weed.s3.access_key}"\n'
                            f'secret_access_key = "{weed.s3.secret_key}"\n')
        key_file.chmod(0o600)
        store = (f'\n[stores.plain]\nendpoint = "{weed.s3.endpoint}"\nbucket = "{bucket}"\n'
                 f'prefix = "peers/"\ncredentials_file = "{key_file}"\n'
                 'compression = "none"\n')
        sshd = start_sshd(stack, ports=3)
        node_a, node_b, plain_a = sshd.ports
        peer = start_daemon(stack, sshd, args.cipher, [SshServer("nodeB", node_b)],
                            local_extra=store)
        manager = start_daemon(stack, sshd, args.cipher, [
            SshServer("nodeA", node_a, extra=f'daemon = true\n'
                      f'daemon_socket = "{peer.socket_path}"\n'),
            SshServer("nodeB", node_b), SshServer("plainA", plain_a)], local_extra=store)

        zfs("create", f"{src_pool}/vol")
        write_random(Path(f"/{src_pool}/vol/backup.bin"), args.mib)
        zfs("snapshot", f"{src_pool}/vol@b")  # the baseline's
        zfs("create", f"{src_pool}/rr")
        write_random(Path(f"/{src_pool}/rr/data.bin"), args.rr_mib)
        zfs("snapshot", f"{src_pool}/rr@r")
        settle("the written data")
        env = {**os.environ, **weed.s3.env()}
        results: dict[str, list[Run]] = {k: [] for k in
                                         ("delegated backup", "aws backup",
                                          "delegated rr", "relayed rr")}

        def delegated_backup(n: int) -> Run:
            # a snapshot of its own per round: one already in the store is not sent again
            zfs("snapshot", f"{src_pool}/vol@b{n}")
            return timed_api(manager, "/v1/backups", {
                "snapshot": f"{src_pool}/vol@b{n}", "server": "nodeA", "store": "plain",
                "force_full": True}, moves=args.mib * MIB)

        def aws_backup(n: int) -> Run:
            send = ssh_command(sshd, args.cipher, ["zfs", "send", f"{src_pool}/vol@b"],
                               node_a)
            cp = [str(AWS), "s3", "cp", "-", f"s3://{bucket}/aws/{n}",
                  "--endpoint-url", weed.s3.endpoint]
            return timed_pipeline(f"{shlex.join(send)} | {shlex.join(cp)}", env)

        def replication(source: str, name: str) -> Run:
            target = f"{dst_pool}/{name}"
            run = timed_api(manager, "/v1/replications", {
                "snapshot": f"{src_pool}/rr@r", "source": source, "destination": "nodeB",
                "target_volume": target}, moves=args.rr_mib * MIB)
            destroy_volume(target, HOLD_TAGS)
            return run

        for n in range(args.rounds):
            pairs = [("delegated backup", delegated_backup), ("aws backup", aws_backup)]
            rr = [("delegated rr", lambda n: replication("nodeA", f"d{n}")),
                  ("relayed rr", lambda n: replication("plainA", f"r{n}"))]
            if n % 2:  # alternate which goes first
                pairs.reverse()
                rr.reverse()
            for name, method in [*pairs, *rr]:
                settle(f"before {name}")
                result = method(n)
                results[name].append(result)
                say(f"round {n + 1} {name}: {result.seconds:.2f} s, managing node CPU "
                    f"{result.manager_cpu:.2f} s")

        print(f"\n## peer routes: {args.mib} MiB backup, {args.rr_mib} MiB remote->remote, "
              f"{args.rounds} rounds, load average {load_average()}\n")
        print("| method | seconds | managing node CPU s |\n| --- | ---: | ---: |")
        for name, runs in results.items():
            print(f"| {name} | {summary([r.seconds for r in runs])} | "
                  f"{summary([r.manager_cpu for r in runs])} |")
        backup_ratio = [a.seconds / d.seconds for a, d in
                        zip(results["aws backup"], results["delegated backup"], strict=True)]
        rr_ratio = [r.seconds / d.seconds for r, d in
                    zip(results["relayed rr"], results["delegated rr"], strict=True)]
        print(f"\nbackup: aws / delegated seconds {summary(backup_ratio)}; "
              f"remote->remote: relayed / delegated seconds {summary(rr_ratio)}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
