"""The SQLite ledger (the default backend): a file, in WAL mode with a busy timeout, so several server processes
can write it at once. Private to its user: the folder is created 0700 and the files 0600.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tiered_mcp.core.errors import ConfigError
from tiered_mcp.core.files import private_dir, private_file
from tiered_mcp.ledger.migrations import SQLITE, migrate
from tiered_mcp.ledger.sql import SqlLedger


def _tighten(path: Path) -> None:
    # chmod only: opening and closing a descriptor of a database this process has open would drop its POSIX locks.
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)


class Ledger(SqlLedger):
    """A ledger file. Safe to share between tasks, threads and processes.

    Args:
        path: the SQLite file; its folder is created (0700) if missing.
        store_inputs: keep each call's arguments and output.

    Raises:
        ConfigError: the file cannot be created or opened (the message names it and why).
    """

    def __init__(self, path: str | Path, store_inputs: bool = False) -> None:
        self.path = Path(path)
        self.store_inputs = store_inputs
        self.location = str(self.path)
        # Two connections: writes wait for SQLite's write lock (another process may hold it), reads never do in WAL
        # mode, so a read must not queue behind a write on one shared connection.
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        try:
            private_file(private_dir(self.path.parent) / self.path.name)  # 0700 folder, 0600 file
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._setup()
            self._reader = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout=30000")
            _tighten(self.path)  # the -wal and -shm files SQLite just made
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"ledger {self.path}: cannot open it ({e}); set `ledger` in the config or --ledger "
                              "to a file in a folder you can write") from None

    def _setup(self) -> None:
        # Switching a new file to WAL takes an exclusive lock that SQLite's busy handler does not wait for, so
        # several processes opening one new ledger at once can see "database is locked": wait and try again.
        delay = 0.01
        for _ in range(60):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                with self._transaction() as cur:
                    migrate(cur, SQLITE)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise sqlite3.OperationalError(f"ledger {self.path} stayed locked while opening it")

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

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
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            cur = self._reader.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
