"""The activity engine with a real SQLite journal and step-controlled work.

The work here is a stand-in driven by the test (each step waits for the test to
allow it), so every control verb is checked at a known point; the same verbs on
real ZFS streams are tested in test_replicate_local.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cerssd.activity import (
    ActivityRecord,
    IllegalTransition,
    LinkHealth,
    Progress,
    State,
    StatusCode,
)
from cerssd.engine import ActivityContext, ActivityEngine, ActivityError, UnknownActivity
from cerssd.journal import SCHEMA_VERSION, Journal, JournalError


class SteppedWork:
    """Does ``steps`` steps; each waits for the test's go-ahead and the activity's gate."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.allowed = asyncio.Semaphore(0)
        self.done_steps = 0
        self.rolled_back = False
        self.fail_at: int | None = None
        self.step_taken = asyncio.Event()

    async def run(self, ctx: ActivityContext) -> None:
        ctx.set_progress(0, self.steps, unit="steps")
        for i in range(self.steps):
            await self.allowed.acquire()
            await ctx.checkpoint()
            if self.fail_at == i:
                raise ActivityError("step failed on purpose", StatusCode.ERROR)
            self.done_steps += 1
            ctx.set_progress(self.done_steps)
            self.step_taken.set()

    async def rollback(self, ctx: ActivityContext) -> None:
        self.rolled_back = True

    def allow(self, steps: int) -> None:
        for _ in range(steps):
            self.allowed.release()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite3")


def engine_with(journal: Journal, work: SteppedWork, kind: str = "stepped") -> ActivityEngine:
    engine = ActivityEngine(journal, retention=3600)
    engine.register(kind, lambda record: work)
    return engine


async def wait_state(engine: ActivityEngine, activity_id: str, state: State) -> None:
    for _ in range(200):
        if engine.get(activity_id).record.state == state:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never reached {state}")


async def test_success_journaled_with_status_zero(journal: Journal) -> None:
    work = SteppedWork(2)
    engine = engine_with(journal, work)
    record = engine.submit("stepped", volume="p/v")
    assert record.state == State.PENDING
    work.allow(2)
    final = await engine.wait(record.id, 5)
    assert final.state == State.SUCCEEDED and final.status is not None
    assert final.status.code == 0
    assert (final.progress.done, final.progress.total) == (2, 2)
    assert next(journal.iterate()).state == State.SUCCEEDED


async def test_suspend_stops_progress_and_resume_continues(journal: Journal) -> None:
    work = SteppedWork(3)
    engine = engine_with(journal, work)
    record = engine.submit("stepped")
    work.allow(1)
    await work.step_taken.wait()
    suspended = await engine.suspend(record.id)
    assert suspended.state == State.SUSPENDED
    assert next(journal.iterate()).state == State.SUSPENDED
    work.allow(2)  # allowed, but the gate is closed
    await asyncio.sleep(0.1)
    assert work.done_steps == 1
    with pytest.raises(IllegalTransition):
        await engine.suspend(record.id)
    resumed = await engine.resume(record.id)
    assert resumed.state == State.RUNNING
    final = await engine.wait(record.id, 5)
    assert final.state == State.SUCCEEDED and work.done_steps == 3


async def test_cancel_rolls_back(journal: Journal) -> None:
    work = SteppedWork(3)
    engine = engine_with(journal, work)
    record = engine.submit("stepped")
    work.allow(1)
    await work.step_taken.wait()
    cancelling = await engine.cancel(record.id)
    assert cancelling.state == State.CANCELLING
    final = await engine.wait(record.id, 5)
    assert final.state == State.CANCELLED and work.rolled_back
    assert final.status is not None and final.status.code == StatusCode.CANCELLED
    with pytest.raises(IllegalTransition):
        await engine.cancel(record.id)
    with pytest.raises(IllegalTransition):
        await engine.resume(record.id)


async def test_cancel_while_suspended(journal: Journal) -> None:
    work = SteppedWork(2)
    engine = engine_with(journal, work)
    record = engine.submit("stepped")
    await wait_state(engine, record.id, State.RUNNING)
    await engine.suspend(record.id)
    await engine.cancel(record.id)
    final = await engine.wait(record.id, 5)
    assert final.state == State.CANCELLED and work.rolled_back and work.done_steps == 0


async def test_cancel_pending_never_runs(journal: Journal) -> None:
    work = SteppedWork(1)
    engine = engine_with(journal, work)
    record = engine.submit("stepped")
    final = await engine.cancel(record.id)
    assert final.state == State.CANCELLED
    await asyncio.sleep(0.05)
    assert work.done_steps == 0 and engine.get(record.id).record.state == State.CANCELLED


async def test_failure_rolls_back_and_reports(journal: Journal) -> None:
    work = SteppedWork(3)
    work.fail_at = 1
    engine = engine_with(journal, work)
    record = engine.submit("stepped")
    work.allow(3)
    final = await engine.wait(record.id, 5)
    assert final.state == State.FAILED and work.rolled_back
    assert final.status is not None and final.status.code == StatusCode.ERROR
    assert final.status.message == "step failed on purpose"


class EndsWhileRetrying:
    """Loses its link, then finds on the next try that there is nothing left to do."""

    async def run(self, ctx: ActivityContext) -> None:
        ctx.link_lost(LinkHealth(server="r1", state="retrying", attempt=1,
                                 last_error="Connection reset"))
        assert ctx.record.state == State.RETRYING

    async def rollback(self, ctx: ActivityContext) -> None:
        raise AssertionError("a success is not rolled back")


async def test_work_that_ends_while_retrying_succeeds_with_its_link_up(
        journal: Journal) -> None:
    engine = ActivityEngine(journal, retention=3600)
    engine.register("quick", lambda record: EndsWhileRetrying())
    record = engine.submit("quick", volume="p/v")
    final = await engine.wait(record.id, 5)
    assert final.state == State.SUCCEEDED
    assert final.link is not None and (final.link.server, final.link.state) == ("r1", "up")
    assert next(journal.iterate()).state == State.SUCCEEDED


class LastStepUngated:
    """Passes its last checkpoint, then finishes a step no gate stops (e.g. a verify)."""

    def __init__(self) -> None:
        self.past_checkpoint = asyncio.Event()
        self.finish = asyncio.Event()

    async def run(self, ctx: ActivityContext) -> None:
        await ctx.checkpoint()
        self.past_checkpoint.set()
        await self.finish.wait()

    async def rollback(self, ctx: ActivityContext) -> None:
        raise AssertionError("a success is not rolled back")


async def test_work_that_ends_while_suspended_succeeds(journal: Journal) -> None:
    work = LastStepUngated()
    engine = ActivityEngine(journal, retention=3600)
    engine.register("last", lambda record: work)
    record = engine.submit("last", volume="p/v")
    await work.past_checkpoint.wait()
    await engine.suspend(record.id)
    work.finish.set()
    final = await engine.wait(record.id, 5)
    assert final.state == State.SUCCEEDED


async def test_unknown_activity(journal: Journal) -> None:
    engine = engine_with(journal, SteppedWork())
    with pytest.raises(UnknownActivity):
        await engine.suspend("0123")


def running_record(activity_id: str, kind: str, self_restarting: bool,
                   state: State = State.RUNNING) -> ActivityRecord:
    return ActivityRecord(id=activity_id, kind=kind, volume="p/v", source="local",
                          target=None, created_at=time.time(), state=state,
                          started_at=time.time(), self_restarting=self_restarting,
                          progress=Progress(1, 3, unit="steps"))


async def test_recovery_restarts_or_fails(journal: Journal) -> None:
    journal.save(running_record("aa01", "stepped", self_restarting=True))
    journal.save(running_record("aa02", "oneshot", self_restarting=False))
    journal.save(running_record("aa03", "stepped", True, State.SUSPENDED))
    work = SteppedWork(1)
    engine = engine_with(journal, work)
    engine.register("oneshot", lambda r: SteppedWork())
    restarted = engine.recover()
    assert {r.id for r in restarted} == {"aa01", "aa03"}
    failed = engine.get("aa02").record
    assert failed.state == State.FAILED and failed.status is not None
    assert failed.status.code == StatusCode.INTERRUPTED
    assert failed.status.message == "interrupted by daemon restart"
    await wait_state(engine, "aa03", State.SUSPENDED)  # still suspended after the restart
    work.allow(2)
    final = await engine.wait("aa01", 5)
    assert final.state == State.SUCCEEDED and final.restarts == 1
    assert engine.get("aa03").record.state == State.SUSPENDED
    await engine.resume("aa03")
    assert (await engine.wait("aa03", 5)).state == State.SUCCEEDED


async def test_shutdown_checkpoints_self_restarting(journal: Journal, tmp_path: Path) -> None:
    work = SteppedWork(3)
    engine = engine_with(journal, work)
    engine.register("oneshot", lambda r: SteppedWork(3))
    keep = engine.submit("stepped", self_restarting=True)
    drop = engine.submit("oneshot")
    await wait_state(engine, keep.id, State.RUNNING)
    await wait_state(engine, drop.id, State.RUNNING)
    await engine.shutdown(5)
    reopened = {r.id: r for r in Journal(tmp_path / "journal.sqlite3").iterate()}
    assert reopened[keep.id].state == State.RUNNING  # picked up by the next start
    assert reopened[drop.id].state == State.CANCELLED
    assert reopened[drop.id].status is not None
    assert reopened[drop.id].status.message == "interrupted by daemon shutdown"


async def test_prune_removes_old_finished(journal: Journal) -> None:
    old = replace(running_record("bb01", "stepped", False), state=State.SUCCEEDED,
                  finished_at=time.time() - 7200)
    fresh = replace(old, id="bb02", finished_at=time.time())
    journal.save(old)
    journal.save(fresh)
    engine = engine_with(journal, SteppedWork())
    engine.recover()
    assert await engine.prune() == 1
    assert [r.id for r in journal.iterate()] == ["bb02"]
    with pytest.raises(UnknownActivity):
        engine.get("bb01")


def test_journal_is_wal_with_schema_version(tmp_path: Path) -> None:
    Journal(tmp_path / "j.sqlite3")
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(tmp_path / "j.sqlite3")


def test_a_release_adds_a_migration_step_and_it_runs_once(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A version-3 journal takes only the steps above 3 (a step run twice would fail:
    ALTER TABLE ADD COLUMN); the package upgrade test does the same with a real N+1."""
    import cerssd.journal as journal_module

    path = tmp_path / "j.sqlite3"
    Journal(path).save(running_record("aa01", "replicate", True))
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 4)
    monkeypatch.setitem(journal_module.MIGRATIONS, 4,
                        "ALTER TABLE relationships ADD COLUMN note TEXT;\n")
    upgraded = Journal(path)
    assert upgraded.get("aa01") is not None
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    assert "note" in [c[1] for c in db.execute("PRAGMA table_info(relationships)")]
    db.close()
    Journal(path)  # at version 4 already: no step runs again


def test_journal_upgrades_a_version_1_file_and_keeps_its_activities(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE activities (id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                     "state TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL, "
                     "record TEXT NOT NULL); PRAGMA user_version=1;")
    db.close()
    journal = Journal(path)
    record = ActivityRecord(id="cc01", kind="x", volume=None, source=None, target=None,
                            created_at=1.0)
    journal.save(record)
    journal.save_relationship_spec("web", {"volume": "tank/web"})
    journal.save_relationship_state("web", {"stopped": True})
    assert journal.load_relationships() == {"web": ({"volume": "tank/web"}, {"stopped": True})}
    journal.delete_relationship("web")
    assert journal.load_relationships() == {}
    assert [r.id for r in journal.iterate()] == ["cc01"]
