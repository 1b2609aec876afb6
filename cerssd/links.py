"""Link health per remote server: ``up``, ``lost`` (since, last error), ``retrying``.

The seeds ask that a lost connection be *reported while retries continue*, rather
than hidden behind them: each change is one structlog event, visible at once in
``GET /v1/links``, in the ``link`` field of the activities that depend on it, and
in the ``cerssd_link_up`` metric.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog

from .activity import LinkCondition, LinkHealth

log = structlog.get_logger("cerssd.links")


@dataclass(frozen=True)
class LinkState:
    server: str
    state: LinkCondition = LinkCondition.UP
    since: float | None = None
    last_error: str | None = None
    attempt: int = 0
    next_try_at: float | None = None
    losses: int = 0
    last_up_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def health(self) -> LinkHealth:
        return LinkHealth(server=self.server, state=self.state, since=self.since,
                          attempt=self.attempt, next_try_at=self.next_try_at,
                          last_error=self.last_error)


class Links:
    """The link states of all remote servers (local servers have none)."""

    def __init__(self, servers: list[str]) -> None:
        self._links: dict[str, LinkState] = {}
        self.retries: dict[str, int] = {}
        for name in servers:
            self.add(name)

    def add(self, name: str) -> None:
        """Watch one more link (an object store's, named like the store)."""
        if name not in self._links:
            self._links[name] = LinkState(name, last_up_at=time.time())
            self.retries[name] = 0

    def remove(self, name: str) -> None:
        """Stop watching a link (its server or store was removed by a reload)."""
        self._links.pop(name, None)
        self.retries.pop(name, None)

    def get(self, server: str) -> LinkState | None:
        return self._links.get(server)

    def all(self) -> list[LinkState]:
        return list(self._links.values())

    def lost(self, server: str, error: str) -> LinkState | None:
        link = self._links.get(server)
        if link is None:
            return None
        if link.state == LinkCondition.UP:
            link = replace(link, state=LinkCondition.LOST, since=time.time(), last_error=error,
                           attempt=0, next_try_at=None, losses=link.losses + 1)
            log.warning("link lost; retrying", server=server, error=error)
        else:
            link = replace(link, last_error=error)
        self._links[server] = link
        return link

    def retrying(self, server: str, attempt: int, next_try_at: float) -> LinkState | None:
        link = self._links.get(server)
        if link is None:
            return None
        link = replace(link, state=LinkCondition.RETRYING, attempt=attempt, next_try_at=next_try_at,
                       since=link.since or time.time())
        self._links[server] = link
        self.retries[server] += 1
        log.info("link retry scheduled", server=server, attempt=attempt,
                 next_try_in=round(max(0.0, next_try_at - time.time()), 1),
                 error=link.last_error)
        return link

    def up(self, server: str) -> LinkState | None:
        link = self._links.get(server)
        if link is None:
            return None
        if link.state != LinkCondition.UP:
            down_for = time.time() - (link.since or time.time())
            log.info("link restored", server=server, down_seconds=round(down_for, 1),
                     attempts=link.attempt)
        link = replace(link, state=LinkCondition.UP, since=None, attempt=0, next_try_at=None,
                       last_up_at=time.time())
        self._links[server] = link
        return link
