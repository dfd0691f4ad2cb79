"""A task's provider batches in the ledger: what was submitted to a provider's Batch API and where each stands.

One row per provider batch: a task whose items do not fit in one batch (its request and size limits) sends several,
numbered by `part` from 0. Every row is written before anything is sent (its items and its budget hold), then
updated with the uploaded file's id, the batch's id, each status seen and the provider's request counts, so a server
that restarts, or another replica that takes the task over, polls the same batches instead of submitting the items
again. Writes are fenced by the task's owner (the replica holding its lease), as the task's own progress is.

The methods are synchronous and short, like the ledger's; async code calls them through `off_loop`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiered_mcp.ledger.sql import SqlLedger
from tiered_mcp.ledger.tasks import WORKING

_COLUMNS = ("task_id, part, tier, items, hold, input_file, batch_id, status, output_file, error_file, created, ended,"
            " settled, completed, failed")
_UPDATABLE = frozenset({"input_file", "batch_id", "status", "output_file", "error_file", "ended", "settled",
                        "completed", "failed"})


@dataclass(frozen=True)
class ProviderBatchRow:
    """One provider batch of a task. `items`: the indices submitted (their custom_id is the index); `hold`: the
    budget hold taken for them (JSON-ready, None when no cap applied); `status`: "preparing" until the batch exists,
    then the provider's status as last seen; `completed` and `failed`: the provider's request counts as last seen
    (requests answered, and answered with an error, so far)."""

    task_id: str
    tier: str
    items: list[int]
    hold: dict[str, Any] | None
    input_file: str | None
    batch_id: str | None
    status: str
    output_file: str | None
    error_file: str | None
    created: float
    ended: float | None
    settled: bool
    part: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True)
class BatchProgress:
    """What the provider reports about a task's batches, summed over them: requests submitted, answered and
    answered with an error (request_counts' total, completed and failed)."""

    requests: int
    completed: int
    failed: int


class ProviderBatchStore:
    """The provider batches of one ledger (SQLite or PostgreSQL)."""

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    def rows(self, task_id: str) -> list[ProviderBatchRow]:
        """A task's provider batches, by part (empty: none was prepared)."""
        rows = self.ledger._rows(f"SELECT {_COLUMNS} FROM provider_batches WHERE task_id = ? ORDER BY part",
                                 (task_id,))
        return [ProviderBatchRow(task, tier, [int(i) for i in json.loads(items)], json.loads(hold) if hold else None,
                                 input_file, batch_id, status, output_file, error_file, float(created),
                                 None if ended is None else float(ended), bool(settled), int(part), int(completed),
                                 int(failed))
                for (task, part, tier, items, hold, input_file, batch_id, status, output_file, error_file, created,
                     ended, settled, completed, failed) in rows]

    def get(self, task_id: str, part: int = 0) -> ProviderBatchRow | None:
        return next((r for r in self.rows(task_id) if r.part == part), None)

    def progress(self, task_id: str) -> BatchProgress | None:
        """The provider's counts over a task's batches (None: it has none). Requests sent are those of the batches
        the provider made (a batch id is recorded): not those still being prepared, nor those it refused."""
        rows = self.ledger._rows("SELECT items, completed, failed, batch_id FROM provider_batches WHERE task_id = ?",
                                 (task_id,))
        if not rows:
            return None
        # Counted, not parsed: tasks/get asks every few seconds, and a batch lists up to 50,000 indices.
        requests = sum(0 if items.strip() == "[]" else items.count(",") + 1
                       for items, _, _, batch_id in rows if batch_id is not None)
        return BatchProgress(requests, sum(int(c) for _, c, _, _ in rows), sum(int(f) for _, _, f, _ in rows))

    def booked(self, batch: str) -> set[int]:
        """The items of a task's batch (its `batch` id) whose Batch API answer a call row already books: each such
        row carries the item's index and was written in one transaction with it, so this is exact after any
        restart."""
        rows = self.ledger._rows("SELECT c.batch_item FROM calls c JOIN attempts a ON a.call_id = c.id AND a.n = 1"
                                 " WHERE c.batch = ? AND c.batch_item IS NOT NULL AND a.batch_api = 1", (batch,))
        return {int(i) for (i,) in rows}

    def create(self, rows: Sequence[ProviderBatchRow], owner: str | None) -> bool:
        """Record a task's batches about to be submitted, in one transaction, if `owner` still holds the task
        (None: unfenced); False if not."""
        with self.ledger._transaction() as cur:
            if owner is not None and rows and not self._holds(cur, rows[0].task_id, owner):
                return False
            cur.executemany(f"INSERT INTO provider_batches ({_COLUMNS}) VALUES ({', '.join('?' for _ in range(15))})",
                            [(r.task_id, r.part, r.tier, json.dumps(r.items), None if r.hold is None else
                              json.dumps(r.hold), r.input_file, r.batch_id, r.status, r.output_file, r.error_file,
                              r.created, r.ended, int(r.settled), r.completed, r.failed) for r in rows])
            return True

    def update(self, task_id: str, owner: str | None, *, part: int = 0, **fields: Any) -> bool:
        """Set some of input_file, batch_id, status, output_file, error_file, ended, settled, completed, failed of
        one batch (`part`); fenced like `create`."""
        assert fields and set(fields) <= _UPDATABLE, fields
        names = sorted(fields)
        values = [int(fields[n]) if n == "settled" else fields[n] for n in names]
        with self.ledger._transaction() as cur:
            if owner is not None and not self._holds(cur, task_id, owner):
                return False
            cur.execute(f"UPDATE provider_batches SET {', '.join(f'{n} = ?' for n in names)}"
                        " WHERE task_id = ? AND part = ?", (*values, task_id, part))
            return True

    @staticmethod
    def _holds(cur: Any, task_id: str, owner: str) -> bool:
        row = cur.execute("SELECT owner, status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row is not None and row[0] == owner and row[1] == WORKING
