"""Scale-out: three `tiered-mcp serve --transport http --stateless` processes behind haproxy (examples/haproxy.cfg),
one PostgreSQL ledger, real MCP clients over HTTP through the balancer (tests/replicas.py starts it all).

Bounded in count and time; the figures (calls/s, p50/p99) are benchmarks/replicas.py's, never asserted here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.ledger.base import open_ledger
from tiered_mcp.testing import FakeUpstream

from .test_http import TOKEN, mcp_client

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature", "billing"]
# A nano tier whose output cap is 200 tokens, so that a request's worst case (what the budget reserves) is small
# enough for many calls to be in flight under the cap at once. Prices as the built-in tier.
INPUT_PRICE, OUTPUT_PRICE, MAX_OUTPUT = 0.20, 1.25, 200
NANO = (f'[tiers.nano]\nprovider = "openai"\nmodel = "gpt-5.4-nano"\ninput_price = {INPUT_PRICE}\n'
        f"output_price = {OUTPUT_PRICE}\nmax_output_tokens = {MAX_OUTPUT}\n")


@dataclass
class Outcome:
    started: float
    ended: float
    result: Any = None  # the CallToolResult, when one came back
    error: BaseException | None = None  # what the client raised instead

    @property
    def receipt(self) -> dict[str, Any]:
        return self.result.meta[RECEIPT_META_KEY]


def token_args(folder: Path) -> tuple[str, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return ("--stateless", "--token-file", str(path))


async def caller(url: str, name: str, outcomes: list[Outcome], calls: int | None = None,
                 until: anyio.Event | None = None) -> None:
    """One MCP client through the balancer, calling classify `calls` times, or until `until` is set.

    A call whose connection breaks takes the SDK client down with it (the error leaves its task group): it is
    recorded as lost and the caller carries on with a new client, as a host would reconnect.
    """
    i = 0

    def more() -> bool:
        return (calls is None or i < calls) and not (until is not None and until.is_set())

    while more():
        started = time.monotonic()
        try:
            async with mcp_client(url) as client:
                while more():
                    started = time.monotonic()
                    with anyio.fail_after(30):
                        result = await client.call_tool("classify", {
                            "text": f"{name}, call {i}: the app crashes on save", "labels": LABELS})
                    outcomes.append(Outcome(started, time.monotonic(), result=result))
                    i += 1
        except Exception as e:  # noqa: BLE001 - a lost answer is what the kill test counts
            outcomes.append(Outcome(started, time.monotonic(), error=e))
            i += 1


def ledger_rows(dsn: str) -> list[dict[str, Any]]:
    ledger = open_ledger(dsn)
    try:
        return ledger.calls()
    finally:
        ledger.close()


CALLERS, CALLS_EACH, CAP_USD = 48, 6, 0.01


async def test_three_replicas_answer_every_call_write_one_row_each_and_hold_one_daily_budget(replica_set, tmp_path):
    outcomes: list[Outcome] = []
    with FakeUpstream(latency_s=0.05) as upstream:
        with replica_set(upstream.base_url, config=f"{NANO}[budgets]\ndaily_usd = {CAP_USD}\n",
                         args=token_args(tmp_path)) as rs:
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for c in range(CALLERS):
                        tg.start_soon(caller, rs.url, f"caller {c}", outcomes, CALLS_EACH)
                # No request in flight now, so nothing is held: one caller spends until the cap refuses it.
                drain: list[Outcome] = []
                while not drain or not drain[-1].result.is_error:
                    await caller(rs.url, f"drain {len(drain)}", drain, 1)
                    assert len(drain) < 200, "the cap never refused the drain"
                # Every replica, asked directly, refuses as well: each reads the spend the others wrote.
                direct: list[Outcome] = []
                for r in rs.replicas:
                    await caller(r.base, f"direct {r.name}", direct, 1)
            upstream_requests = len(upstream.completions())
            rows = ledger_rows(rs.dsn)
            ledger = open_ledger(rs.dsn)
            spent_today = ledger.spent(datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00"))
            ledger.close()

    everything = outcomes + drain + direct
    assert len(outcomes) == CALLERS * CALLS_EACH
    assert not [o.error for o in everything if o.error], "every call gets an answer, through the balancer too"
    ok = [o for o in everything if not o.result.is_error]
    refused = [o for o in everything if o.result.is_error]
    assert ok and refused and {o.receipt["attempts"][-1]["outcome"] for o in refused} == {"budget"}
    assert all("budget budgets.daily_usd" in o.result.content[0].text for o in refused)
    assert all(o.result.is_error for o in direct)

    # One ledger row per call, by distinct call id: none lost, none written twice.
    ids = [o.receipt["call_id"] for o in everything]
    assert len(set(ids)) == len(ids) and None not in ids
    assert len(rows) == len(ids) and {r["uid"] for r in rows} == set(ids)
    assert {r["uid"] for r in rows if r["ok"]} == {o.receipt["call_id"] for o in ok}
    assert len({r["session"] for r in rows}) == 3, "haproxy spread the load over the three replicas"
    # A refused call never reached the upstream.
    assert upstream_requests == len(ok)

    # The cap held across replicas: what all three spent stays within it (the reservation is each request's worst
    # case, so there is no overshoot), and the drain stopped because the next worst case no longer fitted.
    spent = sum(r["cost_usd"] for r in rows)
    assert spent == pytest.approx(sum(o.receipt["cost_usd"] for o in ok), abs=1e-12)
    assert spent_today == pytest.approx(spent, abs=1e-12)
    assert spent <= CAP_USD
    worst_bound = 1000 * INPUT_PRICE / 1e6 + MAX_OUTPUT * OUTPUT_PRICE / 1e6  # any of these prompts is < 1,000 tokens
    assert CAP_USD - spent < worst_bound


async def _answered(outcomes: list[Outcome], at_least: int) -> None:
    while sum(o.result is not None for o in outcomes) < at_least:
        await anyio.sleep(0.02)


@pytest.mark.parametrize("durable", [False, True], ids=["queued", "durable"])
async def test_a_killed_replica_loses_only_its_in_flight_calls_and_takes_calls_again_after_a_restart(
        replica_set, tmp_path, durable):
    outcomes: list[Outcome] = []
    stop = anyio.Event()
    callers = 24
    with FakeUpstream(latency_s=0.05) as upstream:
        with replica_set(upstream.base_url, config="ledger_durable = true\n" if durable else None,
                         args=token_args(tmp_path)) as rs:
            victim = rs.replicas[1]
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for c in range(callers):
                        tg.start_soon(caller, rs.url, f"caller {c}", outcomes, None, stop)
                    await _answered(outcomes, 100)  # every replica warm
                    # A crash: SIGKILL, with whatever the victim had in flight.
                    in_flight = int(_stat(rs, victim.name, "scur"))
                    await anyio.to_thread.run_sync(victim.kill)
                    killed_at = time.monotonic()  # dead by now: it has been reaped
                    await anyio.to_thread.run_sync(lambda: rs.wait_status({victim.name: "DOWN"}, 10))
                    down_at = time.monotonic()
                    await anyio.sleep(0.5)
                    restart_at = time.monotonic()
                    await anyio.to_thread.run_sync(victim.start)
                    await anyio.to_thread.run_sync(victim.wait_ready)
                    await anyio.to_thread.run_sync(lambda: rs.wait_status({victim.name: "UP"}, 15))
                    await _answered(outcomes, len(outcomes) + 100)
                    stop.set()
            rows = ledger_rows(rs.dsn)

    lost = [o for o in outcomes if o.error]
    ok = [o for o in outcomes if o.result is not None and not o.result.is_error]
    assert not [o for o in outcomes if o.result is not None and o.result.is_error]
    print(f"killed replica had {in_flight} in flight: {len(lost)} lost ({sorted({type(o.error).__name__ for o in lost})}),"
          f" {len(ok)} answered; haproxy marked it DOWN after {down_at - killed_at:.2f} s")
    # Only calls the victim had in flight when it died are lost: each began before the kill, and leastconn had put
    # about a third of the callers on it (haproxy's count, read just before the kill, is printed above). Any call
    # begun after the kill was answered, calls went on while the victim was down, and it took calls again once back.
    assert len(lost) <= callers // 2
    assert all(o.started < killed_at for o in lost)
    assert [o for o in ok if killed_at < o.started < restart_at]
    uids = [r["uid"] for r in rows]
    assert len(set(uids)) == len(uids)
    rowless = [o for o in ok if o.receipt["call_id"] not in set(uids)]
    print(f"answered calls without a ledger row: {len(rowless)}")
    if durable:
        # ledger_durable: an answer is sent only after its row is committed, so no answered call lacks one.
        assert rowless == []
    else:
        # By default the ledger writer sends an answer before its row is committed (call/writer.py), so a SIGKILL
        # loses the rows still queued in the victim's writer: only calls the victim answered just before the kill
        # (its writer's backlog: one transaction's worth on a quiet machine) may lack a row. Every call begun after
        # the kill has exactly one.
        assert all(o.started < killed_at for o in rowless), rowless
        assert len(rowless) < len(ok) / 10  # a writer's backlog, not a share of the traffic
    # A lost call may still have its row (the victim wrote it, then died before answering).
    assert len(uids) - (len(ok) - len(rowless)) <= len(lost)
    # Four processes wrote: r1, r3, and the victim before the kill and after its restart.
    assert len({r["session"] for r in rows}) == 4


def _stat(rs: Any, server: str, field: str) -> str:
    text = rs.balancer.command("show stat")
    header, *lines = [line for line in text.splitlines() if line]
    names = header.lstrip("# ").split(",")
    for line in lines:
        values = dict(zip(names, line.split(","), strict=False))
        if values["pxname"] == "tiered" and values["svname"] == server:
            return values[field]
    raise KeyError(server)


AUTO = "cache_ttl_s = 0\n[tools.classify]\nauto = true\n"


async def test_an_auto_tier_decision_under_load_across_replicas_is_taken_once(replica_set, pg_url, tmp_path):
    """classify with `auto = true`, its stored state one agreeing comparison short of stepping down from the
    flagship to mini. Every replica starts on that state and serves its first calls on the flagship, each probing
    mini in the background; every probe agrees, so each replica alone would step down. Through the shared ledger
    (each observation lands on the stored state under a row lock) the step is taken once: one tier_switches row."""
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.evidence.autotier import ToolState
    from tiered_mcp.evidence.stats import clears_bar
    from tiered_mcp.evidence.tiering import policy_config, versions_of
    from tiered_mcp.specs.spec import load_specs

    config = config_from_dict({"cache_ttl_s": 0, "tools": {"classify": {"auto": True}}})  # = AUTO
    ladder = policy_config(config, "classify").ladder
    versions = versions_of(config, load_specs().get("classify"), ladder)
    need = next(n for n in range(1, 1000) if clears_bar(n, n, 0.95, 0.05))  # the step-down test (88 of 88)
    # nano clearly below the bar: neither probed nor waited for, so mini is the only step there is to take.
    brink = ToolState(tool="classify", tier="flagship",
                      evidence={versions.key("mini"): (need - 1, need - 1), versions.key("nano"): (10, 300)})
    setup = open_ledger(pg_url)
    try:
        setup.autotier_update("classify", lambda stored: (brink.as_dict(), []))
    finally:
        setup.close()

    outcomes: list[Outcome] = []
    callers, calls_each = 24, 4
    with FakeUpstream(latency_s=0.05) as upstream:
        with replica_set(upstream.base_url, config=AUTO, args=token_args(tmp_path)) as rs:
            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for c in range(callers):
                        tg.start_soon(caller, rs.url, f"caller {c}", outcomes, calls_each)
        # The replicas have stopped (SIGTERM): each let its background evidence runs finish and flushed its writes.
        ledger = open_ledger(pg_url)
        try:
            switches = ledger.tier_switches("classify")
            [(_, stored)] = ledger.autotier_states("classify").values()
            shadows = [s for s in ledger.shadows(tool="classify") if s.status == "scored"]
            sessions = {r["uid"]: r["session"] for r in ledger.calls()}
        finally:
            ledger.close()

    assert not [o.error for o in outcomes if o.error] and not [o for o in outcomes if o.result.is_error]
    assert len(outcomes) == callers * calls_each
    assert "flagship" in {o.receipt["tier"] for o in outcomes}  # the cold start; later calls may be on mini
    probed = {sessions[s.call_id] for s in shadows if s.tier == "mini" and s.comparison_tier == "flagship"}
    assert len(probed) >= 2, "more than one replica observed mini agree (each would have stepped down alone)"
    assert all(s.agree for s in shadows)
    # One decision, whatever the number of replicas that saw the evidence for it.
    assert [(w["kind"], w["from_tier"], w["to_tier"]) for w in switches] == [("step_down", "flagship", "mini")]
    assert stored["tier"] == "mini"
    # Every replica's comparisons of mini landed on the one stored state: none lost to a concurrent write.
    compared = sum(1 for s in shadows if s.tier == "mini")
    assert stored["evidence"][versions.key("mini")] == [need - 1 + compared, need - 1 + compared]
