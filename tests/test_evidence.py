"""Escalation triggers (per tool and per call), spec validators, and per-call options."""

import pytest
from mcp import Client

from tiered_mcp.call.options import OPTIONS_META_KEY, CallOptions, parse_options
from tiered_mcp.core.errors import ArgumentsError, ToolFailed
from tiered_mcp.serve.server import build_server
from tiered_mcp.specs.validators import valid_lines, values_at
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature"]}
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "crash"}
UNSURE = {**GOOD, "confidence": 0.3}


async def test_a_disabled_trigger_stops_the_climb(make_runner):
    model = ScriptedModel(fallback=lambda req: reply("{}"))
    with pytest.raises(ToolFailed, match="invalid is not an escalation trigger for classify"):
        await make_runner(model, tools={"classify": {"escalate_on": ["refused"]}}).call("classify", ARGS)
    assert model.tiers_called() == ["nano", "nano"]


async def test_low_confidence_escalates_and_can_be_switched_off(make_runner):
    model = ScriptedModel({"nano": [reply(UNSURE)], "mini": [reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS)
    assert [(a["tier"], a["outcome"], a["trigger"]) for a in result.receipt["attempts"]] == [
        ("nano", "low_confidence", None), ("mini", "ok", "low_confidence")]
    model = ScriptedModel({"nano": [reply(UNSURE)]})
    off = await make_runner(model).call("classify", ARGS, options=CallOptions(escalate_on=["invalid"]))
    assert off.receipt["tier"] == "nano" and "not an escalation trigger" in off.receipt["attempts"][0]["detail"]


async def test_per_call_threshold_and_ceiling(make_runner):
    # Options only make a call cheaper: a lower threshold is taken, a higher one is not.
    model = ScriptedModel({"nano": [reply({**GOOD, "confidence": 0.5})], "mini": [reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS, options=CallOptions(confidence_threshold=0.4))
    assert result.receipt["tier"] == "nano"
    model = ScriptedModel({"nano": [reply({**GOOD, "confidence": 0.85})], "mini": [reply(GOOD)]})
    result = await make_runner(model).call("classify", ARGS, options=CallOptions(confidence_threshold=0.9))
    assert result.receipt["tier"] == "nano"
    model = ScriptedModel(fallback=lambda req: reply("{}"))
    with pytest.raises(ToolFailed):
        await make_runner(model).call("classify", ARGS, options=CallOptions(escalation_ceiling="nano"))
    assert set(model.tiers_called()) == {"nano"}


async def test_a_per_call_ceiling_cannot_raise_the_configured_one(make_runner):
    model = ScriptedModel(fallback=lambda req: reply("{}"))
    runner = make_runner(model, tools={"classify": {"escalation_ceiling": "mini"}})
    with pytest.raises(ToolFailed):
        await runner.call("classify", ARGS, options=CallOptions(escalation_ceiling="flagship"))
    assert "flagship" not in model.tiers_called()


async def test_an_unsure_answer_stands_when_the_tiers_above_fail(make_runner):
    model = ScriptedModel({"nano": [reply(UNSURE)]}, fallback=lambda req: reply("{}"))
    result = await make_runner(model).call("classify", ARGS)
    assert result.output == UNSURE and result.receipt["tier"] == "nano"
    assert "this answer stands" in result.receipt["attempts"][0]["detail"]


async def test_extracted_values_must_occur_in_the_source(make_runner):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    invented = {"data": {"city": "Paris"}, "missing": []}
    right = {"data": {"city": "Lyon"}, "missing": []}
    model = ScriptedModel({"nano": [reply(invented), reply(invented)], "mini": [reply(right)]})
    result = await make_runner(model).call("extract", {"text": "Ship 3 boxes to Lyon.", "schema": schema})
    assert result.output == right
    steps = [(a["tier"], a["reason"], a["outcome"], a["trigger"]) for a in result.receipt["attempts"]]
    assert steps == [("nano", "first", "validator", None), ("nano", "repair", "validator", None),
                     ("mini", "escalation", "ok", "validator")]
    assert "'Paris' does not occur in the source text" in result.receipt["attempts"][0]["detail"]
    assert "is wrong: output/data (occurs_in)" in model.requests[1].messages[-1]["content"]


async def test_a_validator_that_is_not_a_trigger_only_notes_the_problem(make_runner):
    invented = {"data": {"city": "Paris"}, "missing": []}
    model = ScriptedModel({"nano": [reply(invented)]})
    result = await make_runner(model, tools={"extract": {"escalate_on": ["invalid"]}}).call(
        "extract", {"text": "Ship to Lyon.", "schema": {"type": "object"}})
    assert result.output == invented and "accepted" in result.receipt["attempts"][0]["detail"]


async def test_review_lines_must_exist_in_the_code_or_diff(make_runner):
    finding = {"severity": "high", "line": 40, "hunk": None, "category": "bugs", "message": "m", "suggestion": "s"}
    bad = {"findings": [finding], "verdict": "request_changes", "summary": "s"}
    good = {"findings": [{**finding, "line": 2}], "verdict": "request_changes", "summary": "s"}
    model = ScriptedModel({"mini": [reply(bad), reply(good)]})
    result = await make_runner(model).call("review_code", {"code": "a = 1\nb = a / 0\n"})
    assert "line 40 is not in the code (valid: 1..3)" in result.receipt["attempts"][0]["detail"]
    assert result.output == good


def test_diff_lines_are_the_new_file_lines_of_each_hunk():
    diff = "--- a/x.py\n+++ b/x.py\n@@ -10,3 +12,4 @@ def f():\n ctx\n+new\n ctx\n ctx\n"
    assert valid_lines(diff) == {12, 13, 14, 15}


def test_pointer_wildcards():
    doc = {"findings": [{"line": 1}, {"line": None}, {"x": 2}]}
    assert list(values_at(doc, "/findings/*/line")) == [1, None]


async def test_rank_indices_must_be_unique(make_runner):
    dup = {"ranked": [{"index": 0, "score": 0.9}, {"index": 0, "score": 0.8}]}
    ok = {"ranked": [{"index": 0, "score": 0.9}, {"index": 1, "score": 0.8}]}
    model = ScriptedModel({"nano": [reply(dup), reply(ok)]})
    result = await make_runner(model).call("rank", {"query": "q", "items": ["a", "b"]})
    assert "0 appears more than once" in result.receipt["attempts"][0]["detail"] and result.output == ok


async def test_summaries_must_respect_max_words(make_runner):
    long = {"summary": "one two three four five six", "key_points": [], "method": "abstractive"}
    short = {"summary": "- one two\n- three", "key_points": [], "method": "abstractive"}
    model = ScriptedModel({"mini": [reply(long), reply(short)]})
    result = await make_runner(model).call("summarize", {"text": "x", "max_words": 5})
    assert "6 words, over the limit of 5" in result.receipt["attempts"][0]["detail"] and result.output == short


def test_options_name_the_bad_field():
    assert parse_options(None) == CallOptions()
    with pytest.raises(ArgumentsError, match=f"_meta.{OPTIONS_META_KEY}.escalate_on.0"):
        parse_options({OPTIONS_META_KEY: {"escalate_on": ["whenever"]}})
    with pytest.raises(ArgumentsError, match="colour"):
        parse_options({OPTIONS_META_KEY: {"colour": 1}})


async def test_options_travel_in_the_request_meta(make_runner):
    model = ScriptedModel({"nano": [reply(UNSURE)]})
    async with Client(build_server(make_runner(model))) as client:
        result = await client.call_tool("classify", ARGS, meta={OPTIONS_META_KEY: {"escalate_on": ["invalid"]}})
        bad = await client.call_tool("classify", ARGS, meta={OPTIONS_META_KEY: {"cache": "sometimes"}})
    assert not result.is_error and model.tiers_called() == ["nano"]
    assert bad.is_error and "_meta.tiered-mcp/options.cache" in bad.content[0].text


async def test_when_no_tier_verifies_a_value_the_best_answer_comes_back_with_it_named(make_runner, ledger):
    # Every tier invents the city; nano also invents the count. The answer with the fewest unverified values (mini's,
    # the later of the two best) is returned with that value named, never cached.
    nano = {"data": {"city": "Paris", "count": 7}, "missing": []}
    mini = {"data": {"city": "Paris", "count": 3}, "missing": []}
    model = ScriptedModel({"nano": [reply(nano), reply(nano)], "mini": [reply(mini), reply(mini)],
                           "flagship": [reply(mini), reply(mini)]})
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "count": {"type": "integer"}}}
    runner = make_runner(model, cache_ttl_s=60)
    result = await runner.call("extract", {"text": "Ship 3 boxes to Lyon.", "schema": schema})
    assert result.output == mini and result.receipt["ok"] is True
    assert result.receipt["unverified"] == ["/data/city"] and result.receipt["tier"] == "flagship"
    assert len(model.requests) == 6
    await runner.call("extract", {"text": "Ship 3 boxes to Lyon.", "schema": schema})
    assert len(model.requests) == 12  # an unverified answer is not cached


async def test_a_strict_validator_still_fails_the_call(make_runner, tmp_path):
    from tiered_mcp.specs.spec import default_specs_dir, load_specs

    text = (default_specs_dir() / "extract.yaml").read_text(encoding="utf-8")
    assert "{check: occurs_in, output: /data, argument: text}" in text
    (tmp_path / "extract.yaml").write_text(text.replace("{check: occurs_in, output: /data, argument: text}",
                                                        "{check: occurs_in, output: /data, argument: text, strict: true}"),
                                           encoding="utf-8")
    strict_specs = load_specs([str(tmp_path)])
    assert strict_specs.get("extract").validators[0].strict
    invented = {"data": {"city": "Paris"}, "missing": []}
    runner = make_runner(ScriptedModel(fallback=lambda req: reply(invented)))
    runner.specs = strict_specs
    with pytest.raises(ToolFailed, match="occurs_in"):
        await runner.call("extract", {"text": "Ship to Lyon.", "schema": {"type": "object"}})
