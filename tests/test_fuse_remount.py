"""``storage.zfs.fuse.remount``: how the ZFS backend puts ``readonly`` in force on
zfs-fuse, checked against a scripted ``zfs`` (the real one: tests/test_volume_states.py,
tests/test_failover.py)."""

from __future__ import annotations

import pytest

from cerssd.storage.errors import BackendError, Busy
from cerssd.storage.zfs import fuse


class ScriptedZfs:
    """Answers each ``zfs`` verb from a list of outcomes (an exception or "" for done)."""

    def __init__(self, **outcomes: list[BaseException | str]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, *argv: str) -> str:
        self.calls.append(argv)
        outcome = self.outcomes[argv[0]].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture(autouse=True)
def quick_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse, "REMOUNT_PATIENCE", 1.0)


async def test_a_mount_called_busy_just_after_the_unmount_is_tried_again() -> None:
    busy = Busy("cannot mount 'p/data': mountpoint or dataset is busy")
    zfs = ScriptedZfs(unmount=[""], mount=[busy, busy, ""])
    await fuse.remount(zfs, "p/data", "rw")
    assert zfs.calls == [("unmount", "p/data")] + [("mount", "-o", "rw", "p/data")] * 3


async def test_a_mount_that_stays_busy_is_reported() -> None:
    busy = Busy("cannot mount 'p/data': mountpoint or dataset is busy")
    zfs = ScriptedZfs(unmount=[""], mount=[busy] * 100)
    with pytest.raises(Busy, match="dataset is busy"):
        await fuse.remount(zfs, "p/data", "ro")


async def test_another_mount_failure_is_not_retried() -> None:
    zfs = ScriptedZfs(unmount=[""], mount=[BackendError("permission denied"), ""])
    with pytest.raises(BackendError, match="permission denied"):
        await fuse.remount(zfs, "p/data", "ro")
    assert len(zfs.calls) == 2
