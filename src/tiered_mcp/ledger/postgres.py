"""The PostgreSQL ledger: the same tables and queries as the SQLite one, in a database several replicas share.

`ledger = "postgresql://user@host/db"` in the config (or `--ledger URL`) selects it; it needs the `postgres` extra
(psycopg 3 and its connection pool). Put the password in PGPASSWORD or ~/.pgpass rather than in the URL; a password
in the URL is masked wherever the URL is printed. Tables go in the first schema of the connection's search_path
(`?options=-csearch_path%3Dtiered` picks one).

Several replicas may start at once: the schema is created under a transaction-scoped advisory lock, and not at all
when the tables already exist (so a role without CREATE rights can use tables an administrator made). Text columns
compare bytewise (COLLATE "C"), as SQLite does, so ISO timestamps and group names order the same on both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tiered_mcp.core.errors import ConfigError
from tiered_mcp.ledger.base import POSTGRES_EXTRA_HINT, mask_dsn
from tiered_mcp.ledger.migrations import POSTGRES, migrate
from tiered_mcp.ledger.sql import SqlLedger

POOL_MIN, POOL_MAX = 1, 10
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key for schema creation: any constant every replica agrees on ("tiered" in ASCII).
_SCHEMA_LOCK = 0x746965726564


def _pg(sql: str) -> str:
    # The shared queries use qmark placeholders and contain no literal ? or %.
    return sql.replace("?", "%s")


class _Cursor:
    """A psycopg cursor that takes the shared queries' `?` placeholders."""

    def __init__(self, cur: Any) -> None:
        self.raw = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(_pg(sql), params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        return self.raw.executemany(_pg(sql), params)


class PostgresLedger(SqlLedger):
    """A ledger in a PostgreSQL database, through a connection pool. Safe to share between tasks, threads,
    processes and machines.

    Args:
        dsn: a `postgresql://` URL (libpq's parameters may follow `?`).
        store_inputs: keep each call's arguments and output.

    Raises:
        ConfigError: psycopg is not installed, or the database cannot be reached or set up. The message carries
            the URL with its password masked.
    """

    def __init__(self, dsn: str, store_inputs: bool = False) -> None:
        self.store_inputs = store_inputs
        self.location = mask_dsn(dsn)
        self._secrets = _passwords_in(dsn)
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise ConfigError(f"ledger {self.location}: a PostgreSQL ledger needs the postgres extra: "
                              f"{POSTGRES_EXTRA_HINT}") from None
        self._dict_row = dict_row
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error as e:
            raise ConfigError(f"ledger {self.location}: not a valid PostgreSQL URL: {self._scrub(e)}") from None
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params:
            kwargs["application_name"] = "tiered-mcp"
        try:
            with psycopg.connect(dsn, **kwargs) as conn:
                self._setup(conn)
        except psycopg.Error as e:
            raise ConfigError(f"ledger {self.location}: cannot open the PostgreSQL ledger: {self._scrub(e)}") from None
        self._pool = ConnectionPool(dsn, kwargs=kwargs, min_size=POOL_MIN, max_size=POOL_MAX, open=False,
                                    name="tiered-mcp-ledger")
        try:
            self._pool.open(wait=True, timeout=float(params.get("connect_timeout") or 0) or CONNECT_TIMEOUT_S + 5)
        except PoolTimeout as e:
            self._pool.close()
            raise ConfigError(f"ledger {self.location}: cannot open a connection pool: {self._scrub(e)}") from None

    def _scrub(self, error: BaseException) -> str:
        text = str(error).strip()
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @staticmethod
    def _setup(conn: Any) -> None:
        from tiered_mcp.ledger.migrations import MIGRATIONS

        names = [m.__name__ for m in MIGRATIONS]
        if conn.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]:
            done = {r[0] for r in conn.execute("SELECT name FROM _migrations").fetchall()}
            if all(n in done for n in names):
                return  # up to date: a role without CREATE rights can use tables an administrator made
        with conn.transaction(), conn.cursor() as cur:
            # Replicas starting together would race on the DDL (CREATE ... IF NOT EXISTS is not atomic here).
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            migrate(_Cursor(cur), POSTGRES)

    _lock_for_update = " FOR UPDATE"

    def close(self) -> None:
        self._pool.close()

    # ---- the backend hooks of SqlLedger ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield _Cursor(cur)

    def _insert_call(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql + " RETURNING id", params)
        return int(cur.raw.fetchone()[0])

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(_pg(sql), params).fetchall()

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=self._dict_row) as cur:
            return cur.execute(_pg(sql), params).fetchall()



def _passwords_in(dsn: str) -> list[str]:
    """The URL's password as written and as decoded, to scrub from error messages (longest first)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    url = urlsplit(dsn)
    found = {p for p in (url.password, url.password and unquote(url.password)) if p}
    pairs = [part.partition("=")[::2] for part in url.query.split("&")] + parse_qsl(url.query)
    found |= {v for k, v in pairs if "password" in k.lower() and v}
    return sorted(found, key=len, reverse=True)
