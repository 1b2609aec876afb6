"""The snapshot policies this daemon keeps, by name, and each one's long-lived activity.

Policies come from the config file only (``[snapshots.NAME]``); a reload adds, removes
and changes them (``reload.py``). Each has one self-restarting activity (kind
``snapshot-policy``, run by ``work.PolicyWork``); the registry starts it, stops it,
wakes it for "run now", and renders the state the API, ``cerssctl`` and the metrics show.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from ..activity import ActivityRecord, Progress, State
from ..engine import Activity, ActivityEngine
from ..replication.relationships.registry import RelationshipRegistry
from ..servers import ServerRegistry
from . import guard
from .runtime import KIND, PolicyError, PolicyRuntime, UnknownPolicy
from .spec import PolicySpec
from .work import PolicyDeps, register

log = structlog.get_logger("cerssd.policies")


class PolicyRegistry:
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 relationships: RelationshipRegistry, *, max_backoff: float = 30.0) -> None:
        self.engine = engine
        self.relationships = relationships
        self.runtimes: dict[str, PolicyRuntime] = {}
        register(engine, PolicyDeps(engine, servers, relationships, lambda: self.runtimes,
                                    max_backoff))

    def load(self, configured: Mapping[str, PolicySpec]) -> None:
        for name, spec in configured.items():
            self.runtimes[name] = PolicyRuntime(spec)

    def start(self) -> None:
        """After the engine's recovery: each policy gets its activity (the one the engine
        restarted, or a new one); an activity of a policy no longer defined fails."""
        live = {a.record.params.get("policy"): a for a in self.engine.live(KIND)}
        for rt in self.runtimes.values():
            activity = live.get(rt.name)
            if activity is not None:
                rt.activity_id = activity.id
            else:
                self.launch(rt)

    def launch(self, rt: PolicyRuntime) -> ActivityRecord:
        record = self.engine.submit(
            KIND, volume=rt.spec.volume, source=rt.spec.server,
            params={"policy": rt.name}, self_restarting=True,
            progress=Progress(0, 0, unit="runs"))
        rt.activity_id = record.id
        return record

    # -- reload -------------------------------------------------------------------------
    def define(self, spec: PolicySpec) -> PolicyRuntime:
        rt = self.runtimes[spec.name] = PolicyRuntime(spec)
        self.launch(rt)
        return rt

    async def retire(self, name: str) -> None:
        """Forgotten at once, its activity cancelled and waited for. Its snapshots stay."""
        rt = self.runtimes.pop(name, None)
        activity = self.activity_of(rt) if rt is not None else None
        if activity is not None:
            with contextlib.suppress(Exception):  # already ending
                await self.engine.cancel(activity.id)
            await activity.done.wait()

    def redefine(self, spec: PolicySpec) -> None:
        rt = self.runtimes[spec.name]
        rescheduled = rt.spec.schedule != spec.schedule
        rt.redefine(spec)
        activity = self.activity_of(rt)
        if rescheduled and activity is not None:
            rt.rescheduled = True
            self.engine.wake(activity.id)

    # -- lookups and verbs --------------------------------------------------------------
    def get(self, name: str) -> PolicyRuntime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise UnknownPolicy(name) from None

    def all(self) -> Iterable[PolicyRuntime]:
        return sorted(self.runtimes.values(), key=lambda r: r.name)

    def activity_of(self, rt: PolicyRuntime) -> Activity | None:
        return self.engine.unfinished(rt.activity_id)

    def run_now(self, name: str) -> PolicyRuntime:
        """Start a run at once (or cut a failed run's back-off short). A policy whose
        activity an operator cancelled gets a new one, which runs at once."""
        rt = self.get(name)
        activity = self.activity_of(rt)
        if activity is None:
            rt.last_run_at = None  # due now: the new activity runs at once
            self.launch(rt)
            log.info("snapshot policy started again", policy=name)
            return rt
        if activity.record.state == State.SUSPENDED:
            raise PolicyError(f"snapshot policy {name} is suspended (activity "
                              f"{activity.id}); resume it first")
        self.engine.wake(activity.id)
        return rt

    # -- rendering ----------------------------------------------------------------------
    def to_json(self, rt: PolicyRuntime) -> dict[str, Any]:
        activity = self.activity_of(rt)
        return {**rt.spec.to_json(),
                "state": str(activity.record.state) if activity else "stopped",
                "activity": activity.id if activity else None,
                "runs": rt.runs, "failures": rt.failures, "skipped": rt.skipped,
                "last_run_at": rt.last_run_at, "next_run_at": rt.next_run_at,
                "newest_snapshot": rt.newest[0] if rt.newest else None,
                "snapshots_kept": rt.kept, "last_error": rt.last_error,
                "last_result": rt.last_result.to_json() if rt.last_result else None,
                "relationships": [f.name for f in guard.followers(self.relationships,
                                                                  rt.name)]}
