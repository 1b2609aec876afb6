"""Durable record of activities in SQLite (WAL), written on creation and every state change.

The journal is the store of activity history: a restarted daemon reads back only what
was still running (to restart what is self-restarting), and the API pages through the
rest with indexed queries. Nothing here loads the whole history: a node running 50
relationships a minute writes ~72,000 records a day.

Writes are small and synchronous: with WAL and ``synchronous=NORMAL`` a commit costs
well under a millisecond, cheaper than a thread hop, and a state change that is not on
disk before it is reported would break the promise the journal exists for. Pruning
deletes many rows, so it runs in a thread on its own connection, in small batches that
never hold the write lock long enough to stall the daemon's own writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .activity import TERMINAL, ActivityRecord, State

SCHEMA_VERSION = 3

#: Milliseconds a connection waits for another one's write before giving up.
BUSY_TIMEOUT_MS = 10_000
#: Rows one prune transaction deletes: a few milliseconds of write lock at a time.
PRUNE_BATCH = 500

_TABLES = """
CREATE TABLE IF NOT EXISTS activities (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    record TEXT NOT NULL
);
-- Relationships made through the API (spec), and what every relationship must remember
-- across restarts (state): stopped or not, each slave's last success and base.
CREATE TABLE IF NOT EXISTS relationships (
    name TEXT PRIMARY KEY,
    spec TEXT,
    state TEXT NOT NULL DEFAULT '{}'
);
"""

# Version 3: the columns the API filters on, each with an index that also orders by
# creation, so a filtered page is an index range scan however long the history is (the
# trailing columns make a count over a combination of filters an index-only scan); and a
# tally by (kind, state) kept by triggers, so counts never scan the history either.
_V3 = """
ALTER TABLE activities ADD COLUMN volume TEXT;
ALTER TABLE activities ADD COLUMN relationship TEXT;
UPDATE activities SET volume = json_extract(record, '$.volume'),
                      relationship = json_extract(record, '$.params.relationship');
CREATE INDEX IF NOT EXISTS activities_created ON activities(created_at);
CREATE INDEX IF NOT EXISTS activities_state ON activities(state, created_at, kind);
CREATE INDEX IF NOT EXISTS activities_kind ON activities(kind, created_at, state);
CREATE INDEX IF NOT EXISTS activities_volume ON activities(volume, created_at, kind, state);
CREATE INDEX IF NOT EXISTS activities_relationship
    ON activities(relationship, created_at, kind, state);
CREATE INDEX IF NOT EXISTS activities_finished ON activities(finished_at);
CREATE TABLE activity_counts (
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (kind, state)
) WITHOUT ROWID;
INSERT INTO activity_counts SELECT kind, state, count(*) FROM activities GROUP BY kind, state;
CREATE TRIGGER activity_counted AFTER INSERT ON activities BEGIN
    INSERT INTO activity_counts VALUES (NEW.kind, NEW.state, 1)
        ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER activity_recounted AFTER UPDATE OF state ON activities
WHEN OLD.state != NEW.state BEGIN
    UPDATE activity_counts SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
    INSERT INTO activity_counts VALUES (NEW.kind, NEW.state, 1)
        ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER activity_uncounted AFTER DELETE ON activities BEGIN
    UPDATE activity_counts SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
END;
ANALYZE;
"""

#: The steps from one schema version to the next: ``MIGRATIONS[v]`` takes a journal at
#: version ``v - 1`` to ``v``. A journal is upgraded by the steps above its version, in
#: order, in one transaction, so a release adds its step here and bumps SCHEMA_VERSION;
#: a journal made before versions were numbered step by step (1 and 2) had the tables
#: of ``_TABLES`` and takes the version 3 step.
MIGRATIONS: dict[int, str] = {3: _V3}

_LIVE = tuple(str(s) for s in State if s not in TERMINAL)


class JournalError(Exception):
    pass


class JournalTooNew(JournalError):
    """The journal was upgraded by a newer cerssd: restarting this one cannot help."""


@dataclass(frozen=True)
class ActivityFilter:
    """The filters ``GET /v1/activities`` offers; ``None`` means any. Times are Unix
    seconds on ``created_at``: ``since`` inclusive, ``until`` exclusive."""

    state: str | None = None
    kind: str | None = None
    volume: str | None = None
    relationship: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def index(self) -> str:
        """The index that serves this filter in creation order. Chosen here, not by the
        planner: without fresh statistics SQLite may take the kind index for a kind and
        volume filter and walk a week of history instead of one volume's."""
        for column in ("relationship", "volume", "state", "kind"):
            if getattr(self, column) is not None:
                return f"activities_{column}"
        return "activities_created"

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column in ("state", "kind", "volume", "relationship"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("created_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("created_at < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    @property
    def only_kind_and_state(self) -> bool:
        """True when a tally by (kind, state) answers how many match."""
        return (self.volume is None and self.relationship is None and self.since is None
                and self.until is None)


def _statements(script: str) -> Iterator[str]:
    """One statement at a time (executescript would commit the migration's transaction
    first): a statement ends at a ``;`` that completes it, so triggers stay whole."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path)
        self._closing = threading.Event()  # ends a prune running in a thread
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalTooNew(
                f"{self.path} has schema version {version}, newer than this cerssd "
                f"understands ({SCHEMA_VERSION}); refusing to touch it (a downgrade: "
                "install the newer cerssd again, or restore the state directory copied "
                "before the upgrade, docs/upgrade.md)")
        if version == SCHEMA_VERSION:
            return
        steps = [MIGRATIONS[v] for v in range(max(version, 2) + 1, SCHEMA_VERSION + 1)]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(_TABLES + "".join(steps)):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- activities -----------------------------------------------------------------
    def save(self, record: ActivityRecord) -> None:
        self._db.execute(
            "INSERT INTO activities(id, kind, state, volume, relationship, created_at, "
            "finished_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET state=excluded.state, finished_at=excluded.finished_at, "
            "record=excluded.record",
            (record.id, record.kind, str(record.state), record.volume,
             record.params.get("relationship"), record.created_at, record.finished_at,
             json.dumps(record.to_json())),
        )

    def get(self, activity_id: str) -> ActivityRecord | None:
        row = self._db.execute("SELECT record FROM activities WHERE id = ?",
                               (activity_id,)).fetchone()
        return ActivityRecord.from_json(json.loads(row[0])) if row else None

    def unfinished(self) -> list[ActivityRecord]:
        """What was not terminal when the daemon stopped: bounded by what ran at once."""
        marks = ", ".join("?" * len(_LIVE))
        rows = self._db.execute(
            f"SELECT record FROM activities WHERE state IN ({marks}) "
            "ORDER BY created_at", _LIVE)
        return [ActivityRecord.from_json(json.loads(row[0])) for row in rows]

    def page(self, where: ActivityFilter, limit: int, offset: int = 0) -> list[ActivityRecord]:
        """Newest first, ``limit`` records from ``offset``."""
        return [ActivityRecord.from_json(json.loads(text))
                for _, text in self.page_json(where, limit, offset)]

    def page_json(self, where: ActivityFilter, limit: int,
                  offset: int = 0) -> list[tuple[str, str]]:
        """Like ``page``, as (id, the record's stored JSON): a listing can pass the text
        on as it is instead of parsing and writing it again."""
        clause, args = where.where()
        rows = self._db.execute(
            f"SELECT id, record FROM activities INDEXED BY {where.index}{clause} "
            "ORDER BY created_at DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return rows.fetchall()

    def count(self, where: ActivityFilter) -> int:
        if where.only_kind_and_state:  # from the tally: no scan of a long history
            return sum(n for (kind, state), n in self.tally().items()
                       if where.kind in (None, kind) and where.state in (None, state))
        clause, args = where.where()
        (n,) = self._db.execute(
            f"SELECT count(*) FROM activities INDEXED BY {where.index}{clause}",
            args).fetchone()
        return int(n)

    def iterate(self) -> Iterator[ActivityRecord]:
        """Every record, oldest first, one at a time (tests and offline tools)."""
        for (record,) in self._db.execute("SELECT record FROM activities ORDER BY created_at"):
            yield ActivityRecord.from_json(json.loads(record))

    def tally(self) -> Counter[tuple[str, str]]:
        """How many activities the journal holds, by (kind, state): a small table the
        triggers keep current, so this never scans the history."""
        rows = self._db.execute("SELECT kind, state, n FROM activity_counts WHERE n > 0")
        return Counter({(kind, state): n for kind, state, n in rows})

    def prune(self, finished_before: float, *, pause: float = 0.002) -> Counter[tuple[str, str]]:
        """Delete finished records older than ``finished_before`` in small transactions on
        a connection of its own (call it in a thread). Returns what went, by (kind, state)."""
        gone: Counter[tuple[str, str]] = Counter()
        db = _connect(self.path)
        try:
            while not self._closing.is_set():
                rows = db.execute(
                    "SELECT rowid, kind, state FROM activities WHERE finished_at < ? "
                    "LIMIT ?", (finished_before, PRUNE_BATCH)).fetchall()
                if not rows:
                    return gone
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM activities WHERE rowid = ?",
                               [(rowid,) for rowid, _, _ in rows])
                db.execute("COMMIT")
                gone.update((kind, state) for _, kind, state in rows)
                time.sleep(pause)  # let the daemon's own writes in between batches
            return gone
        finally:
            if gone:
                db.execute("PRAGMA optimize")
            db.close()

    # -- relationships --------------------------------------------------------------
    def save_relationship_spec(self, name: str, spec: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO relationships(name, spec) VALUES (?, ?) ON CONFLICT(name) DO "
            "UPDATE SET spec=excluded.spec", (name, json.dumps(spec)))

    def save_relationship_state(self, name: str, state: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO relationships(name, state) VALUES (?, ?) ON CONFLICT(name) DO "
            "UPDATE SET state=excluded.state", (name, json.dumps(state)))

    def delete_relationship(self, name: str) -> None:
        self._db.execute("DELETE FROM relationships WHERE name = ?", (name,))

    def load_relationships(self) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any]]]:
        """name -> (spec of an API-made relationship or None, remembered state)."""
        rows = self._db.execute("SELECT name, spec, state FROM relationships")
        return {name: (json.loads(spec) if spec else None, json.loads(state or "{}"))
                for name, spec, state in rows}

    def close(self) -> None:
        self._closing.set()
        self._db.close()
