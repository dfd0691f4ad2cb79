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

GROUPS = ("tool", "tier", "model")


def now_iso() -> str:
    """Now, UTC, as stored in the ledger (ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ShadowRow:
    """One shadow comparison: the bound tier's answer scored against the comparison tier's."""

    tool: str
    call_id: int | None
    shadow_call_id: int | None
    tier: str
    comparison_tier: str
    score: float | None
    agree: bool | None
    detail: str
    cost_usd: float | None
    comparison_cost_usd: float | None


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

    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int:
        """Write a call and its attempts in one transaction; returns the call's id."""
        return self.record_many([(receipt, arguments, output)], config)[0]

    def record_many(self, entries: list[tuple[Receipt, Any, Any]], config: Config) -> list[int]:
        """Write several calls (receipt, arguments, output) and their attempts in one transaction; their ids."""
        keep = self.store_inputs
        ids = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for receipt, arguments, output in entries:
                    cur.execute(
                        "INSERT INTO calls (ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens,"
                        " cost_usd, flagship_cost_usd, latency_ms, arguments, output, kind, session, batch, cached)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (now_iso(), receipt.tool, receipt.tier, receipt.model, int(receipt.ok), receipt.error,
                         len(receipt.attempts), receipt.input_tokens, receipt.output_tokens, receipt.cost_usd,
                         receipt.flagship_cost_usd(config), receipt.latency_ms,
                         json.dumps(arguments, ensure_ascii=False) if keep and arguments is not None else None,
                         json.dumps(output, ensure_ascii=False) if keep and output is not None else None,
                         receipt.kind, receipt.session, receipt.batch, int(receipt.cached)),
                    )
                    call_id = int(cur.lastrowid or 0)
                    cur.executemany(
                        "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(call_id, n, a.tier, a.model, a.reason, a.trigger, a.outcome, a.detail, a.input_tokens,
                          a.output_tokens, a.cost_usd, a.latency_ms) for n, a in enumerate(receipt.attempts, 1)],
                    )
                    ids.append(call_id)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return ids

    async def arecord(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int:
        """`record` in a worker thread."""
        return await anyio.to_thread.run_sync(self.record, receipt, config, arguments, output)

    async def arecord_many(self, entries: list[tuple[Receipt, Any, Any]], config: Config) -> list[int]:
        """`record_many` in a worker thread."""
        return await anyio.to_thread.run_sync(self.record_many, entries, config)

    def usage(self, since: str | None = None, by: str = "tool") -> tuple[list[UsageRow], UsageRow]:
        """Totals per group and overall.

        Args:
            since: an ISO date or timestamp (UTC); only calls at or after it count.
            by: "tool", "tier" or "model".
        """
        if by not in GROUPS:
            raise ValueError(f"by must be one of {', '.join(GROUPS)}")
        where, params = ("WHERE ts >= ?", (since,)) if since else ("", ())
        # Shadow and eval calls are spend too, but not calls a host made: they get their own rows.
        key = f"coalesce({by}, '-') || CASE kind WHEN 'call' THEN '' ELSE ' (' || kind || ')' END"
        cols = ("count(*), coalesce(sum(1 - ok), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
                " coalesce(sum(cost_usd), 0), coalesce(sum(flagship_cost_usd), 0),"
                " coalesce(sum(cost_usd IS NULL OR flagship_cost_usd IS NULL), 0)")
        with self._lock:
            groups = self._db.execute(
                f"SELECT {key}, {cols} FROM calls {where} GROUP BY 1 ORDER BY 6 DESC, 1", params
            ).fetchall()
            total = self._db.execute(f"SELECT 'all', {cols} FROM calls {where}", params).fetchone()
        return [UsageRow(*g) for g in groups], UsageRow(*total)

    def spent(self, since: str, tool: str | None = None, session: str | None = None) -> float:
        """USD spent (known costs) since an ISO timestamp, optionally for one tool or one server session."""
        sql, params = "SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE ts >= ?", [since]
        if tool is not None:
            sql, params = sql + " AND tool = ?", [*params, tool]
        if session is not None:
            sql, params = sql + " AND session = ?", [*params, session]
        with self._lock:
            return float(self._db.execute(sql, params).fetchone()[0])

    # ---- cache -------------------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> tuple[dict[str, Any], str, str] | None:
        """A stored output that has not expired: (output, tier, model)."""
        with self._lock:
            row = self._db.execute("SELECT output, tier, model FROM cache WHERE key = ? AND expires > ?",
                                   (key, time.time())).fetchone()
        return (json.loads(row[0]), row[1], row[2]) if row else None

    def cache_put(self, key: str, output: dict[str, Any], tier: str, model: str, ttl_s: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?)",
                             (key, time.time() + ttl_s, tier, model, json.dumps(output, ensure_ascii=False)))
            # Expired entries go as new ones come, so the table cannot grow without bound.
            self._db.execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))

    # ---- shadow comparisons ------------------------------------------------------------------------------------

    def shadow_record(self, row: ShadowRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO shadows (ts, tool, call_id, shadow_call_id, tier, comparison_tier, score, agree, detail,"
                " cost_usd, comparison_cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now_iso(), row.tool, row.call_id, row.shadow_call_id, row.tier, row.comparison_tier, row.score,
                 None if row.agree is None else int(row.agree), row.detail, row.cost_usd, row.comparison_cost_usd),
            )

    def shadows(self, since: str | None = None) -> list[ShadowRow]:
        where, params = ("WHERE ts >= ?", (since,)) if since else ("", ())
        with self._lock:
            rows = self._db.execute(
                "SELECT tool, call_id, shadow_call_id, tier, comparison_tier, score, agree, detail, cost_usd,"
                f" comparison_cost_usd FROM shadows {where} ORDER BY id", params).fetchall()
        return [ShadowRow(*r[:6], None if r[6] is None else bool(r[6]), *r[7:]) for r in rows]

    def call_counts(self, since: str | None = None) -> dict[str, int]:
        """Calls hosts made (not shadow or eval runs), per tool."""
        where, params = ("AND ts >= ?", (since,)) if since else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT tool, count(*) FROM calls WHERE kind = 'call' {where} GROUP BY tool",
                                    params).fetchall()
        return dict(rows)

    def stored_calls(self, tool: str | None = None, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """(tool, arguments) of successful calls whose arguments were stored (store_inputs), newest first."""
        sql = "SELECT tool, arguments FROM calls WHERE kind = 'call' AND ok = 1 AND arguments IS NOT NULL"
        params: list[Any] = []
        if tool:
            sql, params = sql + " AND tool = ?", [tool]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
        return [(t, json.loads(a)) for t, a in rows]

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
