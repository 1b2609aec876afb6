"""Durable record of activities in SQLite (WAL), written on creation and every state change.

A restarted daemon reads it back to list what ran and to restart what is
self-restarting. Writes are small and synchronous: with WAL and
``synchronous=NORMAL`` a commit costs well under a millisecond, cheaper than a
thread hop, and a state change that is not on disk before it is reported would
break the promise the journal exists for.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from .activity import ActivityRecord

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS activities (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS activities_finished ON activities(finished_at);
-- Relationships made through the API (spec), and what every relationship must remember
-- across restarts (state): stopped or not, each slave's last success and base.
CREATE TABLE IF NOT EXISTS relationships (
    name TEXT PRIMARY KEY,
    spec TEXT,
    state TEXT NOT NULL DEFAULT '{}'
);
"""


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} has schema version {version}, newer than this cerssd "
                f"understands ({SCHEMA_VERSION}); refusing to touch it")
        if version < SCHEMA_VERSION:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def save(self, record: ActivityRecord) -> None:
        self._db.execute(
            "INSERT INTO activities(id, kind, state, created_at, finished_at, record) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "state=excluded.state, finished_at=excluded.finished_at, record=excluded.record",
            (record.id, record.kind, str(record.state), record.created_at,
             record.finished_at, json.dumps(record.to_json())),
        )

    def load(self) -> list[ActivityRecord]:
        rows = self._db.execute("SELECT record FROM activities ORDER BY created_at")
        return [ActivityRecord.from_json(json.loads(row[0])) for row in rows]

    def prune(self, finished_before: float) -> int:
        cur = self._db.execute(
            "DELETE FROM activities WHERE finished_at IS NOT NULL AND finished_at < ?",
            (finished_before,))
        return cur.rowcount

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
        self._db.close()
