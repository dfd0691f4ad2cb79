"""The pieces that join the layers, seen through the real server: who is calling (named tokens) on every ledger row,
per-caller caps and usage; no argument value in the ledger when store_inputs is off; resumable SSE streams; the
local tier learning from escalations; bake-offs that refuse tiers that cannot run; one whole receipt."""

import json

import pytest

from tiered_mcp.core.errors import ArgumentsError, BudgetExceeded
from tiered_mcp.core.identity import Caller, current_caller
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]
GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}


async def test_each_caller_is_on_its_rows_with_its_own_cap_cache_and_usage(make_runner, ledger):
    runner = make_runner(ScriptedModel(fallback=lambda req: reply(GOOD, input_tokens=1000, output_tokens=10)),
                         cache_ttl_s=60)
    alice = current_caller.set(Caller("alice", daily_usd=0.01))
    try:
        first = await runner.call("classify", {"text": "x", "labels": LABELS})
        assert first.receipt["caller"] == "alice"
    finally:
        current_caller.reset(alice)
    bob = current_caller.set(Caller("bob", daily_usd=0.0001))  # below one nano request's worst case
    try:
        with pytest.raises(BudgetExceeded, match="daily_usd of caller 'bob'"):
            await runner.call("classify", {"text": "x", "labels": LABELS})  # alice's cached answer is not his
    finally:
        current_caller.reset(bob)
    rows = ledger.calls()
    assert [(r["caller"], r["ok"]) for r in rows] == [("alice", 1), ("bob", 0)]
    by_caller = {r.key: r for r in ledger.usage(by="caller").rows}
    assert by_caller["alice"].calls == 1 and by_caller["bob"].failed == 1
    assert ledger.usage(caller="alice").total.calls == 1


async def test_with_store_inputs_off_no_argument_value_reaches_the_ledger(make_runner, ledger):
    runner = make_runner(ScriptedModel())
    secret = "Customer Jane Roe, card ending 4242"
    with pytest.raises(ArgumentsError) as e:
        await runner.call("classify", {"text": [secret], "labels": LABELS})
    assert "Jane Roe" in str(e.value)  # the caller sent it: the caller may see an excerpt of it
    [row] = ledger.calls()
    assert "Jane Roe" not in (row["error"] or "") and row["arguments"] is None


async def test_the_local_tier_learns_from_the_tier_it_escalated_to(specs, ledger):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.models.local import LocalEngine
    from tiered_mcp.models.local_examples import MemoryExampleStore, label_set_key

    engine = LocalEngine(store=MemoryExampleStore())
    if not engine.is_installed:
        pytest.skip("the local extra is not installed")
    config = config_from_dict({"cache_ttl_s": 0, "tools": {"classify": {"tier": "local", "confidence_threshold": 0.99}}})
    model = ScriptedModel(fallback=lambda req: reply({"label": "feature", "labels": ["feature"], "confidence": 1.0,
                                                      "reason": "r"}))
    runner = Runner(config, specs, model, ledger, env={"OPENAI_API_KEY": "k"}, local=engine)
    async with runner.running():
        result = await runner.call("classify", {"text": "Please add a dark mode", "labels": LABELS})
    assert [a["tier"] for a in result.receipt["attempts"]] == ["local", "nano"]
    embedder = await engine.embedder()
    vectors, labels = engine.store.fetch("classify", label_set_key(LABELS, embedder.model_name))
    assert labels == ["feature"] and len(vectors) == 1  # nano's answer, kept as a labelled example


async def test_a_bake_off_refuses_tiers_that_cannot_run(make_runner):
    from tiered_mcp.evidence.evaluate import Case, run_eval

    runner = make_runner(ScriptedModel())
    runner._env = {}  # no key: nano and above cannot run
    with pytest.raises(ArgumentsError, match="nano, mini cannot run here"):
        await run_eval(runner, [Case("classify", {"text": "x", "labels": LABELS})], ["nano", "mini"])


async def test_an_sse_stream_of_the_http_server_can_be_resumed(make_runner):
    from .test_http import INITIALIZE, MCP_HEADERS, TOKEN, raw, serving

    async with serving(make_runner()) as base, raw(base) as http:
        headers = {**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}
        first = await http.post("/mcp", json=INITIALIZE, headers=headers)
        session = {**headers, "mcp-session-id": first.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        listed = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session)
    assert listed.headers["content-type"].startswith("text/event-stream")
    assert "retry: " in listed.text and "\nid: " in "\n" + listed.text  # a priming event a client can resume from


async def test_one_whole_receipt(make_runner):
    model = ScriptedModel({"nano": [reply(GOOD, input_tokens=1000, output_tokens=50)]})
    runner = make_runner(model)
    r = (await runner.call("classify", {"text": "x", "labels": LABELS})).receipt
    assert set(r) == {"tool", "kind", "ok", "tier", "model", "attempts", "input_tokens", "output_tokens", "cost_usd",
                      "baseline_usd", "saved_usd", "latency_ms", "call_id", "spec_version"}
    assert {k: v for k, v in r.items() if k not in ("latency_ms", "call_id", "attempts")} == {
        "tool": "classify", "kind": "call", "ok": True, "tier": "nano", "model": "gpt-5.4-nano", "input_tokens": 1000,
        "output_tokens": 50, "cost_usd": pytest.approx(0.0002625, abs=1e-12),
        "baseline_usd": pytest.approx(0.00325, abs=1e-12), "saved_usd": pytest.approx(0.0029875, abs=1e-12),
        "spec_version": "1"}
    [a] = r["attempts"]
    assert {k: v for k, v in a.items() if k != "latency_ms"} == {
        "tier": "nano", "model": "gpt-5.4-nano", "reason": "first", "outcome": "ok", "detail": "", "trigger": None,
        "input_tokens": 1000, "output_tokens": 50, "cached_input_tokens": 0, "reasoning_tokens": 0,
        "cost_usd": pytest.approx(0.0002625, abs=1e-12), "estimated": False, "service_tier": None}
    json.dumps(r)  # plain JSON, as it travels in _meta


async def test_callers_share_the_cache_only_when_the_config_says_so(make_runner):
    for shared, asked in ((False, 2), (True, 1)):
        model = ScriptedModel(fallback=lambda req: reply(GOOD))
        runner = make_runner(model, cache_ttl_s=60, share_across_callers=shared)
        for name in ("alice", "bob"):
            token = current_caller.set(Caller(name))
            try:
                await runner.call("classify", {"text": "same words", "labels": LABELS})
            finally:
                current_caller.reset(token)
        assert len(model.requests) == asked


def test_an_unpriced_attempt_does_not_hide_the_priced_ones_from_the_caps(ledger):
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.receipts import Attempt, Receipt
    from tiered_mcp.ledger.base import CallWrite, spend_key

    r = Receipt(tool="classify", ok=True, tier="mini", model="m", day="2026-12-01")
    r.attempts += [Attempt(tier="nano", model="n", reason="first", outcome="invalid", cost_usd=0.5),
                   Attempt(tier="mini", model="m", reason="escalation", outcome="ok", cost_usd=None)]
    ledger.write([CallWrite(r)], [], config_from_dict({}))
    assert r.cost_usd is None  # the receipt says "unknown" ...
    committed = ledger.budget_committed([spend_key("2026-12-01"), spend_key("2026-12-01", tool="classify")], 0.0)
    assert committed == {"day:2026-12-01": 0.5, "tool:classify:2026-12-01": 0.5}  # ... the caps still count $0.50


def test_a_budget_refusal_at_the_flagship_does_not_zero_the_baseline():
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.receipts import Attempt, Receipt

    r = Receipt(tool="classify", ok=True, tier="nano", model="n", answered_by=0)
    r.attempts += [Attempt(tier="nano", model="n", reason="first", outcome="low_confidence", input_tokens=1000,
                           output_tokens=50, cost_usd=0.0002625),
                   Attempt(tier="flagship", model="f", reason="escalation", outcome="budget", cost_usd=0.0)]
    config = config_from_dict({})
    assert r.baseline_usd(config) == pytest.approx((1000 * 2.5 + 50 * 15) / 1e6, abs=1e-12)  # nano's answer, priced
    assert r.saved_usd(config) == pytest.approx(0.0029875, abs=1e-12)


async def test_a_cancelled_call_still_hands_its_row_to_the_writer(ledger):
    import anyio

    from tiered_mcp.call.writer import LedgerWriter
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.receipts import Receipt
    from tiered_mcp.ledger.base import CallWrite

    writer = LedgerWriter(ledger, config_from_dict({}))
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        with anyio.CancelScope() as scope:
            scope.cancel()  # the caller is cancelled as it hands its row over
            await writer.put([CallWrite(Receipt(tool="classify", call_id="c1"))])
        with anyio.fail_after(10):
            await writer.flush()
        await writer.close()
    assert [c["uid"] for c in ledger.calls()] == ["c1"]


async def test_failing_background_work_never_takes_the_server_down(make_runner):
    import anyio

    runner = make_runner(ScriptedModel())

    async def broken() -> None:
        raise RuntimeError("out of memory, say")

    async with runner.running():
        assert runner.spawn(broken)
        with anyio.fail_after(5):
            while runner.background_pending:
                await anyio.sleep(0.01)
        assert (await runner.call("classify", {"text": "still here", "labels": LABELS})).receipt["ok"]


async def test_a_caller_cannot_read_another_caller_s_call(make_runner):
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    from tiered_mcp.serve.server import build_server

    runner = make_runner(ScriptedModel())
    alice = current_caller.set(Caller("alice"))
    try:
        call_id = (await runner.call("classify", {"text": "mine", "labels": LABELS})).receipt["call_id"]
    finally:
        current_caller.reset(alice)
    for name, readable in (("alice", True), ("bob", False)):
        token = current_caller.set(Caller(name))
        try:
            async with Client(build_server(runner)) as client:
                if readable:
                    assert (await client.read_resource(f"tiered://calls/{call_id}")).contents
                else:
                    with pytest.raises(MCPError):
                        await client.read_resource(f"tiered://calls/{call_id}")
        finally:
            current_caller.reset(token)


async def test_an_edited_prompt_misses_the_cache_even_without_a_new_version(make_runner, tmp_path):
    from tiered_mcp.specs.spec import default_specs_dir, load_specs

    text = (default_specs_dir() / "classify.yaml").read_text(encoding="utf-8")
    (tmp_path / "classify.yaml").write_text(text.replace("Classify", "Please classify", 1), encoding="utf-8")
    edited = load_specs([str(tmp_path)])
    assert edited.get("classify").version == load_specs().get("classify").version
    model = ScriptedModel(fallback=lambda req: reply(GOOD))
    first = make_runner(model, cache_ttl_s=60)
    await first.call("classify", {"text": "x", "labels": LABELS})
    second = make_runner(model, cache_ttl_s=60)
    second.specs = edited
    await second.call("classify", {"text": "x", "labels": LABELS})
    assert len(model.requests) == 2
