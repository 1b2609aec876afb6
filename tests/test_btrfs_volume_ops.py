"""Every volume operation on a btrfs server through a real daemon's ``cerssctl``: create,
extend (a qgroup limit: quotas on), clone (a writable snapshot), revert, delete with its
dependents, the bad input, and capacity against ``btrfs filesystem usage``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .btrfs_fs import btrfs
from .conftest import DaemonProcess
from .test_cli import ctl

MiB = 1 << 20


def limit(root: Path, volume: str) -> str:
    """The ``max_rfer`` of the volume's qgroup, as ``btrfs qgroup show`` prints it."""
    rows = btrfs("qgroup", "show", "-re", "--raw", str(root)).stdout.splitlines()
    return next(r.split()[3] for r in rows if r.split() and r.split()[-1].endswith(volume))


def snapshot(root: Path, volume: str, label: str) -> None:
    path = root / ".cerssd-snapshots" / f"{volume}@{label}"
    path.mkdir(parents=True)
    btrfs("subvolume", "snapshot", "-r", str(root / volume), str(path / f"{volume}@{label}"))


def test_every_operation_on_btrfs_through_cerssctl(start_daemon: Any,
                                                   btrfs_quota_root: Path) -> None:
    root = btrfs_quota_root
    d: DaemonProcess = start_daemon(
        extra=f'[servers.local]\nkind = "local"\nbackend = "btrfs"\nroot = "{root}"\n')
    created = ctl(d, "volume", "create", "pool/db", "--size", "64M")
    assert created.returncode == 0, created.stdout + created.stderr
    assert limit(root, "db") == str(64 * MiB)
    assert ctl(d, "volume", "extend", "pool/db", "128MiB").returncode == 0
    assert limit(root, "db") == str(128 * MiB)
    shrink = ctl(d, "volume", "extend", "pool/db", "1M")
    assert shrink.returncode == 1 and "Would Shrink" in shrink.stderr
    block = ctl(d, "volume", "create", "pool/disk", "--size", "8M", "--block")
    assert block.returncode == 1 and not (root / "disk").exists()

    (root / "db" / "one").write_text("1")
    snapshot(root, "db", "s1")
    (root / "db" / "two").write_text("2")
    snapshot(root, "db", "s2")
    cloned = ctl(d, "volume", "clone", "pool/db@s1", "pool/db-copy")
    assert cloned.returncode == 0, cloned.stdout + cloned.stderr
    assert (root / "db-copy" / "one").exists() and not (root / "db-copy" / "two").exists()

    plan = ctl(d, "volume", "revert", "pool/db@s1", "--dry-run")
    assert "destroys 1 later snapshot(s): pool/db@s2" in plan.stdout, plan.stdout
    reverted = ctl(d, "volume", "revert", "pool/db@s1")
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    assert (root / "db" / "one").exists() and not (root / "db" / "two").exists()
    assert not (root / ".cerssd-snapshots" / "db@s2").exists()

    refused = ctl(d, "volume", "delete", "pool/db")
    assert refused.returncode == 1 and "pool/db-copy" in refused.stderr
    assert (root / "db").exists()
    deleted = ctl(d, "volume", "delete", "pool/db", "--force")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not (root / "db").exists() and not (root / "db-copy").exists()
    assert not list((root / ".cerssd-snapshots").iterdir())

    assert "btrfs-progs" in ctl(d, "servers").stdout
    as_json = json.loads(ctl(d, "--json", "servers").stdout)
    [pool] = [p for p in as_json["items"][0]["capacity"]["pools"] if p["pool"] == "pool"]
    usage = btrfs("filesystem", "usage", "-b", str(root)).stdout
    size = next(int(line.split(":")[1].split()[0]) for line in usage.splitlines()
                if line.strip().startswith("Device size:"))
    assert pool["total"] == size and 0 < pool["free"] <= size


def test_a_size_without_quotas_is_refused_and_nothing_is_left(
        start_daemon: Any, make_btrfs_root: Any) -> None:
    root = make_btrfs_root()
    d: DaemonProcess = start_daemon(
        extra=f'[servers.local]\nkind = "local"\nbackend = "btrfs"\nroot = "{root}"\n')
    made = ctl(d, "volume", "create", f"{root.name}/db", "--size", "64M")
    assert made.returncode == 1 and "btrfs quota enable" in made.stdout + made.stderr
    assert not (root / "db").exists()
    ok = ctl(d, "volume", "create", f"{root.name}/db")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = ctl(d, "volume", "create", f"{root.name}/.cerssd-snapshots")
    assert bad.returncode == 1
