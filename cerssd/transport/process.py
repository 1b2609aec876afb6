"""Waiting for and stopping the child processes behind streams (``zfs send``,
compressors, ``ssh``, ``rsync``)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog

log = structlog.get_logger("cerssd.runner")


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Terminate, then kill after ``grace`` seconds, and reap the child.

    A process stuck in the kernel (a ``zfs receive`` in uninterruptible sleep on a
    hung pool) survives even SIGKILL until it leaves it; the caller is not held up
    for that longer than another ``grace``: asyncio reaps the child once it does exit.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(exited(proc), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            await asyncio.wait_for(exited(proc), grace)
        except TimeoutError:
            log.warning("process did not exit on SIGKILL (stuck in the kernel); left "
                        "to exit by itself", pid=proc.pid)


async def exited(proc: asyncio.subprocess.Process) -> int:
    """``proc``'s exit status as soon as it has exited, whoever still holds its pipes.

    Python 3.11's ``Process.wait()`` returns only once every pipe to the child is
    closed as well. An ``ssh`` that goes through the server's stream multiplexer hands
    its stdin, stdout and stderr to the multiplexer, which keeps them for as long as
    the remote command lives: after rsync gave up on a hung peer (its ``--timeout``),
    ``wait()`` would wait for the peer instead (found by tests/test_generic_ssh.py
    under load, where the copy's ssh was the one that went through the multiplexer).
    A pidfd says when the child itself is gone.
    """
    if (done := proc.returncode) is not None:
        return done
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        pidfd = None  # reaped already: the status is on its way
    except (AttributeError, OSError):
        return await proc.wait()  # no pidfd here (an old kernel): the pipes' way
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    # asyncio's child watcher reaps it and sets the status a loop turn or two later;
    # asyncio offers no event for that moment but the pipes' (what is avoided here).
    while (status := proc.returncode) is None:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    return status
