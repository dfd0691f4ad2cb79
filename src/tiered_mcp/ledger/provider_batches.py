"""A task's provider batch in the ledger: what was submitted to a provider's Batch API and where it stands.

One row per task. It is written before anything is sent (the items and the budget hold), then updated with the
uploaded file's id, the batch's id and each status seen, so a server that restarts, or another replica that takes
the task over, polls the same batch instead of submitting the items again. Writes are fenced by the task's owner
(the replica holding its lease), as the task's own progress is.

The methods are synchronous and short, like the ledger's; async code calls them through `off_loop`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tiered_mcp.ledger.sql import SqlLedger
from tiered_mcp.ledger.tasks import WORKING

_COLUMNS = "task_id, tier, items, hold, input_file, batch_id, status, output_file, error_file, created, ended, settled"


@dataclass(frozen=True)
class ProviderBatchRow:
    """A task's provider batch. `items`: the indices submitted (their custom_id is the index); `hold`: the budget
    hold taken for them (JSON-ready, None when no cap applied); `status`: "preparing" until the batch exists, then
    the provider's status as last seen."""

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


class ProviderBatchStore:
    """The provider batches of one ledger (SQLite or PostgreSQL)."""

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    def get(self, task_id: str) -> ProviderBatchRow | None:
        rows = self.ledger._rows(f"SELECT {_COLUMNS} FROM provider_batches WHERE task_id = ?", (task_id,))
        if not rows:
            return None
        (task, tier, items, hold, input_file, batch_id, status, output_file, error_file, created, ended,
         settled) = rows[0]
        return ProviderBatchRow(task, tier, [int(i) for i in json.loads(items)], json.loads(hold) if hold else None,
                                input_file, batch_id, status, output_file, error_file, float(created),
                                None if ended is None else float(ended), bool(settled))

    def create(self, row: ProviderBatchRow, owner: str | None) -> bool:
        """Record a batch about to be submitted, if `owner` still holds the task (None: unfenced); False if not."""
        with self.ledger._transaction() as cur:
            if owner is not None and not self._holds(cur, row.task_id, owner):
                return False
            cur.execute(f"INSERT INTO provider_batches ({_COLUMNS}) VALUES ({', '.join('?' for _ in range(12))})",
                        (row.task_id, row.tier, json.dumps(row.items), None if row.hold is None else
                         json.dumps(row.hold), row.input_file, row.batch_id, row.status, row.output_file,
                         row.error_file, row.created, row.ended, int(row.settled)))
            return True

    def update(self, task_id: str, owner: str | None, **fields: Any) -> bool:
        """Set some of input_file, batch_id, status, output_file, error_file, ended, settled; fenced like `create`."""
        allowed = {"input_file", "batch_id", "status", "output_file", "error_file", "ended", "settled"}
        assert fields and set(fields) <= allowed, fields
        names = sorted(fields)
        values = [int(fields[n]) if n == "settled" else fields[n] for n in names]
        with self.ledger._transaction() as cur:
            if owner is not None and not self._holds(cur, task_id, owner):
                return False
            cur.execute(f"UPDATE provider_batches SET {', '.join(f'{n} = ?' for n in names)} WHERE task_id = ?",
                        (*values, task_id))
            return True

    @staticmethod
    def _holds(cur: Any, task_id: str, owner: str) -> bool:
        row = cur.execute("SELECT owner, status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return row is not None and row[0] == owner and row[1] == WORKING
