"""The SQLite ledger: one row per call and per attempt, and usage totals over them.

WAL mode with a busy timeout, so several server processes can write one file at once. Writes run in a worker
thread so the event loop never waits on the disk. Arguments and outputs are stored only when asked to.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio

from .config import Config
from .receipts import Receipt

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
    output TEXT
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
"""

GROUPS = ("tool", "tier", "model")


@dataclass(frozen=True)
class UsageRow:
    """Totals for one group (a tool, tier or model; "all" for the grand total)."""

    key: str
    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    flagship_cost_usd: float
    unpriced_calls: int

    @property
    def saved_usd(self) -> float:
        return self.flagship_cost_usd - self.cost_usd


class Ledger:
    """A ledger file. Safe to share between tasks, threads and processes.

    Args:
        path: the SQLite file; its folder is created if missing.
        store_inputs: keep each call's arguments and output.
    """

    def __init__(self, path: str | Path, store_inputs: bool = False) -> None:
        self.path = Path(path)
        self.store_inputs = store_inputs
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int:
        """Write a call and its attempts in one transaction; returns the call's id."""
        keep = self.store_inputs
        row = (
            datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            receipt.tool, receipt.tier, receipt.model, int(receipt.ok), receipt.error, len(receipt.attempts),
            receipt.input_tokens, receipt.output_tokens, receipt.cost_usd, receipt.flagship_cost_usd(config),
            receipt.latency_ms,
            json.dumps(arguments, ensure_ascii=False) if keep and arguments is not None else None,
            json.dumps(output, ensure_ascii=False) if keep and output is not None else None,
        )
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO calls (ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens,"
                    " cost_usd, flagship_cost_usd, latency_ms, arguments, output)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                call_id = int(cur.lastrowid or 0)
                cur.executemany(
                    "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (call_id, n, a.tier, a.model, a.reason, a.trigger, a.outcome, a.detail, a.input_tokens,
                         a.output_tokens, a.cost_usd, a.latency_ms)
                        for n, a in enumerate(receipt.attempts, 1)
                    ],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return call_id

    async def arecord(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int:
        """`record` in a worker thread."""
        return await anyio.to_thread.run_sync(self.record, receipt, config, arguments, output)

    def usage(self, since: str | None = None, by: str = "tool") -> tuple[list[UsageRow], UsageRow]:
        """Totals per group and overall.

        Args:
            since: an ISO date or timestamp (UTC); only calls at or after it count.
            by: "tool", "tier" or "model".
        """
        if by not in GROUPS:
            raise ValueError(f"by must be one of {', '.join(GROUPS)}")
        where, params = ("WHERE ts >= ?", (since,)) if since else ("", ())
        cols = ("count(*), coalesce(sum(1 - ok), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
                " coalesce(sum(cost_usd), 0), coalesce(sum(flagship_cost_usd), 0),"
                " coalesce(sum(cost_usd IS NULL OR flagship_cost_usd IS NULL), 0)")
        with self._lock:
            groups = self._db.execute(
                f"SELECT coalesce({by}, '-'), {cols} FROM calls {where} GROUP BY 1 ORDER BY 6 DESC, 1", params
            ).fetchall()
            total = self._db.execute(f"SELECT 'all', {cols} FROM calls {where}", params).fetchone()
        return [UsageRow(*g) for g in groups], UsageRow(*total)

    def calls(self) -> list[dict[str, Any]]:
        """Every call row, oldest first (for tests and exports)."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM calls ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def attempts(self, call_id: int) -> list[dict[str, Any]]:
        """The attempt rows of one call, in order."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM attempts WHERE call_id = ? ORDER BY n", (call_id,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
