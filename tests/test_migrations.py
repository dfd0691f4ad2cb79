"""Ledgers written by release 0.1 upgrade in place, on SQLite and PostgreSQL, through the named migrations.

tests/fixtures/ledger-0.1.sqlite3 was written by the 0.1 code itself (commit 797a184); the PostgreSQL fixture is
0.1's DDL with the same rows. After the upgrade every old row is still there, a baseline the 0.1 figures allow is
kept (a call answered in one attempt), one they do not allow is unknown rather than wrong, and new rows go in.
"""

import shutil
from pathlib import Path

import pytest

from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.ledger.base import open_ledger
from tiered_mcp.ledger.migrations import MIGRATIONS

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = [m.__name__ for m in MIGRATIONS]


def check_upgraded(ledger) -> None:
    assert ledger.applied_migrations() == NAMES
    calls = ledger.calls()
    assert [(c["tool"], c["kind"], c["ok"]) for c in calls] == [
        ("classify", "call", 1), ("classify", "call", 1), ("rank", "call", 0), ("classify", "shadow", 1)]
    one, climbed, failed, shadow = calls
    assert one["baseline_usd"] == pytest.approx((1000 * 2.5 + 50 * 15) / 1e6, abs=1e-12)  # one attempt: exact
    assert climbed["baseline_usd"] is None  # 0.1 summed both attempts: the right figure is unknown, not guessed
    assert failed["baseline_usd"] == 0 and shadow["baseline_usd"] == 0
    assert all(c["uid"] == f"v1-{c['id']}" for c in calls)
    assert len(ledger.attempts(calls[1]["id"])) == 2 and len(ledger.attempts("v1-2")) == 2
    [row] = ledger.shadows()
    assert (row.tool, row.tier, row.comparison_tier, row.agree, row.status) == ("classify", "nano", "flagship",
                                                                                 True, "scored")
    usage = ledger.usage()
    assert usage.total.calls == 3 and usage.total.unpriced_calls == 1  # the climbed call's baseline is unknown
    assert [e.key for e in usage.evidence] == ["shadow"]
    # New rows go in beside the old ones.
    r = Receipt(tool="classify", tier="nano", model="gpt-5.4-nano", ok=True)
    r.attempts.append(Attempt(tier="nano", model="gpt-5.4-nano", reason="first", outcome="ok", input_tokens=10,
                              output_tokens=1, cost_usd=0.000001))
    ledger.record(r, config_from_dict({}))
    assert len(ledger.calls()) == 5


def test_a_sqlite_ledger_of_release_0_1_upgrades_in_place(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(FIXTURES / "ledger-0.1.sqlite3", path)
    ledger = open_ledger(path)
    try:
        check_upgraded(ledger)
    finally:
        ledger.close()
    again = open_ledger(path)  # opening again applies nothing twice
    try:
        assert again.applied_migrations() == NAMES and len(again.calls()) == 5
    finally:
        again.close()


def test_a_postgres_ledger_of_release_0_1_upgrades_in_place(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute((FIXTURES / "ledger-0.1.postgresql.sql").read_text(encoding="utf-8"))
    ledger = open_ledger(pg_url)
    try:
        check_upgraded(ledger)
    finally:
        ledger.close()


def test_a_new_ledger_gets_every_migration(ledger):
    assert ledger.applied_migrations() == NAMES


def test_a_provider_batch_of_an_earlier_release_becomes_its_tasks_first_part(tmp_path):
    # A ledger whose provider_batches table had one row per task (before a task could send several batches).
    import sqlite3

    from tiered_mcp.ledger.migrations import SQLITE, migrate
    from tiered_mcp.ledger.provider_batches import ProviderBatchStore

    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    cur = conn.cursor()
    cur.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
    cur.execute("INSERT INTO _migrations VALUES ('provider_batch_parts', 'now')")  # held back: applied below
    migrate(cur, SQLITE)
    cur.execute("DELETE FROM _migrations WHERE name = 'provider_batch_parts'")
    cur.execute("DROP TABLE provider_batches")
    cur.execute("CREATE TABLE provider_batches (task_id TEXT PRIMARY KEY, tier TEXT NOT NULL, items TEXT NOT NULL,"
                " hold TEXT, input_file TEXT, batch_id TEXT, status TEXT NOT NULL, output_file TEXT, error_file TEXT,"
                " created REAL NOT NULL, ended REAL, settled INTEGER NOT NULL DEFAULT 0)")
    cur.execute("INSERT INTO provider_batches VALUES ('t1', 'nano', '[0, 1]', NULL, 'file-1', 'batch_1',"
                " 'in_progress', NULL, NULL, 100.0, NULL, 0)")
    conn.commit()
    conn.close()
    ledger = open_ledger(path)
    try:
        assert ledger.applied_migrations() == NAMES
        (row,) = ProviderBatchStore(ledger).rows("t1")
        assert (row.part, row.items, row.batch_id, row.status, row.completed, row.failed) == (
            0, [0, 1], "batch_1", "in_progress", 0, 0)
    finally:
        ledger.close()
