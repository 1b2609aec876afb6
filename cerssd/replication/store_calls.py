"""Object-store calls made by an activity: retried while the link is lost, and reported.

The same link model as SSH servers (``cerssd.links``): the first failed call marks
the store's link ``lost`` and the activity ``retrying`` (with the next try's time),
at once, while tenacity keeps trying with exponential backoff and jitter; the first
call that succeeds afterwards reports the link ``up`` again. Permanent errors
(credentials, missing bucket) are not retried: they fail the activity with the
store's own message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from ..activity import LinkHealth, State, StatusCode
from ..engine import ActivityContext, ActivityError
from ..objectstore.client import ObjectStore, StoreError
from .replicate import RetryPolicy

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and not exc.permanent


class StoreCalls:
    def __init__(self, ctx: ActivityContext, store: ObjectStore, policy: RetryPolicy) -> None:
        self.ctx = ctx
        self.store = store
        self.policy = policy

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        deadline = self.policy.deadline
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_random_exponential(multiplier=0.5, max=self.policy.max_interval),
            stop=stop_after_delay(deadline) if deadline else stop_never,
            sleep=self.ctx.sleep, before_sleep=self._report, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await self.ctx.checkpoint()
                    result = await call()
        except StoreError as exc:
            if exc.permanent:
                raise ActivityError(f"object store {self.store.name}: {exc}",
                                    StatusCode.ERROR, "store") from exc
            raise ActivityError(f"object store {self.store.name}: gave up after retrying "
                                f"for {deadline:g} s: {exc}", StatusCode.LINK, "link") from exc
        self._back_up()
        return result

    def _report(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        links = self.store.links
        name = self.store.name
        link = None
        if links is not None:
            links.lost(name, str(exc))
            link = links.retrying(name, state.attempt_number, time.time() + delay)
        self.ctx.link_lost(link.health() if link else LinkHealth(
            server=name, state="retrying", attempt=state.attempt_number,
            next_try_at=time.time() + delay, last_error=str(exc)))
        self.ctx.log.warning("object store call failed; retrying", store=name,
                             error=str(exc), attempt=state.attempt_number,
                             retry_in=round(delay, 1))

    def _back_up(self) -> None:
        links = self.store.links
        link = links.get(self.store.name) if links else None
        if link is not None and link.state != "up":
            links.up(self.store.name)  # type: ignore[union-attr]
        if self.ctx.record.state == State.RETRYING:
            self.ctx.link_up(self.store.name)
