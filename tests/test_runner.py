"""The runner against a scripted model: validation, repair, retries, escalation, receipts and the ledger."""

import pytest

from tiered_mcp.call.runner import UnknownTool
from tiered_mcp.core.errors import (
    ArgumentsError,
    MissingKey,
    RateLimited,
    TierNotAllowed,
    ToolFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature", "question"]}
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "A crash is a defect."}


async def test_a_valid_answer_comes_back_with_its_receipt(make_runner, ledger):
    model = ScriptedModel({"nano": [reply(GOOD, input_tokens=1000, output_tokens=100)]})
    result = await make_runner(model).call("classify", ARGS)
    assert result.output == GOOD
    r = result.receipt
    assert (r["tier"], r["model"], r["ok"]) == ("nano", "gpt-5.4-nano", True)
    assert [a["reason"] for a in r["attempts"]] == ["first"]
    assert (r["input_tokens"], r["output_tokens"]) == (1000, 100)
    assert r["cost_usd"] == pytest.approx((1000 * 0.20 + 100 * 1.25) / 1e6)
    assert r["baseline_usd"] == pytest.approx((1000 * 2.50 + 100 * 15.00) / 1e6, abs=1e-12)
    assert r["saved_usd"] == pytest.approx(r["baseline_usd"] - r["cost_usd"], abs=1e-12)
    [row] = ledger.calls()
    assert (row["tool"], row["tier"], row["ok"], row["input_tokens"]) == ("classify", "nano", 1, 1000)
    assert row["arguments"] is None and row["output"] is None  # store_inputs is off by default


async def test_the_request_carries_the_rendered_prompt_and_the_bound_schema(make_runner):
    model = ScriptedModel({"nano": [reply(GOOD)]})
    await make_runner(model).call("classify", ARGS)
    [req] = model.requests
    assert req.messages[0]["role"] == "system" and ARGS["text"] not in req.messages[0]["content"]
    assert ARGS["text"] in req.messages[1]["content"]
    assert req.schema["properties"]["label"]["enum"] == ARGS["labels"]
    assert req.strict is True and req.schema_name == "classify"


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"labels": ["a", "b"]}, "'text' is a required property"),
        ({"text": "x", "labels": ["only-one"]}, "arguments.labels"),
        ({"text": "x", "labels": ["a", "b"], "multi_label": "yes"}, "arguments.multi_label: 'yes' is not of type"),
        ({"text": "x", "labels": ["a", "b"], "colour": 1}, "Additional properties are not allowed ('colour'"),
    ],
)
async def test_bad_arguments_name_the_field_and_the_rule(make_runner, arguments, words):
    model = ScriptedModel()
    with pytest.raises(ArgumentsError) as err:
        await make_runner(model).call("classify", arguments)
    assert words in str(err.value)
    assert model.requests == []


async def test_an_unknown_tool_is_not_a_tool_failure(make_runner):
    with pytest.raises(UnknownTool, match="available: classify"):
        await make_runner().call("nope", {})


async def test_an_invalid_answer_is_repaired_on_the_same_tier(make_runner):
    bad = {**GOOD, "confidence": 3}
    model = ScriptedModel({"nano": [reply(bad), reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS)
    assert result.output == GOOD
    assert [(a["tier"], a["reason"], a["outcome"]) for a in result.receipt["attempts"]] == [
        ("nano", "first", "invalid"), ("nano", "repair", "ok")]
    repair = model.requests[1].messages
    assert repair[-2]["role"] == "assistant" and "confidence" in repair[-1]["content"]
    assert "greater than the maximum of 1" in repair[-1]["content"]


async def test_a_label_outside_the_list_is_invalid(make_runner):
    model = ScriptedModel({"nano": [reply({**GOOD, "label": "crash"}), reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS)
    assert "is not one of" in result.receipt["attempts"][0]["detail"]


async def test_still_invalid_after_repair_escalates_up_the_ladder(make_runner):
    model = ScriptedModel({"nano": [reply("not json"), reply("{}")], "mini": [reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS)
    assert result.receipt["tier"] == "mini"
    assert [(a["tier"], a["reason"], a["trigger"]) for a in result.receipt["attempts"]] == [
        ("nano", "first", None), ("nano", "repair", None), ("mini", "escalation", "invalid")]
    assert "not JSON" in result.receipt["attempts"][0]["detail"]


async def test_the_escalation_ceiling_stops_the_ladder(make_runner):
    model = ScriptedModel(fallback=lambda req: reply("{}"))
    with pytest.raises(ToolFailed) as err:
        await make_runner(model, tools={"classify": {"escalation_ceiling": "mini"}}).call("classify", ARGS)
    assert model.tiers_called() == ["nano", "nano", "mini", "mini"]
    assert "escalation_ceiling" in str(err.value) and "[tools.classify]" in str(err.value)
    assert err.value.receipt["ok"] is False and len(err.value.receipt["attempts"]) == 4


async def test_failure_lists_every_tier_and_why(make_runner):
    model = ScriptedModel({"nano": [UpstreamRejected("nano: HTTP 401: bad key")],
                           "mini": [reply("{}"), reply("{}")],
                           "flagship": [reply(None, refusal="I can't help with that")]})
    with pytest.raises(ToolFailed) as err:
        await make_runner(model).call("classify", ARGS)
    msg = str(err.value)
    assert "nano (gpt-5.4-nano): rejected" in msg and "mini (gpt-5.4-mini): invalid" in msg
    assert "flagship (gpt-5.4): refused" in msg


async def test_a_per_call_tier_is_honoured_up_to_the_ceiling(make_runner):
    model = ScriptedModel()
    result = await make_runner(model).call("classify", {**ARGS, "tier": "mini"})
    assert result.receipt["tier"] == "mini"
    with pytest.raises(TierNotAllowed, match="above the server's call_tier_ceiling"):
        await make_runner(model).call("classify", {**ARGS, "tier": "flagship"})
    result = await make_runner(model, call_tier_ceiling="flagship").call("classify", {**ARGS, "tier": "flagship"})
    assert result.receipt["tier"] == "flagship"


async def test_config_overrides_a_tools_tier(make_runner):
    model = ScriptedModel()
    result = await make_runner(model, tools={"classify": {"tier": "mini"}}).call("classify", ARGS)
    assert result.receipt["tier"] == "mini"


async def test_429_waits_for_retry_after_then_succeeds(make_runner, sleeps):
    model = ScriptedModel({"nano": [RateLimited("slow down", retry_after=1.5), reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS)
    assert sleeps == [1.5]
    assert [(a["reason"], a["outcome"]) for a in result.receipt["attempts"]] == [
        ("first", "rate_limited"), ("retry", "ok")]


async def test_a_retry_after_beyond_the_limit_escalates_at_once(make_runner, sleeps):
    model = ScriptedModel({"nano": [RateLimited("slow down", retry_after=3600)]})
    result = await make_runner(model).call("classify", ARGS)
    assert sleeps == [] and result.receipt["tier"] == "mini"
    assert "max_retry_after_s" in result.receipt["attempts"][0]["detail"]


async def test_server_errors_back_off_exponentially_then_escalate(make_runner, sleeps):
    model = ScriptedModel({"nano": [UpstreamUnavailable("HTTP 500")] * 3, "mini": [UpstreamTimeout("timed out")]})
    result = await make_runner(model, retry={"base_s": 0.5, "max_s": 8}).call("classify", ARGS)
    assert sleeps == [0.5, 1.0, 0.5]  # two retries on nano, then mini's first retry
    assert [(a["tier"], a["outcome"]) for a in result.receipt["attempts"]] == [
        ("nano", "server_error"), ("nano", "server_error"), ("nano", "server_error"),
        ("mini", "timeout"), ("mini", "ok")]


async def test_permanent_errors_are_not_retried(make_runner, sleeps):
    model = ScriptedModel({"nano": [MissingKey("OPENAI_API_KEY is not set")]})
    await make_runner(model).call("classify", ARGS)
    assert sleeps == [] and model.tiers_called() == ["nano", "mini"]


async def test_truncated_output_is_reported_as_truncation_not_bad_json(make_runner):
    model = ScriptedModel({"nano": [reply('{"label": "bu', finish_reason="length")]})
    result = await make_runner(model).call("classify", ARGS)
    first = result.receipt["attempts"][0]
    assert first["outcome"] == "truncated" and "max_output_tokens" in first["detail"]
    assert model.tiers_called() == ["nano", "mini"]  # no repair: the same cap would cut it again


async def test_refusal_is_reported_as_refusal(make_runner):
    model = ScriptedModel({"nano": [reply(None, refusal="I cannot classify this.")]})
    result = await make_runner(model).call("classify", ARGS)
    first = result.receipt["attempts"][0]
    assert first["outcome"] == "refused" and "I cannot classify this." in first["detail"]


async def test_receipt_sums_every_attempt_including_failures(make_runner, ledger):
    model = ScriptedModel({
        "nano": [reply("{}", input_tokens=100, output_tokens=10), reply("{}", input_tokens=150, output_tokens=10)],
        "mini": [reply(GOOD, input_tokens=200, output_tokens=20)],
    })
    r = (await make_runner(model).call("classify", ARGS)).receipt
    assert (r["input_tokens"], r["output_tokens"]) == (450, 40)
    expected = (250 * 0.20 + 20 * 1.25 + 200 * 0.75 + 20 * 4.50) / 1e6
    assert r["cost_usd"] == pytest.approx(expected)
    # The baseline is the answering attempt's tokens at flagship prices, never the sum of the failed attempts.
    assert r["baseline_usd"] == pytest.approx((200 * 2.5 + 20 * 15) / 1e6, abs=1e-12)
    assert r["saved_usd"] == pytest.approx((200 * 2.5 + 20 * 15) / 1e6 - expected, abs=1e-12)
    rows = ledger.attempts(r["call_id"])
    assert [(a["tier"], a["reason"], a["outcome"]) for a in rows] == [
        ("nano", "first", "invalid"), ("nano", "repair", "invalid"), ("mini", "escalation", "ok")]
    assert sum(a["input_tokens"] for a in rows) == 450


async def test_unknown_prices_stay_unknown(make_runner):
    cfg = {"tiers": {"nano": {"model": "acme-unpriced-9000"}}}
    r = (await make_runner(ScriptedModel(), **cfg).call("classify", ARGS)).receipt
    assert r["model"] == "acme-unpriced-9000" and r["cost_usd"] is None and r["saved_usd"] is None
    assert r["baseline_usd"] is not None


async def test_the_price_table_prices_models_the_config_does_not(make_runner):
    r = (await make_runner(ScriptedModel(), tiers={"nano": {"model": "gpt-4o-mini"}}).call("classify", ARGS)).receipt
    assert r["cost_usd"] == pytest.approx((100 * 0.15 + 20 * 0.6) / 1e6)


async def test_extract_validates_against_the_callers_schema(make_runner):
    schema = {"type": "object", "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}},
              "required": ["amount"]}
    wrong = {"data": {"amount": "12 dollars"}, "missing": []}
    right = {"data": {"amount": 12, "currency": "USD"}, "missing": []}
    model = ScriptedModel({"nano": [reply(wrong), reply(right)]})
    result = await make_runner(model).call("extract", {"text": "Pay 12 USD", "schema": schema})
    assert result.output == right
    assert "output.data.amount: '12 dollars' is not of type 'number'" in result.receipt["attempts"][0]["detail"]
    assert model.requests[0].schema["properties"]["data"] == schema


async def test_extract_rejects_a_schema_that_is_not_a_schema(make_runner):
    with pytest.raises(ArgumentsError, match="arguments.schema: not a valid JSON Schema"):
        await make_runner().call("extract", {"text": "x", "schema": {"type": "objekt"}})


async def test_schema_defaults_fill_the_prompt(make_runner):
    model = ScriptedModel()
    await make_runner(model).call("summarize", {"text": "Long text."})
    assert "Word limit: 120" in model.requests[0].messages[1]["content"]


async def test_store_inputs_keeps_arguments_and_output(make_runner, ledger):
    ledger.store_inputs = True
    await make_runner(ScriptedModel({"nano": [reply(GOOD)]})).call("classify", ARGS)
    [row] = ledger.calls()
    assert '"The app crashes' in row["arguments"] and '"bug"' in row["output"]


async def test_progress_is_reported_per_attempt(make_runner):
    seen = []

    async def progress(done, total, message):
        seen.append((done, message))

    model = ScriptedModel({"nano": [reply("{}"), reply(GOOD)]})
    await make_runner(model).call("classify", ARGS, progress)
    assert seen == [(1, "nano (gpt-5.4-nano): first"), (2, "nano (gpt-5.4-nano): repair")]


async def test_rank_indices_must_point_at_items_and_respect_top_k(make_runner):
    args = {"query": "q", "items": ["a", "b", "c"], "top_k": 2}
    model = ScriptedModel({"nano": [reply({"ranked": [{"index": 5, "score": 0.9}]}),
                                    reply({"ranked": [{"index": 0, "score": 0.9}, {"index": 1, "score": 0.5},
                                                      {"index": 2, "score": 0.1}]})],
                           "mini": [reply({"ranked": [{"index": 2, "score": 0.9}]})]})
    result = await make_runner(model).call("rank", args)
    details = [a["detail"] for a in result.receipt["attempts"]]
    assert "output.ranked[0].index: 5 is greater than the maximum of 2" in details[0]
    assert "is too long" in details[1]
    assert result.output == {"ranked": [{"index": 2, "score": 0.9}]}
