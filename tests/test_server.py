"""The MCP surface through a real client: in memory, and over stdio in both protocol eras."""

import json
import sys

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters

from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.core.tokens import count
from tiered_mcp.serve.server import TIERS_URI, USAGE_URI, build_server
from tiered_mcp.testing import FakeResponse, Hang, ScriptedModel, reply

from .conftest import SECRET, server_env
from .test_specs import SHIPPED

pytestmark = pytest.mark.anyio

ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature"]}


async def test_tools_list_publishes_every_tool_with_both_schemas(make_runner):
    async with Client(build_server(make_runner())) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == sorted(SHIPPED)
    cls = tools["classify"]
    assert cls.input_schema["required"] == ["labels"]
    assert cls.input_schema["anyOf"] == [{"required": ["text"], "properties": {"text": {"type": "string"}}},
                                         {"required": ["items"], "properties": {"items": {"type": "array"}}}]
    assert cls.input_schema["properties"]["items"]["maxItems"] == 1000
    assert "items" not in tools["draft"].input_schema["properties"]  # draft takes no batch
    assert cls.input_schema["properties"]["tier"]["enum"] == ["local", "nano", "mini"]  # capped by call_tier_ceiling
    assert tools["extract"].input_schema["properties"]["tier"]["enum"] == ["nano", "mini"]  # no local task
    assert cls.output_schema["$defs"]["one"]["required"] == ["label", "labels", "confidence", "reason"]
    assert tools["rank"].output_schema["required"] == ["ranked"]
    assert cls.annotations.read_only_hint is True and cls.annotations.open_world_hint is False


async def test_the_default_tools_list_is_under_2500_tokens(make_runner):
    async with Client(build_server(make_runner())) as client:
        listing = await client.list_tools()
    tokens = count(json.dumps(listing.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert 1000 < tokens < 2500, tokens


async def test_text_content_mirrors_the_structured_result(make_runner):
    async with Client(build_server(make_runner())) as client:
        result = await client.call_tool("classify", ARGS)
    assert json.loads(result.content[0].text) == result.structured_content


async def test_bad_arguments_come_back_as_an_error_result_naming_the_field(make_runner):
    async with Client(build_server(make_runner())) as client:
        result = await client.call_tool("classify", {"text": "x", "labels": "bug"})
    assert result.is_error
    assert "arguments.labels: 'bug' is not of type 'array'" in result.content[0].text


async def test_an_unknown_tool_is_a_protocol_error(make_runner):
    async with Client(build_server(make_runner())) as client:
        with pytest.raises(MCPError, match="unknown tool 'nope'"):
            await client.call_tool("nope", {})


async def test_a_failed_call_is_an_error_result_with_its_receipt(make_runner):
    model = ScriptedModel(fallback=lambda req: reply("not json"))
    async with Client(build_server(make_runner(model))) as client:
        result = await client.call_tool("classify", ARGS)
    assert result.is_error and "failed on every tier" in result.content[0].text
    assert len(result.meta[RECEIPT_META_KEY]["attempts"]) == 6


async def test_an_internal_bug_does_not_crash_the_server(make_runner):
    def boom(req):
        raise ZeroDivisionError("bug")

    async with Client(build_server(make_runner(ScriptedModel({"nano": [boom]})))) as client:
        result = await client.call_tool("classify", ARGS)
        assert result.is_error and "internal error" in result.content[0].text
        assert not (await client.call_tool("classify", ARGS)).is_error


async def test_progress_notifications_reach_the_client(make_runner):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, message))

    model = ScriptedModel({"nano": [reply("{}")]})
    async with Client(build_server(make_runner(model))) as client:
        await client.call_tool("classify", ARGS, progress_callback=on_progress)
    assert [m for _, m in seen] == ["nano (gpt-5.4-nano): first", "nano (gpt-5.4-nano): repair"]


async def test_resources_show_the_tier_table_and_usage(make_runner):
    async with Client(build_server(make_runner())) as client:
        await client.call_tool("classify", ARGS)
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        tiers = json.loads((await client.read_resource(TIERS_URI)).contents[0].text)
        usage = json.loads((await client.read_resource(USAGE_URI)).contents[0].text)
    assert uris == {TIERS_URI, USAGE_URI}
    row = next(r for r in tiers if r["tool"] == "classify")
    assert (row["tier"], row["model"], row["input_price"], row["ladder"]) == (
        "nano", "gpt-5.4-nano", 0.2, ["nano", "mini", "flagship"])
    assert usage["total"]["calls"] == 1 and usage["by_tool"][0]["key"] == "classify"


async def test_a_client_cancel_cancels_the_model_call_and_is_recorded(make_runner, ledger):
    hang = Hang()
    model = ScriptedModel({"nano": [hang]})
    async with Client(build_server(make_runner(model))) as client:
        async with anyio.create_task_group() as tg:
            async def call():
                await client.call_tool("classify", ARGS)

            tg.start_soon(call)
            await hang.started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            while not ledger.calls():
                await anyio.sleep(0.01)
    assert hang.cancelled
    [row] = ledger.calls()
    assert row["ok"] == 0 and row["error"] == "cancelled by the client"
    assert ledger.attempts(row["id"])[0]["outcome"] == "cancelled"


# ---- over stdio, with the real openai client against the loopback upstream ---------------------------------------


def stdio_params(upstream, tmp_path, *extra):
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "tiered_mcp", "serve", "--ledger", str(tmp_path / "ledger.sqlite3"), *extra],
        env=server_env(upstream, tmp_path),
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_end_to_end_in_both_protocol_eras(upstream, tmp_path, mode):
    upstream.push("gpt-5.4-nano", FakeResponse(content={"label": "bug", "labels": ["bug"], "confidence": 2,
                                                        "reason": "r"}))
    upstream.push("gpt-5.4-nano", FakeResponse(status=500))
    async with Client(stdio_params(upstream, tmp_path), mode=mode) as client:
        assert len((await client.list_tools()).tools) == len(SHIPPED)
        result = await client.call_tool("classify", ARGS)
    assert not result.is_error
    receipt = result.meta[RECEIPT_META_KEY]
    assert [(a["reason"], a["outcome"]) for a in receipt["attempts"]] == [
        ("first", "invalid"), ("repair", "server_error"), ("retry", "ok")]
    bodies = [s.body for s in upstream.completions()]
    assert len(bodies) == 3 and bodies[0]["response_format"]["json_schema"]["strict"] is True


async def test_stdio_cancel_closes_the_upstream_request(upstream, tmp_path):
    upstream.push("gpt-5.4-nano", FakeResponse())  # a schema-valid answer built from the request
    upstream.push("gpt-5.4-nano", FakeResponse(delay_s=30))
    async with Client(stdio_params(upstream, tmp_path), mode="legacy") as client:
        # A first call warms the server (its model client is imported on first use, which a loaded machine can
        # stretch past the read timeout below), so the second surely reaches the upstream before it is cancelled.
        assert not (await client.call_tool("classify", ARGS)).is_error
        with pytest.raises(MCPError):  # the read timeout; the client sends notifications/cancelled
            await client.call_tool("classify", {**ARGS, "text": "another text"}, read_timeout_seconds=3.0)
        with anyio.fail_after(10):
            while not (len(upstream.completions()) == 2 and upstream.completions()[1].disconnected):
                await anyio.sleep(0.05)


async def test_no_key_in_the_result_or_the_ledger(upstream, tmp_path):
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}."}}
    for model in ("gpt-5.4-nano", "gpt-5.4-mini", "gpt-5.4"):
        upstream.push(model, FakeResponse(status=401, json_body=body))
    async with Client(stdio_params(upstream, tmp_path), mode="legacy") as client:
        result = await client.call_tool("classify", ARGS)
    assert result.is_error and "HTTP 401" in result.content[0].text
    everything = result.model_dump_json() + (tmp_path / "ledger.sqlite3").read_bytes().decode("latin-1")
    assert "Incorrect API key provided" in everything and SECRET not in everything


async def test_every_tool_end_to_end_over_stdio_with_the_real_openai_client(upstream, tmp_path):
    from pathlib import Path

    import yaml

    cases = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8"))[0]
             for p in (Path(__file__).parent / "cases").glob("*.yaml")}
    models = {"nano": "gpt-5.4-nano", "mini": "gpt-5.4-mini"}
    async with Client(stdio_params(upstream, tmp_path), mode="legacy") as client:
        tiers = {t.name: t for t in (await client.list_tools()).tools}
        for name in SHIPPED:
            case = cases[name]
            tier = "mini" if name in ("summarize", "review_code", "draft") else "nano"
            upstream.push(models[tier], FakeResponse(content=case["model_reply"]))
            result = await client.call_tool(name, case["arguments"])
            assert not result.is_error, (name, result.content[0].text)
            assert result.meta[RECEIPT_META_KEY]["tier"] == tier and name in tiers
    assert {s.body["model"] for s in upstream.completions()} == {"gpt-5.4-nano", "gpt-5.4-mini"}
    assert len(upstream.completions()) == len(SHIPPED)
