"""The one path every request takes, seen from outside: answers never wait behind evidence work or the ledger, the
cache keeps only answers that passed every check, budgets follow an injected clock across UTC midnight, and two
processes on one PostgreSQL ledger cannot overrun a shared cap."""

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import anyio
import pytest

from tiered_mcp.call.options import CallOptions
from tiered_mcp.core.errors import BudgetExceeded, MissingKey
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}
UNSURE = {**GOOD, "confidence": 0.2}


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_second_process_holding_the_write_lock_stalls_no_call(tmp_path, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict

    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    runner = Runner(config_from_dict({"cache_ttl_s": 60}), specs, ScriptedModel(fallback=lambda r: reply(GOOD)),
                    ledger, env={"OPENAI_API_KEY": "k"})
    holder = await anyio.open_process([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        db = sqlite3.connect({str(path)!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        sys.stdin.readline()
        db.execute("COMMIT")
    """)])
    assert holder.stdout is not None and holder.stdin is not None
    try:
        async with runner.running():
            assert (await holder.stdout.receive()).strip() == b"locked"
            # The lock is held until we say so: every call (and cache read) must finish while it is.
            with anyio.fail_after(20):
                for i in range(5):
                    await runner.call("classify", {"text": f"item {i}", "labels": LABELS})
                await runner.call("classify", {"text": "item 0", "labels": LABELS})
            assert ledger.calls() == []  # nothing could be written yet
            await holder.stdin.send(b"go\n")
            await runner.writer.flush()
        assert len(ledger.calls()) == 6
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.aclose()
        ledger.close()


async def test_answers_never_wait_for_shadow_runs(make_runner, ledger):
    gate = anyio.Event()

    async def model(req):
        if req.tier == "flagship":
            await gate.wait()  # shadow runs hang until the answers are in
        return reply(GOOD)

    runner = make_runner(ScriptedModel(fallback=model), tools={"classify": {"shadow_rate": 1.0}},
                         providers={"openai": {"max_concurrency": 2}}, shadow={"max_pending": 8})
    async with runner.running():
        with anyio.fail_after(10):
            for i in range(6):  # three times the provider's limit, with every shadow run still in flight
                await runner.call("classify", {"text": f"item {i}", "labels": LABELS})
        assert runner.background_pending == 6
        gate.set()
    assert len([s for s in ledger.shadows() if s.status == "scored"]) == 6


async def test_an_unsure_answer_that_stood_because_nothing_above_could_run_is_not_cached(make_runner):
    # The tiers above have no key: the real client raises MissingKey for them, as the script does here.
    keyless = [MissingKey("environment variable OTHER_KEY_UNSET is not set")]
    model = ScriptedModel({"nano": [reply(UNSURE), reply(UNSURE)], "mini": keyless * 2, "flagship": keyless * 2})
    config = {"cache_ttl_s": 60, "providers": {"other": {"api_key_env": "OTHER_KEY_UNSET"}},
              "tiers": {"mini": {"provider": "other", "model": "m"}, "flagship": {"provider": "other", "model": "f"}}}
    runner = make_runner(model, **config)
    first = await runner.call("classify", {"text": "x", "labels": LABELS})
    assert first.output == UNSURE and "so this answer stands" in first.receipt["attempts"][0]["detail"]
    second = await runner.call("classify", {"text": "x", "labels": LABELS})
    assert "cached" not in second.receipt and model.tiers_called().count("nano") == 2


async def test_an_answer_that_stood_on_relaxed_checks_is_not_served_to_later_calls(make_runner):
    model = ScriptedModel({"nano": [reply(UNSURE), reply(UNSURE)], "mini": [reply(GOOD)]})
    runner = make_runner(model, cache_ttl_s=60)
    relaxed = await runner.call("classify", {"text": "x", "labels": LABELS},
                                options=CallOptions(escalate_on=["invalid"]))
    assert relaxed.output == UNSURE
    strict = await runner.call("classify", {"text": "x", "labels": LABELS})
    assert strict.output == GOOD and model.tiers_called() == ["nano", "nano", "mini"]
    again = await runner.call("classify", {"text": "x", "labels": LABELS})
    assert again.receipt["cached"] is True and again.output == GOOD  # a clean answer is cached


async def test_budgets_roll_over_at_utc_midnight_and_the_cache_expires_on_the_clock(make_runner):
    clock = Clock(datetime(2026, 12, 1, 23, 59, 59, tzinfo=timezone.utc))
    big = reply(GOOD, input_tokens=1_000_000, output_tokens=0)  # $0.20 on nano
    model = ScriptedModel({"nano": [big, big]})
    runner = make_runner(model, budgets={"daily_usd": 0.203}, runner_options={"clock": clock})
    await runner.call("classify", {"text": "a", "labels": LABELS})
    with pytest.raises(BudgetExceeded, match="wait for the next UTC day"):
        await runner.call("classify", {"text": "b", "labels": LABELS})
    clock.now += timedelta(seconds=2)  # 00:00:01 on 2 December: a new day, a fresh cap
    ok = await runner.call("classify", {"text": "b", "labels": LABELS})
    assert ok.receipt["budget"]["budgets.daily_usd"]["spent_usd"] == pytest.approx(0.2 + 0.000125 * 4096 / 100,
                                                                                   abs=0.01)
    cached = make_runner(ScriptedModel(), cache_ttl_s=60, runner_options={"clock": clock})
    await cached.call("classify", {"text": "c", "labels": LABELS})
    clock.now += timedelta(seconds=59)
    assert (await cached.call("classify", {"text": "c", "labels": LABELS})).receipt.get("cached") is True
    clock.now += timedelta(seconds=2)
    assert "cached" not in (await cached.call("classify", {"text": "c", "labels": LABELS})).receipt


_REPLICA = textwrap.dedent("""
    import json, sys
    import anyio
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.errors import BudgetExceeded, MissingKey
    from tiered_mcp.core.tokens import count_messages
    from tiered_mcp.ledger.base import open_ledger
    from tiered_mcp.specs.spec import load_specs
    from tiered_mcp.testing import ScriptedModel, reply

    url, cap, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    good = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}

    async def answer(req):
        await anyio.sleep(0.05)  # requests overlap, within and across the two processes
        # Each request costs exactly its worst case: the prompt's tokens and the whole output cap.
        return reply(good, input_tokens=count_messages(req.messages), output_tokens=100)

    async def main():
        config = config_from_dict({"cache_ttl_s": 0, "budgets": {"daily_usd": cap},
                                   "tiers": {"nano": {"max_output_tokens": 100}}})
        ledger = open_ledger(url)
        runner = Runner(config, load_specs(), ScriptedModel(fallback=answer), ledger, env={"OPENAI_API_KEY": "k"})
        done = {"ok": 0, "refused": 0}

        async def one(i):
            try:
                await runner.call("classify", {"text": f"{name}-item-{i:03d}", "labels": ["bug", "feature"]})
                done["ok"] += 1
            except BudgetExceeded:
                done["refused"] += 1

        async with anyio.create_task_group() as tg:
            for i in range(150):
                tg.start_soon(one, i)
        ledger.close()
        print(json.dumps(done))

    anyio.run(main)
""")


async def test_two_processes_on_one_postgres_ledger_cannot_overrun_a_shared_cap(pg_url, specs):
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.prices import cost_of
    from tiered_mcp.ledger.base import open_ledger

    config = config_from_dict({})
    prompt = specs.get("classify").render({"text": "a-item-000", "labels": LABELS, "multi_label": False})
    from tiered_mcp.core.tokens import count_messages

    worst = cost_of(config.tiers["nano"], count_messages(prompt), 100)
    # Room for twelve requests between the two processes, not for 300; 150 each at once make the reservations race
    # (without the row lock the check-then-hold overshot the cap in about half the runs of this test).
    cap = 12.5 * worst
    open_ledger(pg_url).close()  # the schema exists before the two start
    procs = [subprocess.Popen([sys.executable, "-c", _REPLICA, pg_url, repr(cap), name], stdout=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    ledger = open_ledger(pg_url)
    try:
        calls = ledger.calls()
    finally:
        ledger.close()
    spent = sum(c["cost_usd"] for c in calls)
    answered = sum(o["ok"] for o in outs)
    assert spent <= cap + 1e-12, (spent, cap, outs)
    assert 10 <= answered <= 12 and sum(o["refused"] for o in outs) == 300 - answered
    assert len([c for c in calls if c["ok"]]) == answered
