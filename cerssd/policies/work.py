"""A policy's long-lived activity: a run per schedule tick, forever (progress 0 of 0 runs).

Like a relationship's activity it is self-restarting: a restarted daemon picks it up
with the facts it remembered (last run, counts, last result) and keeps the schedule
(``schedule.next_after``: downtime is caught up with one run, not one per missed slot).
"run now" wakes it (``PolicyRegistry.run_now``), as does a reload that changed its
schedule. A run that fails (server unreachable, a command refused) is recorded and tried
again with back-off, capped by the daemon's ``retry_max_interval``; it never ends the
activity. After each run that took a snapshot, the relationships replicating the
policy's snapshots are woken to bring their slaves up to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..activity import ActivityRecord, StatusCode
from ..engine import ActivityContext, ActivityEngine, ActivityError
from ..replication.relationships.registry import RelationshipRegistry
from ..servers import ServerRegistry, ServerUnavailable
from ..storage.errors import BackendError
from ..transport.errors import LinkError
from . import guard
from .run import runner
from .runtime import KIND, PolicyRuntime, RunOutcome, RunResult


@dataclass(frozen=True)
class PolicyDeps:
    engine: ActivityEngine
    servers: ServerRegistry
    relationships: RelationshipRegistry
    runtimes: Callable[[], dict[str, PolicyRuntime]]
    max_backoff: float = 30.0


class PolicyWork:
    def __init__(self, record: ActivityRecord, deps: PolicyDeps) -> None:
        self.name: str = record.params["policy"]
        self.deps = deps
        self.attempts = 0

    async def run(self, ctx: ActivityContext) -> None:
        rt = self.deps.runtimes().get(self.name)
        if rt is None:
            raise ActivityError(f"snapshot policy {self.name} is no longer defined",
                                StatusCode.NOT_FOUND, "not-found")
        rt.activity_id = ctx.record.id
        if rt.last_run_at is None and rt.runs == 0:
            rt.restore(ctx.params)
        while True:
            await ctx.checkpoint()
            if not ctx.params.get("pending_label"):
                await self._wait_for_tick(ctx, rt)
                await ctx.checkpoint()
            result = await self._run_once(ctx, rt)
            if result.outcome == RunOutcome.FAILED:
                self.attempts += 1
                delay = min(self.deps.max_backoff, 2.0 ** min(self.attempts, 10))
                rt.next_run_at = time.time() + delay
                await ctx.sleep(delay)
            else:
                self.attempts = 0

    async def _wait_for_tick(self, ctx: ActivityContext, rt: PolicyRuntime) -> None:
        """Until the next tick, or run-now (which wakes the activity). A new policy runs
        at once; a reload's new schedule is waited for instead (``rt.rescheduled``)."""
        while True:
            now = time.time()
            rt.next_run_at = now if rt.last_run_at is None \
                else rt.spec.schedule.next_after(rt.last_run_at, now)
            await ctx.sleep(max(0.0, rt.next_run_at - now))
            if not rt.rescheduled:
                return
            rt.rescheduled = False

    async def _run_once(self, ctx: ActivityContext, rt: PolicyRuntime) -> RunResult:
        started = time.time()
        deps = self.deps
        try:
            backend = await deps.servers.backend(rt.spec.server)
            result = await runner(rt)(
                ctx, rt, backend,
                lambda: guard.protection(deps.relationships, rt.spec))
        except (ServerUnavailable, LinkError, BackendError) as exc:
            result = RunResult(RunOutcome.FAILED, started, time.time() - started,
                               error=str(exc))
            rt.failures += 1
            rt.last_error = f"run failed on {rt.spec.server}: {exc}"
            ctx.log.warning("snapshot policy run failed; retrying", policy=rt.name,
                            error=str(exc), failures=rt.failures)
        else:
            rt.last_run_at, rt.last_error = started, None
            rt.runs += 1
            rt.skipped += result.outcome == RunOutcome.SKIPPED
            for h in result.hooks:
                ctx.log.info("snapshot hook ran", policy=rt.name, **h.to_json())
            ctx.log.info("snapshot policy run", policy=rt.name, outcome=result.outcome.value,
                         label=result.label, volumes=result.volumes,
                         destroyed=result.destroyed, kept_held=len(result.kept_held),
                         prune_skipped=result.prune_skipped, kept=rt.kept)
        rt.last_result = result
        ctx.remember(**rt.remembered())
        ctx.set_progress(rt.runs)
        if result.outcome == RunOutcome.SNAPSHOT:
            self._wake_followers(ctx, rt)
        return result

    def _wake_followers(self, ctx: ActivityContext, rt: PolicyRuntime) -> None:
        """The relationships replicating this policy cycle now: their slaves follow the
        snapshot just taken."""
        for follower in guard.followers(self.deps.relationships, rt.name):
            activity = self.deps.relationships.activity_of(follower)
            if activity is not None:
                self.deps.engine.wake(activity.id)
                ctx.log.info("relationship woken for the policy's snapshot",
                             relationship=follower.name)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Snapshots taken are the policy's to keep; nothing to undo."""
        return None


def register(engine: ActivityEngine, deps: PolicyDeps) -> None:
    engine.register(KIND, lambda r: PolicyWork(r, deps))
