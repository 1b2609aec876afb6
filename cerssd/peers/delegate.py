"""A delegated activity: the parent here, the child a real activity on a peer daemon.

The work whose data lives on a peer's node runs there (``docs/peers.md``): this
daemon's activity creates the child through the peer's API, records the child's id
in its own journal at once (``peer_activity``), and the child records ours
(``parent``). Then the parent follows the child:

* its progress and usage mirror the child's (asked at least once a second; its end
  is answered at once by the peer's ``?wait=``);
* suspend here suspends the child; resume resumes it; cancel cancels it and waits
  for its rollback, so "cancelled" here means cancelled and rolled back there;
* a lost SSH link or a peer daemon that does not answer (killed, restarting) is
  reported as any lost link is (link ``lost``, the activity ``retrying``) while the
  retries go on; the child carries on by itself meanwhile (it is self-restarting);
* after a restart of this daemon the parent finds its child by the journaled id;
  after a restart of the peer, the peer restarts the child from its journal under
  the same id, and the parent's next poll finds it. A create whose answer was lost
  is sent again with the same ``parent``: the peer answers the child it already
  started rather than starting a second one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from tenacity import RetryCallState

from ..activity import LinkCondition, State, StatusCode
from ..engine import ActivityContext, ActivityError
from ..links import Links
from ..replication.retry import RetryPolicy, report_link_retry
from ..transport.errors import LinkError
from .client import PeerClient

T = TypeVar("T")

#: How long one look at the child's state may wait for it to finish: the mirrored progress
#: is at most this old (a second is what ``cerssctl watch`` shows anyway), and its end is
#: seen at once.
POLL_SECONDS = 1
#: How long a cancel waits for the child's rollback to finish.
CANCEL_WAIT = 120.0
TERMINAL = ("succeeded", "failed", "cancelled")
#: What the parent keeps of a finished child's params (what the operator looks for).
RESULT_KEYS = ("manifest_key", "stream_size", "raw_size", "parts", "kind", "base_guid",
               "mode", "plan")


@dataclass(frozen=True)
class ChildRequest:
    """How to create the child: ``POST path`` with ``body`` (``parent`` is added)."""

    path: str
    body: dict[str, Any]
    #: Params of the finished child that become the parent's own (what the parent's
    #: readers, a relationship's reactions, look for), beside ``peer_result``.
    adopt: tuple[str, ...] = ()


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, LinkError) and not exc.permanent


class DelegatedWork:
    def __init__(self, peer: PeerClient, links: Links, policy: RetryPolicy,
                 child: ChildRequest) -> None:
        self.peer = peer
        self.links = links
        self.policy = policy
        self.child = child
        self.child_id: str | None = None
        self._suspended_child = False

    async def run(self, ctx: ActivityContext) -> None:
        await self._call(ctx, self.peer.check_version)
        self.child_id = ctx.params.get("peer_activity")
        self._suspended_child = bool(ctx.params.get("peer_suspended"))
        if self.child_id is not None:
            ctx.log.info("reattaching to the peer's activity", node=self.peer.server,
                         peer_activity=self.child_id)
        wait = 0  # the first look answers at once; then each waits up to a poll
        while True:
            ctx.flow.changed.clear()
            if self.child_id is None:
                self.child_id = await self._create(ctx)
            child = await self._next(ctx, wait)
            wait = POLL_SECONDS
            if child is None:  # the peer lost it (its journal was reset): start again
                ctx.log.warning("the peer no longer knows its activity; creating it again",
                                node=self.peer.server, peer_activity=self.child_id)
                self.child_id = None
                continue
            self._mirror(ctx, child)
            if child["state"] in TERMINAL:
                self._finish(ctx, child)
                return
            await self._follow_gate(ctx, child)

    async def _next(self, ctx: ActivityContext, wait: int) -> dict[str, Any] | None:
        """The child's state after at most ``wait`` seconds: the peer answers at once
        when it finishes (``?wait=``), and we ask again at once when the activity here
        is suspended or resumed meanwhile (``run`` cleared the flag before this)."""
        fetch = asyncio.ensure_future(self._call(ctx, partial(self._fetch, wait)))
        changed = asyncio.ensure_future(ctx.flow.changed.wait())
        try:
            await asyncio.wait({fetch, changed}, return_when=asyncio.FIRST_COMPLETED)
            if fetch.done():
                return fetch.result()
            fetch.cancel()
            return await self._call(ctx, partial(self._fetch, 0))
        finally:
            for task in (fetch, changed):
                task.cancel()
            await asyncio.gather(fetch, changed, return_exceptions=True)

    async def _create(self, ctx: ActivityContext) -> str:
        body = {**self.child.body, "parent": ctx.record.id}
        answer = await self._call(ctx, lambda: self.peer.request("POST", self.child.path, body))
        if answer.status not in (200, 201, 202) or not isinstance(answer.body, dict):
            raise ActivityError(f"peer daemon on {self.peer.server} refused the work: "
                                f"{answer.problem()}", StatusCode.ERROR, "peer")
        child_id = str(answer.body["id"])
        ctx.remember(peer_activity=child_id)
        ctx.log.info("delegated to the peer daemon", node=self.peer.server,
                     peer_activity=child_id)
        return child_id

    async def _fetch(self, wait: int = 0) -> dict[str, Any] | None:
        answer = await self.peer.request("GET", f"/v1/activities/{self.child_id}?wait={wait}")
        if answer.status == 404:
            return None
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise ActivityError(f"peer daemon on {self.peer.server}: {answer.problem()}",
                                StatusCode.ERROR, "peer")
        return answer.body

    def _mirror(self, ctx: ActivityContext, child: dict[str, Any]) -> None:
        p, u = child["progress"], child["usage"]
        ctx.set_progress(int(p["done"]), int(p["total"]), unit=str(p["unit"]),
                         estimated=bool(p["estimated"]))
        c = ctx.counters
        c.bytes_read, c.bytes_on_wire = int(u["bytes_read"]), int(u["bytes_on_wire"])

    def _finish(self, ctx: ActivityContext, child: dict[str, Any]) -> None:
        params = child.get("params") or {}
        ctx.remember(peer_result={k: params[k] for k in RESULT_KEYS if k in params})
        if child["state"] == "succeeded":
            ctx.remember(**{k: params[k] for k in self.child.adopt if k in params})
        status = child.get("status") or {}
        if child["state"] == "succeeded":
            return
        where = f"on {self.peer.server} (peer activity {self.child_id})"
        if child["state"] == "cancelled":
            raise ActivityError(f"cancelled {where}: {status.get('message')}",
                                StatusCode.CANCELLED, "cancelled")
        raise ActivityError(f"failed {where}: {status.get('message')}",
                            StatusCode(int(status.get("code", 1))), status.get("reason"))

    async def _follow_gate(self, ctx: ActivityContext, child: dict[str, Any]) -> None:
        """Suspend here suspends the child; resume here resumes what we suspended."""
        state = child["state"]
        if not ctx.flow.is_open and state in ("running", "retrying", "pending"):
            if await self._verb(ctx, "suspend"):
                self._suspended(ctx, True)
        elif ctx.flow.is_open and state == "suspended" and self._suspended_child \
                and await self._verb(ctx, "resume"):
            self._suspended(ctx, False)

    def _suspended(self, ctx: ActivityContext, suspended: bool) -> None:
        """Journaled: a restarted parent must know it was the one that suspended."""
        self._suspended_child = suspended
        ctx.remember(peer_suspended=suspended)

    async def _verb(self, ctx: ActivityContext, verb: str) -> bool:
        path = f"/v1/activities/{self.child_id}/{verb}"
        answer = await self._call(ctx, lambda: self.peer.request("POST", path))
        if answer.status == 409:  # it changed state meanwhile: the next poll sees how
            return False
        if answer.status >= 400:
            raise ActivityError(f"peer daemon on {self.peer.server} refused {verb}: "
                                f"{answer.problem()}", StatusCode.ERROR, "peer")
        ctx.log.info(f"peer activity {verb}ed", node=self.peer.server,
                     peer_activity=self.child_id)
        return True

    async def rollback(self, ctx: ActivityContext) -> None:
        """On a cancel, cancel the child and wait for its rollback. Otherwise the child is
        left alone: at shutdown it carries on and the restarted parent reattaches; after
        a failure here (the peer unreachable past the retry deadline) it still finishes
        by itself on the peer, whose own activity list shows it."""
        if self.child_id is None or not ctx.cancel_requested:
            return  # a failure, or this daemon stopping: the child is left to itself
        deadline = time.monotonic() + CANCEL_WAIT
        answer = await self.peer.request("POST", f"/v1/activities/{self.child_id}/cancel")
        if answer.status not in (200, 202, 409):
            raise ActivityError(f"could not cancel peer activity {self.child_id} on "
                                f"{self.peer.server}: {answer.problem()}")
        while time.monotonic() < deadline:
            child = await self._fetch(POLL_SECONDS)  # answered as soon as it has ended
            if child is None or child["state"] in TERMINAL:
                ctx.log.info("peer activity ended", node=self.peer.server,
                             peer_activity=self.child_id,
                             state=child["state"] if child else "gone")
                return
        raise ActivityError(f"peer activity {self.child_id} on {self.peer.server} did not "
                            f"finish its rollback within {CANCEL_WAIT:g} s")

    async def _call(self, ctx: ActivityContext, call: Callable[[], Awaitable[T]]) -> T:
        """A request, retried while the link or the peer is away (reported lost)."""
        deadline = self.policy.deadline
        retrying = self.policy.attempts(ctx, transient=_transient,
                                        report=partial(self._report, ctx),
                                        deadline=deadline, first_wait=0.5)
        try:
            async for attempt in retrying:
                with attempt:
                    result = await call()
        except LinkError as exc:
            if exc.permanent:
                raise ActivityError(str(exc), StatusCode.ERROR, "peer") from exc
            raise ActivityError(f"peer daemon on {self.peer.server}: gave up after retrying "
                                f"for {deadline:g} s: {exc}", StatusCode.LINK, "link") from exc
        self._back_up(ctx)
        return result

    def _report(self, ctx: ActivityContext, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = report_link_retry(ctx, self.links, self.peer.server, str(exc), state)
        ctx.log.warning("peer daemon unreachable; retrying", node=self.peer.server,
                        error=str(exc), attempt=state.attempt_number, retry_in=round(delay, 1))

    def _back_up(self, ctx: ActivityContext) -> None:
        link = self.links.get(self.peer.server)
        if link is not None and link.state != LinkCondition.UP:
            self.links.up(self.peer.server)
        if ctx.record.state == State.RETRYING:
            ctx.link_up(self.peer.server)
