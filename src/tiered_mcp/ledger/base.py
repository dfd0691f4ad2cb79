"""Where the ledger lives: the storage interface, the SQL both backends share, and `open_ledger`.

Two backends implement `LedgerStore`: `ledger.Ledger`, a SQLite file (the default), and
`ledger_postgres.PostgresLedger`, a PostgreSQL database that several server replicas share (the `postgres` extra).
`open_ledger` picks one from the target: a `postgresql://` URL, else a file path.

The queries are written once, here, in SQL both databases speak; a backend supplies the connection, the
placeholder style and the few statements that differ (schema, getting a new row's id). Timestamps are ISO 8601 UTC
text (`now_iso`), so `--since DATE` and budgets per UTC day compare strings the same way on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio

from tiered_mcp.core.config import is_postgres_url

if TYPE_CHECKING:
    from tiered_mcp.core.config import Config
    from tiered_mcp.core.receipts import Receipt

GROUPS = ("tool", "tier", "model")
POSTGRES_EXTRA_HINT = "pip install 'tiered-mcp[postgres]'"


def now_iso() -> str:
    """Now, UTC, as stored in the ledger (ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def mask_dsn(target: str | Path) -> str:
    """The target fit to print or log: a URL's password (in the netloc or a `password` parameter) becomes ***."""
    text = str(target)
    if not is_postgres_url(text):
        return text
    url = urlsplit(text)
    netloc = url.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if has_password else netloc
    query = urlencode([(k, "***" if "password" in k.lower() else v) for k, v in parse_qsl(url.query)],
                      safe="*", quote_via=quote)
    return urlunsplit(url._replace(netloc=netloc, query=query))


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


class LedgerStore(Protocol):
    """What the runner, budgets, batches, shadow runs, reports and the CLI use of a ledger. Safe to share between
    tasks and threads; the sync methods are short queries, the `a` ones run in a worker thread."""

    store_inputs: bool
    location: str  # where it lives, fit to print (a URL's password masked)

    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int: ...
    def record_many(self, entries: list[tuple[Receipt, Any, Any]], config: Config) -> list[int]: ...
    async def arecord(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int: ...
    async def arecord_many(self, entries: list[tuple[Receipt, Any, Any]], config: Config) -> list[int]: ...
    def usage(self, since: str | None = None, by: str = "tool") -> tuple[list[UsageRow], UsageRow]: ...
    def spent(self, since: str, tool: str | None = None, session: str | None = None) -> float: ...
    def cache_get(self, key: str) -> tuple[dict[str, Any], str, str] | None: ...
    def cache_put(self, key: str, output: dict[str, Any], tier: str, model: str, ttl_s: float) -> None: ...
    def shadow_record(self, row: ShadowRow) -> None: ...
    def shadows(self, since: str | None = None) -> list[ShadowRow]: ...
    def call_counts(self, since: str | None = None) -> dict[str, int]: ...
    def stored_calls(self, tool: str | None = None, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]: ...
    def calls(self) -> list[dict[str, Any]]: ...
    def attempts(self, call_id: int) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...
    def recent_calls(self, limit: int = 20, tool: str | None = None, outcome: str | None = None,
                     since: str | None = None) -> list[dict[str, Any]]: ...
    def call_detail(self, call_id: int) -> dict[str, Any] | None: ...


def open_ledger(target: str | Path, store_inputs: bool = False) -> LedgerStore:
    """The ledger at `target`: a `postgresql://` URL (shared by replicas), else a SQLite file path.

    Raises:
        ConfigError: a PostgreSQL URL without the `postgres` extra installed, or a database that cannot be reached
            or set up (the message never carries the URL's password).
    """
    if is_postgres_url(target):
        from tiered_mcp.ledger.postgres import PostgresLedger

        return PostgresLedger(str(target), store_inputs=store_inputs)
    from tiered_mcp.ledger.sqlite import Ledger

    return Ledger(target, store_inputs=store_inputs)


class Cursor(Protocol):
    """The part of a DB-API cursor the shared queries use (placeholders are `?`; a backend translates)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...


_CALL_COLUMNS = ("ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens, cost_usd, flagship_cost_usd,"
                 " latency_ms, arguments, output, kind, session, batch, cached")
_ATTEMPT_COLUMNS = ("call_id, n, tier, model, reason, trigger, outcome, detail, input_tokens, output_tokens, cost_usd,"
                    " latency_ms")


def _marks(columns: str) -> str:
    return ", ".join("?" for _ in columns.split(","))


class SqlLedger:
    """The ledger's queries, shared by the SQLite and PostgreSQL backends.

    A backend implements `_transaction` (a cursor inside one transaction), `_rows` (a read query's rows),
    `_dicts` (its rows as dicts), `_execute` (one statement, committed) and `_insert_call` (insert, return the id).
    """

    store_inputs: bool
    location: str

    # ---- what a backend supplies -----------------------------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def _insert_call(self, cur: Cursor, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- calls -----------------------------------------------------------------------------------------------------

    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> int:
        """Write a call and its attempts in one transaction; returns the call's id."""
        return self.record_many([(receipt, arguments, output)], config)[0]

    def record_many(self, entries: list[tuple[Receipt, Any, Any]], config: Config) -> list[int]:
        """Write several calls (receipt, arguments, output) and their attempts in one transaction; their ids."""
        keep = self.store_inputs
        ids = []
        with self._transaction() as cur:
            for receipt, arguments, output in entries:
                call_id = self._insert_call(
                    cur, f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES ({_marks(_CALL_COLUMNS)})",
                    (now_iso(), receipt.tool, receipt.tier, receipt.model, int(receipt.ok), receipt.error,
                     len(receipt.attempts), receipt.input_tokens, receipt.output_tokens, receipt.cost_usd,
                     receipt.flagship_cost_usd(config), receipt.latency_ms,
                     json.dumps(arguments, ensure_ascii=False) if keep and arguments is not None else None,
                     json.dumps(output, ensure_ascii=False) if keep and output is not None else None,
                     receipt.kind, receipt.session, receipt.batch, int(receipt.cached)),
                )
                if receipt.attempts:
                    cur.executemany(
                        f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES ({_marks(_ATTEMPT_COLUMNS)})",
                        [(call_id, n, a.tier, a.model, a.reason, a.trigger, a.outcome, a.detail, a.input_tokens,
                          a.output_tokens, a.cost_usd, a.latency_ms) for n, a in enumerate(receipt.attempts, 1)],
                    )
                ids.append(call_id)
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
                " coalesce(sum(CASE WHEN cost_usd IS NULL OR flagship_cost_usd IS NULL THEN 1 ELSE 0 END), 0)")
        groups = self._rows(f"SELECT {key}, {cols} FROM calls {where} GROUP BY 1 ORDER BY 6 DESC, 1", params)
        [total] = self._rows(f"SELECT 'all', {cols} FROM calls {where}", params)
        return [_usage_row(g) for g in groups], _usage_row(total)

    def spent(self, since: str, tool: str | None = None, session: str | None = None) -> float:
        """USD spent (known costs) since an ISO timestamp, optionally for one tool or one server session."""
        sql, params = "SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE ts >= ?", [since]
        if tool is not None:
            sql, params = sql + " AND tool = ?", [*params, tool]
        if session is not None:
            sql, params = sql + " AND session = ?", [*params, session]
        return float(self._rows(sql, params)[0][0])

    # ---- cache -----------------------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> tuple[dict[str, Any], str, str] | None:
        """A stored output that has not expired: (output, tier, model)."""
        rows = self._rows("SELECT output, tier, model FROM cache WHERE key = ? AND expires > ?", (key, time.time()))
        return (json.loads(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def cache_put(self, key: str, output: dict[str, Any], tier: str, model: str, ttl_s: float) -> None:
        with self._transaction() as cur:
            cur.execute("INSERT INTO cache (key, expires, tier, model, output) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires, tier = excluded.tier,"
                        " model = excluded.model, output = excluded.output",
                        (key, time.time() + ttl_s, tier, model, json.dumps(output, ensure_ascii=False)))
            # Expired entries go as new ones come, so the table cannot grow without bound.
            cur.execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))

    # ---- shadow comparisons ----------------------------------------------------------------------------------------

    def shadow_record(self, row: ShadowRow) -> None:
        self._execute(
            "INSERT INTO shadows (ts, tool, call_id, shadow_call_id, tier, comparison_tier, score, agree, detail,"
            " cost_usd, comparison_cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now_iso(), row.tool, row.call_id, row.shadow_call_id, row.tier, row.comparison_tier, row.score,
             None if row.agree is None else int(row.agree), row.detail, row.cost_usd, row.comparison_cost_usd),
        )

    def shadows(self, since: str | None = None) -> list[ShadowRow]:
        where, params = ("WHERE ts >= ?", (since,)) if since else ("", ())
        rows = self._rows("SELECT tool, call_id, shadow_call_id, tier, comparison_tier, score, agree, detail, cost_usd,"
                          f" comparison_cost_usd FROM shadows {where} ORDER BY id", params)
        return [ShadowRow(*r[:6], None if r[6] is None else bool(r[6]), *r[7:]) for r in rows]

    def call_counts(self, since: str | None = None) -> dict[str, int]:
        """Calls hosts made (not shadow or eval runs), per tool."""
        where, params = ("AND ts >= ?", (since,)) if since else ("", ())
        rows = self._rows(f"SELECT tool, count(*) FROM calls WHERE kind = 'call' {where} GROUP BY tool", params)
        return {tool: int(n) for tool, n in rows}

    def stored_calls(self, tool: str | None = None, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """(tool, arguments) of successful calls whose arguments were stored (store_inputs), newest first."""
        sql = "SELECT tool, arguments FROM calls WHERE kind = 'call' AND ok = 1 AND arguments IS NOT NULL"
        params: list[Any] = []
        if tool:
            sql, params = sql + " AND tool = ?", [tool]
        rows = self._rows(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [(t, json.loads(a)) for t, a in rows]

    def calls(self) -> list[dict[str, Any]]:
        """Every call row, oldest first (for tests and exports)."""
        return self._dicts("SELECT * FROM calls ORDER BY id")

    def attempts(self, call_id: int) -> list[dict[str, Any]]:
        """The attempt rows of one call, in order."""
        return self._dicts("SELECT * FROM attempts WHERE call_id = ? ORDER BY n", (call_id,))


    # ---- reading calls back (`tiered-mcp logs`) -------------------------------------------------------------------

    _LOG_COLUMNS = ("id, ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens, cost_usd,"
                    " flagship_cost_usd, latency_ms, kind, session, batch, cached")
    OUTCOMES = ("ok", "failed", "cached")

    def recent_calls(self, limit: int = 20, tool: str | None = None, outcome: str | None = None,
                     since: str | None = None) -> list[dict[str, Any]]:
        """The newest calls first, without stored arguments or outputs.

        Args:
            limit: at most this many.
            tool: only this tool's calls.
            outcome: "ok", "failed" or "cached".
            since: an ISO date or timestamp (UTC).

        Returns:
            One dict per call: the `calls` columns above plus `saved_usd` (None when a cost is unknown).
        """
        if outcome is not None and outcome not in self.OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(self.OUTCOMES)}")
        clauses, params = [], []
        if tool:
            clauses.append("tool = ?")
            params.append(tool)
        if since:
            clauses.append("ts >= ?")
            params.append(since)
        if outcome == "ok":
            clauses.append("ok = 1")
        elif outcome == "failed":
            clauses.append("ok = 0")
        elif outcome == "cached":
            clauses.append("cached = 1")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._dicts(f"SELECT {self._LOG_COLUMNS} FROM calls {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [self._log_row(r) for r in rows]

    def call_detail(self, call_id: int) -> dict[str, Any] | None:
        """One call with its attempts in order (and its arguments and output when store_inputs kept them)."""
        rows = self._dicts(f"SELECT {self._LOG_COLUMNS}, arguments, output FROM calls WHERE id = ?", (call_id,))
        if not rows:
            return None
        row = self._log_row(rows[0])
        for key in ("arguments", "output"):
            row[key] = json.loads(row[key]) if row.get(key) else None
        row["attempt_rows"] = self.attempts(call_id)
        return row

    @staticmethod
    def _log_row(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["ok"], out["cached"] = bool(out["ok"]), bool(out["cached"])
        cost, flagship = out.get("cost_usd"), out.get("flagship_cost_usd")
        out["saved_usd"] = None if cost is None or flagship is None else float(flagship) - float(cost)
        return out


def _usage_row(row: Sequence[Any]) -> UsageRow:
    # Sums come back as Decimal or int depending on the database; the row's types do not.
    key, calls, failed, tin, tout, cost, flagship, unpriced = row
    return UsageRow(key, int(calls), int(failed), int(tin), int(tout), float(cost), float(flagship), int(unpriced))
