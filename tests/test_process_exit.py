"""A child's exit is seen when it exits, not when the last holder of its pipes lets go
(cerssd/transport/process.py ``exited``).

The case that found it: rsync gave up on a hung peer (its ``--timeout``) and exited,
but its ssh had gone through the stream multiplexer, which kept rsync's stderr while
the stopped peer lived, and Python 3.11's ``Process.wait()`` waited for that pipe: the
copy showed ``running`` until the peer was resumed. Here a background ``sleep`` plays
the multiplexer: it inherits the child's stdout and stderr and outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from cerssd.children import watch_children_by_pidfd
from cerssd.transport.process import exited, stop_process

PIPE = asyncio.subprocess.PIPE


@contextlib.asynccontextmanager
async def child_whose_pipes_outlive_it(script: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``script`` run after starting a ``sleep`` that holds the child's pipes; the
    sleep is killed afterwards."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"sleep 60 & echo $!; {script}", stdout=PIPE, stderr=PIPE)
    assert proc.stdout is not None
    holder = int((await proc.stdout.readline()).decode())
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)
        await proc.communicate()  # the pipes end with the holder: the transport closes


async def exit_seen_while_pipes_are_held() -> tuple[int, float, bool]:
    async with child_whose_pipes_outlive_it("sleep 0.3; exit 3") as proc:
        # What exited() is for: a wait() begun before the exit waits for the pipes.
        waiting = asyncio.ensure_future(proc.wait())
        started = time.monotonic()
        status = await asyncio.wait_for(exited(proc), 10)
        seconds = time.monotonic() - started
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        still_waiting = not done
        return status, seconds, still_waiting


@pytest.mark.parametrize("watcher", ["pidfd", "threaded"])
def test_an_exit_is_seen_while_another_process_holds_the_pipes(watcher: str) -> None:
    async def main() -> tuple[int, float, bool]:
        installed = watch_children_by_pidfd(asyncio.get_running_loop()) \
            if watcher == "pidfd" else None
        if watcher == "threaded":
            asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())
        try:
            return await exit_seen_while_pipes_are_held()
        finally:
            if installed is not None:
                installed.close()

    status, seconds, wait_still_waiting = asyncio.run(main())
    assert status == 3
    assert seconds < 5, seconds
    assert wait_still_waiting


def test_a_signal_is_reported_and_stop_process_does_not_wait_for_the_pipes() -> None:
    async def main() -> tuple[int | None, float]:
        async with child_whose_pipes_outlive_it("exec sleep 60") as proc:
            started = time.monotonic()
            await stop_process(proc, grace=20)  # SIGTERM ends it at once
            return proc.returncode, time.monotonic() - started

    returncode, seconds = asyncio.run(main())
    assert returncode == -signal.SIGTERM
    assert seconds < 5, seconds  # not the 20 s grace the pipes would have cost
