"""Accounting against hand computations: every receipt's spend, baseline and saving on scripted tiers whose answers
and token counts are known, failed attempts included; `usage` as the exact sum of the receipts; evidence spend
apart; estimated and cached tokens. The definitions are in docs/accounting.md; each figure here is worked by hand
from the prices per million tokens below.
"""

import math

import pytest

from tiered_mcp.core.errors import ToolFailed
from tiered_mcp.core.tokens import count, count_messages
from tiered_mcp.evidence.shadow import Shadows, judge
from tiered_mcp.models.base import ModelReply
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

# USD per million tokens: (input, cached input, output), the defaults of the config.
NANO, MINI, FLAG = (0.20, 0.02, 1.25), (0.75, 0.075, 4.50), (2.50, 0.25, 15.00)
LABELS = ["bug", "feature"]
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}
BAD = "{}"  # not valid against the schema: repaired once, then the call climbs


def usd(price, tokens_in, tokens_out, cached=0):
    return ((tokens_in - cached) * price[0] + cached * price[1] + tokens_out * price[2]) / 1e6


def close(a, b):
    return a == pytest.approx(b, abs=1e-9, rel=0)


async def test_every_figure_follows_the_definitions(make_runner, ledger):
    script = {
        "nano": [
            reply(GOOD, input_tokens=1000, output_tokens=50),  # A: answered on nano
            reply(BAD, input_tokens=1000, output_tokens=40), reply(BAD, input_tokens=1100, output_tokens=40),  # B
            reply(BAD, input_tokens=1000, output_tokens=40), reply(BAD, input_tokens=1100, output_tokens=40),  # C
            reply(BAD, input_tokens=900, output_tokens=30), reply(BAD, input_tokens=950, output_tokens=30),  # D
        ],
        "mini": [
            reply(GOOD, input_tokens=1200, output_tokens=60),  # B: answered on mini
            reply(BAD, input_tokens=1200, output_tokens=60), reply(BAD, input_tokens=1300, output_tokens=60),  # C
            reply(BAD, input_tokens=1000, output_tokens=30), reply(BAD, input_tokens=1000, output_tokens=30),  # D
        ],
        "flagship": [
            reply(GOOD, input_tokens=1250, output_tokens=70),  # C: answered on the flagship
            reply(BAD, input_tokens=800, output_tokens=20), reply(BAD, input_tokens=800, output_tokens=20),  # D
        ],
    }
    runner = make_runner(ScriptedModel(script))
    receipts = []
    for text in ("a", "b", "c"):
        receipts.append((await runner.call("classify", {"text": text, "labels": LABELS})).receipt)
    with pytest.raises(ToolFailed) as failed:
        await runner.call("classify", {"text": "d", "labels": LABELS})
    receipts.append(failed.value.receipt)
    a, b, c, d = receipts

    # A: spend and baseline of the same tokens on nano and on the flagship.
    assert close(a["cost_usd"], usd(NANO, 1000, 50)) and close(a["baseline_usd"], usd(FLAG, 1000, 50))
    assert close(a["saved_usd"], usd(FLAG, 1000, 50) - usd(NANO, 1000, 50))
    # B: the two failed nano attempts are spent; the baseline is the answering (mini) attempt's tokens on the
    # flagship, never the sum of every attempt.
    b_cost = usd(NANO, 1000, 40) + usd(NANO, 1100, 40) + usd(MINI, 1200, 60)
    assert close(b["cost_usd"], b_cost) and close(b["baseline_usd"], usd(FLAG, 1200, 60))
    assert close(b["saved_usd"], usd(FLAG, 1200, 60) - b_cost)
    # C: the call reached the flagship: the baseline is the flagship's own attempt, and the saving is negative —
    # the climb cost more than asking the flagship at once.
    c_cost = usd(NANO, 1000, 40) + usd(NANO, 1100, 40) + usd(MINI, 1200, 60) + usd(MINI, 1300, 60) \
        + usd(FLAG, 1250, 70)
    assert close(c["cost_usd"], c_cost) and close(c["baseline_usd"], usd(FLAG, 1250, 70))
    assert c["saved_usd"] < 0 and close(c["saved_usd"], usd(FLAG, 1250, 70) - c_cost)
    # D: failed on every tier: it saves nothing, and what it spent is a loss.
    d_cost = usd(NANO, 900, 30) + usd(NANO, 950, 30) + 2 * usd(MINI, 1000, 30) + 2 * usd(FLAG, 800, 20)
    assert d["ok"] is False and close(d["cost_usd"], d_cost)
    assert d["baseline_usd"] == 0 and close(d["saved_usd"], -d_cost)

    # usage is the sum of the receipts, to the last digit that matters.
    usage = ledger.usage()
    assert usage.total.calls == 4 and usage.total.failed == 1
    assert close(usage.total.cost_usd, a["cost_usd"] + b["cost_usd"] + c["cost_usd"] + d["cost_usd"])
    assert close(usage.total.baseline_usd, a["baseline_usd"] + b["baseline_usd"] + c["baseline_usd"])
    assert close(usage.total.saved_usd, sum(r["saved_usd"] for r in receipts))
    assert usage.evidence == [] and close(usage.net_saved_usd, usage.total.saved_usd)


async def test_cached_input_tokens_are_priced_at_the_cached_rate(make_runner):
    cached = ModelReply(content='{"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}',
                        input_tokens=10_000, output_tokens=100, cached_input_tokens=8_000, reasoning_tokens=40)
    r = (await make_runner(ScriptedModel({"nano": [cached]})).call("classify", {"text": "x", "labels": LABELS})).receipt
    assert close(r["cost_usd"], usd(NANO, 10_000, 100, cached=8_000))
    assert close(r["baseline_usd"], usd(FLAG, 10_000, 100, cached=8_000))
    [attempt] = r["attempts"]
    assert (attempt["cached_input_tokens"], attempt["reasoning_tokens"]) == (8_000, 40)


async def test_a_provider_that_sends_no_usage_is_estimated_never_free(make_runner, ledger):
    content = '{"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}'
    model = ScriptedModel({"nano": [ModelReply(content=content, usage_reported=False)]})
    r = (await make_runner(model).call("classify", {"text": "x", "labels": LABELS})).receipt
    prompt = count_messages(model.requests[0].messages)
    [attempt] = r["attempts"]
    assert (attempt["input_tokens"], attempt["output_tokens"], attempt["estimated"]) == (prompt, count(content), True)
    assert close(r["cost_usd"], usd(NANO, prompt, count(content))) and r["cost_usd"] > 0
    assert r["estimated"] is True
    # An estimated saving is shown apart, never mixed into the measured one.
    usage = ledger.usage()
    assert usage.total.saved_usd == 0 and close(usage.total.estimated_saved_usd, r["saved_usd"])
    assert usage.total.estimated_calls == 1


async def test_evidence_spend_is_its_own_line_and_never_a_saving(make_runner, ledger):
    def answer(req):
        if req.schema_name == "judge":
            return reply({"score_a": 0.9, "score_b": 0.9, "reason": "fine"}, input_tokens=500, output_tokens=10)
        tokens = {"mini": (2000, 100), "flagship": (2000, 120)}[req.tier]  # the two arms
        return reply({"summary": "s", "key_points": [], "method": "abstractive"}, input_tokens=tokens[0],
                     output_tokens=tokens[1])

    runner = make_runner(ScriptedModel(fallback=answer), tools={"summarize": {"shadow_rate": 1.0}})
    async with runner.running():
        answered = (await runner.call("summarize", {"text": "A long text."})).receipt
    usage = ledger.usage()
    assert close(usage.total.saved_usd, usd(FLAG, 2000, 100) - usd(MINI, 2000, 100))
    kinds = {e.key: e for e in usage.evidence}
    assert set(kinds) == {"shadow", "judge"}
    assert close(kinds["shadow"].cost_usd, usd(FLAG, 2000, 120)) and kinds["shadow"].saved_usd == 0
    assert close(kinds["judge"].cost_usd, usd(NANO, 500, 10))  # the judge is neither arm: nano grades mini vs flagship
    assert close(usage.evidence_usd, usd(FLAG, 2000, 120) + usd(NANO, 500, 10))
    assert close(usage.net_saved_usd, answered["saved_usd"] - usage.evidence_usd)
    evidence = [c for c in ledger.calls() if c["kind"] != "call"]
    assert all(c["baseline_usd"] == 0 for c in evidence)


async def test_a_judge_is_held_to_the_budget(make_runner, ledger, specs):
    model = ScriptedModel(fallback=lambda req: reply({"score_a": 1, "score_b": 1, "reason": "r"}))
    runner = make_runner(model, budgets={"daily_usd": 0.0001})  # below the judge's worst case on the flagship
    spec = specs.get("summarize")
    candidate = {"summary": "s", "key_points": [], "method": "abstractive"}
    score, detail, refused = await judge(runner, spec, "flagship", {"text": "t"}, candidate, candidate)
    assert score is None and refused and "judge refused by the budget" in detail and "budgets.daily_usd" in detail
    assert model.requests == []
    [row] = ledger.calls()
    assert (row["kind"], row["ok"], row["cost_usd"]) == ("judge", 0, 0)


async def test_a_judge_never_runs_on_the_local_tier(make_runner, specs):
    model = ScriptedModel()
    runner = make_runner(model)
    candidate = {"summary": "s", "key_points": [], "method": "extractive"}
    score, detail, refused = await judge(runner, specs.get("summarize"), "local", {"text": "t"}, candidate, candidate)
    assert score is None and not refused and "local tier cannot judge" in detail and model.requests == []


async def test_local_answers_are_estimates_shown_apart(runner_local, ledger):
    r = (await runner_local.call("classify", {"text": "I was charged twice this month",
                                              "labels": ["billing problem", "login problem"]})).receipt
    [attempt] = r["attempts"]
    assert r["tier"] == "local" and r["cost_usd"] == 0 and attempt["estimated"] is True
    assert close(r["baseline_usd"], usd(FLAG, attempt["input_tokens"], attempt["output_tokens"]))
    assert r["would_have_cost_usd"]["nano"] == pytest.approx(usd(NANO, attempt["input_tokens"],
                                                                 attempt["output_tokens"]), abs=1e-12)
    usage = ledger.usage()
    assert usage.total.saved_usd == 0 and close(usage.total.estimated_saved_usd, r["saved_usd"])


@pytest.fixture
def runner_local(specs, ledger):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.models.local import LocalEngine

    engine = LocalEngine()
    if not engine.is_installed:
        pytest.skip("the local extra is not installed")
    return Runner(config_from_dict({"cache_ttl_s": 0}), specs, ScriptedModel(), ledger, env={}, local=engine,
                  observers=(Shadows(),))


async def test_shadow_and_judge_on_the_local_tier_open_no_socket(specs, ledger):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.models.local import LocalEngine
    from tiered_mcp.testing import network_guard

    engine = LocalEngine()
    if not engine.is_installed:
        pytest.skip("the local extra is not installed")
    await engine.embedder()  # load the model first: loading reads files, it connects nowhere either
    config = config_from_dict({"cache_ttl_s": 0, "tools": {"classify": {"shadow_rate": 1.0, "shadow_tier": "local"},
                                                           "summarize": {"shadow_rate": 1.0, "shadow_tier": "local"}}})
    def answer(req):
        if req.schema_name == "judge":
            return reply({"score_a": 1.0, "score_b": 1.0, "reason": "both fine"})
        if req.schema_name == "summarize":
            return reply({"summary": "A short text.", "key_points": [], "method": "abstractive"})
        return reply(GOOD)

    model = ScriptedModel(fallback=answer)
    runner = Runner(config, specs, model, ledger, env={"OPENAI_API_KEY": "sk-test"}, local=engine,
                    observers=(Shadows(),))
    with network_guard(allow_loopback=False) as refused:
        async with runner.running():
            await runner.call("classify", {"text": "The app crashes when I click save.", "labels": LABELS})
            await runner.call("summarize", {"text": "A short text. It has two sentences."})
    assert refused == []
    rows = {r.tool: r for r in ledger.shadows()}
    assert rows["classify"].comparison_tier == "local" and rows["classify"].status == "scored"
    # The local tier cannot judge: the flagship (not an arm) grades mini against local, through the remote seam.
    assert rows["summarize"].status == "scored" and rows["summarize"].detail.startswith("judge flagship")
    assert [r.tier for r in model.requests] == ["nano", "mini", "flagship"]  # answers and the judge; no shadow


def test_prices_come_from_the_table_at_the_call_s_real_usage():
    from tiered_mcp.core.config import Tier
    from tiered_mcp.core.prices import cost_of, price_of

    tier = Tier(provider="openai", model="gpt-5.4")  # no prices in the config: the genai-prices table
    price = price_of(tier)
    assert (price.input, price.output, price.cached_input) == (2.50, 15.00, 0.25)  # not the long-context rates
    assert math.isclose(cost_of(tier, 1000, 1000), usd(FLAG, 1000, 1000), abs_tol=1e-12)
    # A call past the long-context threshold is priced at the rates the table gives for that size of call.
    assert cost_of(tier, 300_000, 1000) > usd(FLAG, 300_000, 1000)
