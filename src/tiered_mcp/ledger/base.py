"""The ledger's interface: the rows it keeps, `LedgerStore` (what every other layer may use), and `open_ledger`.

Two backends implement it over the same SQL (ledger/sql.py) and the same named migrations (ledger/migrations.py):
`ledger.sqlite.Ledger`, a SQLite file (the default), and `ledger.postgres.PostgresLedger`, a PostgreSQL database
that several server replicas share (the `postgres` extra). `open_ledger` picks one from the target: a
`postgresql://` URL, else a file path.

Every method is synchronous and short; async code calls them through `off_loop`, which runs them in a worker thread
so the event loop never waits on a disk or a database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio

from tiered_mcp.core.config import is_postgres_url

if TYPE_CHECKING:
    from tiered_mcp.core.config import Config
    from tiered_mcp.core.receipts import Receipt

GROUPS = ("tool", "tier", "model", "caller")
POSTGRES_EXTRA_HINT = "pip install 'tiered-mcp[postgres]'"

T = TypeVar("T")
_THREADS = anyio.CapacityLimiter(8)  # ledger work in flight at once; the rest queue without taking anyio's pool


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a ledger method in a worker thread (the event loop never blocks on the ledger)."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=_THREADS)


def spend_key(day: str, tool: str | None = None, caller: str | None = None, evidence: bool = False) -> str:
    """The running total a budget cap reads: all spend of a UTC day, one tool's, one tool's evidence work's
    (`evidence`), or one caller's."""
    if tool is not None and evidence:
        return f"evidence:{tool}:{day}"
    if tool is not None:
        return f"tool:{tool}:{day}"
    if caller is not None:
        return f"caller:{caller}:{day}"
    return f"day:{day}"


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
class CacheEntry:
    """An answer to keep for identical calls until `expires` (a Unix time)."""

    key: str
    output: dict[str, Any]
    tier: str
    model: str
    expires: float


@dataclass(frozen=True)
class CallWrite:
    """One call to write: its receipt, arguments and output (kept only with store_inputs), and a cache entry."""

    receipt: Receipt
    arguments: Any = None
    output: Any = None
    cache: CacheEntry | None = None


@dataclass(frozen=True)
class Settle:
    """A budget hold shrunk to what its request spent, written with the next batch of rows (see `Budget.settle`)."""

    hold: str
    spent: float
    expires: float  # a Unix time


@dataclass(frozen=True)
class ShadowRow:
    """One shadow comparison, keyed by what produced it: the bound tier's answer scored against the comparison
    tier's. `status` is "scored", "failed" (a run or the judge failed) or "skipped" (too many runs pending, or a budget cap
    refused the run or its judge; `detail` says why)."""

    tool: str
    call_id: str | None
    shadow_call_id: str | None
    tier: str
    comparison_tier: str
    score: float | None
    agree: bool | None
    detail: str
    cost_usd: float | None
    comparison_cost_usd: float | None
    model: str | None = None
    comparison_model: str | None = None
    spec_version: str | None = None
    confidence: float | None = None
    args_key: str | None = None
    status: str = "scored"


@dataclass(frozen=True)
class UsageRow:
    """Totals for one group of answered calls (a tool, tier, model or caller; "all" for the grand total), or for
    one kind of evidence work (key "shadow", "judge" or "eval").

    `baseline_usd` and `saved_usd` count only calls whose figures rest on reported tokens; `estimated_baseline_usd`
    and `estimated_saved_usd` are the rest (the local tier, providers that send no usage), shown apart. `cost_usd` is
    every call's spend: spend is never understated.
    """

    key: str
    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    baseline_usd: float
    saved_usd: float
    estimated_saved_usd: float
    estimated_calls: int
    unpriced_calls: int
    estimated_baseline_usd: float = 0.0


@dataclass(frozen=True)
class Usage:
    """What `usage` shows: answers per group and in total, evidence spend per kind, and the bottom line."""

    rows: list[UsageRow]
    total: UsageRow
    evidence: list[UsageRow]

    @property
    def evidence_usd(self) -> float:
        return sum(e.cost_usd for e in self.evidence)

    @property
    def net_saved_usd(self) -> float:
        """The measured saving less what the evidence cost."""
        return self.total.saved_usd - self.evidence_usd

    def as_dict(self, by: str = "tool") -> dict[str, Any]:
        """The JSON form (`usage --json`, the `tiered://usage` resource)."""
        from dataclasses import asdict

        return {f"by_{by}": [asdict(r) for r in self.rows], "total": asdict(self.total),
                "evidence": [asdict(e) for e in self.evidence], "evidence_usd": self.evidence_usd,
                "net_saved_usd": self.net_saved_usd}


class LedgerStore(Protocol):
    """What the call path, budgets, shadow runs, reports and the CLI use of a ledger. Safe to share between tasks,
    threads and processes; call it from async code through `off_loop`."""

    store_inputs: bool
    location: str  # where it lives, fit to print (a URL's password masked)

    def write(self, calls: list[CallWrite], shadows: list[ShadowRow], config: Config,
              settles: Sequence[Settle] = ()) -> None: ...
    def record(self, receipt: Receipt, config: Config, arguments: Any = None, output: Any = None) -> str: ...
    def usage(self, since: str | None = None, by: str = "tool", caller: str | None = None) -> Usage: ...
    def spent(self, since: str, tool: str | None = None, session: str | None = None) -> float: ...
    def budget_reserve(self, caps: list[tuple[str, float]], amount: float, hold: str, now: float,
                       ttl_s: float) -> tuple[bool, dict[str, float]]: ...
    def budget_settle(self, hold: str, spent: float, now: float, ttl_s: float) -> None: ...
    def budget_committed(self, keys: list[str], now: float) -> dict[str, float]: ...
    def budget_sweep(self, now: float) -> None: ...
    def cache_get(self, key: str, now: float) -> tuple[dict[str, Any], str, str] | None: ...
    def cache_get_many(self, keys: Sequence[str], now: float) -> dict[str, tuple[dict[str, Any], str, str]]: ...
    def cache_sweep(self, now: float) -> int: ...
    def shadows(self, since: str | None = None, tool: str | None = None) -> list[ShadowRow]: ...
    def compared(self, tool: str, args_key: str, model: str, comparison_model: str, spec_version: str) -> bool: ...
    def call_counts(self, since: str | None = None) -> dict[str, int]: ...
    def stored_calls(self, tool: str | None = None, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]: ...
    def stored_answers(self, tier: str, tool: str | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...
    def calls(self) -> list[dict[str, Any]]: ...
    def attempts(self, call: int | str) -> list[dict[str, Any]]: ...
    def applied_migrations(self) -> list[str]: ...
    def recent_calls(self, limit: int = 20, tool: str | None = None, outcome: str | None = None,
                     since: str | None = None) -> list[dict[str, Any]]: ...
    def call_detail(self, call: int | str) -> dict[str, Any] | None: ...
    def autotier_states(self, tool: str | None = None) -> dict[str, tuple[int, dict[str, Any]]]: ...
    def autotier_update(self, tool: str, update: Callable[[dict[str, Any] | None], tuple[dict[str, Any],
                        list[dict[str, Any]]]]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]: ...
    def tier_switches(self, tool: str | None = None, limit: int = 100, since: str | None = None
                      ) -> list[dict[str, Any]]: ...
    def sentinel_add(self, tool: str, set_key: str, args_key: str, arguments: dict[str, Any],
                     reference: dict[str, Any], baselines: dict[str, bool]) -> bool: ...
    def sentinel_baseline(self, tool: str, set_key: str, args_key: str, tier_key: str, agreed: bool) -> None: ...
    def sentinel_items(self, tool: str, set_key: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def open_ledger(target: str | Path, store_inputs: bool = False) -> LedgerStore:
    """The ledger at `target`: a `postgresql://` URL (shared by replicas), else a SQLite file path.

    Raises:
        ConfigError: a PostgreSQL URL without the `postgres` extra installed, or a database that cannot be reached
            or set up (the message never carries the URL's password); a SQLite file that cannot be created.
    """
    if is_postgres_url(target):
        from tiered_mcp.ledger.postgres import PostgresLedger

        return PostgresLedger(str(target), store_inputs=store_inputs)
    from tiered_mcp.ledger.sqlite import Ledger

    return Ledger(target, store_inputs=store_inputs)
