"""Work a listener or a verb starts and does not wait for (fencing, reactions).

Engine listeners are synchronous, so what they trigger runs as a task; the set keeps
a reference to each task until it ends (the event loop keeps only weak ones).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_quietly(self, work: Coroutine[Any, Any, Any]) -> None:
        """Like ``spawn``, for best-effort work whose failure nobody waits to hear about
        (the next cycle or event tries again)."""
        self.spawn(_quietly(work))


async def _quietly(work: Coroutine[Any, Any, Any]) -> None:
    with contextlib.suppress(Exception):
        await work
