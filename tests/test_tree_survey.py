"""``transport.files.survey_tree``: the size a first copy sends (m of its n of m) and
whether it needs rsync's ``--sparse``.

Run on a real directory under the test's temporary directory (a filesystem with holes:
ext4 or tmpfs here), through the same ``LocalRunner`` the daemon uses for a local server.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from cerssd.transport.files import SPARSE_MIN_HOLE, survey_tree
from cerssd.transport.runner import LocalRunner

MiB = 1 << 20


def dense(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def holed(path: Path, hole: int) -> None:
    """``hole`` bytes of hole, then 4 KiB of data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.seek(hole)
        f.write(os.urandom(4096))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    dense(root / "a", MiB)
    dense(root / "dir" / "sub" / "b", 100)
    (root / "empty").touch()
    os.symlink("a", root / "link")
    return root


async def test_a_tree_of_dense_files_needs_no_sparse_copy(tree: Path) -> None:
    assert not (await survey_tree(LocalRunner(), str(tree))).sparse


async def test_one_file_with_a_hole_deep_in_the_tree_asks_for_a_sparse_copy(
        tree: Path) -> None:
    holed(tree / "dir" / "sub" / "disk.img", 8 * MiB)
    if os.stat(tree / "dir" / "sub" / "disk.img").st_blocks * 512 >= MiB:
        pytest.fail("the test's filesystem does not keep holes: the check cannot be tested")
    assert (await survey_tree(LocalRunner(), str(tree))).sparse


async def test_a_gap_below_the_threshold_is_not_worth_a_sparse_copy(tree: Path) -> None:
    holed(tree / "small-gap", SPARSE_MIN_HOLE // 4)
    assert not (await survey_tree(LocalRunner(), str(tree))).sparse


async def test_a_find_that_fails_answers_sparse_and_no_size(tmp_path: Path) -> None:
    survey = await survey_tree(LocalRunner(), str(tmp_path / "no-such-directory"))
    assert survey.sparse and survey.size is None


async def test_the_size_is_what_rsync_sends_into_an_empty_directory(
        tree: Path, tmp_path: Path) -> None:
    holed(tree / "disk.img", 8 * MiB)
    os.link(tree / "a", tree / "dir" / "a-again")  # rsync -H sends it once
    survey = await survey_tree(LocalRunner(), str(tree))
    proc = await asyncio.create_subprocess_exec(
        "rsync", "-aH", "-n", "--stats", f"{tree}/", str(tmp_path / "copy"),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    dry = out.decode()
    sent = re.search(r"Total transferred file size: ([\d,]+)", dry)
    assert sent is not None, dry
    assert survey.size == int(sent.group(1).replace(",", "")) == MiB + 100 + 8 * MiB + 4096
