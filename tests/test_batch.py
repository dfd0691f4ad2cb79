"""Item-level fan-out through the real MCP client (which checks results against the published output schema)."""

import pytest
from mcp import Client

from tiered_mcp.core.errors import ArgumentsError, UpstreamRejected
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.serve.server import build_server
from tiered_mcp.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]


def by_text(req):
    """Answers 'bug' unless the text says feature; texts containing 'poison' get a permanent error on every tier."""
    text = req.messages[1]["content"].split("<text>")[1]
    if "poison" in text:
        raise UpstreamRejected("HTTP 400: cannot process this item")
    label = "feature" if "feature" in text else "bug"
    return reply({"label": label, "labels": [label], "confidence": 0.95, "reason": "r"})


async def test_a_batch_returns_per_item_results_and_errors(make_runner, ledger):
    items = ["crash on save", "please add a feature", "poison pill", "another crash"]
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async with Client(build_server(make_runner(ScriptedModel(fallback=by_text)))) as client:
        result = await client.call_tool("classify", {"items": items, "labels": LABELS}, progress_callback=on_progress)
    assert not result.is_error
    results = result.structured_content["results"]
    assert [r.get("output", {}).get("label") for r in results] == ["bug", "feature", None, "bug"]
    assert "cannot process this item" in results[2]["error"] and result.structured_content["failed"] == 1
    receipt = result.meta[RECEIPT_META_KEY]
    assert (receipt["batch"], receipt["items"], receipt["ok"], receipt["failed"]) == (True, 4, 3, 1)
    # Only the item that failed carries its receipt; the totals cover every item, whose rows are all in the ledger.
    assert [r["index"] for r in receipt["per_item"]] == [2] and receipt["per_item"][0]["ok"] is False
    assert receipt["input_tokens"] == sum(r["input_tokens"] for r in ledger.calls())
    assert receipt["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in ledger.calls()), abs=1e-12)
    assert sorted(p for p, _ in seen) == [1, 2, 3, 4] and {t for _, t in seen} == {4}
    rows = ledger.calls()
    assert len(rows) == 4 and len({r["batch"] for r in rows}) == 1


async def test_a_batch_where_every_item_fails_is_an_error(make_runner):
    async with Client(build_server(make_runner(ScriptedModel(fallback=by_text)))) as client:
        result = await client.call_tool("classify", {"items": ["poison", "poison again"], "labels": LABELS})
    assert result.is_error and "every item of the batch failed" in result.content[0].text
    assert result.meta[RECEIPT_META_KEY]["failed"] == 2


async def test_batch_items_are_checked(make_runner):
    runner = make_runner()
    with pytest.raises(ArgumentsError, match="either text or items"):
        await runner.call("classify", {"items": ["a"], "text": "b", "labels": LABELS})
    with pytest.raises(ArgumentsError, match=r"arguments.items\[1\]: 5 is not of type 'string'"):
        await runner.call("classify", {"items": ["a", 5], "labels": LABELS})
    with pytest.raises(ArgumentsError, match="should be non-empty"):
        await runner.call("classify", {"items": [], "labels": LABELS})


async def test_the_provider_limit_bounds_requests_in_flight(make_runner):
    import anyio

    in_flight = peak = 0

    async def slow(req):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        return reply({"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"})

    runner = make_runner(ScriptedModel(fallback=slow), providers={"openai": {"max_concurrency": 3}})
    result = await runner.call("classify", {"items": [f"t{i}" for i in range(20)], "labels": LABELS})
    assert result.receipt["ok"] == 20 and peak == 3


async def test_extract_and_summarize_take_batches_too(make_runner):
    runner = make_runner()
    ex = await runner.call("extract", {"items": ["a", "b"], "schema": {"type": "object"}})
    su = await runner.call("summarize", {"items": ["x", "y", "z"]})
    assert len(ex.output["results"]) == 2 and len(su.output["results"]) == 3
