"""How every flow retries: exponential backoff with jitter, and a lost link reported at once.

One policy for transfers, backups, restores and bucket pruning (the daemon's
``retry_*`` settings): tenacity runs the attempts, sleeping through the activity's own
``sleep`` so that sync-now or a cancel wakes it; before each back-off the link is
marked lost and the activity ``retrying`` with its next try, so an operator sees the
lost connection while the retries go on (the seeds' durability across connection loss).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from ..activity import LinkCondition, LinkHealth
from ..engine import ActivityContext
from ..links import Links


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: exponential backoff with jitter and a cap."""

    stall_timeout: float | None = 30.0
    max_interval: float = 30.0
    deadline: float | None = 3600.0

    def attempts(self, ctx: ActivityContext, *, transient: Callable[[BaseException], bool],
                 report: Callable[[RetryCallState], None], deadline: float | None,
                 first_wait: float = 1.0) -> AsyncRetrying:
        """Tenacity attempts for one activity: its ``sleep`` (so sync-now wakes it), a
        report before each back-off, and no limit for a deadline of None or inf."""
        return AsyncRetrying(
            retry=retry_if_exception(transient),
            wait=wait_random_exponential(multiplier=first_wait, max=self.max_interval),
            stop=stop_after_delay(deadline) if deadline not in (None, float("inf"))
            else stop_never,
            sleep=ctx.sleep, before_sleep=report, reraise=True)


def report_link_retry(ctx: ActivityContext, links: Links, server: str, error: str,
                      state: RetryCallState) -> float:
    """Report a lost link at once, with its next try, in ``links`` and on the activity
    (``retrying``); returns the back-off in seconds."""
    delay = state.next_action.sleep if state.next_action else 0.0
    links.lost(server, error)
    link = links.retrying(server, state.attempt_number, time.time() + delay)
    ctx.link_lost(link.health() if link else LinkHealth(
        server=server, state=LinkCondition.RETRYING, attempt=state.attempt_number,
        next_try_at=time.time() + delay, last_error=error))
    return delay


class Transient(Exception):
    """A failure of the link, not of the request: worth another attempt."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(message)
        self.server = server
