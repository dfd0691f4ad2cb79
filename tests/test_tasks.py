"""The Tasks extension for batch calls, driven by the SDK's real client (in memory and over HTTP), on both ledgers
where the subject is storage (resuming, taking over, the compare-and-set)."""

from __future__ import annotations

import json
import os
import threading
import time

import anyio
import pytest
from mcp import Client, MCPError

from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.ledger.base import now_iso, open_ledger
from tiered_mcp.ledger.tasks import WORKING, TaskRow, TaskStore
from tiered_mcp.serve.server import build_server
from tiered_mcp.serve.tasks import PROGRESS_META_KEY, TASKS_EXTENSION, BatchJob, path_executor
from tiered_mcp.testing import ScriptedModel, reply

from .tasks_client import TasksClient, cancel_task, get_task, start_task, update_task, wait_task

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]
BOTH = pytest.mark.parametrize("ledger_target", ["sqlite", "postgresql"], indirect=True)


def label_of(req) -> str:
    text = req.messages[1]["content"].split("<text>")[1]
    return "feature" if "feature" in text else "bug"


def by_text(req):
    label = label_of(req)
    return reply({"label": label, "labels": [label], "confidence": 0.95, "reason": "r"})


class Gate:
    """A model that answers texts starting with 'quick' at once and holds the others until `open` is set."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.seen: list[str] = []
        self.held = 0

    async def __call__(self, req):
        text = req.messages[1]["content"].split("<text>")[1]
        self.seen.append(text)
        if "quick" not in text:
            self.held += 1
            await self.open.wait()
        return by_text(req)


def progress(task) -> dict:
    return task.meta[PROGRESS_META_KEY]


async def wait_done(client, task_id: str, done: int) -> None:
    with anyio.fail_after(10):
        while progress(await get_task(client, task_id))["done"] < done:
            await anyio.sleep(0.02)


async def test_an_opted_in_batch_gets_a_task_whose_result_is_the_synchronous_one(make_runner, ledger):
    items = ["crash on save", "please add a feature", "another crash"]
    server = build_server(make_runner(ScriptedModel(fallback=by_text)))
    async with Client(server, extensions=[TasksClient()]) as client:
        assert client.session.server_capabilities.extensions[TASKS_EXTENSION] == {}
        handle = await start_task(client, "classify", {"items": items, "labels": LABELS})
        assert handle.status == "working" and handle.ttl_ms > 0 and handle.poll_interval_ms > 0
        assert progress(handle) == {"total": 3, "done": 0, "failed": 0, "cost_usd": 0.0, "unpriced": 0}
        task = await wait_task(client, handle.task_id)
    async with Client(server) as plain:
        sync = await plain.call_tool("classify", {"items": items, "labels": LABELS})
    assert task.status == "completed" and task.result_type == "complete"
    assert task.status_message == "3 of 3 items answered, 0 failed"
    assert task.result["structuredContent"] == sync.structured_content
    assert json.loads(task.result["content"][0]["text"]) == sync.structured_content
    receipt, same = task.result["_meta"][RECEIPT_META_KEY], sync.meta[RECEIPT_META_KEY]
    varying = {"latency_ms"}
    assert {k: v for k, v in receipt.items() if k not in varying} == {k: v for k, v in same.items() if k not in varying}
    # Progress, by hand: every item's row of this batch, summed.
    rows = [r for r in ledger.calls() if r["batch"] == ledger.calls()[0]["batch"]]
    assert len(rows) == 3
    assert progress(task)["done"] == 3 and progress(task)["failed"] == 0
    assert progress(task)["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-12)
    assert progress(task)["cost_usd"] == pytest.approx(receipt["cost_usd"], abs=1e-12)


async def test_the_claim_resolves_the_task_transparently_for_call_tool(make_runner):
    tasks = TasksClient()
    async with Client(build_server(make_runner(ScriptedModel(fallback=by_text))), extensions=[tasks]) as client:
        result = await client.call_tool("classify", {"items": ["crash", "a feature please"], "labels": LABELS})
        single = await client.call_tool("classify", {"text": "crash", "labels": LABELS})
    assert len(tasks.handles) == 1  # the batch became a task; the single call did not
    assert [r["output"]["label"] for r in result.structured_content["results"]] == ["bug", "feature"]
    assert single.structured_content["label"] == "bug" and not single.is_error


async def test_without_the_extension_or_on_a_legacy_wire_a_batch_is_answered_at_once(make_runner):
    server = build_server(make_runner(ScriptedModel(fallback=by_text)))
    for client in (Client(server), Client(server, mode="legacy", extensions=[TasksClient()])):
        async with client:
            result = await client.session.call_tool("classify", {"items": ["crash"], "labels": LABELS},
                                                    allow_claimed=True)
            assert result.structured_content["results"][0]["output"]["label"] == "bug"


async def test_on_the_legacy_wire_the_tasks_methods_do_not_exist(make_runner):
    async with Client(build_server(make_runner()), mode="legacy", extensions=[TasksClient()]) as client:
        with pytest.raises(MCPError) as e:
            await get_task(client, "0" * 32)
    assert e.value.error.code == -32601


async def test_a_bad_batch_is_refused_at_once_not_as_a_task(make_runner):
    async with Client(build_server(make_runner()), extensions=[TasksClient()]) as client:
        result = await client.session.call_tool("classify", {"items": [], "labels": LABELS}, allow_claimed=True)
    assert result.is_error and "should be non-empty" in result.content[0].text


async def test_tasks_requests_need_the_extension_declared(make_runner):
    async with Client(build_server(make_runner(ScriptedModel(fallback=by_text))), extensions=[TasksClient()]) as c:
        handle = await start_task(c, "classify", {"items": ["crash"], "labels": LABELS})
        async with Client(build_server(make_runner())) as other:
            with pytest.raises(MCPError) as e:
                await get_task(other, handle.task_id)
    assert e.value.error.code == -32021
    assert e.value.error.data == {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


@pytest.mark.parametrize("task_id", ["0" * 32, "f" * 32, "../../etc/passwd", "x" * 10_000, "ÄÖ" * 16, "",
                                     "A" * 32, "0" * 31 + "\n"])
async def test_an_unknown_or_hostile_task_id_is_a_clear_invalid_params_error(make_runner, task_id):
    async with Client(build_server(make_runner()), extensions=[TasksClient()]) as client:
        for send in (get_task, cancel_task, lambda c, t: update_task(c, t, {"k": {"action": "accept"}})):
            with pytest.raises(MCPError) as e:
                await send(client, task_id)
            assert e.value.error.code == -32602
            message = e.value.error.message
            assert message.startswith("Failed to retrieve task: ") and len(message) < 200
            assert "Task not found" in message or "is not a task id" in message


async def test_a_task_id_that_is_not_a_string_is_invalid_params(make_runner):
    import mcp_types as types

    async with Client(build_server(make_runner()), extensions=[TasksClient()]) as client:
        for params in ({"taskId": 12345}, {"taskId": None}, {}):
            with pytest.raises(MCPError) as e:
                await client.session.send_request(types.Request[dict, str](method="tasks/get", params=params),
                                                  types.EmptyResult)
            assert e.value.error.code == -32602


async def test_cancel_stops_items_in_flight_and_keeps_the_finished_ones(make_runner, ledger):
    gate = Gate()
    runner = make_runner(ScriptedModel(fallback=gate))
    items = ["quick crash", "quick feature", "slow one", "slow two", "slow three"]
    async with Client(build_server(runner), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": items, "labels": LABELS})
        await wait_done(client, handle.task_id, 2)
        assert (await get_task(client, handle.task_id)).status == "working"
        assert (await update_task(client, handle.task_id, {"never-asked": {"action": "accept"}})) is not None
        await cancel_task(client, handle.task_id)
        task = await wait_task(client, handle.task_id)
        await cancel_task(client, handle.task_id)  # cancelling a finished task is acknowledged, and changes nothing
        again = await get_task(client, handle.task_id)
    assert task.status == "cancelled" and task.status_message == "cancelled after 2 of 5 items"
    assert again.status == "cancelled" and task.result is None
    assert gate.held == 3 and not gate.open.is_set()  # the three slow items were in flight, and never answered
    rows = ledger.calls()
    # The finished items' rows stay; the items in flight have theirs too (what they spent counts), as cancelled.
    assert sorted((r["ok"], r["error"]) for r in rows) == [(0, "cancelled by the client")] * 3 + [(1, None)] * 2
    store = TaskStore(ledger)
    assert sorted(i.index for i in store.items(handle.task_id)) == [0, 1]
    assert store.get(handle.task_id).arguments is None  # a finished task keeps no arguments


async def test_a_task_whose_every_item_fails_completes_with_an_error_result(make_runner):
    from tiered_mcp.core.errors import UpstreamRejected

    def refuse(req):
        raise UpstreamRejected("HTTP 400: cannot process this item")

    async with Client(build_server(make_runner(ScriptedModel(fallback=refuse))), extensions=[TasksClient()]) as c:
        handle = await start_task(c, "classify", {"items": ["a", "b"], "labels": LABELS})
        task = await wait_task(c, handle.task_id)
    # The spec: a tool result with isError is `completed`; `failed` is for JSON-RPC errors only.
    assert task.status == "completed" and task.result["isError"] is True
    assert "every item of the batch failed" in task.result["content"][0]["text"]
    assert progress(task)["failed"] == 2 and progress(task)["done"] == 2


async def test_the_executor_is_pluggable(make_runner):
    order: list[list[int]] = []

    async def reversed_executor(runner, job: BatchJob) -> None:
        order.append(list(job.pending))
        await path_executor(runner, BatchJob(job.task_id, job.plan, job.pending[::-1], job.record))

    server = build_server(make_runner(ScriptedModel(fallback=by_text)), task_executor=reversed_executor)
    async with Client(server, extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": ["crash", "feature"], "labels": LABELS})
        task = await wait_task(client, handle.task_id)
    assert order == [[0, 1]] and task.status == "completed"
    assert [r["index"] for r in task.result["structuredContent"]["results"]] == [0, 1]


# ---- surviving the session and the replica ----------------------------------------------------------------------


async def given_up_half_done(make_runner):
    """A task of four items whose first server stopped with the two quick ones answered and two in flight."""
    items = ["quick crash", "quick feature", "slow crash", "slow feature"]
    first = make_runner(ScriptedModel(fallback=Gate()))
    async with Client(build_server(first), extensions=[TasksClient()]) as client:
        handle = await start_task(client, "classify", {"items": items, "labels": LABELS})
        await wait_done(client, handle.task_id, 2)
    return handle


@BOTH
async def test_a_restarted_server_on_the_same_ledger_resumes_only_the_unanswered_items(make_runner, ledger_target,
                                                                                       specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict

    handle = await given_up_half_done(make_runner)
    # The first server stopped (its lifespan ended) with two items answered and two cancelled in flight.
    second_model = ScriptedModel(fallback=by_text)
    ledger = open_ledger(ledger_target)
    try:
        second = Runner(config_from_dict({"cache_ttl_s": 0}), specs, second_model, ledger,
                        env={"OPENAI_API_KEY": "sk-test"})
        async with Client(build_server(second), extensions=[TasksClient()]) as client:
            task = await wait_task(client, handle.task_id)
        assert task.status == "completed"
        assert [r["output"]["label"] for r in task.result["structuredContent"]["results"]] == \
            ["bug", "feature", "bug", "feature"]
        assert sorted(req.messages[1]["content"].split("<text>")[1].split("</text>")[0].strip()
                      for req in second_model.requests) == ["slow crash", "slow feature"]
        rows = [r for r in ledger.calls() if r["ok"]]
        assert len(rows) == 4 and len({r["batch"] for r in rows}) == 1  # one row per item, one batch
        assert task.result["_meta"][RECEIPT_META_KEY]["items"] == 4
    finally:
        ledger.close()


@BOTH
async def test_a_crashed_replicas_task_is_taken_over_by_exactly_one_other(ledger_target, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.serve.tasks import TaskManager

    ledgers = [open_ledger(ledger_target) for _ in range(3)]
    try:
        stores = [TaskStore(led) for led in ledgers]
        now = time.time()
        # A task a replica that crashed held: one item answered, its lease ran out a second ago.
        row = TaskRow(id="a" * 32, caller=None, daily_usd=None, tool="classify", status=WORKING, message=None,
                      created=now_iso(), updated=now_iso(), expires=now + 3600,
                      arguments=json.dumps({"items": ["crash", "feature", "crash again"], "labels": LABELS}),
                      options="{}", batch="b" * 12, total=3, done=0, failed=0, cost_usd=0.0, unpriced=0,
                      owner="crashed", lease=now - 1, cancel=False, result=None, error=None)
        stores[0].create(row)
        models = [ScriptedModel(fallback=by_text) for _ in range(2)]
        managers = [TaskManager(Runner(config_from_dict({"cache_ttl_s": 0}), specs, m, led,
                                       env={"OPENAI_API_KEY": "sk-test"}), store)
                    for m, led, store in zip(models, ledgers[1:], stores[1:], strict=True)]
        async with anyio.create_task_group() as tg:
            async def serve(manager: TaskManager) -> None:
                async with manager.runner.running(), manager.running():
                    with anyio.fail_after(20):
                        while stores[0].get(row.id).status == WORKING:
                            await anyio.sleep(0.02)

            for manager in managers:
                tg.start_soon(serve, manager)
        done = stores[0].get(row.id)
        assert done.status == "completed" and done.done == 3
        assert sorted(len(m.requests) for m in models) == [0, 3]  # one replica took it; each item ran once
    finally:
        for led in ledgers:
            led.close()


@BOTH
def test_the_takeover_is_a_compare_and_set(ledger_target):
    ledgers = [open_ledger(ledger_target) for _ in range(6)]
    try:
        now = time.time()
        TaskStore(ledgers[0]).create(TaskRow(
            id="c" * 32, caller=None, daily_usd=None, tool="classify", status=WORKING, message=None,
            created=now_iso(), updated=now_iso(), expires=now + 60, arguments="{}", options="{}", batch="x",
            total=1, done=0, failed=0, cost_usd=0.0, unpriced=0, owner="gone", lease=now - 1, cancel=False,
            result=None, error=None))
        won: list[str] = []
        barrier = threading.Barrier(len(ledgers))

        def claim(n: int) -> None:
            barrier.wait()
            if TaskStore(ledgers[n]).claim("c" * 32, f"replica-{n}", time.time(), 30.0):
                won.append(f"replica-{n}")

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(ledgers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and TaskStore(ledgers[0]).get("c" * 32).owner == won[0]
        # The loser's writes are fenced: it cannot add items to a task it does not hold.
        loser = next(f"replica-{n}" for n in range(len(ledgers)) if f"replica-{n}" not in won)
        from tiered_mcp.ledger.tasks import ItemRow

        assert TaskStore(ledgers[0]).save_items("c" * 32, loser, [ItemRow(0, True, {"index": 0}, None)]) == "lost"
        assert TaskStore(ledgers[0]).items("c" * 32) == []
    finally:
        for led in ledgers:
            led.close()


async def test_a_finished_task_expires_after_its_ttl(make_runner, ledger):
    from tiered_mcp.serve.tasks import TaskManager

    clock = [time.time()]
    runner = make_runner(ScriptedModel(fallback=by_text))
    manager = TaskManager(runner, TaskStore(ledger), ttl_s=60, clock=lambda: clock[0])
    from tiered_mcp.call.options import CallOptions

    async with runner.running(), manager.running():
        row = await manager.create("classify", {"items": ["crash"], "labels": LABELS}, CallOptions())
        with anyio.fail_after(10):
            while (await manager.visible(row.id)).status == WORKING:
                await anyio.sleep(0.02)
        clock[0] += 61
        with pytest.raises(MCPError, match="Task has expired"):
            await manager.visible(row.id)
        await manager._tend()
    assert TaskStore(ledger).get(row.id) is None and TaskStore(ledger).items(row.id) == []


# ---- over HTTP: callers, sessions, replicas ------------------------------------------------------------------------


async def test_over_http_a_task_survives_its_session_and_is_its_callers_only(make_runner, tmp_path):
    from .test_http import mcp_client, serving
    from .test_security import ALICE, BOB, _tokens_file

    tokens = _tokens_file(tmp_path / "tokens.toml", alice=(ALICE, {}), bob=(BOB, {}))
    gate = Gate()
    async with serving(make_runner(ScriptedModel(fallback=gate)), token=None, tokens_file=str(tokens)) as base:
        async with mcp_client(base, ALICE, extensions=[TasksClient()]) as alice:
            handle = await start_task(alice, "classify", {"items": ["quick crash", "slow feature"], "labels": LABELS})
        # Alice's session is gone; the task is not.
        async with mcp_client(base, BOB, extensions=[TasksClient()]) as bob:
            for send in (get_task, cancel_task):
                with pytest.raises(MCPError, match="Task not found") as e:
                    await send(bob, handle.task_id)
                assert e.value.error.code == -32602
        gate.open.set()
        async with mcp_client(base, ALICE, extensions=[TasksClient()]) as alice:
            task = await wait_task(alice, handle.task_id)
    assert task.status == "completed"
    assert [r["output"]["label"] for r in task.result["structuredContent"]["results"]] == ["bug", "feature"]


async def test_tasks_work_on_a_stateless_http_server(make_runner):
    from .test_http import mcp_client, serving

    async with serving(make_runner(ScriptedModel(fallback=by_text)), stateless=True) as base:
        async with mcp_client(base, extensions=[TasksClient()]) as client:
            handle = await start_task(client, "classify", {"items": ["crash", "a feature"], "labels": LABELS})
        async with mcp_client(base, extensions=[TasksClient()]) as client:
            task = await wait_task(client, handle.task_id)
    assert task.status == "completed" and task.result["structuredContent"]["failed"] == 0


async def test_a_task_that_cannot_run_here_any_more_completes_with_the_reason(make_runner, ledger):
    from tiered_mcp.serve.tasks import TaskManager

    now = time.time()
    store = TaskStore(ledger)
    for task_id, tool, arguments in (("d" * 32, "draft", "{}"), ("e" * 32, "classify", "not json")):
        store.create(TaskRow(id=task_id, caller=None, daily_usd=None, tool=tool, status=WORKING, message=None,
                             created=now_iso(), updated=now_iso(), expires=now + 60, arguments=arguments,
                             options="{}", batch="x", total=1, done=0, failed=0, cost_usd=0.0, unpriced=0,
                             owner="gone", lease=now - 1, cancel=False, result=None, error=None))
    runner = make_runner()
    async with runner.running(), TaskManager(runner, store).running():
        with anyio.fail_after(10):
            while WORKING in (store.get("d" * 32).status, store.get("e" * 32).status):
                await anyio.sleep(0.02)
    draft, broken = store.get("d" * 32), store.get("e" * 32)
    assert draft.status == "completed" and json.loads(draft.result)["isError"] is True
    assert "takes no batch" in draft.message
    assert broken.status == "failed" and json.loads(broken.error)["code"] == -32603


@pytest.mark.parametrize("ledger_target", ["postgresql"], indirect=True)
async def test_a_replica_stopped_mid_task_is_finished_by_the_next_one_on_postgresql(ledger_target, tmp_path):
    """Two real server processes, one after the other, on one PostgreSQL ledger: the first is stopped (SIGTERM)
    mid-batch; the second, started afterwards, finishes the task, running only what was not answered."""
    from tiered_mcp.testing import FakeUpstream

    from .conftest import server_env
    from .test_http import cli_server, mcp_client
    from .test_security import ALICE, _tokens_file

    tokens = _tokens_file(tmp_path / "tokens.toml", alice=(ALICE, {}))
    config = tmp_path / "config.toml"
    config.write_text("cache_ttl_s = 0\n[providers.openai]\nmax_concurrency = 2\n", encoding="utf-8")
    items = [f"crash number {n}" for n in range(12)]
    args = ("--ledger", ledger_target, "--config", str(config), "--tokens-file", str(tokens))
    with FakeUpstream(latency_s=0.25) as upstream:
        env = server_env(upstream, tmp_path)
        if os.environ.get("PYTHONPATH"):  # a worktree's own code, not the installed package's
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        (tmp_path / "a").mkdir()
        async with cli_server(tmp_path / "a", env, *args) as base:
            async with mcp_client(base, ALICE, extensions=[TasksClient()]) as client:
                handle = await start_task(client, "classify", {"items": items, "labels": LABELS})
                await wait_done(client, handle.task_id, 3)
        first = len(upstream.completions())
        (tmp_path / "b").mkdir()
        async with cli_server(tmp_path / "b", env, *args) as base:
            async with mcp_client(base, ALICE, extensions=[TasksClient()]) as client:
                task = await wait_task(client, handle.task_id, timeout_s=60)
        log_a = (tmp_path / "a" / "stderr.log").read_text(encoding="utf-8")
        log_b = (tmp_path / "b" / "stderr.log").read_text(encoding="utf-8")
    assert task.status == "completed", (task, log_a, log_b)
    assert "given up at shutdown" in log_a and "resumed here with" in log_b
    outputs = task.result["structuredContent"]["results"]
    assert [r["index"] for r in outputs] == list(range(12)) and all(r["output"]["label"] for r in outputs)
    ledger = open_ledger(ledger_target)
    try:
        rows = ledger.calls()
    finally:
        ledger.close()
    answered = [r for r in rows if r["ok"]]
    # One answered row per item; the items the stop cut off (sent, or waiting for the provider's limit) have theirs
    # too, as cancelled.
    assert len(answered) == 12 and {r["caller"] for r in answered} == {"alice"}
    assert {r["error"] for r in rows if not r["ok"]} <= {"cancelled by the client"}
    # At most the two requests in flight (max_concurrency = 2) were cut off and sent again.
    assert 3 <= first < 12 and len(upstream.completions()) <= 12 + 2


async def test_over_stdio_a_task_outlives_its_server_process(tmp_path):
    """The host restarts its stdio server (a new process on the same SQLite ledger): the new one finishes the task."""
    from mcp import StdioServerParameters

    from tiered_mcp.testing import FakeUpstream

    from .conftest import PYTHON, server_env

    config = tmp_path / "config.toml"
    config.write_text("cache_ttl_s = 0\n[providers.openai]\nmax_concurrency = 1\n", encoding="utf-8")
    items = [f"crash number {n}" for n in range(6)]
    with FakeUpstream(latency_s=0.2) as upstream:
        env = server_env(upstream, tmp_path)
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        params = StdioServerParameters(command=PYTHON, env=env, args=[
            "-m", "tiered_mcp", "serve", "--ledger", str(tmp_path / "ledger.sqlite3"), "--config", str(config)])
        async with Client(params, extensions=[TasksClient()]) as client:
            handle = await start_task(client, "classify", {"items": items, "labels": LABELS})
            await wait_done(client, handle.task_id, 1)
        async with Client(params, extensions=[TasksClient()]) as client:
            task = await wait_task(client, handle.task_id, timeout_s=60)
    assert task.status == "completed"
    assert [r["index"] for r in task.result["structuredContent"]["results"]] == list(range(6))
    assert task.result["_meta"][RECEIPT_META_KEY]["ok"] == 6


@BOTH
async def test_a_cancel_sent_to_another_replica_stops_the_task_where_it_runs(ledger_target, specs):
    from tiered_mcp.call.options import CallOptions
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.serve.tasks import TaskManager

    ledgers = [open_ledger(ledger_target) for _ in range(2)]
    try:
        gate = Gate()
        managers = [TaskManager(Runner(config_from_dict({"cache_ttl_s": 0}), specs, ScriptedModel(fallback=gate), led,
                                       env={"OPENAI_API_KEY": "sk-test"}), TaskStore(led)) for led in ledgers]
        a, b = managers
        async with a.runner.running(), a.running(), b.runner.running(), b.running():
            row = await a.create("classify", {"items": ["quick crash", "slow one"], "labels": LABELS}, CallOptions())
            await b.cancel(row.id)  # b does not hold it: the flag reaches a at its next save
            with anyio.fail_after(10):
                while (await b.visible(row.id)).status == WORKING:
                    await anyio.sleep(0.02)
            task = await b.visible(row.id)
        assert task.status == "cancelled" and task.message == "cancelled after 1 of 2 items"
    finally:
        for led in ledgers:
            led.close()


async def test_a_task_cancelled_while_no_server_held_it_is_finished_without_starting_its_items(make_runner, ledger):
    """With no provider batch left running, the next server finishes such a task as cancelled outright: no item is
    started (each would write a 'cancelled' row), no request is sent."""
    handle = await given_up_half_done(make_runner)
    rows_before = len(ledger.calls())
    TaskStore(ledger).request_cancel(handle.task_id)  # the client's cancel, while no server holds the task
    second_model = ScriptedModel(fallback=by_text)
    second = make_runner(second_model)
    async with Client(build_server(second), extensions=[TasksClient()]) as client:
        task = await wait_task(client, handle.task_id)
        assert task.status == "cancelled" and "after 2 of 4 items" in (task.status_message or "")
        await cancel_task(client, handle.task_id)  # a second cancel of a finished task is an ack, nothing more
    assert second_model.requests == [] and len(ledger.calls()) == rows_before
