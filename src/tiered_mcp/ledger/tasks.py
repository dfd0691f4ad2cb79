"""Tasks in the ledger: batch calls that outlive the request (and the session, and the replica) that started them.

A task row holds what is needed to finish the batch (its arguments, kept only while it runs), its progress counters
and its final result; `task_items` holds each finished item. One replica at a time *holds* a running task: it owns a
lease (`owner`, `lease` as a Unix time) that it renews while it works. A replica takes a task over only when the
lease has run out, by a compare-and-set on the row (`UPDATE ... WHERE lease < now`), so two replicas never both
resume it; and every write of progress is fenced by the owner (`WHERE owner = ?`), so a replica that lost its lease
cannot add to a task another one now holds.

The methods are synchronous and short, like the ledger's; async code calls them through `off_loop`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiered_mcp.ledger.base import now_iso
from tiered_mcp.ledger.sql import SqlLedger

WORKING, COMPLETED, FAILED, CANCELLED = "working", "completed", "failed", "cancelled"
TERMINAL = (COMPLETED, FAILED, CANCELLED)

_COLUMNS = ("id, caller, daily_usd, tool, status, message, created, updated, expires, arguments, options, batch,"
            " total, done, failed, cost_usd, unpriced, owner, lease, cancel, result, error")


@dataclass(frozen=True)
class TaskRow:
    """One task as stored. `result` and `error` are JSON text (the CallToolResult, the JSON-RPC error)."""

    id: str
    caller: str | None
    daily_usd: float | None
    tool: str
    status: str
    message: str | None
    created: str
    updated: str
    expires: float
    arguments: str | None
    options: str | None
    batch: str
    total: int
    done: int
    failed: int
    cost_usd: float
    unpriced: int
    owner: str | None
    lease: float
    cancel: bool
    result: str | None
    error: str | None


@dataclass(frozen=True)
class ItemRow:
    """One finished item of a task: its place in the batch result and its receipt (JSON-ready)."""

    index: int
    ok: bool
    result: dict[str, Any]
    receipt: dict[str, Any] | None

    @property
    def cost_usd(self) -> float | None:
        return None if self.receipt is None else self.receipt.get("cost_usd")


class TaskStore:
    """The tasks of one ledger (SQLite or PostgreSQL): safe to share between tasks, threads and processes."""

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    def create(self, row: TaskRow) -> None:
        with self.ledger._transaction() as cur:
            cur.execute(f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' for _ in _COLUMNS.split(','))})",
                        (row.id, row.caller, row.daily_usd, row.tool, row.status, row.message, row.created,
                         row.updated, row.expires, row.arguments, row.options, row.batch, row.total, row.done,
                         row.failed, row.cost_usd, row.unpriced, row.owner, row.lease, int(row.cancel), row.result,
                         row.error))

    def get(self, task_id: str) -> TaskRow | None:
        rows = self.ledger._rows(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            return None
        values = list(rows[0])
        values[19] = bool(values[19])
        return TaskRow(*values)

    def items(self, task_id: str) -> list[ItemRow]:
        """The task's finished items, in index order."""
        rows = self.ledger._rows("SELECT idx, ok, result, receipt FROM task_items WHERE task_id = ? ORDER BY idx",
                                 (task_id,))
        return [ItemRow(int(i), bool(ok), json.loads(r), json.loads(rc) if rc else None) for i, ok, r, rc in rows]

    def answered(self, task_id: str) -> set[int]:
        """The indices of the items already answered (a resumed task skips them)."""
        return {int(r[0]) for r in self.ledger._rows("SELECT idx FROM task_items WHERE task_id = ?", (task_id,))}

    def save_items(self, task_id: str, owner: str, items: Sequence[ItemRow]) -> str:
        """Add finished items and their counts to the task if `owner` still holds it: "saved", "cancel" (saved,
        and the client asked to cancel) or "lost" (another replica holds it, or it ended: nothing saved)."""
        cost = sum(i.cost_usd or 0.0 for i in items)
        unpriced = sum(1 for i in items if i.cost_usd is None)
        failed = sum(1 for i in items if not i.ok)
        with self.ledger._transaction() as cur:
            fenced = cur.execute("UPDATE tasks SET done = done + ?, failed = failed + ?, cost_usd = cost_usd + ?,"
                                 " unpriced = unpriced + ?, updated = ? WHERE id = ? AND owner = ? AND status = ?",
                                 (len(items), failed, cost, unpriced, now_iso(), task_id, owner, WORKING))
            if fenced.rowcount != 1:
                return "lost"
            cur.executemany("INSERT INTO task_items (task_id, idx, ok, result, receipt) VALUES (?, ?, ?, ?, ?)",
                            [(task_id, i.index, int(i.ok), json.dumps(i.result, ensure_ascii=False),
                              None if i.receipt is None else json.dumps(i.receipt, ensure_ascii=False))
                             for i in items])
            cancel = cur.execute("SELECT cancel FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
        return "cancel" if cancel else "saved"

    def finish(self, task_id: str, owner: str | None, status: str, message: str, expires: float,
               result: str | None = None, error: str | None = None, now: float = 0.0) -> bool:
        """Move a working task to a terminal status and drop its arguments: fenced by `owner`, or with owner None,
        only if no replica holds it (its lease ran out before `now`). False when the task was not moved."""
        where, params = ("owner = ?", [owner]) if owner is not None else ("lease < ?", [now])
        with self.ledger._transaction() as cur:
            moved = cur.execute(f"UPDATE tasks SET status = ?, message = ?, result = ?, error = ?, expires = ?,"
                                f" updated = ?, arguments = NULL, owner = NULL, lease = 0 WHERE id = ? AND status = ?"
                                f" AND {where}",
                                (status, message, result, error, expires, now_iso(), task_id, WORKING, *params))
            return bool(moved.rowcount == 1)

    def request_cancel(self, task_id: str) -> None:
        with self.ledger._transaction() as cur:
            cur.execute("UPDATE tasks SET cancel = 1, updated = ? WHERE id = ? AND status = ?",
                        (now_iso(), task_id, WORKING))

    def claim(self, task_id: str, owner: str, now: float, lease_s: float) -> bool:
        """Take a running task whose lease has run out (compare-and-set: one replica wins)."""
        with self.ledger._transaction() as cur:
            won = cur.execute("UPDATE tasks SET owner = ?, lease = ? WHERE id = ? AND status = ? AND lease < ?",
                              (owner, now + lease_s, task_id, WORKING, now))
            return bool(won.rowcount == 1)

    def orphans(self, now: float) -> list[str]:
        """Running tasks no replica holds (their lease ran out: the holder stopped or crashed)."""
        return [r[0] for r in self.ledger._rows("SELECT id FROM tasks WHERE status = ? AND lease < ? ORDER BY created",
                                                (WORKING, now))]

    def renew(self, owner: str, task_ids: Sequence[str], until: float) -> set[str]:
        """Extend the leases `owner` holds; the ids it still holds (a lost one must stop)."""
        held: set[str] = set()
        with self.ledger._transaction() as cur:
            for task_id in sorted(task_ids):
                if cur.execute("UPDATE tasks SET lease = ? WHERE id = ? AND owner = ? AND status = ?",
                               (until, task_id, owner, WORKING)).rowcount == 1:
                    held.add(task_id)
        return held

    def release(self, owner: str, task_ids: Sequence[str]) -> None:
        """Give running tasks up at once (a server shutting down), so another replica resumes them without waiting
        for the lease to run out."""
        with self.ledger._transaction() as cur:
            for task_id in sorted(task_ids):
                cur.execute("UPDATE tasks SET lease = 0, owner = NULL WHERE id = ? AND owner = ? AND status = ?",
                            (task_id, owner, WORKING))

    def cancels_among(self, task_ids: Sequence[str]) -> list[str]:
        """Which of these tasks a client asked to cancel (through any replica)."""
        if not task_ids:
            return []
        marks = ", ".join("?" for _ in task_ids)
        return [r[0] for r in self.ledger._rows(f"SELECT id FROM tasks WHERE cancel = 1 AND id IN ({marks})",
                                                tuple(task_ids))]

    def cancel_requested(self, task_id: str) -> bool:
        rows = self.ledger._rows("SELECT cancel FROM tasks WHERE id = ?", (task_id,))
        return bool(rows and rows[0][0])

    def purge(self, now: float) -> int:
        """Delete finished tasks past their expiry, with their items; how many."""
        with self.ledger._transaction() as cur:
            params = (now, *TERMINAL)
            where = "expires < ? AND status IN (?, ?, ?)"
            cur.execute(f"DELETE FROM task_items WHERE task_id IN (SELECT id FROM tasks WHERE {where})", params)
            cur.execute(f"DELETE FROM provider_batches WHERE task_id IN (SELECT id FROM tasks WHERE {where})", params)
            return int(cur.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount or 0)
