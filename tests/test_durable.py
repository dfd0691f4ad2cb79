"""`ledger_durable = true`: a call is answered only once its ledger row (and cache entry) is committed.

The ledgers here are real SQLite ledgers; the seam is the ledger the runner is given, whose `write` (the one the
background writer calls in a worker thread) waits on a gate or fails, so the tests show the order of events without
timing anything.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.call.writer import RETRIES_S
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import NotRecorded, ToolFailed
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.specs.spec import Specs
from tiered_mcp.testing import ScriptedModel, reply

from .conftest import Sleeps

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature", "billing"]
SURE = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "it crashes"}  # clean: fit to cache


class GatedLedger(Ledger):
    """A SQLite ledger whose writes wait until `gate` is set; `entered` says a write has begun."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.sizes: list[int] = []  # call rows per transaction

    def write(self, calls: list[Any], *args: Any, **kwargs: Any) -> None:
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        self.sizes.append(len(calls))
        super().write(calls, *args, **kwargs)


class PoisonLedger(Ledger):
    """A SQLite ledger that refuses every transaction holding a call whose arguments mention "poison" (all of
    them, with `always`), as a constraint or a full disk would."""

    def __init__(self, path: Path, always: bool = False) -> None:
        super().__init__(path)
        self.always, self.transactions = always, 0

    def write(self, calls: list[Any], *args: Any, **kwargs: Any) -> None:
        self.transactions += 1
        if self.always or any("poison" in str(c.arguments) for c in calls):
            raise sqlite3.OperationalError("disk I/O error")
        super().write(calls, *args, **kwargs)


def committed(path: Path) -> tuple[list[str], int]:
    """What another connection can read now: the call ids in the ledger and how many cache entries it holds."""
    db = sqlite3.connect(path)
    try:
        return ([r[0] for r in db.execute("SELECT uid FROM calls ORDER BY id")],
                db.execute("SELECT count(*) FROM cache").fetchone()[0])
    finally:
        db.close()


def runner_over(specs: Specs, ledger: Ledger, sleeps: Sleeps, **config: Any) -> Runner:
    return Runner(config_from_dict(config), specs, ScriptedModel(fallback=lambda req: reply(SURE)), ledger,
                  env={"OPENAI_API_KEY": "sk-test"}, sleep=sleeps)


@pytest.mark.parametrize("durable", [True, False])
async def test_with_ledger_durable_a_call_returns_only_once_its_row_and_cache_entry_are_committed(
        specs, tmp_path, sleeps, durable):
    path = tmp_path / "ledger.sqlite3"
    ledger = GatedLedger(path)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=durable)
    seen: dict[str, Any] = {}

    async def call() -> None:
        result = await runner.call("classify", {"text": "the app crashes on save", "labels": LABELS})
        seen["committed"] = committed(path)  # read at the moment the answer is in hand, before anything else runs
        seen["call_id"] = result.receipt["call_id"]

    try:
        async with runner.running():
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    assert await anyio.to_thread.run_sync(ledger.entered.wait, 10)  # the writer holds the row
                    await anyio.wait_all_tasks_blocked()
                    answered_while_held = "call_id" in seen
                    ledger.gate.set()
    finally:
        ledger.close()
    if durable:
        # Not answered while the writer was held back; answered with its row and its cache entry readable.
        assert not answered_while_held
        assert seen["committed"] == ([seen["call_id"]], 1)
    else:
        # The default: the answer goes out while its row still waits in the writer.
        assert answered_while_held
        assert seen["committed"] == ([], 0)
        assert committed(path) == ([seen["call_id"]], 1)  # written before the server stopped


async def test_with_ledger_durable_every_batch_item_is_committed_before_the_batch_answers(specs, tmp_path, sleeps):
    path = tmp_path / "ledger.sqlite3"
    ledger = GatedLedger(path)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=True, cache_ttl_s=0)
    seen: dict[str, Any] = {}

    async def call() -> None:
        result = await runner.call("classify", {"items": ["one", "two", "three"], "labels": LABELS})
        seen["committed"], seen["receipt"] = committed(path), result.receipt

    try:
        async with runner.running():
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    assert await anyio.to_thread.run_sync(ledger.entered.wait, 10)
                    await anyio.wait_all_tasks_blocked()
                    answered_while_held = "receipt" in seen
                    ledger.gate.set()
    finally:
        ledger.close()
    assert not answered_while_held
    assert seen["receipt"]["ok"] == 3
    assert len(seen["committed"][0]) == 3


async def test_with_ledger_durable_an_answer_whose_row_cannot_be_committed_is_an_error(specs, tmp_path, sleeps):
    ledger = PoisonLedger(tmp_path / "ledger.sqlite3", always=True)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=True, cache_ttl_s=0)
    try:
        async with runner.running():
            with pytest.raises(NotRecorded, match="withheld") as caught:
                await runner.call("classify", {"text": "the app crashes on save", "labels": LABELS})
    finally:
        ledger.close()
    receipt = caught.value.receipt
    assert receipt is not None
    assert (receipt["ok"], receipt["error_kind"], receipt["tier"]) == (False, "ledger", "nano")
    # The writer's retries (through the runner's sleep seam), then the row alone: 3 transactions + 1.
    assert sleeps == list(RETRIES_S)
    assert ledger.transactions == len(RETRIES_S) + 1


async def test_without_ledger_durable_an_answer_goes_out_even_if_its_row_is_lost(specs, tmp_path, sleeps):
    ledger = PoisonLedger(tmp_path / "ledger.sqlite3", always=True)
    runner = runner_over(specs, ledger, sleeps, cache_ttl_s=0)
    try:
        async with runner.running():
            result = await runner.call("classify", {"text": "the app crashes on save", "labels": LABELS})
    finally:
        ledger.close()
    assert result.receipt["ok"] is True
    assert ledger.transactions == len(RETRIES_S) + 1  # tried (at shutdown at the latest), then logged as lost


async def test_with_ledger_durable_a_batch_item_whose_row_is_lost_becomes_an_error_and_the_rest_answer(
        specs, tmp_path, sleeps):
    path = tmp_path / "ledger.sqlite3"
    ledger = PoisonLedger(path)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=True, cache_ttl_s=0)
    try:
        async with runner.running():
            result = await runner.call("classify", {"items": ["one", "poison", "three"], "labels": LABELS})
    finally:
        ledger.close()
    # The batch's transaction fails (with its retries), then each row alone: the poisoned one is lost.
    assert [("output" in r, "withheld" in r.get("error", "")) for r in result.output["results"]] == [
        (True, False), (False, True), (True, False)]
    assert (result.receipt["ok"], result.receipt["failed"]) == (2, 1)
    assert len(committed(path)[0]) == 2


async def test_with_ledger_durable_a_batch_whose_rows_are_all_lost_fails(specs, tmp_path, sleeps):
    ledger = PoisonLedger(tmp_path / "ledger.sqlite3", always=True)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=True, cache_ttl_s=0)
    try:
        async with runner.running():
            with pytest.raises(ToolFailed, match="every item of the batch failed; the first: the answer is withheld"):
                await runner.call("classify", {"items": ["one", "two"], "labels": LABELS})
    finally:
        ledger.close()


async def test_concurrent_durable_calls_share_transactions(specs, tmp_path, sleeps):
    """Group commit: calls that wait while the writer is busy go into its next transaction together."""
    path = tmp_path / "ledger.sqlite3"
    ledger = GatedLedger(path)
    runner = runner_over(specs, ledger, sleeps, ledger_durable=True, cache_ttl_s=0)
    try:
        async with runner.running():
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(runner.call, "classify", {"text": "first", "labels": LABELS})
                    assert await anyio.to_thread.run_sync(ledger.entered.wait, 10)  # the first row's transaction
                    for i in range(16):
                        tg.start_soon(runner.call, "classify", {"text": f"then {i}", "labels": LABELS})
                    await anyio.wait_all_tasks_blocked()  # all 16 wait on the writer
                    ledger.gate.set()
    finally:
        ledger.close()
    assert ledger.sizes == [1, 16]
    assert len(committed(path)[0]) == 17


@pytest.mark.parametrize("durable", [True, False])
async def test_with_ledger_durable_a_task_whose_rows_cannot_be_committed_fails_instead_of_saving_its_items(
        specs, tmp_path, sleeps, durable):
    from mcp import Client

    from tiered_mcp.serve.server import build_server
    from tiered_mcp.serve.tasks import PROGRESS_META_KEY

    from .tasks_client import TasksClient, start_task, wait_task

    ledger = PoisonLedger(tmp_path / "ledger.sqlite3", always=True)  # call rows fail; the task store still works
    runner = runner_over(specs, ledger, sleeps, ledger_durable=durable, cache_ttl_s=0)
    try:
        async with Client(build_server(runner), extensions=[TasksClient()]) as c:
            handle = await start_task(c, "classify", {"items": ["one", "two"], "labels": LABELS})
            with anyio.fail_after(20):
                task = await wait_task(c, handle.task_id)
    finally:
        ledger.close()
    if durable:
        # The task's own write, then the writer's retries and the rows alone: none committed, so no item is saved
        # as answered and the task fails.
        assert task.status == "failed"
        assert sleeps[:3] == list(RETRIES_S)  # the writer retried before giving up
        assert task.meta[PROGRESS_META_KEY]["done"] == 0 and "NotRecorded" in task.status_message
    else:
        assert task.status == "completed" and task.result["isError"] is False
