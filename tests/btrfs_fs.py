"""A real btrfs for tests: a sparse file, ``mkfs.btrfs``, ``mount -o loop``.

One filesystem per session (``btrfs_mount``); each ``make_btrfs_root()`` is a new
subvolume in it, the root of one test's pool (a unique name, so tests never share a
pool). The root is a subvolume below the top level on purpose: paths in ``btrfs subvolume
list`` are then not the root's, which is what a ``root = "/srv/volumes"`` looks like.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def btrfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["btrfs", *args], check=check, capture_output=True, text=True)


@pytest.fixture(scope="session")
def btrfs_mount() -> Iterator[Path]:
    if shutil.which("mkfs.btrfs") is None:
        pytest.fail("btrfs-progs is not installed: run .ci/run or apt-get install btrfs-progs")
    work = Path(tempfile.mkdtemp(prefix="cerssd-btrfs-"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "6G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def make_btrfs_root(btrfs_mount: Path) -> Callable[[], Path]:
    def make() -> Path:
        root = btrfs_mount / f"bt{uuid.uuid4().hex[:8]}"
        btrfs("subvolume", "create", str(root))
        return root
    return make


@pytest.fixture
def btrfs_quota_root(tmp_path: Path, btrfs_mount: Path) -> Iterator[Path]:
    """A small btrfs of its own with quotas on (they are per filesystem: the shared one
    stays without, as most servers run), and its root subvolume ``pool``."""
    image, mnt = tmp_path / "q.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        btrfs("subvolume", "create", str(mnt / "pool"))
        btrfs("quota", "enable", str(mnt))
        yield mnt / "pool"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
