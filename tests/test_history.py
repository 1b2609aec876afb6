"""Activity history lives in the journal, not in memory (issue 13, item 1).

A real engine and a real SQLite journal: finished activities leave memory and are read
back from the journal by id and by filtered, paged queries; counts come from a tally the
journal's triggers keep, never from a scan; pruning runs in batches in a thread; a
version-2 journal is upgraded in place with its history intact.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cerssd.activity import ActivityRecord, Progress, State, Status
from cerssd.engine import RECENT_FINISHED, ActivityContext, ActivityEngine, UnknownActivity
from cerssd.journal import PRUNE_BATCH, SCHEMA_VERSION, ActivityFilter, Journal
from tests.conftest import REPO, wait_until


class Quick:
    """Work that ends at once."""

    async def run(self, ctx: ActivityContext) -> None:
        ctx.set_progress(1, 1, unit="steps")

    async def rollback(self, ctx: ActivityContext) -> None:
        pass


class Held:
    """Work that runs until the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, ctx: ActivityContext) -> None:
        ctx.set_progress(7, 10, unit="steps")
        await self.release.wait()

    async def rollback(self, ctx: ActivityContext) -> None:
        pass


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[ActivityEngine]:
    engine = ActivityEngine(Journal(tmp_path / "journal.sqlite3"), retention=3600)
    engine.register("quick", lambda r: Quick())
    yield engine
    await engine.shutdown(5)


def finished(activity_id: str, *, kind: str = "replicate", relationship: str = "web",
             created_at: float, state: State = State.SUCCEEDED) -> ActivityRecord:
    return ActivityRecord(
        id=activity_id, kind=kind, volume=f"tank/{relationship}", source="local",
        target="standby", created_at=created_at, state=state, started_at=created_at,
        finished_at=created_at + 5, status=Status(0, "succeeded"),
        params={"relationship": relationship}, progress=Progress(10, 10))


async def test_finished_activities_leave_memory_and_read_back_from_the_journal(
        engine: ActivityEngine) -> None:
    ids = []
    for _ in range(RECENT_FINISHED + 44):
        record = engine.submit("quick", volume="tank/a")
        ids.append(record.id)
        await engine.wait(record.id, 5)
    assert engine.activities() == []  # nothing live: history is not held
    assert len(engine._recent) == RECENT_FINISHED  # the last few, bounded
    oldest = engine.get(ids[0])  # long gone from memory: read back from the journal
    assert oldest.record.state == State.SUCCEEDED and oldest.record.progress.done == 1
    assert (await engine.wait(ids[0], 1)).id == ids[0]  # a waiter returns at once
    with pytest.raises(UnknownActivity):
        engine.get("0000000000000000")
    assert engine.counts() == {("quick", "succeeded"): RECENT_FINISHED + 44}


async def test_pages_filter_in_the_journal_and_show_live_ones_as_they_are(
        engine: ActivityEngine) -> None:
    journal = engine.journal
    now = time.time()
    for i in range(30):
        journal.save(finished(f"old{i:02d}", relationship=("web", "db")[i % 2],
                              created_at=now - 3000 + i))
    journal.save(finished("fail0", relationship="other", state=State.FAILED,
                          created_at=now - 100))
    held = Held()
    engine.register("held", lambda r: held)
    live = engine.submit("held", volume="tank/web", params={"relationship": "web"})
    for _ in range(100):
        if engine.get(live.id).record.progress.done == 7:
            break
        await asyncio.sleep(0.01)
    web = engine.page(ActivityFilter(relationship="web"), limit=5)
    assert web[0].id == live.id and web[0].progress.done == 7  # the live record, not stale
    assert [r.id for r in web[1:]] == ["old28", "old26", "old24", "old22"]  # newest first
    assert engine.count(ActivityFilter(relationship="web")) == 16
    assert [r.id for r in engine.page(ActivityFilter(relationship="db"), 2, offset=14)] \
        == ["old01"]
    assert [r.id for r in engine.page(ActivityFilter(state="failed"), 10)] == ["fail0"]
    assert engine.count(ActivityFilter(kind="replicate", state="succeeded")) == 30
    assert engine.count(ActivityFilter(volume="tank/db", kind="replicate")) == 15
    window = ActivityFilter(since=int(now - 3000 + 10), until=int(now - 3000 + 20))
    assert [r.id for r in engine.page(window, 100)] == [f"old{i:02d}" for i in range(19, 9, -1)]
    assert engine.count(window) == 10
    held.release.set()
    await engine.wait(live.id, 5)
    assert engine.count(ActivityFilter(kind="held", state="succeeded")) == 1


async def test_counts_follow_every_change_without_a_scan(engine: ActivityEngine) -> None:
    held = Held()
    engine.register("held", lambda r: held)
    record = engine.submit("held")
    assert engine.counts()[("held", "pending")] == 1
    for _ in range(100):
        if engine.get(record.id).record.state == State.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert engine.counts()[("held", "running")] == 1
    assert ("held", "pending") not in engine.counts()
    await engine.suspend(record.id)
    assert engine.counts()[("held", "suspended")] == 1
    await engine.cancel(record.id)
    await engine.wait(record.id, 5)
    assert engine.counts() == {("held", "cancelled"): 1}


async def test_prune_runs_in_batches_and_keeps_the_rest(engine: ActivityEngine) -> None:
    journal = engine.journal
    now = time.time()
    old = 2 * PRUNE_BATCH + 37
    for i in range(old):
        journal.save(finished(f"o{i:05d}", created_at=now - 7200 - i))
    journal.save(finished("fresh", created_at=now - 10))
    quick = engine.submit("quick")
    await engine.wait(quick.id, 5)
    assert await engine.prune() == old
    assert engine.counts() == {("replicate", "succeeded"): 1, ("quick", "succeeded"): 1}
    assert engine.get("fresh").record.state == State.SUCCEEDED
    assert engine.get(quick.id).record.state == State.SUCCEEDED
    with pytest.raises(UnknownActivity):
        engine.get("o00000")


async def test_recovery_reads_only_what_was_running(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    now = time.time()
    for i in range(50):
        journal.save(finished(f"h{i:02d}", created_at=now - 500 + i))
    running = replace(finished("run1", created_at=now), state=State.RUNNING,
                      finished_at=None, status=None)
    journal.save(running)
    assert [r.id for r in journal.unfinished()] == ["run1"]
    engine = ActivityEngine(journal)
    engine.register("replicate", lambda r: Quick())
    engine.recover()  # not self-restarting: failed as interrupted, nothing else loaded
    assert engine.activities() == []
    assert engine.get("run1").record.state == State.FAILED
    assert engine.counts() == {("replicate", "succeeded"): 50, ("replicate", "failed"): 1}


def test_a_version_2_journal_is_upgraded_with_its_history(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE activities (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT "
        "NULL, created_at REAL NOT NULL, finished_at REAL, record TEXT NOT NULL);"
        "CREATE INDEX activities_finished ON activities(finished_at);"
        "CREATE TABLE relationships (name TEXT PRIMARY KEY, spec TEXT, state TEXT NOT NULL "
        "DEFAULT '{}'); PRAGMA user_version=2;")
    for i in range(5):
        r = finished(f"v2r{i}", relationship="web", created_at=1000.0 + i)
        db.execute("INSERT INTO activities VALUES (?, ?, ?, ?, ?, ?)",
                   (r.id, r.kind, str(r.state), r.created_at, r.finished_at,
                    json.dumps(r.to_json())))
    db.execute("INSERT INTO relationships(name, spec) VALUES ('web', '{}')")
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.count(ActivityFilter(relationship="web", volume="tank/web")) == 5
    assert journal.tally() == {("replicate", "succeeded"): 5}
    assert [r.id for r in journal.page(ActivityFilter(relationship="web"), 2)] \
        == ["v2r4", "v2r3"]
    assert journal.load_relationships() == {"web": ({}, {})}
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    plan = " ".join(str(row) for row in db.execute(
        "EXPLAIN QUERY PLAN SELECT record FROM activities WHERE relationship = 'web' "
        "ORDER BY created_at DESC LIMIT 100"))
    assert "activities_relationship" in plan and "TEMP B-TREE" not in plan  # no sort


def test_a_daemon_over_a_long_history_pages_it_and_counts_it(start_daemon: Any,
                                                             tmp_path: Path) -> None:
    """A real daemon started on a journal of 20,000 finished activities: it lists them a
    page at a time (the newest first, every filter), counts them in /v1/status and the
    metrics, and prunes the ones past its retention in the background."""
    state = tmp_path / "state"
    journal = Journal(state / "journal.sqlite3")
    now = time.time()
    for i in range(20_000):
        rel = f"r{i % 50:02d}"
        journal.save(finished(f"x{i:06d}", relationship=rel, created_at=now - 20_000 + i))
    for i in range(300):  # past a 1-day retention: pruned after the start
        journal.save(finished(f"dead{i:04x}", created_at=now - 3 * 86400 - i))
    journal.close()
    d = start_daemon(state_dir=state, daemon_extra='activity_retention = "1d"')
    wait_until(lambda: d.api("GET", "/v1/activities?limit=1")["total"] == 20_000, 60,
               what="the old history to be pruned")
    page = d.api("GET", "/v1/activities?relationship=r07&limit=3")
    assert page["total"] == 400
    assert [a["id"] for a in page["items"]] == ["x019957", "x019907", "x019857"]
    window = d.api("GET", f"/v1/activities?since={int(now - 20_000 + 100)}"
                   f"&until={int(now - 20_000 + 110)}&limit=1000")
    assert window["total"] == len(window["items"]) in (10, 11)  # whole seconds
    assert d.api("GET", "/v1/status")["activities"] == {"succeeded": 20_000}
    metrics = d.api("GET", "/metrics")
    assert 'cerssd_activities{kind="replicate",state="succeeded"} 20000.0' in metrics
    with pytest.raises(Exception, match="Unknown Activity"):
        d.api("GET", "/v1/activities/dead0000")


def test_a_stopped_daemon_exits_even_if_a_thread_hangs(tmp_path: Path) -> None:
    """``exit_by``: a thread that never ends (blocked on a pipe, say) cannot keep a
    stopped daemon's process alive past the deadline."""
    script = ("import threading, time\n"
              "from cerssd.daemon import exit_by\n"
              "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
              "exit_by(0.5)\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert time.monotonic() - start < 30
    assert "threads still running after shutdown; exiting anyway" in result.stdout


def test_settling_the_heap_keeps_start_up_objects_out_of_full_collections(
        tmp_path: Path) -> None:
    """``heap.settle`` (run at ready and after a reload): a full collection afterwards
    walks only what was made since, not the daemon's modules and models (a 90-280 ms
    pause on the event loop every 30-40 s before: the listing's p99); and a cycle that
    was alive at one settle and dropped later is still collected by the next one."""
    script = ("import gc, json, weakref\n"
              "import cerssd.daemon\n"
              "from cerssd.heap import settle\n"
              "class Node: pass\n"
              "a, b = Node(), Node()\n"
              "a.other, b.other = b, a\n"
              "gone = []\n"
              "watch = weakref.ref(a, lambda _: gone.append(1))\n"
              "before = len(gc.get_objects())\n"
              "settle()\n"
              "walked = len(gc.get_objects())\n"
              "frozen = gc.get_freeze_count()\n"
              "del a, b\n"
              "gc.collect()\n"
              "kept_by_freeze = not gone\n"
              "settle()\n"
              "print(json.dumps({'before': before, 'walked': walked, 'frozen': frozen,\n"
              "                  'kept_by_freeze': kept_by_freeze, 'collected': bool(gone)}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=REPO, check=True)
    facts = json.loads(result.stdout)
    assert facts["before"] > 50_000  # the daemon's imports alone
    assert facts["frozen"] >= facts["before"] // 2
    assert facts["walked"] < 1_000  # what a collection visits right after: next to nothing
    assert facts["kept_by_freeze"]  # frozen: an ordinary collection leaves it alone ...
    assert facts["collected"]  # ... the next settle (a reload) collects it
