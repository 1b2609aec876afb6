"""Stopping the child processes behind streams (``zfs send``, compressors, ``ssh``)."""

from __future__ import annotations

import asyncio
import contextlib

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
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("process did not exit on SIGKILL (stuck in the kernel); left "
                        "to exit by itself", pid=proc.pid)
