"""The test fixtures' pools: each test's are destroyed when it ends (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import zpool

_made: list[str] = []


def test_a_test_makes_a_pool(make_pool: Callable[..., str]) -> None:
    _made.append(make_pool())
    assert zpool("list", _made[0], check=False).returncode == 0


def test_the_previous_tests_pool_is_gone(zfs_fuse: None) -> None:
    assert _made, "runs after test_a_test_makes_a_pool"
    assert zpool("list", _made[0], check=False).returncode != 0
