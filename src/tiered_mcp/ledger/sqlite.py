"""The SQLite ledger (the default backend): one row per call and per attempt, and usage totals over them.

WAL mode with a busy timeout, so several server processes can write one file at once. Writes run in a worker
thread so the event loop never waits on the disk. Arguments and outputs are stored only when asked to. The queries
are shared with the PostgreSQL backend (storage.py); this module holds the SQLite schema and connection.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ShadowRow, UsageRow, GROUPS and now_iso are imported from here by older code; they live in storage.py.
from tiered_mcp.core.files import private_dir, private_file
from tiered_mcp.ledger.base import GROUPS, LedgerStore, ShadowRow, SqlLedger, UsageRow, now_iso

__all__ = ["GROUPS", "Ledger", "LedgerStore", "ShadowRow", "UsageRow", "now_iso"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    tool TEXT NOT NULL,
    tier TEXT,
    model TEXT,
    ok INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    flagship_cost_usd REAL,
    latency_ms REAL NOT NULL,
    arguments TEXT,
    output TEXT,
    kind TEXT NOT NULL DEFAULT 'call',
    session TEXT,
    batch TEXT,
    cached INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE TABLE IF NOT EXISTS attempts (
    call_id INTEGER NOT NULL REFERENCES calls (id),
    n INTEGER NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    trigger TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    latency_ms REAL NOT NULL,
    PRIMARY KEY (call_id, n)
);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    expires REAL NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    output TEXT NOT NULL
);
-- Each cache write deletes expired entries: without this index that scans the whole cache on every call.
CREATE INDEX IF NOT EXISTS cache_expires ON cache (expires);
CREATE TABLE IF NOT EXISTS shadows (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    tool TEXT NOT NULL,
    call_id INTEGER,
    shadow_call_id INTEGER,
    tier TEXT NOT NULL,
    comparison_tier TEXT NOT NULL,
    score REAL,
    agree INTEGER,
    detail TEXT NOT NULL,
    cost_usd REAL,
    comparison_cost_usd REAL
);
"""

# Columns added after the first release of the calls table: (name, definition) for ALTER TABLE ADD COLUMN.
_ADDED_COLUMNS = [("kind", "TEXT NOT NULL DEFAULT 'call'"), ("session", "TEXT"), ("batch", "TEXT"),
                  ("cached", "INTEGER NOT NULL DEFAULT 0")]


class Ledger(SqlLedger):
    """A ledger file. Safe to share between tasks, threads and processes.

    Args:
        path: the SQLite file; its folder is created if missing.
        store_inputs: keep each call's arguments and output.
    """

    def __init__(self, path: str | Path, store_inputs: bool = False) -> None:
        self.path = Path(path)
        self.store_inputs = store_inputs
        self.location = str(self.path)
        private_file(private_dir(self.path.parent) / self.path.name)  # 0700 folder, 0600 file (SQLite's -wal too)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._setup()

    def _setup(self) -> None:
        # Switching a new file to WAL takes an exclusive lock that SQLite's busy handler does not wait for, so
        # several processes opening one new ledger at once can see "database is locked": wait and try again.
        delay = 0.01
        for _ in range(60):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                have = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
                for name, ddl in _ADDED_COLUMNS:
                    if name not in have:
                        self._db.execute(f"ALTER TABLE calls ADD COLUMN {name} {ddl}")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise sqlite3.OperationalError(f"ledger {self.path} stayed locked while opening it")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- the backend hooks of SqlLedger (one connection, one writer at a time) ---------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _insert_call(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, params)
        return int(cur.lastrowid or 0)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, params)
