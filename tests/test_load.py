"""Load on both ledgers, loopback only and bounded in count and time: 20 MCP clients x 10 concurrent calls over
Streamable HTTP against an upstream that takes 100 ms; and two replicas sharing one PostgreSQL ledger."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.errors import BudgetExceeded
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.serve.server import build_runner
from tiered_mcp.testing import FakeUpstream

from .conftest import server_env
from .test_http import cli_server, mcp_client, serving

pytestmark = pytest.mark.anyio

CLIENTS, CALLS_PER_CLIENT, UPSTREAM_LATENCY_S = 20, 10, 0.1
LABELS = ["bug", "feature", "billing"]


def replica(ledger: str, upstream: FakeUpstream, config: Path | None = None) -> Runner:
    """A server's runner as `tiered-mcp serve --ledger LEDGER` builds it, talking to the fake upstream."""
    return build_runner(str(config) if config else None, (), ledger,
                        env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": upstream.base_url})


async def test_20_clients_x_10_concurrent_calls_over_http_lose_no_rows(ledger_target):
    answers: list[Any] = []

    async def client(c: int, base: str) -> None:
        async with mcp_client(base) as session, anyio.create_task_group() as tg:
            for i in range(CALLS_PER_CLIENT):
                tg.start_soon(call, session, f"client {c}, call {i}: the app crashes when I press save")

    async def call(session: Any, text: str) -> None:
        answers.append(await session.call_tool("classify", {"text": text, "labels": LABELS}))

    with FakeUpstream(latency_s=UPSTREAM_LATENCY_S) as upstream:
        runner = replica(ledger_target, upstream)
        started = time.perf_counter()
        with anyio.fail_after(120):
            async with serving(runner) as base, anyio.create_task_group() as tg:
                for c in range(CLIENTS):
                    tg.start_soon(client, c, base)
        elapsed = time.perf_counter() - started
        requests = len(upstream.completions())
    rows = runner.ledger.calls()
    runner.ledger.close()

    total = CLIENTS * CALLS_PER_CLIENT
    assert len(answers) == total and not [a for a in answers if a.is_error]
    assert all(a.structured_content["label"] in LABELS for a in answers)
    ids = {a.meta[RECEIPT_META_KEY]["call_id"] for a in answers}
    assert len(rows) == total and {r["uid"] for r in rows} == ids and None not in ids
    assert all(r["ok"] == 1 and r["kind"] == "call" for r in rows)
    assert requests >= total
    # 200 calls at 100 ms each, 32 in flight per provider: about 0.7 s of upstream time; the bound is generous.
    assert elapsed < 60, f"{total} calls took {elapsed:.1f} s"


async def test_two_replicas_share_one_postgres_ledger_and_its_budgets(pg_url, tmp_path):
    config = tmp_path / "team.toml"
    config.write_text("[budgets]\ndaily_usd = 5.0\n", encoding="utf-8")
    per_replica = 50
    receipts: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    async def calls(name: str, runner: Runner) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(per_replica):
                tg.start_soon(one, name, runner, f"replica {name}, call {i}: the invoice is wrong")

    async def one(name: str, runner: Runner, text: str) -> None:
        receipts[name].append((await runner.call("classify", {"text": text, "labels": LABELS})).receipt)

    with FakeUpstream(latency_s=0.05) as upstream:
        a, b = replica(pg_url, upstream, config), replica(pg_url, upstream, config)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(calls, "a", a)
                tg.start_soon(calls, "b", b)

        rows = a.ledger.calls()
        assert len(rows) == 2 * per_replica and rows == b.ledger.calls()
        assert {r["uid"] for r in rows} == {r["call_id"] for rs in receipts.values() for r in rs}
        assert {r["session"] for r in rows} == {a.session, b.session}
        spent = sum(r["cost_usd"] for rs in receipts.values() for r in rs)
        assert spent > 0
        for runner in (a, b):  # each replica's daily budget counts the other's calls too
            status = await runner.budget.status("classify")
            assert status["budgets.daily_usd"]["spent_usd"] == pytest.approx(spent, abs=1e-12)

        # A third replica whose cap sits just above what the other two spent refuses before calling upstream.
        tight = tmp_path / "tight.toml"
        tight.write_text(f"[budgets]\ndaily_usd = {spent + 0.001}\n", encoding="utf-8")
        c = replica(pg_url, upstream, tight)
        before = len(upstream.completions())
        with pytest.raises(BudgetExceeded, match=rf"\${spent:.4f} spent"):
            await c.call("classify", {"text": "one more", "labels": LABELS})
        assert len(upstream.completions()) == before
        midnight = datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00")
        assert c.ledger.spent(midnight) == pytest.approx(spent)
        for runner in (a, b, c):
            await runner.aclose()
            runner.ledger.close()


async def test_two_server_processes_share_the_postgres_ledger_and_never_print_its_password(pg_url, tmp_path):
    """`tiered-mcp serve --transport http` twice on one ledger: one with the password in the URL, one with it in
    PGPASSWORD (as the README advises); their logs at DEBUG must not carry it."""
    password = re.match(r"postgresql://[^:]+:([^@]+)@", pg_url).group(1)
    no_password = pg_url.replace(f":{password}@", "@", 1)
    per_server = 10
    answers: list[Any] = []

    async def load(base: str) -> None:
        async with mcp_client(base, token=None) as session, anyio.create_task_group() as tg:
            for i in range(per_server):
                tg.start_soon(call, session, f"{base} call {i}: refund please")

    async def call(session: Any, text: str) -> None:
        answers.append(await session.call_tool("classify", {"text": text, "labels": LABELS}))

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with FakeUpstream(latency_s=UPSTREAM_LATENCY_S) as upstream:
        env = server_env(upstream, tmp_path)
        with anyio.fail_after(90):
            async with (cli_server(tmp_path / "a", env, "--ledger", pg_url, "--log-level", "DEBUG") as a,
                        cli_server(tmp_path / "b", {**env, "PGPASSWORD": password}, "--ledger", no_password,
                                   "--log-level", "DEBUG") as b,
                        anyio.create_task_group() as tg):
                tg.start_soon(load, a)
                tg.start_soon(load, b)
    assert len(answers) == 2 * per_server and not [x for x in answers if x.is_error]
    from tiered_mcp.ledger.base import open_ledger

    ledger = open_ledger(pg_url)
    rows = ledger.calls()
    ledger.close()
    assert len(rows) == 2 * per_server and len({r["session"] for r in rows}) == 2
    logs = "".join((tmp_path / d / f).read_text(encoding="utf-8") for d in "ab" for f in ("stdout.log", "stderr.log"))
    assert logs and password not in logs
