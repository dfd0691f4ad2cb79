"""Resource templates, `data.uri` on unknown resources, and the ledger reads behind them and `tiered-mcp logs`."""

import json

import pytest
from mcp import Client, MCPError

from tiered_mcp.cli.main import main
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.serve.server import CALL_URI_TEMPLATE, build_server
from tiered_mcp.testing import FakeResponse

from .conftest import server_env

ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature"]}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_resource_templates_are_listed_and_a_call_reads_back(make_runner, mode):
    async with Client(build_server(make_runner()), mode=mode) as client:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == [CALL_URI_TEMPLATE]
        result = await client.call_tool("classify", ARGS)
        call_id = result.meta[RECEIPT_META_KEY]["call_id"]
        detail = json.loads((await client.read_resource(f"tiered://calls/{call_id}")).contents[0].text)
        assert detail["tool"] == "classify" and detail["attempt_rows"][0]["tier"] == "nano"
        assert (await client.list_prompts()).prompts == []
        for uri in ("tiered://nope", "tiered://calls/999", "tiered://calls/x"):
            with pytest.raises(MCPError) as err:
                await client.read_resource(uri)
            assert err.value.error.data == {"uri": uri}


@pytest.mark.anyio
async def test_the_input_schema_lookup_gives_what_tools_list_publishes(make_runner):
    # The SDK checks a tools/call's Mcp-Param-* headers against this lookup instead of running tools/list.
    server = build_server(make_runner())
    async with Client(server) as client:
        listed = (await client.list_tools()).tools
    assert listed and {t.name: server.get_tool_input_schema(t.name) for t in listed} == {
        t.name: t.input_schema for t in listed}
    assert server.get_tool_input_schema("no-such-tool") is None


def test_ledger_reads_recent_calls_with_filters(ledger, make_runner):
    import anyio

    runner = make_runner()

    async def go():
        async with runner.running():
            await runner.call("classify", ARGS)
            await runner.call("rank", {"query": "q", "items": ["a", "b"]})
    anyio.run(go)
    rows = ledger.recent_calls(10)
    assert [r["tool"] for r in rows] == ["rank", "classify"] and rows[1]["tier"] == "nano"  # newest first
    assert rows[1]["saved_usd"] == pytest.approx(rows[1]["baseline_usd"] - rows[1]["cost_usd"], abs=1e-12)
    assert [r["tool"] for r in ledger.recent_calls(1)] == ["rank"]
    assert [r["tool"] for r in ledger.recent_calls(10, tool="classify", outcome="ok")] == ["classify"]
    assert ledger.recent_calls(10, tool="draft") == [] and ledger.recent_calls(10, outcome="failed") == []
    assert ledger.recent_calls(1, since="2999-01-01") == []
    assert ledger.call_detail(rows[1]["id"])["attempt_rows"][0]["outcome"] == "ok"
    assert ledger.call_detail(10**9) is None


def test_logs_command_lists_and_shows_one_call(upstream, tmp_path, monkeypatch, capsys):
    for k, v in server_env(upstream, tmp_path).items():
        monkeypatch.setenv(k, v)
    upstream.push("gpt-5.4-nano", FakeResponse(content={"label": "bug", "labels": ["bug"], "confidence": 0.9,
                                                        "reason": "crash"}, usage=(200, 25)))
    ledger = str(tmp_path / "l.sqlite3")
    assert main(["logs", "--ledger", ledger]) == 1
    assert "no ledger at" in capsys.readouterr().err
    assert main(["call", "classify", "--args", json.dumps(ARGS), "--ledger", ledger, "--json"]) == 0
    call_id = json.loads(capsys.readouterr().out)["receipt"]["call_id"]
    assert main(["logs", "--ledger", ledger]) == 0
    out = capsys.readouterr().out
    assert "classify" in out and "nano" in out and "$0.00" in out
    assert main(["logs", str(call_id), "--ledger", ledger]) == 0
    out = capsys.readouterr().out
    assert f"call {call_id}" in out and "attempt 1" in out and "gpt-5.4-nano" in out
    assert main(["logs", "--ledger", ledger, "--outcome", "failed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["logs", "999", "--ledger", ledger]) == 1
    assert main(["logs", "--switches", "--ledger", ledger]) == 0  # the hint names the config table, unmangled
    assert "`auto = true` under [tools.NAME])" in capsys.readouterr().out


def test_logs_follow_prints_new_calls_as_they_arrive(ledger, make_runner, capsys):
    import argparse
    import threading

    import anyio

    from tiered_mcp.cli.logs import follow

    async def one():
        runner = make_runner()  # one per event loop: a running runner's events belong to the loop that ran it
        async with runner.running():
            await runner.call("classify", ARGS)
    anyio.run(one)
    args = argparse.Namespace(json=False, tool=None, outcome=None)
    later = threading.Timer(0.05, lambda: anyio.run(one))
    later.start()
    assert follow(ledger, ledger.recent_calls(5), args, polls=3, interval_s=0.1) == 0
    later.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("classify" in ln and "nano" in ln for ln in lines)
