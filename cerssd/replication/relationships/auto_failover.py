"""The leader's watch on its masters, for relationships with ``auto_failover = true``.

Every few seconds (a third of ``failover_after``, at most 10 s) the leader asks each such
relationship's master for its volume, with a time limit. Once the master has not answered
for ``failover_after``, ``logic.auto_failover_rule.decide`` picks the slave to promote, and the
failover is submitted exactly as an operator's forced (unplanned) one: the slave is
promoted at its newest snapshot and the old master fenced until it is rejoined with
consent. Submitting it commits the decision to etcd under the leader's term, so it is
made once. When the loss would exceed ``max_data_loss`` nothing is promoted: the
relationship says ``refused`` with the reason, the log says it once, and the metric
``cerssd_cluster_auto_failover_refused`` lets an alert page someone.

Only relationships this daemon leads are watched; a manager that takes over starts its
own count (the outage is seen afresh, so a takeover never shortens ``failover_after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..logic.auto_failover_rule import AutoState, decide
from .failover import FailoverDeps, FailoverRequest, master_answers, submit_failover
from .runtime import RelationshipError, Runtime

log = structlog.get_logger("cerssd.relationships")

#: Seconds a probe of the master may take before it counts as not answering.
PROBE_TIMEOUT = 5.0
MAX_CHECK_INTERVAL = 10.0


@dataclass
class Watch:
    """What the leader saw of one relationship's master (shown in its status)."""

    state: AutoState = AutoState.WATCHING
    master_down_since: float | None = None
    reason: str | None = None
    at: float | None = None
    activity: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "master_down_since": self.master_down_since,
                "reason": self.reason, "at": self.at, "activity": self.activity}


@dataclass
class AutoFailoverWatch:
    deps: FailoverDeps
    watches: dict[str, Watch] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self, name: str) -> dict[str, Any] | None:
        w = self.watches.get(name)
        return w.to_json() if w is not None else None

    def refused(self) -> dict[str, bool]:
        """Per watched relationship: whether its automatic failover was refused."""
        return {n: w.state == AutoState.REFUSED for n, w in self.watches.items()}

    def _interval(self) -> float:
        afters = [rt.spec.auto_failover.after for rt in self.deps.registry.all()
                  if rt.spec.auto_failover is not None]
        return max(0.5, min([MAX_CHECK_INTERVAL, *(a / 3 for a in afters)]))

    async def _run(self) -> None:
        while True:
            registry = self.deps.registry
            for rt in registry.all():
                if rt.spec.auto_failover is None or not registry.leadership.leads(rt.name) \
                        or rt.name in registry.stale:  # roles not taken over yet
                    self.watches.pop(rt.name, None)
                    continue
                await self._check(rt)
            await asyncio.sleep(self._interval())

    async def _check(self, rt: Runtime) -> None:
        w = self.watches.setdefault(rt.name, Watch())
        if rt.failover.in_progress or rt.stopped:
            return
        asked = time.time()  # the outage counts from the probe that found it
        try:
            problem = await asyncio.wait_for(master_answers(self.deps.servers, rt),
                                             PROBE_TIMEOUT)
        except TimeoutError:
            problem = f"no answer within {PROBE_TIMEOUT:.0f} s"
        now = time.time()
        if problem is None:
            if w.state != AutoState.WATCHING:
                log.info("master answers again", relationship=rt.name, master=rt.spec.master)
            self.watches[rt.name] = Watch()
            return
        if w.master_down_since is None:
            w.state, w.master_down_since, w.reason = AutoState.MASTER_DOWN, asked, problem
            log.warning("master does not answer; automatic failover if it lasts",
                        relationship=rt.name, master=rt.spec.master, error=problem)
        policy = rt.spec.auto_failover
        assert policy is not None
        if w.state == AutoState.PROMOTED or now - w.master_down_since < policy.after:
            return
        decision = decide(policy, rt.slaves, rt.failover.fenced, w.master_down_since)
        if decision.promote is None:
            if w.state != AutoState.REFUSED:
                log.error("automatic failover refused: master down, no slave within "
                          "max_data_loss", relationship=rt.name, master=rt.spec.master,
                          reason=decision.reason)
            w.state, w.reason, w.at = AutoState.REFUSED, decision.reason, now
            return
        registry = self.deps.registry
        if registry.runtimes.get(rt.name) is not rt or rt.name in registry.stale:
            return  # stepped down or taken over while the probe ran: look again
        await self._promote(rt, w, decision.promote, decision.reason)

    async def _promote(self, rt: Runtime, w: Watch, to: str, reason: str) -> None:
        old = rt.spec.master
        try:
            record = await submit_failover(self.deps, FailoverRequest(rt.name, to, force=True))
        except RelationshipError as exc:  # lost the lead, or a failover began meanwhile
            log.warning("automatic failover not started", relationship=rt.name,
                        error=str(exc))
            return
        w.state, w.reason, w.at, w.activity = AutoState.PROMOTED, reason, time.time(), record.id
        log.warning("automatic failover: promoting a slave", relationship=rt.name,
                    master=old, to=to, reason=reason, activity=record.id)
