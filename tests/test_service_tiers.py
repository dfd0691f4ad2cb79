"""Provider service tiers (OpenAI's flex processing) with the real openai client against the loopback upstream:
the request asks for the tier's service tier, each attempt is priced at the service tier the response reports,
429 resource_unavailable is retried and then (when configured) falls back to the standard service tier; receipts,
baselines (like with like) and ledger rows say which service tier was used. Every figure is worked by hand from
the prices per million tokens below (docs/accounting.md).
"""

import pytest

from tiered_mcp.call.budget import worst_case_usd
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.prices import cost_of, price_of
from tiered_mcp.models._openai import OpenAIModels
from tiered_mcp.testing import FakeResponse, ScriptedModel, reply, service_tier_unavailable

from .conftest import SECRET

pytestmark = pytest.mark.anyio

# USD per million tokens (input, cached input, output): the defaults, and flex at half of them (gpt-5 models).
NANO, MINI, FLAG = (0.20, 0.02, 1.25), (0.75, 0.075, 4.50), (2.50, 0.25, 15.00)
NANO_FLEX, FLAG_FLEX = (0.10, 0.01, 0.625), (1.25, 0.125, 7.50)
LABELS = ["bug", "feature"]
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}
ARGS = {"text": "it crashes", "labels": LABELS}


def usd(price, tokens_in, tokens_out, cached=0):
    return ((tokens_in - cached) * price[0] + cached * price[1] + tokens_out * price[2]) / 1e6


def close(a, b):
    return a is not None and a == pytest.approx(b, abs=1e-12, rel=0)


@pytest.fixture
async def openai_model():
    m = OpenAIModels({"OPENAI_API_KEY": SECRET})
    yield m
    await m.aclose()


def flex_runner(make_runner, upstream, openai_model, nano=None, **config):
    return make_runner(openai_model, providers={"openai": {"base_url": upstream.base_url}},
                       tiers={"nano": {"service_tier": "flex", **(nano or {})}}, **config)


async def test_flex_is_asked_for_and_priced_at_what_the_response_reports(make_runner, upstream, openai_model, ledger):
    runner = flex_runner(make_runner, upstream, openai_model)
    upstream.push("gpt-5.4-nano", FakeResponse(content=GOOD, usage=(1000, 50)),  # served at flex, as asked
                  FakeResponse(content=GOOD, usage=(1000, 50), service_tier="default"))  # asked flex, got default
    flex = (await runner.call("classify", ARGS)).receipt
    default = (await runner.call("classify", {**ARGS, "text": "it crashes again"})).receipt
    assert [s.body["service_tier"] for s in upstream.completions()] == ["flex", "flex"]

    # Flex: 1000 x 0.10 + 50 x 0.625 = 131.25e-6; the baseline is the same tokens on the flagship at flex
    # (like with like): 1000 x 1.25 + 50 x 7.50 = 1625e-6.
    assert flex["service_tier"] == "flex" and flex["attempts"][0]["service_tier"] == "flex"
    assert close(flex["cost_usd"], 131.25e-6) and close(flex["cost_usd"], usd(NANO_FLEX, 1000, 50))
    assert close(flex["baseline_usd"], 1625e-6) and close(flex["saved_usd"], 1625e-6 - 131.25e-6)
    # The provider served the flex request at default: priced at default, and so is the baseline.
    assert default["service_tier"] == "default"
    assert close(default["cost_usd"], 262.5e-6) and close(default["baseline_usd"], 3250e-6)

    # The ledger keeps each attempt's service tier and the receipts' figures.
    rows = {r["uid"]: r for r in ledger.calls()}
    for receipt, tier in ((flex, "flex"), (default, "default")):
        row = rows[receipt["call_id"]]
        assert close(row["cost_usd"], receipt["cost_usd"]) and close(row["baseline_usd"], receipt["baseline_usd"])
        [attempt] = ledger.attempts(receipt["call_id"])
        assert attempt["service_tier"] == tier
    usage = ledger.usage()
    assert close(usage.total.cost_usd, 131.25e-6 + 262.5e-6) and close(usage.total.baseline_usd, 1625e-6 + 3250e-6)


async def test_configured_service_tier_prices_win_and_a_tier_without_one_sends_none(make_runner, upstream,
                                                                                   openai_model):
    runner = flex_runner(make_runner, upstream, openai_model, nano={
        "service_tier_prices": {"flex": {"input_price": 0.12, "output_price": 0.70, "cached_input_price": 0.012}}})
    upstream.push("gpt-5.4-nano", FakeResponse(content=GOOD, usage=(1000, 50)))
    r = (await runner.call("classify", ARGS)).receipt
    assert close(r["cost_usd"], (1000 * 0.12 + 50 * 0.70) / 1e6)  # 155e-6
    # mini sets no service tier: nothing is sent, the fake reports none, priced at the standard rates.
    upstream.push("gpt-5.4-mini", FakeResponse(content=GOOD, usage=(1000, 50)))
    m = (await runner.call("classify", {**ARGS, "tier": "mini"})).receipt
    assert "service_tier" not in upstream.completions()[-1].body
    assert m["attempts"][0]["service_tier"] is None and "service_tier" not in m
    assert close(m["cost_usd"], usd(MINI, 1000, 50))


async def test_resource_unavailable_is_retried_with_backoff_and_costs_nothing(make_runner, upstream, openai_model,
                                                                              sleeps):
    runner = flex_runner(make_runner, upstream, openai_model)
    upstream.push("gpt-5.4-nano", service_tier_unavailable(), FakeResponse(content=GOOD, usage=(1000, 50)))
    r = (await runner.call("classify", ARGS)).receipt
    first, retry = r["attempts"]
    assert (first["outcome"], first["service_tier"], first["cost_usd"]) == ("resource_unavailable", "flex", 0.0)
    assert (retry["reason"], retry["outcome"], retry["service_tier"]) == ("retry", "ok", "flex")
    assert sleeps == [0.5]  # retry.base_s x 2**0, jitter 1
    assert close(r["cost_usd"], usd(NANO_FLEX, 1000, 50)) and r["tier"] == "nano"


async def test_with_a_fallback_the_standard_service_tier_answers_when_flex_has_no_capacity(
        make_runner, upstream, openai_model, sleeps, ledger):
    runner = flex_runner(make_runner, upstream, openai_model,
                         nano={"max_retries": 1, "service_tier_fallback": "default"})
    upstream.push("gpt-5.4-nano", service_tier_unavailable(), service_tier_unavailable(),
                  FakeResponse(content=GOOD, usage=(1000, 50)))
    r = (await runner.call("classify", ARGS)).receipt
    assert [s.body["service_tier"] for s in upstream.completions()] == ["flex", "flex", "default"]
    assert [(a["reason"], a["outcome"], a["service_tier"]) for a in r["attempts"]] == [
        ("first", "resource_unavailable", "flex"), ("retry", "resource_unavailable", "flex"),
        ("fallback", "ok", "default")]
    assert sleeps == [0.5]  # the fallback goes at once: it is another service tier's capacity
    # Answered at default: standard prices, and a standard baseline.
    assert close(r["cost_usd"], usd(NANO, 1000, 50)) and close(r["baseline_usd"], usd(FLAG, 1000, 50))
    assert [a["service_tier"] for a in ledger.attempts(r["call_id"])] == ["flex", "flex", "default"]


async def test_without_a_fallback_flex_without_capacity_moves_on_like_any_failed_tier(make_runner, upstream,
                                                                                     openai_model, sleeps):
    runner = flex_runner(make_runner, upstream, openai_model)
    upstream.push("gpt-5.4-nano", *[service_tier_unavailable() for _ in range(3)])  # first + the provider's 2 retries
    upstream.push("gpt-5.4-mini", FakeResponse(content=GOOD, usage=(1000, 50)))
    r = (await runner.call("classify", ARGS)).receipt
    assert [(a["tier"], a["outcome"]) for a in r["attempts"]] == [
        ("nano", "resource_unavailable"), ("nano", "resource_unavailable"), ("nano", "resource_unavailable"),
        ("mini", "ok")]
    assert sleeps == [0.5, 1.0] and close(r["cost_usd"], usd(MINI, 1000, 50))


async def test_an_ordinary_429_never_takes_the_fallback(make_runner, upstream, openai_model):
    runner = flex_runner(make_runner, upstream, openai_model,
                         nano={"max_retries": 0, "service_tier_fallback": "default"})
    upstream.push("gpt-5.4-nano", FakeResponse(status=429))
    upstream.push("gpt-5.4-mini", FakeResponse(content=GOOD, usage=(1000, 50)))
    r = (await runner.call("classify", ARGS)).receipt
    assert [(a["tier"], a["outcome"]) for a in r["attempts"]] == [("nano", "rate_limited"), ("mini", "ok")]


async def test_a_flex_request_waits_longer_and_a_tier_timeout_reaches_the_client(make_runner, upstream,
                                                                                 openai_model):
    model = ScriptedModel()
    runner = make_runner(model, tiers={"nano": {"service_tier": "flex"}, "mini": {"timeout_s": 5}},
                         tools={"summarize": {"service_tier": "flex"}})
    await runner.call("classify", ARGS)
    await runner.call("classify", {**ARGS, "tier": "mini"})
    await runner.call("summarize", {"text": "A long text.", "tier": "mini"})
    flex, mini, tool_flex = model.requests
    assert (flex.service_tier, flex.timeout_s) == ("flex", 900.0)  # OpenAI advises 15 minutes for flex
    assert (mini.service_tier, mini.timeout_s) == (None, 5.0)
    assert (tool_flex.tier, tool_flex.service_tier, tool_flex.timeout_s) == ("mini", "flex", 5.0)
    # The real client: a tier's timeout_s is the request's timeout (not the provider's 60 s).
    real = make_runner(openai_model, providers={"openai": {"base_url": upstream.base_url, "max_retries": 0}},
                       tiers={"nano": {"timeout_s": 0.2}}, escalation_ceiling="nano")
    upstream.push("gpt-5.4-nano", FakeResponse(content=GOOD, delay_s=5))
    with pytest.raises(Exception) as failed:
        await real.call("classify", ARGS)
    assert [a["outcome"] for a in failed.value.receipt["attempts"]] == ["timeout"]


async def test_a_scripted_reply_reports_its_service_tier(make_runner):
    model = ScriptedModel({"nano": [reply(GOOD, input_tokens=2000, output_tokens=100, service_tier="flex")]})
    r = (await make_runner(model, tiers={"nano": {"service_tier": "flex"}}).call("classify", ARGS)).receipt
    assert close(r["cost_usd"], usd(NANO_FLEX, 2000, 100)) and close(r["baseline_usd"], usd(FLAG_FLEX, 2000, 100))


def test_prices_per_service_tier():
    cfg = config_from_dict({"tiers": {
        "nano": {"service_tier_prices": {"priority": {"input_price": 0.40, "output_price": 2.50}}},
        "mini": {"provider": "openai", "model": "my-model", "input_price": 1.0, "output_price": 2.0}}})
    nano, mini = cfg.tiers["nano"], cfg.tiers["mini"]
    # flex on a gpt-5 model: half of every rate, the cached one included.
    p = price_of(nano, "flex")
    assert (p.input, p.output, p.cached_input) == (0.10, 0.625, 0.01) and "flex" in p.source
    assert close(cost_of(nano, 10_000, 100, 8_000, service_tier="flex"), usd(NANO_FLEX, 10_000, 100, cached=8_000))
    # default, auto and no report at all: the standard rates.
    for st in (None, "default", "auto"):
        assert close(cost_of(nano, 1000, 50, service_tier=st), usd(NANO, 1000, 50))
    # A service tier with no configured price and no known default is unknown, never made up.
    assert price_of(mini, "flex") is None and cost_of(mini, 1000, 50, service_tier="flex") is None
    assert cost_of(nano, 1000, 50, service_tier="scale") is None
    # A request that may be served at a dearer service tier is held at the dearer price.
    msgs = [{"role": "user", "content": "x"}]
    assert worst_case_usd(nano, msgs, 100, "priority") == pytest.approx((100 * 0.40 + 4096 * 2.50) / 1e6)
    assert worst_case_usd(nano, msgs, 100, "flex") == pytest.approx((100 * 0.20 + 4096 * 1.25) / 1e6)


async def test_a_baseline_whose_flagship_has_no_price_at_that_service_tier_is_unknown(make_runner):
    model = ScriptedModel({"nano": [reply(GOOD, input_tokens=1000, output_tokens=50, service_tier="flex")]})
    runner = make_runner(model, tiers={"nano": {"service_tier": "flex"}, "flagship": {
        "provider": "openai", "model": "other-flagship", "input_price": 3.0, "output_price": 12.0}})
    r = (await runner.call("classify", ARGS)).receipt
    assert close(r["cost_usd"], usd(NANO_FLEX, 1000, 50)) and r["baseline_usd"] is None and r["saved_usd"] is None


def test_the_tier_table_names_the_service_tier_a_tool_asks_for(specs):
    from tiered_mcp.serve.server import tier_table

    cfg = config_from_dict({"tiers": {"nano": {"service_tier": "flex"}},
                            "tools": {"summarize": {"service_tier": "flex"}}})
    rows = {r["tool"]: r for r in tier_table(cfg, specs)}
    assert rows["classify"]["tier"] == "nano" and rows["classify"]["service_tier"] == "flex"
    assert rows["summarize"]["tier"] == "mini" and rows["summarize"]["service_tier"] == "flex"
    assert all(("service_tier" in r) == (r["tier"] == "nano" or r["tool"] == "summarize") for r in rows.values())
    assert any(r["tier"] != "nano" and r["tool"] != "summarize" for r in rows.values())


def test_auto_tiering_estimates_a_flex_tier_at_its_flex_prices(specs):
    from tiered_mcp.call.budget import utc_now
    from tiered_mcp.evidence.tiering import AutoTiering

    cfg = config_from_dict({"tiers": {"nano": {"service_tier": "flex"}}, "tools": {"classify": {"auto": True}}})
    costs = AutoTiering(cfg, specs, None, utc_now).costs("classify", ("nano", "mini", "flagship"))
    # Before any call: 1000 input and 200 output tokens at each tier's prices, nano's at flex.
    assert close(costs["nano"], (1000 * 0.10 + 200 * 0.625) / 1e6) and close(costs["mini"], usd(MINI, 1000, 200))


async def test_a_flex_requests_budget_hold_outlives_its_long_timeout(make_runner, ledger):
    """A hold expires (for a process that died) 900 s after it is taken; a flex request may itself take 900 s, so
    its hold lasts its timeout plus 60 s: 950 s on, it is still held, where an ordinary request's is gone."""
    import time

    from tiered_mcp.ledger.base import spend_key

    held = {}

    def step(req):
        key = spend_key(time.strftime("%Y-%m-%d", time.gmtime()))
        held[req.tier] = ledger.budget_committed([key], time.time() + 950)[key]
        return reply(GOOD, input_tokens=10, output_tokens=1)

    model = ScriptedModel({"nano": [step], "mini": [step]})
    runner = make_runner(model, budgets={"daily_usd": 1.0}, tiers={"nano": {"service_tier": "flex"}})
    first = (await runner.call("classify", ARGS)).receipt
    await runner.call("classify", {**ARGS, "tier": "mini"})
    # nano's own hold (its worst case, ~$0.0051) is still counted 950 s on; at mini's request only the first
    # call's spend is (the scripted reply names no service tier: 10 x 0.20 + 1 x 1.25 = 3.25e-6).
    assert held["nano"] > 0.005 and close(first["cost_usd"], 3.25e-6) and close(held["mini"], 3.25e-6)
