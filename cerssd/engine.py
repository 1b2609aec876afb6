"""The activity engine: runs backend work as activities the operator can see and steer.

Work is an object with ``run(ctx)`` and ``rollback(ctx)``. The engine owns the
asyncio task, the state machine (``cerssd.activity``), the journal and the
control verbs:

* suspend closes the activity's gate: coroutines block in ``ctx.checkpoint()``,
  threads moving bytes block in ``ctx.flow.wait()``; a sender feeding a pipe then
  blocks on its own, which is the backpressure the design asks for;
* resume opens the gate again; nothing restarts;
* cancel cancels the task (its ``finally`` blocks stop processes) and then runs
  ``rollback`` so the target is left at its last consistent state.

Work that fails is rolled back too: nothing is left half-done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

import structlog

from .activity import (
    ActivityRecord,
    DataRoute,
    IllegalTransition,
    LinkCondition,
    LinkHealth,
    Progress,
    State,
    Status,
    StatusCode,
    Usage,
    check_transition,
)
from .flow_control import Counters, FlowGate
from .journal import ActivityFilter, Journal

log = structlog.get_logger("cerssd.engine")

#: Finished activities kept in memory after they end, for the callers that were waiting
#: on them (a failover's child, a long poll); older history is read from the journal.
RECENT_FINISHED = 256


class ActivityError(Exception):
    """A failure with a status code and a message meant for the operator."""

    def __init__(self, message: str, code: StatusCode = StatusCode.ERROR,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


class UnknownActivity(KeyError):
    pass


class EngineClosed(RuntimeError):
    pass


class Work(Protocol):
    async def run(self, ctx: ActivityContext) -> None: ...

    async def rollback(self, ctx: ActivityContext) -> None: ...


#: Builds the work for an activity from its record (used again after a restart).
WorkFactory = Callable[[ActivityRecord], Work]
Listener = Callable[[ActivityRecord, "Activity"], None]


class Activity:
    """The live side of one activity; ``snapshot()`` gives the immutable record."""

    @classmethod
    def finished(cls, record: ActivityRecord) -> Activity:
        """A handle on history read back from the journal: already done, nothing to run."""
        activity = cls(record)
        activity.done.set()
        return activity

    def __init__(self, record: ActivityRecord) -> None:
        self.record = record
        self.gate = FlowGate()
        self.counters = Counters()
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.shutdown_requested = False
        self.done = asyncio.Event()
        #: Set by ``ActivityEngine.wake`` to cut a retry's back-off short ("sync now").
        self.wake = asyncio.Event()
        self._started_mono: float | None = None
        self._elapsed_before = record.usage.elapsed_seconds

    @property
    def id(self) -> str:
        return self.record.id

    def snapshot(self) -> ActivityRecord:
        r = self.record
        if r.state.terminal:
            return r
        elapsed = self._elapsed_before
        if self._started_mono is not None:
            elapsed += time.monotonic() - self._started_mono
        c = self.counters
        usage = Usage(elapsed_seconds=round(elapsed, 3), bytes_read=c.bytes_read,
                      bytes_on_wire=c.bytes_on_wire, retries=c.retries,
                      rate_bytes_per_second=round(c.sample_rate(), 1))
        progress = r.progress if c.done is None else r.progress.advanced(c.done)
        return replace(r, usage=usage, progress=progress)


class ActivityContext:
    """What running work may touch: progress, counters, the gate, link health."""

    def __init__(self, engine: ActivityEngine, activity: Activity) -> None:
        self._engine = engine
        self._activity = activity
        self.flow = activity.gate
        self.counters = activity.counters
        self.log = log.bind(activity_id=activity.id, volume=activity.record.volume,
                            kind=activity.record.kind)

    @property
    def record(self) -> ActivityRecord:
        return self._activity.snapshot()

    @property
    def params(self) -> dict[str, Any]:
        return self._activity.record.params

    @property
    def cancel_requested(self) -> bool:
        """True when the operator cancelled (roll back everything), not on a failure."""
        return self._activity.cancel_requested

    @property
    def shutdown_requested(self) -> bool:
        """True when the daemon stops: a self-restarting activity is only checkpointed
        (work it handed elsewhere, such as a peer daemon's child, carries on)."""
        return self._activity.shutdown_requested

    async def checkpoint(self) -> None:
        """Block while the activity is suspended."""
        await self._activity.gate.wait_async()

    async def sleep(self, seconds: float) -> None:
        """Sleep between retries, unless an operator asks for a try now (``wake``)."""
        wake = self._activity.wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    def set_progress(self, done: int, total: int | None = None, *, unit: str | None = None,
                     estimated: bool | None = None) -> None:
        p = self._activity.record.progress
        p = replace(p, total=p.total if total is None else total,
                    unit=p.unit if unit is None else unit,
                    estimated=p.estimated if estimated is None else estimated)
        self._activity.record = replace(self._activity.record, progress=p.advanced(done))

    def remember(self, **params: Any) -> None:
        """Persist facts a restarted run needs (journaled at once)."""
        self._engine.remember(self._activity.id, **params)

    def link_lost(self, link: LinkHealth) -> None:
        self._activity.counters.retries += 1
        self._activity.record = replace(self._activity.record, link=link)
        if self._activity.record.state == State.RUNNING:
            self._engine.transition(self._activity, State.RETRYING)
        else:
            self._engine.persist(self._activity)

    def link_up(self, server: str) -> None:
        self._activity.record = replace(self._activity.record, link=LinkHealth(server=server))
        if self._activity.record.state == State.RETRYING:
            self._engine.transition(self._activity, State.RUNNING)


class ActivityEngine:
    """Runs activities; holds in memory only what is live (plus the few that just ended)
    and leaves history to the journal, so its cost never grows with the history."""

    def __init__(self, journal: Journal, *, retention: float = 7 * 86400.0) -> None:
        self.journal = journal
        self.retention = retention
        self._activities: dict[str, Activity] = {}  # live: not yet terminal
        self._recent: OrderedDict[str, Activity] = OrderedDict()
        self._factories: dict[str, WorkFactory] = {}
        self._listeners: list[Listener] = []
        self._closed = False
        # Activities restarted from the journal that were suspended when the daemon stopped.
        self._pending_suspend: set[str] = set()
        #: Params ``submitting`` adds to what is submitted inside its block.
        self._submit_params: dict[str, Any] = {}

    # -- registration -------------------------------------------------------------
    def register(self, kind: str, factory: WorkFactory) -> None:
        self._factories[kind] = factory

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- queries --------------------------------------------------------------------
    def get(self, activity_id: str) -> Activity:
        """A live or recently finished activity, or one read back from the journal."""
        activity = self._activities.get(activity_id) or self._recent.get(activity_id)
        if activity is not None:
            return activity
        record = self.journal.get(activity_id)
        if record is None:
            raise UnknownActivity(activity_id)
        return Activity.finished(record)

    def activities(self) -> list[Activity]:
        """The live activities (not yet terminal): bounded by what runs at once."""
        return list(self._activities.values())

    def unfinished(self, activity_id: str | None) -> Activity | None:
        """The activity while it has not ended; None for no id, an unknown one, or one
        that ended (what a relationship's or a policy's "its activity" means)."""
        if activity_id is None:
            return None
        with contextlib.suppress(KeyError):
            activity = self.get(activity_id)
            if not activity.record.state.terminal:
                return activity
        return None

    def live(self, kind: str, relationship: str | None = None) -> list[Activity]:
        """Live activities of ``kind``, of one relationship if named."""
        return [a for a in self._activities.values()
                if a.record.kind == kind and not a.record.state.terminal
                and (relationship is None or a.record.params.get("relationship") == relationship)]

    def page(self, where: ActivityFilter, limit: int, offset: int = 0) -> list[ActivityRecord]:
        """Newest first from the journal, live ones as they are this moment."""
        records = self.journal.page(where, limit, offset)
        return [self._activities[r.id].snapshot() if r.id in self._activities else r
                for r in records]

    def page_json(self, where: ActivityFilter, limit: int, offset: int = 0) -> list[str]:
        """``page`` as JSON texts: history as the journal stored it (not parsed and
        written again), live activities as they are this moment."""
        return [json.dumps(self._activities[i].snapshot().to_json())
                if i in self._activities else text
                for i, text in self.journal.page_json(where, limit, offset)]

    def count(self, where: ActivityFilter) -> int:
        return self.journal.count(where)

    def counts(self) -> Counter[tuple[str, str]]:
        """Activities known, by (kind, state), from the journal's tally (no scan)."""
        return self.journal.tally()

    # -- lifecycle ------------------------------------------------------------------
    def recover(self) -> list[ActivityRecord]:
        """Read back what was running: restart self-restarting work, fail the rest.

        Only unfinished records are read: history stays in the journal. Returns restarted.
        """
        restarted = []
        for record in self.journal.unfinished():
            if record.self_restarting and record.kind in self._factories:
                was_suspended = record.state == State.SUSPENDED
                fresh = replace(record, state=State.PENDING, restarts=record.restarts + 1,
                                link=None)
                activity = self._start(fresh)
                if was_suspended:
                    activity.gate.close()
                    self._pending_suspend.add(activity.id)
                restarted.append(fresh)
                log.info("activity restarted after daemon restart", activity_id=record.id,
                         kind=record.kind, volume=record.volume)
            else:
                failed = replace(record, state=State.FAILED, finished_at=time.time(),
                                 status=Status(StatusCode.INTERRUPTED,
                                               "interrupted by daemon restart"))
                self.journal.save(failed)
                log.warning("activity interrupted by daemon restart", activity_id=record.id,
                            kind=record.kind, volume=record.volume)
        return restarted

    def submit(self, kind: str, *, volume: str | None = None, source: str | None = None,
               target: str | None = None, params: dict[str, Any] | None = None,
               self_restarting: bool = False, progress: Progress | None = None,
               node: str | None = None, route: DataRoute = DataRoute.LOCAL,
               ) -> ActivityRecord:
        if self._closed:
            raise EngineClosed("the daemon is shutting down; no new work is accepted")
        if kind not in self._factories:
            raise ValueError(f"no work registered for activity kind {kind!r}")
        record = ActivityRecord(
            id=uuid.uuid4().hex[:16], kind=kind, volume=volume, source=source, target=target,
            created_at=time.time(), params={**(params or {}), **self._submit_params},
            self_restarting=self_restarting, progress=progress or Progress(),
            node=node, route=route)
        return self._start(record).snapshot()

    @contextlib.contextmanager
    def submitting(self, **params: Any) -> Iterator[None]:
        """Add ``params`` to the activities submitted inside the block (synchronous code:
        nothing else submits meanwhile). A caller that decides facts about an activity
        before its flow builds it (the volumes it holds) gets them into the record's
        first journal write: a daemon killed right after the submit still finds them,
        which a ``remember`` just after could miss."""
        saved, self._submit_params = self._submit_params, {**self._submit_params, **params}
        try:
            yield
        finally:
            self._submit_params = saved

    def _start(self, record: ActivityRecord) -> Activity:
        activity = Activity(record)
        self._activities[record.id] = activity
        self.persist(activity)
        self._notify(activity)
        work = self._factories[record.kind](record)
        activity.task = asyncio.get_running_loop().create_task(
            self._run(activity, work), name=f"activity-{record.id}")
        return activity

    async def _run(self, activity: Activity, work: Work) -> None:
        ctx = ActivityContext(self, activity)
        try:
            await asyncio.sleep(0)  # let submit() return the pending record first
            activity._started_mono = time.monotonic()
            activity.record = replace(activity.record, started_at=time.time())
            self.transition(activity, State.RUNNING)
            if activity.id in self._pending_suspend:
                self._pending_suspend.discard(activity.id)
                self.transition(activity, State.SUSPENDED)
            await work.run(ctx)
        except asyncio.CancelledError:
            await self._after_cancel(activity, work, ctx)
        except ActivityError as exc:
            await self._fail(activity, work, ctx, Status(exc.code, exc.message, exc.reason))
        except Exception as exc:  # any failure becomes the activity's status
            ctx.log.exception("activity failed")
            await self._fail(activity, work, ctx, Status(
                StatusCode.ERROR, f"{type(exc).__name__}: {exc}", "internal"))
        else:
            self._succeed(activity)
        finally:
            activity.done.set()

    def _succeed(self, activity: Activity) -> None:
        """The work returned: it succeeded, whatever state its last step left it in.

        Work may end without passing another checkpoint, e.g. when a retry finds the
        target already complete while the activity says ``retrying``, or when its last
        step ran on while an operator suspended it. The contract only lets ``running``
        succeed, so the activity passes through it (its link is up: the work got through).
        """
        record = activity.record
        if record.state in (State.RETRYING, State.SUSPENDED):
            if record.link is not None and record.link.state != LinkCondition.UP:
                activity.record = replace(record, link=LinkHealth(server=record.link.server))
            activity.gate.open()
            self.transition(activity, State.RUNNING)
        self._finish(activity, State.SUCCEEDED, Status(StatusCode.OK, "succeeded"))

    async def _after_cancel(self, activity: Activity, work: Work, ctx: ActivityContext) -> None:
        state = activity.record.state
        if state.terminal:  # a pending activity that cancel() already finished
            return
        if activity.shutdown_requested and activity.record.self_restarting:
            # Left non-terminal in the journal on purpose: the next daemon restarts it.
            await self._rollback(work, ctx)
            ctx.log.info("activity checkpointed for restart at shutdown")
            return
        reason = (Status(StatusCode.INTERRUPTED, "interrupted by daemon shutdown")
                  if activity.shutdown_requested
                  else Status(StatusCode.CANCELLED, "cancelled by operator; rolled back"))
        if state == State.PENDING:  # never started: nothing to roll back
            self._finish(activity, State.CANCELLED, reason)
            return
        if state != State.CANCELLING:
            self.transition(activity, State.CANCELLING)
        problem = await self._rollback(work, ctx)
        if problem:
            self._finish(activity, State.FAILED,
                         Status(StatusCode.ROLLBACK_FAILED, f"rollback failed: {problem}"))
        else:
            self._finish(activity, State.CANCELLED, reason)

    async def _fail(self, activity: Activity, work: Work, ctx: ActivityContext,
                    status: Status) -> None:
        problem = await self._rollback(work, ctx)
        if problem:
            status = replace(status, message=f"{status.message}; rollback also failed: {problem}")
        self._finish(activity, State.FAILED, status)

    @staticmethod
    async def _rollback(work: Work, ctx: ActivityContext) -> str | None:
        try:
            await asyncio.shield(work.rollback(ctx))
        except Exception as exc:
            ctx.log.exception("rollback failed")
            return f"{type(exc).__name__}: {exc}"
        return None

    def _finish(self, activity: Activity, state: State, status: Status) -> None:
        final = activity.snapshot()
        usage = final.usage
        if usage.elapsed_seconds > 0:  # a finished activity reports its average rate
            final = replace(final, usage=replace(usage, rate_bytes_per_second=round(
                usage.bytes_read / usage.elapsed_seconds, 1)))
        if state == State.SUCCEEDED and final.progress.total == 0 and final.progress.done:
            final = replace(final, progress=replace(final.progress, total=final.progress.done))
        activity.record = replace(final, status=status, finished_at=time.time())
        self.transition(activity, state)
        activity.record = activity.snapshot()
        self._retire(activity)

    def _retire(self, activity: Activity) -> None:
        """A finished activity leaves the live set; the last few stay at hand."""
        self._activities.pop(activity.id, None)
        self._recent[activity.id] = activity
        while len(self._recent) > RECENT_FINISHED:
            self._recent.popitem(last=False)

    def transition(self, activity: Activity, state: State) -> None:
        check_transition(activity.id, activity.record.state, state)
        activity.record = replace(activity.record, state=state)
        self.persist(activity)
        self._notify(activity)
        status = activity.record.status
        # A failure is what an operator looks for in the journal: warning, with its reason.
        emit = log.warning if state == State.FAILED else log.info
        emit("activity state", activity_id=activity.id, volume=activity.record.volume,
             kind=activity.record.kind, state=str(state),
             status=status.message if status else None,
             reason=status.reason if status and state == State.FAILED else None)

    def persist(self, activity: Activity) -> None:
        self.journal.save(activity.snapshot())

    def _notify(self, activity: Activity) -> None:
        record = activity.snapshot()
        for listener in self._listeners:
            listener(record, activity)

    # -- control verbs ---------------------------------------------------------------
    async def suspend(self, activity_id: str) -> ActivityRecord:
        activity = self.get(activity_id)
        check_transition(activity.id, activity.record.state, State.SUSPENDED)
        activity.gate.close()
        self.transition(activity, State.SUSPENDED)
        return activity.snapshot()

    async def resume(self, activity_id: str) -> ActivityRecord:
        activity = self.get(activity_id)
        if activity.record.state != State.SUSPENDED:
            raise IllegalTransition(activity.id, activity.record.state, State.RUNNING)
        self.transition(activity, State.RUNNING)
        activity.gate.open()
        return activity.snapshot()

    async def cancel(self, activity_id: str) -> ActivityRecord:
        activity = self.get(activity_id)
        state = activity.record.state
        if state == State.PENDING:
            activity.cancel_requested = True
            self._finish(activity, State.CANCELLED,
                         Status(StatusCode.CANCELLED, "cancelled before it started"))
            if activity.task:
                activity.task.cancel()
            return activity.snapshot()
        check_transition(activity.id, state, State.CANCELLING)
        activity.cancel_requested = True
        self.transition(activity, State.CANCELLING)
        if activity.task:
            activity.task.cancel()
        return activity.snapshot()

    def remember(self, activity_id: str, **params: Any) -> None:
        """Persist facts about an activity from outside its work (e.g. the volumes it
        holds), journaled at once so a restarted daemon finds them in its params."""
        activity = self.get(activity_id)
        activity.record = replace(activity.record,
                                  params={**activity.record.params, **params})
        self.persist(activity)

    def wake(self, activity_id: str) -> None:
        """Cut the activity's current retry back-off short: it tries again now."""
        self.get(activity_id).wake.set()

    async def wait(self, activity_id: str, timeout: float | None = None) -> ActivityRecord:
        activity = self.get(activity_id)
        await asyncio.wait_for(activity.done.wait(), timeout)
        return activity.snapshot()

    async def prune(self, now: float | None = None) -> int:
        """Drop history older than the retention, in batches in a thread (never blocks
        the loop for long whatever the backlog). Returns how many records went."""
        cutoff = (now or time.time()) - self.retention
        for activity_id in [i for i, a in self._recent.items()
                            if (a.record.finished_at or 0) < cutoff]:
            del self._recent[activity_id]
        gone = await asyncio.to_thread(self.journal.prune, cutoff)
        return sum(gone.values())

    async def shutdown(self, timeout: float) -> None:
        """Stop taking work; checkpoint self-restarting activities, cancel the rest."""
        self._closed = True
        running = [a for a in self._activities.values()
                   if a.task is not None and not a.task.done()]
        for activity in running:
            activity.shutdown_requested = True
            if activity.record.state not in (State.PENDING, State.CANCELLING) \
                    and not activity.record.self_restarting:
                self.transition(activity, State.CANCELLING)
            activity.gate.open()
            assert activity.task is not None
            activity.task.cancel()
        tasks = [a.task for a in running if a.task is not None]
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                log.error("activity did not stop within the shutdown timeout",
                          task=task.get_name())
        with contextlib.suppress(Exception):
            self.journal.close()
