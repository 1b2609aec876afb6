"""Object-store calls made by an activity: retried while the link is lost, and reported.

The same link model as SSH servers (``cerssd.links``): the first failed call marks
the store's link ``lost`` and the activity ``retrying`` (with the next try's time),
at once, while tenacity keeps trying with exponential backoff and jitter; the first
call that succeeds afterwards reports the link ``up`` again. Permanent errors
(credentials, missing bucket) are not retried: they fail the activity with the
store's own message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import RetryCallState

from ...activity import LinkCondition, State, StatusCode
from ...engine import ActivityContext, ActivityError
from ...links import Links
from ...objectstore.client import ObjectStore, StoreError
from ..retry import RetryPolicy, report_link_retry

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
        retrying = self.policy.attempts(self.ctx, transient=_transient, report=self._report,
                                        deadline=deadline, first_wait=0.5)
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
        name = self.store.name
        links = self.store.links if self.store.links is not None else Links([])
        delay = report_link_retry(self.ctx, links, name, str(exc), state)
        self.ctx.log.warning("object store call failed; retrying", store=name,
                             error=str(exc), attempt=state.attempt_number,
                             retry_in=round(delay, 1))

    def _back_up(self) -> None:
        links = self.store.links
        link = links.get(self.store.name) if links else None
        if link is not None and link.state != LinkCondition.UP:
            links.up(self.store.name)  # type: ignore[union-attr]
        if self.ctx.record.state == State.RETRYING:
            self.ctx.link_up(self.store.name)
