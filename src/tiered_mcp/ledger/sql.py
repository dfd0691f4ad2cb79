"""The ledger's queries, written once in SQL both SQLite and PostgreSQL speak.

A backend supplies the connection: `_transaction` (a cursor inside one transaction), `_rows` / `_dicts` (a read
query's rows) and `_lock_for_update` (the clause that locks the rows a budget check reads: FOR UPDATE on
PostgreSQL; SQLite's write transaction already excludes other writers). Timestamps are ISO 8601 UTC text
(`now_iso`), so `--since DATE` compares strings the same way on both.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tiered_mcp.core.secrets import redact
from tiered_mcp.ledger.base import GROUPS, CallWrite, Settle, ShadowRow, Usage, UsageRow, now_iso, spend_key
from tiered_mcp.ledger.migrations import MIGRATIONS, Cursor

if TYPE_CHECKING:
    from tiered_mcp.core.config import Config
    from tiered_mcp.core.receipts import Receipt

_CALL_COLUMNS = ("uid, ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens, cached_input_tokens,"
                 " reasoning_tokens, cost_usd, baseline_usd, estimated, latency_ms, arguments, output, kind, session,"
                 " batch, cached, spec_version, caller, unverified, batch_item")
_ATTEMPT_COLUMNS = ("call_id, n, tier, model, reason, trigger, outcome, detail, input_tokens, output_tokens,"
                    " cached_input_tokens, reasoning_tokens, cost_usd, estimated, latency_ms, service_tier, batch_api")
_SHADOW_COLUMNS = ("ts, tool, call_uid, shadow_call_uid, tier, comparison_tier, score, agree, detail, cost_usd,"
                   " comparison_cost_usd, model, comparison_model, spec_version, confidence, args_key, status")


def _kept(text: str, arguments: Any = None) -> str:
    return text


def _marks(columns: str) -> str:
    return ", ".join("?" for _ in columns.split(","))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


class SqlLedger:
    """The queries of `LedgerStore`, over a backend's connection."""

    store_inputs: bool
    location: str
    _lock_for_update = ""

    # ---- what a backend supplies -----------------------------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _insert_call(self, cur: Cursor, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- writing: one transaction for a call (or a batch, or a burst of queued writes) ----------------------------

    def write(self, calls: list[CallWrite], shadows: list[ShadowRow], config: Config,
              settles: Sequence[Settle] = ()) -> None:
        """Write calls (with their attempts and cache entries), shadow rows and hold settlements in one
        transaction."""
        keep = self.store_inputs
        with self._transaction() as cur:
            for c in calls:
                r = c.receipt
                # With store_inputs off, no argument value is kept anywhere: not in errors, not in attempt details.
                hide = functools.partial(_kept if keep else redact, arguments=c.arguments)
                if r.call_id is None:
                    r.call_id = uuid.uuid4().hex[:16]
                call_id = self._insert_call(
                    cur, f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES ({_marks(_CALL_COLUMNS)})",
                    (r.call_id, now_iso(), r.tool, r.tier, r.model, int(r.ok), r.error and hide(r.error),
                     len(r.attempts),
                     r.input_tokens, r.output_tokens, sum(a.cached_input_tokens for a in r.attempts),
                     sum(a.reasoning_tokens for a in r.attempts), r.cost_usd, r.baseline_usd(config),
                     int(r.estimated), r.latency_ms, _json(c.arguments) if keep else None,
                     _json(c.output) if keep else None, r.kind, r.session, r.batch, int(r.cached), r.spec_version,
                     r.caller, _json(r.unverified), r.batch_item),
                )
                if r.attempts:
                    cur.executemany(
                        f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES ({_marks(_ATTEMPT_COLUMNS)})",
                        [(call_id, n, a.tier, a.model, a.reason, a.trigger, a.outcome, hide(a.detail), a.input_tokens,
                          a.output_tokens, a.cached_input_tokens, a.reasoning_tokens, a.cost_usd, int(a.estimated),
                          a.latency_ms, a.service_tier, int(a.batch_api)) for n, a in enumerate(r.attempts, 1)],
                    )
                if c.cache is not None:
                    e = c.cache
                    cur.execute("INSERT INTO cache (key, expires, tier, model, output) VALUES (?, ?, ?, ?, ?)"
                                " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires, tier = excluded.tier,"
                                " model = excluded.model, output = excluded.output",
                                (e.key, e.expires, e.tier, e.model, json.dumps(e.output, ensure_ascii=False)))
            totals: dict[str, float] = {}
            holds = [h for c in calls for h in c.receipt.holds]
            gone = set(holds)
            # A hold this transaction drops (its call is written) needs no settling.
            shrink = [(s.spent, s.expires, s.hold) for s in settles if s.hold not in gone]
            if shrink:
                cur.executemany("UPDATE budget_holds SET amount = ?, expires = ? WHERE id = ?", shrink)
            for c in calls:
                r = c.receipt
                spent = sum(a.cost_usd or 0.0 for a in r.attempts)  # an unpriced attempt adds nothing, the rest count
                if spent:
                    day = r.day or now_iso()[:10]
                    for key in (spend_key(day), spend_key(day, tool=r.tool),
                                *([spend_key(day, caller=r.caller)] if r.caller else []),
                                *([spend_key(day, tool=r.tool, evidence=True)] if r.evidence else [])):
                        totals[key] = totals.get(key, 0.0) + spent
            if totals:
                # Keys in sorted order, as budget_reserve locks them: two transactions never wait on each other in turn.
                cur.executemany("INSERT INTO budget_spend (key, spent) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                                " SET spent = budget_spend.spent + excluded.spent", sorted(totals.items()))
            if holds:
                cur.executemany("DELETE FROM budget_holds WHERE id = ?", [(h,) for h in holds])
            if shadows:
                cur.executemany(
                    f"INSERT INTO shadows ({_SHADOW_COLUMNS}) VALUES ({_marks(_SHADOW_COLUMNS)})",
                    [(now_iso(), s.tool, s.call_id, s.shadow_call_id, s.tier, s.comparison_tier, s.score,
                      None if s.agree is None else int(s.agree), s.detail, s.cost_usd, s.comparison_cost_usd, s.model,
                      s.comparison_model, s.spec_version, s.confidence, s.args_key, s.status) for s in shadows],
                )

    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> str:
        """Write one call; returns its id (one is made for a receipt that has none)."""
        self.write([CallWrite(receipt, arguments, output)], [], config)
        assert receipt.call_id is not None
        return receipt.call_id

    # ---- budgets ---------------------------------------------------------------------------------------------------

    def budget_reserve(self, caps: list[tuple[str, float]], amount: float, hold: str, now: float,
                       ttl_s: float) -> tuple[bool, dict[str, float]]:
        """Atomically: if every cap's spent + live holds + `amount` stays within it, hold `amount` on each.

        Returns:
            (held, committed): whether the hold was taken, and per key what was spent or held before it.
        """
        caps = sorted(caps)  # lock in key order (see `write`)
        keys = [k for k, _ in caps]
        with self._transaction() as cur:
            cur.executemany("INSERT INTO budget_spend (key, spent) VALUES (?, 0) ON CONFLICT (key) DO NOTHING",
                            [(k,) for k in keys])
            marks = ", ".join("?" for _ in keys)
            spent = dict(cur.execute(f"SELECT key, spent FROM budget_spend WHERE key IN ({marks}) ORDER BY key"
                                     f"{self._lock_for_update}", keys).fetchall())
            held = dict(cur.execute(f"SELECT key, sum(amount) FROM budget_holds WHERE key IN ({marks})"
                                    " AND expires > ? GROUP BY key", [*keys, now]).fetchall())
            committed = {k: float(spent.get(k) or 0) + float(held.get(k) or 0) for k in keys}
            if any(committed[k] + amount > cap for k, cap in caps):
                return False, committed
            cur.executemany("INSERT INTO budget_holds (id, key, amount, expires) VALUES (?, ?, ?, ?)",
                            [(hold, k, amount, now + ttl_s) for k in keys])
            return True, committed

    def budget_settle(self, hold: str, spent: float, now: float, ttl_s: float) -> None:
        """Shrink a hold to what the request actually spent. The hold goes when the call's row is written: `write`
        adds the spend to the day's totals and drops the call's holds in one transaction, so what a cap reads never
        counts a cost twice or loses it in between."""
        with self._transaction() as cur:
            cur.execute("UPDATE budget_holds SET amount = ?, expires = ? WHERE id = ?", (spent, now + ttl_s, hold))

    def budget_committed(self, keys: list[str], now: float) -> dict[str, float]:
        """Per key: what is spent plus what live holds keep back."""
        marks = ", ".join("?" for _ in keys)
        spent = dict(self._rows(f"SELECT key, spent FROM budget_spend WHERE key IN ({marks})", keys))
        held = dict(self._rows(f"SELECT key, sum(amount) FROM budget_holds WHERE key IN ({marks}) AND expires > ?"
                               " GROUP BY key", [*keys, now]))
        return {k: float(spent.get(k) or 0) + float(held.get(k) or 0) for k in keys}

    def budget_sweep(self, now: float) -> None:
        with self._transaction() as cur:
            cur.execute("DELETE FROM budget_holds WHERE expires <= ?", (now,))

    # ---- reading ---------------------------------------------------------------------------------------------------

    def usage(self, since: str | None = None, by: str = "tool", caller: str | None = None) -> Usage:
        """Totals of answered calls per group and overall, and evidence spend per kind.

        Args:
            since: an ISO date or timestamp (UTC); only calls at or after it count.
            by: "tool", "tier", "model" or "caller".
            caller: only this caller's calls (a team server scopes `tiered://usage` so).
        """
        if by not in GROUPS:
            raise ValueError(f"by must be one of {', '.join(GROUPS)}")
        params: list[Any]
        where, params = ["1 = 1"], []
        if since:
            where, params = [*where, "ts >= ?"], [*params, since]
        if caller is not None:
            where, params = [*where, "caller = ?"], [*params, caller]
        cond = " AND ".join(where)
        # Evidence rows carry no saving: their spend is evidence spend (the `evidence` lines).
        known = "kind = 'call' AND cost_usd IS NOT NULL AND baseline_usd IS NOT NULL"
        measured = f"estimated = 0 AND {known}"
        cols = ("count(*), coalesce(sum(1 - ok), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
                f" coalesce(sum(cost_usd), 0), coalesce(sum(CASE WHEN {measured} THEN baseline_usd ELSE 0 END), 0),"
                f" coalesce(sum(CASE WHEN {measured} THEN baseline_usd - cost_usd ELSE 0 END), 0),"
                f" coalesce(sum(CASE WHEN estimated = 1 AND {known} THEN baseline_usd - cost_usd ELSE 0 END), 0),"
                " coalesce(sum(estimated), 0),"
                f" coalesce(sum(CASE WHEN estimated = 1 AND {known} THEN baseline_usd ELSE 0 END), 0),"
                " coalesce(sum(CASE WHEN cost_usd IS NULL OR baseline_usd IS NULL THEN 1 ELSE 0 END), 0)")
        groups = self._rows(f"SELECT coalesce({by}, '-'), {cols} FROM calls WHERE kind = 'call' AND {cond}"
                            " GROUP BY 1 ORDER BY 7 DESC, 1", params)
        [total] = self._rows(f"SELECT 'all', {cols} FROM calls WHERE kind = 'call' AND {cond}", params)
        evidence = self._rows(f"SELECT kind, {cols} FROM calls WHERE kind <> 'call' AND {cond} GROUP BY 1 ORDER BY 1",
                              params)
        return Usage([_usage_row(g) for g in groups], _usage_row(total), [_usage_row(e) for e in evidence])

    def spent(self, since: str, tool: str | None = None, session: str | None = None) -> float:
        """USD spent (known costs, evidence included) since an ISO timestamp, for one tool or session if given."""
        sql, params = "SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE ts >= ?", [since]
        if tool is not None:
            sql, params = sql + " AND tool = ?", [*params, tool]
        if session is not None:
            sql, params = sql + " AND session = ?", [*params, session]
        return float(self._rows(sql, params)[0][0])

    def cache_get(self, key: str, now: float) -> tuple[dict[str, Any], str, str] | None:
        """A stored output that has not expired at `now` (Unix time): (output, tier, model)."""
        rows = self._rows("SELECT output, tier, model FROM cache WHERE key = ? AND expires > ?", (key, now))
        return (json.loads(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def cache_get_many(self, keys: Sequence[str], now: float) -> dict[str, tuple[dict[str, Any], str, str]]:
        """`cache_get` of several keys in one query: the entries found, by key."""
        found: dict[str, tuple[dict[str, Any], str, str]] = {}
        for start in range(0, len(keys), 500):  # well within both databases' limits on parameters
            part = list(keys[start:start + 500])
            rows = self._rows(f"SELECT key, output, tier, model FROM cache WHERE key IN ({', '.join('?' for _ in part)})"
                              " AND expires > ?", [*part, now])
            found.update((k, (json.loads(o), t, m)) for k, o, t, m in rows)
        return found

    def cache_sweep(self, now: float) -> int:
        """Delete expired cache entries (run now and then, not on every write); how many went."""
        with self._transaction() as cur:
            result = cur.execute("DELETE FROM cache WHERE expires <= ?", (now,))
            return int(getattr(result, "rowcount", 0) or 0)

    def shadows(self, since: str | None = None, tool: str | None = None) -> list[ShadowRow]:
        params: list[Any]
        where, params = ["1 = 1"], []
        if since:
            where, params = [*where, "ts >= ?"], [*params, since]
        if tool:
            where, params = [*where, "tool = ?"], [*params, tool]
        rows = self._rows("SELECT tool, call_uid, shadow_call_uid, tier, comparison_tier, score, agree, detail,"
                          " cost_usd, comparison_cost_usd, model, comparison_model, spec_version, confidence,"
                          f" args_key, status FROM shadows WHERE {' AND '.join(where)} ORDER BY id", params)
        return [ShadowRow(*r[:6], None if r[6] is None else bool(r[6]), *r[7:]) for r in rows]  # type: ignore[call-arg]  # mypy miscounts a positional after *r[:6]

    def compared(self, tool: str, args_key: str, model: str, comparison_model: str, spec_version: str) -> bool:
        """Whether these arguments were already compared for this model pair and spec version."""
        return bool(self._rows(
            "SELECT 1 FROM shadows WHERE tool = ? AND args_key = ? AND model = ? AND comparison_model = ?"
            " AND spec_version = ? AND status <> 'skipped' LIMIT 1", (tool, args_key, model, comparison_model,
                                                                      spec_version)))

    def call_counts(self, since: str | None = None) -> dict[str, int]:
        """Calls hosts made (not evidence work), per tool."""
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

    def stored_answers(self, tier: str, tool: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Successful answers given on `tier` whose arguments and output were stored (store_inputs): served calls,
        shadow and bake-off runs alike, newest first, with the model and spec version that produced them."""
        sql = ("SELECT tool, arguments, output, model, spec_version, kind FROM calls WHERE ok = 1 AND tier = ?"
               " AND arguments IS NOT NULL AND output IS NOT NULL AND kind IN ('call', 'shadow', 'eval')")
        params: list[Any] = [tier]
        if tool:
            sql, params = sql + " AND tool = ?", [*params, tool]
        rows = self._rows(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [{"tool": t, "arguments": json.loads(a), "output": json.loads(o), "model": m, "spec_version": v,
                 "kind": k} for t, a, o, m, v, k in rows]

    def calls(self) -> list[dict[str, Any]]:
        """Every call row, oldest first (for tests and exports)."""
        return self._dicts("SELECT * FROM calls ORDER BY id")

    def attempts(self, call: int | str) -> list[dict[str, Any]]:
        """The attempt rows of one call (by its row id or its call id), in order."""
        if isinstance(call, str):
            return self._dicts("SELECT a.* FROM attempts a JOIN calls c ON c.id = a.call_id WHERE c.uid = ?"
                               " ORDER BY a.n", (call,))
        return self._dicts("SELECT * FROM attempts WHERE call_id = ? ORDER BY n", (call,))

    # ---- auto-tiering ----------------------------------------------------------------------------------------------

    _SWITCH_COLUMNS = ("ts, tool, kind, from_tier, to_tier, reason, successes, trials, lower_bound, upper_bound, bar,"
                       " model, spec_version, call_n, seq, evidence")

    def autotier_states(self, tool: str | None = None) -> dict[str, tuple[int, dict[str, Any]]]:
        """Each auto tool's stored state (or one tool's): tool -> (seq, state)."""
        sql, params = "SELECT tool, seq, state FROM autotier_state", []
        if tool is not None:
            sql, params = sql + " WHERE tool = ?", [tool]
        return {t: (int(seq), json.loads(state)) for t, seq, state in self._rows(sql, params)}

    def autotier_update(self, tool: str, update: Callable[[dict[str, Any] | None], tuple[dict[str, Any],
                        list[dict[str, Any]]]]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        """Atomically apply `update` to one tool's state: it gets the stored state (None when there is none) and
        returns the new state and the switches it took (rows as `tier_switches` returns them, without id, ts and
        seq). The state row is read under a lock (FOR UPDATE on PostgreSQL; SQLite's write transaction), so when
        several replicas share a ledger each update sees the one before it and a switch is taken once.

        Returns:
            (seq, state, switches) as written.
        """
        with self._transaction() as cur:
            rows = cur.execute(f"SELECT seq, state FROM autotier_state WHERE tool = ?{self._lock_for_update}",
                               (tool,)).fetchall()
            if not rows:
                # Two replicas may both find no row: the second insert waits for the first and does nothing, and
                # its locked read then sees the first one's state.
                cur.execute("INSERT INTO autotier_state (tool, seq, tier, state, updated) VALUES (?, 0, '', 'null', ?)"
                            " ON CONFLICT (tool) DO NOTHING", (tool, now_iso()))
                rows = cur.execute(f"SELECT seq, state FROM autotier_state WHERE tool = ?{self._lock_for_update}",
                                   (tool,)).fetchall()
            seq, stored = int(rows[0][0]), json.loads(rows[0][1])
            state, switches = update(stored)
            seq += 1
            cur.execute("UPDATE autotier_state SET seq = ?, tier = ?, state = ?, updated = ? WHERE tool = ?",
                        (seq, state.get("tier", ""), json.dumps(state, ensure_ascii=False), now_iso(), tool))
            if switches:
                cur.executemany(
                    f"INSERT INTO tier_switches ({self._SWITCH_COLUMNS}) VALUES ({_marks(self._SWITCH_COLUMNS)})",
                    [(now_iso(), tool, w["kind"], w["from_tier"], w["to_tier"], w["reason"], w.get("successes"),
                      w.get("trials"), w.get("lower_bound"), w.get("upper_bound"), w.get("bar"), w.get("model"),
                      w.get("spec_version"), w.get("call_n"), seq, json.dumps(w.get("evidence") or {}))
                     for w in switches])
            return seq, state, switches

    def sentinel_add(self, tool: str, set_key: str, args_key: str, arguments: dict[str, Any],
                     reference: dict[str, Any], baselines: dict[str, bool]) -> bool:
        """Keep one item of a tool's sentinel set; False when it was already kept (another replica, a retry)."""
        with self._transaction() as cur:
            result = cur.execute(
                "INSERT INTO autotier_sentinels (tool, set_key, args_key, arguments, reference, baselines, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tool, set_key, args_key) DO NOTHING",
                (tool, set_key, args_key, json.dumps(arguments, ensure_ascii=False),
                 json.dumps(reference, ensure_ascii=False), json.dumps(baselines), now_iso()))
            return bool(getattr(result, "rowcount", 0))

    def sentinel_baseline(self, tool: str, set_key: str, args_key: str, tier_key: str, agreed: bool) -> None:
        """Record a sentinel-set item's baseline on one tier's model (its first replay there), unless one is set."""
        with self._transaction() as cur:
            rows = cur.execute("SELECT baselines FROM autotier_sentinels WHERE tool = ? AND set_key = ? AND args_key = ?"
                               f"{self._lock_for_update}", (tool, set_key, args_key)).fetchall()
            if not rows:
                return
            baselines = json.loads(rows[0][0])
            if tier_key in baselines:  # another replica set it first: its verdict stands
                return
            baselines[tier_key] = agreed
            cur.execute("UPDATE autotier_sentinels SET baselines = ? WHERE tool = ? AND set_key = ? AND args_key = ?",
                        (json.dumps(baselines), tool, set_key, args_key))

    def sentinel_items(self, tool: str, set_key: str) -> list[dict[str, Any]]:
        """A tool's sentinel set under `set_key`, oldest first: args_key, arguments, reference, baselines."""
        return [{"args_key": k, "arguments": json.loads(a), "reference": json.loads(r), "baselines": json.loads(b)}
                for k, a, r, b in self._rows("SELECT args_key, arguments, reference, baselines FROM autotier_sentinels"
                                             " WHERE tool = ? AND set_key = ? ORDER BY created, args_key",
                                             (tool, set_key))]

    def tier_switches(self, tool: str | None = None, limit: int = 100, since: str | None = None
                      ) -> list[dict[str, Any]]:
        """Tier switches of auto tools, newest first, each with its evidence."""
        clauses: list[str] = []
        params: list[Any] = []
        if tool:
            clauses, params = [*clauses, "tool = ?"], [*params, tool]
        if since:
            clauses, params = [*clauses, "ts >= ?"], [*params, since]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._dicts(f"SELECT id, {self._SWITCH_COLUMNS} FROM tier_switches {where} ORDER BY id DESC LIMIT ?",
                           [*params, limit])
        for r in rows:
            r["evidence"] = json.loads(r["evidence"]) if r.get("evidence") else {}
        return rows

    def applied_migrations(self) -> list[str]:
        # In the order they are applied in (several land within one millisecond of `applied`).
        order = {m.__name__: i for i, m in enumerate(MIGRATIONS)}
        names = [r[0] for r in self._rows("SELECT name FROM _migrations ORDER BY applied, name")]
        return sorted(names, key=lambda n: order.get(n, len(order)))

    # ---- reading calls back (`tiered-mcp logs`) -------------------------------------------------------------------

    _LOG_COLUMNS = ("id, uid, ts, tool, tier, model, ok, error, attempts, input_tokens, output_tokens, cost_usd,"
                    " baseline_usd, estimated, latency_ms, kind, session, batch, cached, caller, spec_version,"
                    " unverified")
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
            One dict per call: the `calls` columns above plus `saved_usd` (see docs/accounting.md; None for
            evidence work and where a figure is unknown).
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

    def call_detail(self, call: int | str) -> dict[str, Any] | None:
        """One call (by its call id, or its row number) with its attempts in order, and its arguments and output
        when store_inputs kept them."""
        column, key = ("id", call) if isinstance(call, int) else ("uid", str(call))
        rows = self._dicts(f"SELECT {self._LOG_COLUMNS}, arguments, output FROM calls WHERE {column} = ?", (key,))
        if not rows:
            return None
        row = self._log_row(rows[0])
        for name in ("arguments", "output"):
            row[name] = json.loads(row[name]) if row.get(name) else None
        row["attempt_rows"] = self.attempts(int(row["id"]))
        return row

    @staticmethod
    def _log_row(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["ok"], out["cached"], out["estimated"] = bool(out["ok"]), bool(out["cached"]), bool(out["estimated"])
        out["unverified"] = json.loads(out["unverified"]) if out.get("unverified") else None
        cost, baseline = out.get("cost_usd"), out.get("baseline_usd")
        out["saved_usd"] = (None if out["kind"] != "call" or cost is None or baseline is None
                            else float(baseline) - float(cost))
        return out


def _usage_row(row: Sequence[Any]) -> UsageRow:
    # Sums come back as Decimal or int depending on the database; the row's types do not.
    key, calls, failed, tin, tout, cost, baseline, saved, est_saved, est, est_baseline, unpriced = row
    return UsageRow(key, int(calls), int(failed), int(tin), int(tout), float(cost), float(baseline), float(saved),
                    float(est_saved), int(est), int(unpriced), float(est_baseline))
