"""Budgets (enforced before spending, held across restarts) and the cache of identical calls."""

import time

import anyio
import pytest

from tiered_mcp.call.options import CallOptions
from tiered_mcp.core.errors import BudgetExceeded
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature"]}
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "crash"}
# gpt-5.4-nano: 4096 output tokens at $1.25/M is about $0.0051 worst case per request.
BIG = reply(GOOD, input_tokens=1_000_000, output_tokens=0)  # costs exactly $0.20 on nano


async def test_a_request_that_could_pass_the_daily_cap_is_refused_before_it_is_made(make_runner):
    model = ScriptedModel({"nano": [BIG]})
    runner = make_runner(model, budgets={"daily_usd": 0.203})
    first = await runner.call("classify", ARGS)
    assert first.receipt["budget"]["budgets.daily_usd"]["remaining_usd"] == pytest.approx(0.003)
    with pytest.raises(BudgetExceeded) as err:
        await runner.call("classify", {**ARGS, "text": "another"})
    msg = str(err.value)
    assert "budgets.daily_usd = $0.20" in msg and "$0.0030 remains" in msg and "nano request" in msg
    assert len(model.requests) == 1  # refused before spending


async def test_budgets_hold_across_restarts(make_runner):
    await make_runner(ScriptedModel({"nano": [BIG]})).call("classify", ARGS)
    model = ScriptedModel()
    with pytest.raises(BudgetExceeded):
        await make_runner(model, budgets={"daily_usd": 0.2}).call("classify", ARGS)
    assert model.requests == []


async def test_session_and_tool_caps(make_runner):
    await make_runner(ScriptedModel({"nano": [BIG]})).call("classify", ARGS)  # an earlier session's spend
    fresh = make_runner(ScriptedModel(), budgets={"session_usd": 0.01})
    assert (await fresh.call("classify", ARGS)).receipt["budget"]["budgets.session_usd"]["spent_usd"] < 0.01
    with pytest.raises(BudgetExceeded, match="tools.classify.daily_usd"):
        await make_runner(ScriptedModel(), tools={"classify": {"daily_usd": 0.1}}).call("classify", ARGS)
    other = await make_runner(ScriptedModel(), tools={"classify": {"daily_usd": 0.1}}).call(
        "rank", {"query": "q", "items": ["a"]})
    assert other.receipt["tier"] == "nano"


async def test_a_budget_stop_on_escalation_keeps_the_unsure_answer(make_runner):
    unsure = {**GOOD, "confidence": 0.2}
    model = ScriptedModel({"nano": [reply(unsure)]})
    # nano's worst case fits; mini's ($0.0185 for 4096 output tokens at $4.50/M) does not.
    result = await make_runner(model, budgets={"daily_usd": 0.01}).call("classify", ARGS)
    assert result.output == unsure
    assert [a["outcome"] for a in result.receipt["attempts"]] == ["low_confidence", "budget"]
    assert "the budget stops the climb" in result.receipt["attempts"][0]["detail"]


async def test_shadow_and_failed_spend_count(make_runner, ledger):
    model = ScriptedModel({"nano": [reply("{}", input_tokens=1_000_000, output_tokens=0), reply(GOOD)]})
    await make_runner(model).call("classify", ARGS)
    assert ledger.spent("") == pytest.approx(0.2 + (100 * 0.2 + 20 * 1.25) / 1e6)


async def test_identical_calls_come_from_the_cache(make_runner, ledger):
    model = ScriptedModel({"nano": [reply(GOOD)]})
    runner = make_runner(model, cache_ttl_s=60)
    first = await runner.call("classify", ARGS)
    second = await runner.call("classify", ARGS)
    assert len(model.requests) == 1
    assert second.output == first.output
    assert second.receipt["cached"] is True and second.receipt["cost_usd"] == 0 and second.receipt["tier"] == "nano"
    assert [r["cached"] for r in ledger.calls()] == [0, 1]
    await runner.call("classify", {**ARGS, "text": "different"})
    await runner.call("classify", ARGS, options=CallOptions(cache=False))
    assert len(model.requests) == 3


async def test_the_cache_expires_and_skips_tools_that_are_not_idempotent(make_runner):
    model = ScriptedModel()
    runner = make_runner(model, cache_ttl_s=0.2)
    await runner.call("classify", ARGS)
    time.sleep(0.25)
    await runner.call("classify", ARGS)
    assert len(model.requests) == 2
    runner = make_runner(model, cache_ttl_s=60)
    await runner.call("draft", {"instructions": "say hi"})
    await runner.call("draft", {"instructions": "say hi"})
    assert len(model.requests) == 4


async def test_a_new_spec_version_or_model_misses_the_cache(make_runner, specs):
    model = ScriptedModel()
    await make_runner(model, cache_ttl_s=60).call("classify", ARGS)
    await make_runner(model, cache_ttl_s=60, tiers={"nano": {"model": "gpt-5.4-nano-2026"}}).call("classify", ARGS)
    assert len(model.requests) == 2


async def test_a_capped_request_takes_one_transaction_of_its_own_and_settles_with_the_writer(tmp_path, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger

    class Counted(Ledger):
        def __init__(self, path):
            super().__init__(path)
            self.seen = []

        def budget_reserve(self, *args):
            self.seen.append("reserve")
            return super().budget_reserve(*args)

        def budget_settle(self, *args):
            self.seen.append("settle")
            return super().budget_settle(*args)

        def write(self, calls, shadows, config, settles=()):
            self.seen.append(f"write {len(calls)} calls, {len(settles)} settlements")
            return super().write(calls, shadows, config, settles)

    # Within its hold (nano's worst case for this prompt is its o200k tokens plus all 4,096 output tokens,
    # > $0.005): 100 x $0.20 + 1,000 x $1.25 per million = $0.00127.
    within = reply(GOOD, input_tokens=100, output_tokens=1_000)
    ledger = Counted(tmp_path / "ledger.sqlite3")
    config = config_from_dict({"cache_ttl_s": 0, "budgets": {"daily_usd": 1.0}})
    runner = Runner(config, specs, ScriptedModel({"nano": [within, BIG]}), ledger, env={"OPENAI_API_KEY": "k"})
    async with runner.running():
        result = await runner.call("classify", ARGS)
        assert ledger.seen[0] == "reserve" and "settle" not in ledger.seen
        await runner.writer.flush()
        # The settlement and the call's row went in the writer's transactions (one, or two when the writer took
        # the settlement before the row was queued); the cap now counts exactly what the request cost.
        assert ledger.seen[1:] in (["write 1 calls, 1 settlements"], ["write 0 calls, 1 settlements",
                                                                       "write 1 calls, 0 settlements"])
        assert result.receipt["budget"]["budgets.daily_usd"]["spent_usd"] == pytest.approx(0.00127)
        # A request that cost more than its hold ($0.20, a provider counting far more tokens than we did) settles
        # at once: queued, the cap would see only the smaller hold until the writer's next transaction.
        del ledger.seen[:]
        await runner.call("classify", {**ARGS, "text": "another text"})
        assert ledger.seen[:2] == ["reserve", "settle"]
        assert (await runner.budget.status("classify"))["budgets.daily_usd"]["spent_usd"] == pytest.approx(0.20127)
    assert await runner.budget.status("classify") == {"budgets.daily_usd": {
        "cap_usd": 1.0, "spent_usd": pytest.approx(0.20127), "remaining_usd": pytest.approx(0.79873)}}
    ledger.close()


def test_the_cache_key_with_its_shared_part_encoded_once_is_the_same_key():
    import hashlib
    import json

    from tiered_mcp.call.cache import cache_key, key_json, keyed

    parts = ["classify", 2, "digest", [[{"model": "m", "t": None}, "http://x/v1"]], [["invalid"], 0.5, []], "ana"]
    args = {"text": "Zoë's app crashes", "labels": ["b", "a"], "n": 1.5}
    blob = json.dumps([parts, args], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    want = hashlib.sha256(blob.encode()).hexdigest()  # the key as earlier releases computed it: entries still hit
    assert cache_key(parts, args) == keyed(key_json(parts), args) == want


def test_a_receipts_attempts_are_what_asdict_gives():
    from dataclasses import asdict

    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.receipts import Attempt, Receipt

    receipt = Receipt(tool="classify", tier="nano", model="m", ok=True)
    receipt.attempts = [Attempt("nano", "m", "first", outcome="invalid", detail="d", input_tokens=3, cost_usd=None),
                        Attempt("mini", "m2", "escalation", trigger="invalid", outcome="ok", estimated=True),
                        Attempt("nano", "m", "first", outcome="ok", batch_api=True)]
    # batch_api is said only where it is true (a Batch API attempt), so ordinary receipts keep their shape.
    expected = [{k: v for k, v in asdict(a).items() if k != "batch_api" or v} for a in receipt.attempts]
    assert receipt.to_dict(config_from_dict({}))["attempts"] == expected
    assert [("batch_api" in a) for a in expected] == [False, False, True]


async def test_concurrent_cache_misses_are_looked_up_together(tmp_path, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger

    class Counted(Ledger):
        lookups: list[int] = []

        def cache_get_many(self, keys, now):
            self.lookups.append(len(keys))
            return super().cache_get_many(keys, now)

    config = config_from_dict({"cache_ttl_s": 60})
    path = tmp_path / "ledger.sqlite3"
    texts = [f"ticket {i}" for i in range(20)]
    # Another process answered these before: this server's memory holds none of them, the ledger all.
    earlier = Runner(config, specs, ScriptedModel(fallback=lambda req: reply(GOOD)), Ledger(path),
                     env={"OPENAI_API_KEY": "k"})
    for text in texts:
        await earlier.call("classify", {**ARGS, "text": text})
    earlier.ledger.close()
    ledger = Counted(path)
    model = ScriptedModel(fallback=lambda req: reply(GOOD))
    runner = Runner(config, specs, model, ledger, env={"OPENAI_API_KEY": "k"})
    results = {}
    async with runner.running():
        async with anyio.create_task_group() as tg:
            for text in [*texts, "new"]:
                async def one(text=text):
                    results[text] = await runner.call("classify", {**ARGS, "text": text})
                tg.start_soon(one)
    assert all(results[t].receipt.get("cached") for t in texts) and not results["new"].receipt.get("cached")
    assert len(model.requests) == 1
    assert sum(ledger.lookups) == 21 and len(ledger.lookups) < 21  # misses waited together: fewer queries than calls
    ledger.close()
