"""The daemon watches its children by pidfd: no thread started per command (cerssd/children.py)."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from cerssd.children import pidfd_supported, watch_children_by_pidfd


def waitpid_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "waitpid-" in t.name]


async def spawn_and_look(install: bool) -> tuple[list[int], list[str]]:
    """Start a few children; while they run, which waitpid threads exist; their codes."""
    watcher = watch_children_by_pidfd(asyncio.get_running_loop()) if install else None
    try:
        procs = [await asyncio.create_subprocess_exec("sh", "-c", f"sleep 0.3; exit {i}")
                 for i in range(5)]
        threads = waitpid_threads()
        codes = [await p.wait() for p in procs]
    finally:
        if watcher is not None:
            watcher.close()
    return codes, threads


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ chooses pidfd by itself")
def test_children_are_watched_without_a_thread_each() -> None:
    assert pidfd_supported(), "this kernel answers pidfd_open (Linux 5.3+)"
    codes, threads = asyncio.run(spawn_and_look(install=True))
    assert codes == [0, 1, 2, 3, 4]  # every exit seen, with its status
    assert threads == []
    # the default it replaces starts one thread per child: what the test tells apart
    asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())
    codes, threads = asyncio.run(spawn_and_look(install=False))
    assert codes == [0, 1, 2, 3, 4]
    assert len(threads) == 5, threads
