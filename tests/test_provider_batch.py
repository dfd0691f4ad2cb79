"""Batch tasks through the provider's Batch API (/v1/files + /v1/batches): the real openai client against the fake
upstream's Batch API, a real MCP client driving the task, the SQLite ledger (and PostgreSQL where the subject is
storage: resuming the same provider batch)."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client

from tiered_mcp.call.budget import worst_case_usd
from tiered_mcp.call.provider_batch import ProviderBatches, split
from tiered_mcp.cli.main import main
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.ledger.provider_batches import ProviderBatchStore
from tiered_mcp.models._openai import OpenAIModels
from tiered_mcp.serve.server import build_server
from tiered_mcp.serve.tasks import PROGRESS_META_KEY
from tiered_mcp.testing import FakeBatch, FakeResponse

from .tasks_client import TasksClient, cancel_task, get_task, start_task, wait_task

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]
ITEMS = ["the app has a bug on save", "a feature for export please", "another bug in login"]
BATCH_CONFIG = {"tiers": {"nano": {"batch_api": True}}, "batch_api": {"poll_s": 0.01}}
KEY = "sk-test-batch-0123456789abcdef"

# Hand computation at the fake's usage (120 in, 30 out per request) and the seed prices (USD per million tokens):
NANO = (120 * 0.20 + 30 * 1.25) / 1e6  # 61.5e-6, a synchronous nano request
MINI = (120 * 0.75 + 30 * 4.50) / 1e6  # 225e-6
FLAGSHIP = (120 * 2.50 + 30 * 15.00) / 1e6  # 750e-6
NANO_BATCH, FLAGSHIP_BATCH = NANO * 0.5, FLAGSHIP * 0.5  # 30.75e-6 and 375e-6: the batch rate is half


def openai_model(upstream) -> OpenAIModels:
    return OpenAIModels({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url})


def items_of(task) -> list[dict]:
    return task.result["structuredContent"]["results"]


def receipt_of(task) -> dict:
    return task.result["_meta"][RECEIPT_META_KEY]


async def resumed_from_its_batches(make_runner, upstream, task_id, config, *, items, batches):
    """A second server on the same ledger finishes the task from its provider batches alone: every item answered
    at the batch rate, no batch or upload made twice, no synchronous request."""
    second = make_runner(openai_model(upstream), **config)
    async with Client(build_server(second), extensions=[TasksClient()]) as client:
        task = await wait_task(client, task_id)
    assert task.status == "completed" and receipt_of(task)["ok"] == items
    assert len(upstream.batch_creates()) == batches  # never submitted twice
    assert len([s for s in upstream.seen if s.path.endswith("/files")]) == batches
    assert upstream.completions() == []
    assert receipt_of(task)["cost_usd"] == pytest.approx(items * NANO_BATCH, abs=1e-15)
    return task


def rows_by_batch(ledger) -> list[dict]:
    calls = ledger.calls()
    return [r for r in calls if r["batch"] == calls[-1]["batch"]]


async def run_task(runner, arguments: dict, **kwargs) -> object:
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", arguments)
        return await wait_task(client, handle.task_id, **kwargs)


async def start_submitted(client, upstream) -> object:
    """Start the classify batch as a task and wait until its provider batch exists; the task's handle."""
    handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
    with anyio.fail_after(10):
        while not upstream.batches:
            await anyio.sleep(0.01)
    return handle


async def test_a_batch_task_runs_through_the_batch_api_at_half_price(make_runner, ledger, upstream):
    upstream.script_batch(FakeBatch(polls=2))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed", task.status_message
    assert [r["output"]["label"] for r in items_of(task)] == ["bug", "feature", "bug"]
    # One file, one batch, no synchronous request.
    assert len(upstream.batch_creates()) == 1 and upstream.completions() == []
    (batch_id,) = upstream.batches
    assert upstream.batches[batch_id]["completion_window"] == "24h"
    lines = upstream.batch_requests(batch_id)
    assert [line["custom_id"] for line in lines] == ["0", "1", "2"]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    # The receipt, by hand: three answers at nano's batch rate; the baseline at the flagship's batch rate.
    receipt = receipt_of(task)
    assert receipt["batch_api"] == 3 and receipt["ok"] == 3 and receipt["tiers"] == {"nano": 3}
    assert receipt["cost_usd"] == pytest.approx(3 * NANO_BATCH, abs=1e-15)
    assert receipt["baseline_usd"] == pytest.approx(3 * FLAGSHIP_BATCH, abs=1e-15)
    assert receipt["saved_usd"] == pytest.approx(3 * (FLAGSHIP_BATCH - NANO_BATCH), abs=1e-15)
    # Every item's row in the ledger says the same, and its attempt is marked as a Batch API one.
    rows = rows_by_batch(ledger)
    assert len(rows) == 3
    for row in rows:
        assert row["cost_usd"] == pytest.approx(NANO_BATCH, abs=1e-15)
        assert row["baseline_usd"] == pytest.approx(FLAGSHIP_BATCH, abs=1e-15)
        (attempt,) = ledger.attempts(row["uid"])
        assert attempt["batch_api"] == 1 and attempt["outcome"] == "ok" and attempt["reason"] == "first"
    # The provider batch as the ledger last saw it.
    pb = ProviderBatchStore(ledger).get(task.task_id)
    assert pb is not None and pb.batch_id == batch_id and pb.status == "completed" and pb.items == [0, 1, 2]


async def test_each_line_carries_the_body_the_synchronous_path_sends(make_runner, upstream):
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS[:1], "labels": LABELS})
    assert task.status == "completed"
    (batch_id,) = upstream.batches
    async with Client(build_server(runner)) as plain:
        await plain.call_tool("classify", {"text": ITEMS[0], "labels": LABELS})
    (sync,) = upstream.completions()
    assert upstream.batch_requests(batch_id)[0]["body"] == sync.body


async def test_receipts_of_single_items_say_batch_api(make_runner, upstream):
    upstream.script_batch(FakeBatch(responses={"0": FakeResponse(
        content={"label": "bug", "labels": ["bug"], "confidence": 0.2, "reason": "unsure"})}))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    (item,) = receipt_of(task)["per_item"]  # the escalated item is the one whose receipt the result carries
    assert item["index"] == 0 and item["batch_api"] is True and item["tier"] == "mini"
    first, second = item["attempts"]
    assert first["batch_api"] is True and first["outcome"] == "low_confidence"
    assert first["cost_usd"] == pytest.approx(NANO_BATCH, abs=1e-15)
    assert "batch_api" not in second and second["reason"] == "escalation" and second["tier"] == "mini"
    assert second["cost_usd"] == pytest.approx(MINI, abs=1e-15)
    # Spent: nano's batch answer plus mini's synchronous one; the baseline: mini's answer at the flagship's batch rate.
    assert item["cost_usd"] == pytest.approx(NANO_BATCH + MINI, abs=1e-15)
    assert item["baseline_usd"] == pytest.approx(FLAGSHIP_BATCH, abs=1e-15)
    assert item["saved_usd"] == pytest.approx(FLAGSHIP_BATCH - NANO_BATCH - MINI, abs=1e-15)
    # The escalation was an ordinary synchronous request to mini.
    assert [s.body["model"] for s in upstream.completions()] == ["gpt-5.4-mini"]
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO_BATCH + MINI, abs=1e-15)


async def test_an_invalid_batch_answer_is_repaired_synchronously(make_runner, upstream):
    upstream.script_batch(FakeBatch(responses={"1": FakeResponse(content="not json at all")}))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert [r["output"]["label"] for r in items_of(task)] == ["bug", "feature", "bug"]
    assert receipt_of(task)["per_item"] == []  # repaired on its own tier: not an item the result lists
    (sync,) = upstream.completions()
    assert sync.body["model"] == "gpt-5.4-nano"
    assert "That answer is not valid" in sync.body["messages"][-1]["content"]
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO_BATCH + NANO, abs=1e-15)


async def test_items_in_the_error_file_run_on_the_model_path(make_runner, ledger, ledger_target, upstream, capsys):
    upstream.script_batch(FakeBatch(errors=("1",)))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert [r["output"]["label"] for r in items_of(task)] == ["bug", "feature", "bug"]
    (sync,) = upstream.completions()  # item 1, synchronously on its first tier
    assert "export" in json.dumps(sync.body) and sync.body["model"] == "gpt-5.4-nano"
    row = next(r for r in rows_by_batch(ledger) if r["attempts"] == 2)
    failed, retried = ledger.attempts(row["uid"])
    assert failed["batch_api"] == 1 and failed["outcome"] == "error_object" and failed["cost_usd"] == 0
    assert "scripted batch item failure" in failed["detail"]
    assert retried["batch_api"] == 0 and retried["reason"] == "retry" and retried["outcome"] == "ok"
    assert row["cost_usd"] == pytest.approx(NANO, abs=1e-15)
    assert row["baseline_usd"] == pytest.approx(FLAGSHIP_BATCH, abs=1e-15)
    assert receipt_of(task)["cost_usd"] == pytest.approx(2 * NANO_BATCH + NANO, abs=1e-15)
    assert receipt_of(task)["baseline_usd"] == pytest.approx(3 * FLAGSHIP_BATCH, abs=1e-15)
    # `tiered-mcp logs CALL` says which attempt went through the Batch API.
    assert main(["logs", row["uid"], "--ledger", ledger_target]) == 0
    out = capsys.readouterr().out
    assert "attempt 1: nano (gpt-5.4-nano), first (Batch API, batch rate) -> error_object" in out
    assert "attempt 2: nano (gpt-5.4-nano), retry -> ok" in out


async def test_items_unanswered_when_the_batch_expires_run_on_the_model_path(make_runner, ledger, upstream):
    upstream.script_batch(FakeBatch(polls=1, end="expired", answered=1))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert [r["output"]["label"] for r in items_of(task)] == ["bug", "feature", "bug"]
    assert len(upstream.completions()) == 2  # items 1 and 2
    retried = [r for r in rows_by_batch(ledger) if r["attempts"] == 2]
    assert len(retried) == 2
    for row in retried:
        first, second = ledger.attempts(row["uid"])
        assert first["outcome"] == "batch_unanswered" and "ended expired" in first["detail"]
        assert second["reason"] == "retry" and second["outcome"] == "ok"
    assert receipt_of(task)["cost_usd"] == pytest.approx(NANO_BATCH + 2 * NANO, abs=1e-15)


async def test_a_batch_that_failed_validation_runs_every_item_on_the_model_path(make_runner, upstream):
    upstream.script_batch(FakeBatch(end="failed"))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert len(upstream.completions()) == 3
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO, abs=1e-15)


async def test_without_opting_in_or_without_the_tasks_extension_no_batch_is_submitted(make_runner, upstream):
    runner = make_runner(openai_model(upstream))  # no tier has batch_api
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and upstream.batches == {} and len(upstream.completions()) == 3
    # A tool can opt out of a tier's Batch API.
    runner = make_runner(openai_model(upstream), tools={"classify": {"batch_api": False}}, **BATCH_CONFIG)
    await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert upstream.batches == {} and len(upstream.completions()) == 6
    # A synchronous batch (no task) never waits on the Batch API.
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    async with Client(build_server(runner)) as plain:
        result = await plain.call_tool("classify", {"items": ITEMS, "labels": LABELS})
    assert not result.is_error and upstream.batches == {} and len(upstream.completions()) == 9


async def test_the_daily_cap_bounds_what_is_submitted(make_runner, ledger, upstream):
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    spec = runner.specs.get("classify")
    nano = runner.config.tiers["nano"]
    worst = [worst_case_usd(nano, runner.first_request(spec, runner.check_arguments(
        spec, {"text": t, "labels": LABELS}), "nano").messages) * 0.5 for t in ITEMS]
    cap = worst[0] + worst[1] + 0.25 * worst[2]  # room for two items' worst case at the batch rate, not three
    runner = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed"
    (batch_id,) = upstream.batches
    assert [line["custom_id"] for line in upstream.batch_requests(batch_id)] == ["0", "1"]
    results = items_of(task)
    assert "output" in results[0] and "output" in results[1]
    assert "budget" in results[2]["error"] and upstream.completions() == []  # refused on the path, not sent
    # The ledger's day total is the rows' spend, within the cap, and the batch's hold is gone.
    rows = rows_by_batch(ledger)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(2 * NANO_BATCH, abs=1e-15)
    assert ledger._rows("SELECT count(*) FROM budget_holds WHERE amount > 0")[0][0] == 0
    day = ledger._rows("SELECT spent FROM budget_spend WHERE key LIKE 'day:%'")[0][0]
    assert day == pytest.approx(2 * NANO_BATCH, abs=1e-15) and day <= cap


async def test_a_cancelled_task_cancels_the_provider_batch(make_runner, upstream):
    upstream.script_batch(FakeBatch(polls=10**6))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        await cancel_task(client, handle.task_id)
        task = await wait_task(client, handle.task_id)
    assert task.status == "cancelled"
    (batch,) = upstream.batches.values()
    assert batch["status"] in ("cancelling", "cancelled")
    assert any(s.path.endswith(f"/batches/{batch['id']}/cancel") for s in upstream.seen)


@pytest.mark.parametrize("ledger_target", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("crash_before_recording_the_id", [False, True])
async def test_a_restarted_server_resumes_polling_the_same_batch(make_runner, ledger, upstream,
                                                                 crash_before_recording_the_id):
    upstream.script_batch(FakeBatch(polls=10**6))
    first = make_runner(openai_model(upstream), **BATCH_CONFIG)
    async with Client(build_server(first), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
        store = ProviderBatchStore(ledger)
        with anyio.fail_after(10):
            while (row := store.get(handle.task_id)) is None or row.status != "in_progress":
                await anyio.sleep(0.01)
    # The first server has stopped (and given the task up); the provider's batch runs on.
    (batch_id,) = upstream.batches
    assert row.batch_id == batch_id and upstream.batches[batch_id]["status"] == "in_progress"
    if crash_before_recording_the_id:  # as if it had died between creating the batch and recording its id
        store.update(handle.task_id, None, batch_id=None, status="preparing")
    upstream._batch_plans[batch_id].polls = 0  # the batch ends at the next look
    await resumed_from_its_batches(make_runner, upstream, handle.task_id, BATCH_CONFIG, items=3, batches=1)
    assert store.get(handle.task_id).batch_id == batch_id


async def test_progress_while_the_batch_runs(make_runner, upstream):
    upstream.script_batch(FakeBatch(polls=10**6))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        task = await get_task(client, handle.task_id)
        assert task.status == "working"
        (batch_id,) = upstream.batches
        upstream._batch_plans[batch_id].polls = 0
        task = await wait_task(client, handle.task_id)
    assert task.status == "completed"


async def test_when_the_batch_api_refuses_the_upload_every_item_runs_on_the_model_path(make_runner, ledger, upstream):
    upstream.fail_next("upload", 503)
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert upstream.batches == {} and len(upstream.completions()) == 3
    # Nothing reached the provider's Batch API: no request counts as sent to it.
    assert task.meta[PROGRESS_META_KEY]["batch_api"] == {"requests": 0, "completed": 0, "failed": 0}
    for row in rows_by_batch(ledger):
        first, second = ledger.attempts(row["uid"])
        assert first["batch_api"] == 1 and first["outcome"] == "server_error" and "503" in first["detail"]
        assert second["reason"] == "retry" and second["outcome"] == "ok"
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO, abs=1e-15)


async def test_a_create_that_fails_for_a_while_is_tried_again_and_nothing_is_paid_twice(make_runner, ledger, upstream):
    # After the upload, a failed create may hide a batch the provider made: the executor tries again (finding it
    # by its metadata if it exists) instead of sending the items to the model path at full price beside it.
    upstream.script_batch(FakeBatch(polls=1))
    upstream.fail_next("create", 503, 500)
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert len(upstream.batches) == 1 and upstream.completions() == []
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO_BATCH, abs=1e-15)


async def test_a_download_or_a_look_that_fails_for_a_while_is_asked_for_again(make_runner, ledger, upstream):
    upstream.script_batch(FakeBatch(polls=1))
    upstream.fail_next("look", 500, 502)
    upstream.fail_next("download", 503, 500)
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert upstream.completions() == []  # every answer came from the batch in the end
    downloads = [s for s in upstream.seen if s.path.endswith("/content")]
    assert len(downloads) == 3  # two failures, then the output file
    assert receipt_of(task)["cost_usd"] == pytest.approx(3 * NANO_BATCH, abs=1e-15)


async def test_a_download_that_keeps_failing_leaves_the_items_to_the_model_path(make_runner, upstream):
    upstream.fail_next("download", *[500] * 5)
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 3
    assert len([s for s in upstream.seen if s.path.endswith("/content")]) == 5
    assert len(upstream.completions()) == 3


async def test_items_the_cache_can_answer_are_not_submitted(make_runner, upstream):
    runner = make_runner(openai_model(upstream), cache_ttl_s=3600, **BATCH_CONFIG)
    async with Client(build_server(runner)) as plain:
        await plain.call_tool("classify", {"text": ITEMS[1], "labels": LABELS})  # answered now, and cached
    assert len(upstream.completions()) == 1
    task = await run_task(runner, {"items": ITEMS, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["cached"] == 1
    (batch_id,) = upstream.batches
    assert [line["custom_id"] for line in upstream.batch_requests(batch_id)] == ["0", "2"]
    assert len(upstream.completions()) == 1
    assert receipt_of(task)["cost_usd"] == pytest.approx(2 * NANO_BATCH, abs=1e-15)


# ---- a task larger than one provider batch --------------------------------------------------------------------------

EIGHT = [f"{'bug' if n % 2 else 'feature'} report number {n}" for n in range(8)]


async def test_a_task_larger_than_one_batch_is_sent_as_several(make_runner, ledger, upstream):
    config = {**BATCH_CONFIG, "batch_api": {"poll_s": 0.01, "max_requests": 3}}
    upstream.script_batch(FakeBatch(polls=1), FakeBatch(polls=3), FakeBatch(polls=2))
    runner = make_runner(openai_model(upstream), **config)
    task = await run_task(runner, {"items": EIGHT, "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["ok"] == 8
    # Three batches of at most three requests, each in its own file, with its own tag; nothing at full price.
    assert len(upstream.batch_creates()) == 3 and upstream.completions() == []
    parts = [[line["custom_id"] for line in upstream.batch_requests(b)] for b in upstream.batches]
    assert parts == [["0", "1", "2"], ["3", "4", "5"], ["6", "7"]]
    assert [b["metadata"]["tiered_mcp_task"] for b in upstream.batches.values()] == [
        task.task_id, f"{task.task_id}:1", f"{task.task_id}:2"]
    assert [r["output"]["label"] for r in items_of(task)] == ["bug" if n % 2 else "feature" for n in range(8)]
    receipt = receipt_of(task)
    assert receipt["batch_api"] == 8
    assert receipt["cost_usd"] == pytest.approx(8 * NANO_BATCH, abs=1e-15)
    rows = ProviderBatchStore(ledger).rows(task.task_id)
    assert [(r.part, r.items, r.status) for r in rows] == [
        (0, [0, 1, 2], "completed"), (1, [3, 4, 5], "completed"), (2, [6, 7], "completed")]
    assert [r.batch_id for r in rows] == list(upstream.batches)


async def test_the_byte_limit_splits_too(make_runner, upstream):
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    await run_task(runner, {"items": EIGHT[:1], "labels": LABELS})
    (one,) = upstream.batches.values()
    line = len(upstream.files[one["input_file_id"]])  # every item's line is as long (one digit differs)
    room = 2 * line + line // 2
    runner = make_runner(openai_model(upstream), **{**BATCH_CONFIG,
                                                    "batch_api": {"poll_s": 0.01, "max_bytes": room}})
    task = await run_task(runner, {"items": EIGHT[:5], "labels": LABELS})
    assert task.status == "completed" and receipt_of(task)["batch_api"] == 5
    parts = [[line["custom_id"] for line in upstream.batch_requests(b)] for b in list(upstream.batches)[1:]]
    assert parts == [["0", "1"], ["2", "3"], ["4"]]
    assert all(len(upstream.files[b["input_file_id"]]) <= room for b in upstream.batches.values())
    assert upstream.completions() == []


async def test_the_executor_takes_its_limits_as_arguments(make_runner, upstream):
    model = openai_model(upstream)
    runner = make_runner(model, **BATCH_CONFIG)
    executor = ProviderBatches(model, runner.ledger, max_requests=2)
    async with Client(build_server(runner, task_executor=executor), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
        task = await wait_task(client, handle.task_id)
    assert task.status == "completed" and receipt_of(task)["batch_api"] == 3
    assert [[line["custom_id"] for line in upstream.batch_requests(b)] for b in upstream.batches] == [
        ["0", "1"], ["2"]]


def test_split_keeps_index_order_and_stops_at_the_budget():
    lines = [(b"x" * 10, 1.0), (b"x" * 10, 1.0), (b"x" * 50, 1.0), (b"x" * 10, 1.0), (b"x" * 10, 1.0)]
    # A line larger than a batch takes none (its item goes to the model path); the room stops the rest.
    assert split(lines, room=3.0, max_requests=2, max_bytes=25) == ([[0, 1], [3]], [2.0, 1.0])
    assert split(lines, room=float("inf"), max_requests=3, max_bytes=25) == ([[0, 1], [3, 4]], [2.0, 2.0])
    assert split(lines, room=0.5, max_requests=3, max_bytes=25) == ([], [])


async def test_the_daily_cap_bounds_what_every_batch_takes(make_runner, ledger, upstream):
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    spec = runner.specs.get("classify")
    nano = runner.config.tiers["nano"]
    worst = [worst_case_usd(nano, runner.first_request(spec, runner.check_arguments(
        spec, {"text": t, "labels": LABELS}), "nano").messages) * 0.5 for t in EIGHT]
    cap = sum(worst[:5]) + 0.5 * worst[5]  # room for five items' worst case: two batches of three and two
    runner = make_runner(openai_model(upstream), budgets={"daily_usd": cap},
                         **{**BATCH_CONFIG, "batch_api": {"poll_s": 0.01, "max_requests": 3}})
    task = await run_task(runner, {"items": EIGHT, "labels": LABELS})
    assert task.status == "completed"
    parts = [[line["custom_id"] for line in upstream.batch_requests(b)] for b in upstream.batches]
    assert parts == [["0", "1", "2"], ["3", "4"]]
    results = items_of(task)
    assert all("output" in r for r in results[:5])
    assert all("budget" in r["error"] for r in results[5:]) and upstream.completions() == []
    # Each batch had its own hold; both are gone, and the day's total is what the answers cost.
    assert ledger._rows("SELECT count(*) FROM budget_holds WHERE amount > 0")[0][0] == 0
    rows = ProviderBatchStore(ledger).rows(task.task_id)
    assert len({r.hold["id"] for r in rows}) == 2
    day = ledger._rows("SELECT spent FROM budget_spend WHERE key LIKE 'day:%'")[0][0]
    assert day == pytest.approx(5 * NANO_BATCH, abs=1e-15) and day <= cap


@pytest.mark.parametrize("ledger_target", ["sqlite", "postgresql"], indirect=True)
async def test_a_restarted_server_resumes_every_batch_of_a_task(make_runner, ledger, upstream):
    config = {**BATCH_CONFIG, "batch_api": {"poll_s": 0.01, "max_requests": 3}}
    upstream.script_batch(*[FakeBatch(polls=10**6) for _ in range(3)])
    first = make_runner(openai_model(upstream), **config)
    store = ProviderBatchStore(ledger)
    async with Client(build_server(first), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": EIGHT, "labels": LABELS})
        with anyio.fail_after(10):
            while len(rows := store.rows(handle.task_id)) < 3 or any(r.status != "in_progress" for r in rows):
                await anyio.sleep(0.01)
    assert len(upstream.batches) == 3
    # As if the first server had died after creating the last batch, before recording its id.
    store.update(handle.task_id, None, part=2, batch_id=None, status="preparing")
    for plan in upstream._batch_plans.values():
        plan.polls = 0
    await resumed_from_its_batches(make_runner, upstream, handle.task_id, config, items=8, batches=3)
    assert [r.batch_id for r in store.rows(handle.task_id)] == list(upstream.batches)


# ---- progress while a batch runs ------------------------------------------------------------------------------------


class Gate:
    """The executor's sleep between polls: it returns only when the test lets one more poll through."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[None](100)

    async def __call__(self, seconds: float) -> None:
        await self._receive.receive()

    def open(self) -> None:
        self._send.send_nowait(None)


async def wait_for(client, task_id: str, check) -> object:
    """Poll tasks/get until `check(task)` holds; that task."""
    with anyio.fail_after(10):
        while not check(task := await get_task(client, task_id)):
            await anyio.sleep(0.01)
    return task


async def test_progress_rises_with_the_providers_request_counts_before_the_results_are_in(make_runner, upstream):
    upstream.script_batch(FakeBatch(polls=10**6, progress=1))  # each look: one more request answered
    model = openai_model(upstream)
    runner = make_runner(model, **BATCH_CONFIG)
    gate = Gate()
    executor = ProviderBatches(model, runner.ledger, sleep=gate)
    async with Client(build_server(runner, task_executor=executor), extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        # Sent once the batch's id is recorded (the provider made it).
        task = await wait_for(client, handle.task_id, lambda t: t.meta[PROGRESS_META_KEY]["batch_api"]["requests"])
        assert task.meta[PROGRESS_META_KEY]["batch_api"] == {"requests": 3, "completed": 0, "failed": 0}
        for k in (1, 2, 3):
            gate.open()  # one more poll
            task = await wait_for(client, handle.task_id,
                                  lambda t, k=k: t.meta[PROGRESS_META_KEY]["batch_api"]["completed"] == k)
            progress = task.meta[PROGRESS_META_KEY]
            # Answered at the provider, not yet checked: no item is done.
            assert task.status == "working" and progress["done"] == 0 and progress["cost_usd"] == 0
            assert progress["batch_api"] == {"requests": 3, "completed": k, "failed": 0}
            assert task.status_message == (f"0 of 3 items answered (0 failed); $0.000000 spent so far; the provider "
                                           f"has answered {k} of the 3 requests sent to its Batch API (0 with an "
                                           "error)")
        (batch_id,) = upstream.batches
        upstream._batch_plans[batch_id].polls = 0
        gate.open()
        task = await wait_task(client, handle.task_id)
    assert task.status == "completed"
    assert task.meta[PROGRESS_META_KEY]["done"] == 3
    assert task.meta[PROGRESS_META_KEY]["batch_api"] == {"requests": 3, "completed": 3, "failed": 0}


async def test_requests_the_provider_failed_count_as_answered_with_an_error(make_runner, upstream):
    upstream.script_batch(FakeBatch(polls=10**6, progress=2, errors=("1",)))
    model = openai_model(upstream)
    runner = make_runner(model, **BATCH_CONFIG)
    gate = Gate()
    async with Client(build_server(runner, task_executor=ProviderBatches(model, runner.ledger, sleep=gate)),
                      extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        gate.open()
        task = await wait_for(client, handle.task_id,
                              lambda t: t.meta[PROGRESS_META_KEY]["batch_api"]["completed"] > 0)
        assert task.meta[PROGRESS_META_KEY]["batch_api"] == {"requests": 3, "completed": 1, "failed": 1}
        assert "answered 2 of the 3 requests sent to its Batch API (1 with an error)" in task.status_message
        (batch_id,) = upstream.batches
        upstream._batch_plans[batch_id].polls = 0
        gate.open()
        task = await wait_task(client, handle.task_id)
    assert task.status == "completed"


# ---- a cancelled task lets its budget hold go -----------------------------------------------------------------------


def item_worst(runner, text: str) -> float:
    """An item's worst case at nano's batch rate, as the batch's hold reserves it."""
    spec = runner.specs.get("classify")
    request = runner.first_request(spec, runner.check_arguments(spec, {"text": text, "labels": LABELS}), "nano")
    return worst_case_usd(runner.config.tiers["nano"], request.messages) * 0.5


async def holds_gone(ledger) -> None:
    with anyio.fail_after(10):
        while ledger._rows("SELECT count(*) FROM budget_holds WHERE amount > 0")[0][0]:
            await anyio.sleep(0.01)


def day_spent(ledger) -> float:
    return ledger._rows("SELECT spent FROM budget_spend WHERE key LIKE ?", ("day:%",))[0][0]


@pytest.mark.parametrize("answered", [0, 1])
async def test_a_cancelled_batch_task_gives_its_budget_hold_back(make_runner, ledger, upstream, answered):
    # The provider answered `answered` requests before it stopped (a cancelled batch's output file has them).
    upstream.script_batch(FakeBatch(polls=10**6, answered=answered))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    cap = sum(item_worst(runner, t) for t in ITEMS) + 0.5 * item_worst(runner, ITEMS[0])
    runner = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        # While the batch's hold stands, a synchronous call does not fit (its worst case is at the full rate).
        refused = await client.call_tool("classify", {"text": ITEMS[0], "labels": LABELS})
        assert refused.is_error and "budget" in refused.content[0].text
        await cancel_task(client, handle.task_id)
        task = await wait_task(client, handle.task_id)
        assert task.status == "cancelled"
        await holds_gone(ledger)
        (batch,) = upstream.batches.values()
        assert batch["status"] == "cancelled"
        # The hold is gone: the same call runs now.
        ran = await client.call_tool("classify", {"text": ITEMS[0], "labels": LABELS})
        assert not ran.is_error
    # Spent: the answers the provider gave before it stopped, at the batch rate, then the synchronous call.
    batch_rows = [r for r in ledger.calls() if r["batch"] is not None]
    assert len(batch_rows) == answered
    for row in batch_rows:
        assert row["ok"] == 0 and row["cost_usd"] == pytest.approx(NANO_BATCH, abs=1e-15)
        (attempt,) = ledger.attempts(row["uid"])
        assert attempt["batch_api"] == 1 and attempt["outcome"] == "cancelled"
        assert attempt["cost_usd"] == pytest.approx(NANO_BATCH, abs=1e-15)
    assert day_spent(ledger) == pytest.approx(answered * NANO_BATCH + NANO, abs=1e-15)
    pb = ProviderBatchStore(ledger).get(handle.task_id)
    assert pb.status == "cancelled" and pb.settled


async def test_a_task_cancelled_while_its_answers_are_checked_gives_the_hold_back(make_runner, ledger, upstream):
    # Item 0's batch answer is unsure: it climbs to mini, which takes its time; the client cancels meanwhile.
    upstream.script_batch(FakeBatch(responses={"0": FakeResponse(
        content={"label": "bug", "labels": ["bug"], "confidence": 0.2, "reason": "unsure"})}))
    upstream.push("gpt-5.4-mini", FakeResponse(delay_s=30))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    spec = runner.specs.get("classify")
    request = runner.first_request(spec, runner.check_arguments(spec, {"text": ITEMS[0], "labels": LABELS}), "mini")
    cap = sum(item_worst(runner, t) for t in ITEMS) + 2 * worst_case_usd(runner.config.tiers["mini"],
                                                                          request.messages)
    runner = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
        with anyio.fail_after(10):
            while not any(s.body and s.body.get("model") == "gpt-5.4-mini" for s in upstream.completions()):
                await anyio.sleep(0.01)
        await cancel_task(client, handle.task_id)
        task = await wait_task(client, handle.task_id)
        assert task.status == "cancelled"
        await holds_gone(ledger)
    # Every answer the batch gave is booked once, by its item's own row (item 0's with its cancelled escalation).
    rows = [r for r in ledger.calls() if r["batch"] is not None]
    assert len(rows) == 3
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(3 * NANO_BATCH, abs=1e-15)
    assert day_spent(ledger) == pytest.approx(3 * NANO_BATCH, abs=1e-15)


@pytest.mark.parametrize("ledger_target", ["sqlite", "postgresql"], indirect=True)
async def test_cancelling_a_task_of_several_batches_gives_every_hold_back(make_runner, ledger, upstream):
    upstream.script_batch(FakeBatch(polls=10**6, answered=1), FakeBatch(polls=10**6),
                          FakeBatch(polls=10**6, answered=2))
    config = {**BATCH_CONFIG, "batch_api": {"poll_s": 0.01, "max_requests": 3}}
    runner = make_runner(openai_model(upstream), **config)
    cap = sum(item_worst(runner, t) for t in EIGHT) * 1.01
    runner = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **config)
    store = ProviderBatchStore(ledger)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": EIGHT, "labels": LABELS})
        with anyio.fail_after(10):
            while len(rows := store.rows(handle.task_id)) < 3 or any(r.status != "in_progress" for r in rows):
                await anyio.sleep(0.01)
        assert ledger._rows("SELECT count(DISTINCT id) FROM budget_holds WHERE amount > 0")[0][0] == 3
        await cancel_task(client, handle.task_id)
        assert (await wait_task(client, handle.task_id)).status == "cancelled"
        await holds_gone(ledger)
    assert [b["status"] for b in upstream.batches.values()] == ["cancelled"] * 3
    # Booked: the first batch's first answer and the third batch's first two, at the batch rate.
    rows = [r for r in ledger.calls() if r["batch"] is not None]
    assert len(rows) == 3 and all(r["error"] == "cancelled by the client" for r in rows)
    assert day_spent(ledger) == pytest.approx(3 * NANO_BATCH, abs=1e-15)
    assert all(r.settled and r.status == "cancelled" for r in store.rows(handle.task_id))


async def test_a_task_cancelled_while_no_server_held_it_still_stops_its_batch_and_gives_the_hold_back(
        make_runner, ledger, upstream):
    from tiered_mcp.ledger.tasks import TaskStore

    upstream.script_batch(FakeBatch(polls=10**6, answered=2))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    cap = sum(item_worst(runner, t) for t in ITEMS) * 1.01
    first = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    store = ProviderBatchStore(ledger)
    async with Client(build_server(first), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
        with anyio.fail_after(10):
            while (row := store.get(handle.task_id)) is None or row.status != "in_progress":
                await anyio.sleep(0.01)
    # The first server gave the task up; the client's cancel lands while no server holds it.
    TaskStore(ledger).request_cancel(handle.task_id)
    second = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    async with Client(build_server(second), extensions=[TasksClient()]) as client:
        task = await wait_task(client, handle.task_id)
        assert task.status == "cancelled"
        await holds_gone(ledger)
    (batch,) = upstream.batches.values()
    assert batch["status"] == "cancelled" and len(upstream.batch_creates()) == 1
    assert day_spent(ledger) == pytest.approx(2 * NANO_BATCH, abs=1e-15)


# ---- an answer already booked is never booked again -----------------------------------------------------------------


@pytest.mark.parametrize("ledger_target", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("then", ["resumed", "cancelled"])
async def test_a_batch_answer_booked_before_a_restart_is_not_booked_again(make_runner, ledger, upstream, then):
    from tiered_mcp.ledger.tasks import TaskStore

    # Item 0's batch answer is unsure: it climbs to mini, which takes its time; the server stops meanwhile, so
    # item 0's cancelled row books its batch answer (and a cancelled mini attempt, at 0).
    upstream.script_batch(FakeBatch(responses={"0": FakeResponse(
        content={"label": "bug", "labels": ["bug"], "confidence": 0.2, "reason": "unsure"})}))
    upstream.push("gpt-5.4-mini", FakeResponse(delay_s=30))
    runner = make_runner(openai_model(upstream), **BATCH_CONFIG)
    cap = sum(item_worst(runner, t) for t in ITEMS) + 1.0
    first = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    async with Client(build_server(first), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ITEMS, "labels": LABELS})
        with anyio.fail_after(10):
            while not any(s.body and s.body.get("model") == "gpt-5.4-mini" for s in upstream.completions()):
                await anyio.sleep(0.01)
    assert day_spent(ledger) == pytest.approx(3 * NANO_BATCH, abs=1e-15)  # what the provider answered
    if then == "cancelled":
        TaskStore(ledger).request_cancel(handle.task_id)
    second = make_runner(openai_model(upstream), budgets={"daily_usd": cap}, **BATCH_CONFIG)
    async with Client(build_server(second), extensions=[TasksClient()]) as client:
        task = await wait_task(client, handle.task_id)
        await holds_gone(ledger)
    rows = [r for r in ledger.calls() if r["batch"] is not None]
    if then == "resumed":
        # Item 0 goes on from its batch answer, booked at 0 this time, and mini answers it (full price).
        assert task.status == "completed" and receipt_of(task)["ok"] == 3
        (item,) = receipt_of(task)["per_item"]
        first_attempt, escalation = item["attempts"]
        assert first_attempt["batch_api"] is True and first_attempt["cost_usd"] == 0
        assert escalation["tier"] == "mini" and escalation["cost_usd"] == pytest.approx(MINI, abs=1e-15)
        # By hand: the provider answered three requests (3 x 30.75e-6) and mini one (225e-6); nothing else.
        assert day_spent(ledger) == pytest.approx(3 * NANO_BATCH + MINI, abs=1e-15)
        assert len(rows) == 4  # items 1 and 2, item 0 cancelled at the stop, item 0 answered
    else:
        assert task.status == "cancelled"
        assert day_spent(ledger) == pytest.approx(3 * NANO_BATCH, abs=1e-15)
        assert len(rows) == 3  # nothing booked after the takeover: every answer already had its row
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(day_spent(ledger), abs=1e-15)
    assert len(upstream.batch_creates()) == 1


async def test_a_cancelled_batch_builds_its_answers_rows_off_the_event_loop(make_runner, specs, ledger, sleeps,
                                                                            upstream):
    # Each answer's row renders the prompt and counts tokens (about 26 microseconds): 1.3 s of a 50,000-request
    # batch, which must not stall the server's other requests.
    import threading

    from tiered_mcp.call.runner import Runner

    on_loop: list[bool] = []

    class Watched(Runner):
        def unchecked_item(self, *args, **kwargs):
            on_loop.append(threading.current_thread() is threading.main_thread())
            return super().unchecked_item(*args, **kwargs)

    upstream.script_batch(FakeBatch(polls=10**6, answered=2))
    config = make_runner(openai_model(upstream), **BATCH_CONFIG).config
    runner = Watched(config, specs, openai_model(upstream), ledger, env={"OPENAI_API_KEY": "sk-test"}, sleep=sleeps,
                     jitter=lambda: 1.0)
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        await cancel_task(client, handle.task_id)
        assert (await wait_task(client, handle.task_id)).status == "cancelled"
        with anyio.fail_after(10):
            while len([r for r in ledger.calls() if r["batch"] is not None]) < 2:
                await anyio.sleep(0.01)
    assert on_loop == [False, False]


async def test_progress_never_goes_back_when_the_batch_api_stops_reporting(make_runner, ledger, upstream):
    upstream.script_batch(FakeBatch(polls=10**6, progress=1))
    model = openai_model(upstream)
    runner = make_runner(model, **BATCH_CONFIG)
    gate = Gate()
    async with Client(build_server(runner, task_executor=ProviderBatches(model, runner.ledger, sleep=gate)),
                      extensions=[TasksClient()]) as client:
        handle = await start_submitted(client, upstream)
        for _ in range(2):
            gate.open()
        await wait_for(client, handle.task_id, lambda t: t.meta[PROGRESS_META_KEY]["batch_api"]["completed"] == 2)
        upstream.fail_next("look", 404)  # the provider refuses to report on the batch: its items take the model path
        gate.open()
        task = await wait_task(client, handle.task_id)
    assert task.status == "completed" and len(upstream.completions()) == 3
    # What the provider last reported stands: no made-up zeros over it.
    assert task.meta[PROGRESS_META_KEY]["batch_api"] == {"requests": 3, "completed": 2, "failed": 0}
    row = ProviderBatchStore(ledger).get(handle.task_id)
    assert (row.status, row.completed, row.failed) == ("failed", 2, 0)


class BrokenResults:
    """The Batch API, except that downloading the first batch's output fails with a bug of ours (not a provider
    error), and the other batches' downloads take a moment."""

    def __init__(self, api, upstream) -> None:
        self.api, self.upstream = api, upstream

    def __getattr__(self, name: str):
        return getattr(self.api, name)

    async def batch_results(self, provider, tier, model, file_id):
        first = next(iter(self.upstream.batches.values()))
        if file_id == first["output_file_id"]:
            raise RuntimeError("a bug while reading the first batch's answers")
        await anyio.sleep(0.2)
        return await self.api.batch_results(provider, tier, model, file_id)


async def test_one_cancelled_batch_failing_to_settle_leaves_the_others_settled(make_runner, ledger, upstream, caplog):
    upstream.script_batch(*[FakeBatch(polls=10**6, answered=1) for _ in range(3)])
    config = {**BATCH_CONFIG, "batch_api": {"poll_s": 0.01, "max_requests": 3}}
    model = openai_model(upstream)
    runner = make_runner(model, **config)
    cap = sum(item_worst(runner, t) for t in EIGHT) * 1.01
    runner = make_runner(model, budgets={"daily_usd": cap}, **config)
    store = ProviderBatchStore(ledger)
    executor = ProviderBatches(BrokenResults(model, upstream), runner.ledger)
    async with Client(build_server(runner, task_executor=executor), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": EIGHT, "labels": LABELS})
        with anyio.fail_after(10):
            while len(rows := store.rows(handle.task_id)) < 3 or any(r.status != "in_progress" for r in rows):
                await anyio.sleep(0.01)
        await cancel_task(client, handle.task_id)
        assert (await wait_task(client, handle.task_id)).status == "cancelled"
        with anyio.fail_after(10):
            while not all(r.settled for r in store.rows(handle.task_id)[1:]):
                await anyio.sleep(0.01)
        with anyio.fail_after(10):
            while len([r for r in ledger.calls() if r["batch"] is not None]) < 2:
                await anyio.sleep(0.01)
    # The second and third batches' answers are booked and their holds gone; the first's hold is left to expire.
    rows = store.rows(handle.task_id)
    assert [r.settled for r in rows] == [False, True, True]
    assert day_spent(ledger) == pytest.approx(2 * NANO_BATCH, abs=1e-15)
    live = {h for (h,) in ledger._rows("SELECT DISTINCT id FROM budget_holds WHERE amount > 0")}
    assert live == {rows[0].hold["id"]}
    assert "could not settle" in caplog.text


def test_requests_sent_count_only_batches_the_provider_made(ledger):
    from tiered_mcp.ledger.provider_batches import ProviderBatchRow

    def row(part: int, items: list[int], batch_id: str | None, status: str) -> ProviderBatchRow:
        return ProviderBatchRow("t", "nano", items, None, None, batch_id, status, None, None, 0.0, None, False, part)

    store = ProviderBatchStore(ledger)
    store.create([row(0, [0, 1, 2], "batch_a", "in_progress"), row(1, [3, 4], None, "preparing"),
                  row(2, [5], None, "failed")], None)  # the second not sent yet; the third's upload refused
    progress = store.progress("t")
    assert (progress.requests, progress.completed, progress.failed) == (3, 0, 0)
    assert store.progress("none") is None
