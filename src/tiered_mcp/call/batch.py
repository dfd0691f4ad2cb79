"""Item-level fan-out: a tool that declares `batch` takes `items` and runs one call per item, concurrently.

Each item has its own retries, escalation, cache lookup and ledger row (with a shared batch id); the provider's
concurrency limit bounds the requests in flight. When the ladder starts on a tier whose model answers many requests
in one pass (the local tier), the items' first requests go together, `LOCAL_PASS` at a time, through
`ModelPath.shared_pass`: one run of the local model per pass (labels embedded once, texts in batched forward
passes), while each item keeps its own attempt, reservation, accounting, receipt and ledger row; an item whose
local answer is invalid or unsure then escalates alone. One bad item never sinks the batch: its error is reported in its
place. The batch result is an error only when every item failed. All the items' rows (and cache entries) are
written in one transaction when the batch ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from tiered_mcp.call.options import CallOptions, effective
from tiered_mcp.call.path import Seat
from tiered_mcp.core.errors import ArgumentsError, CallError, ToolFailed
from tiered_mcp.ledger.base import CallWrite
from tiered_mcp.specs.spec import ToolSpec

if TYPE_CHECKING:
    from tiered_mcp.call.runner import Prepared, Progress, Result, Runner


def _sum(values: Any) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _notable(r: dict[str, Any]) -> bool:
    """An item whose receipt the batch result carries: it failed, climbed past its first tier, or was cached."""
    return not r.get("ok") or bool(r.get("cached")) or len({a["tier"] for a in r.get("attempts") or ()}) > 1


def batch_receipt(spec: ToolSpec, receipts: list[dict[str, Any] | None], started: float) -> dict[str, Any]:
    """One receipt for the whole batch: totals over every item's receipt (sums, unrounded), and the receipts of
    the items that failed, escalated or were cached (with their `index`); the ledger keeps every item's row
    (`tiered-mcp logs` shows them), so a 10,000-item result does not carry 10,000 receipts."""
    items = [r for r in receipts if r]

    def total(key: str) -> float | None:
        values = [r.get(key) for r in items]
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    ok = sum(1 for r in items if r.get("ok"))
    return {
        "tool": spec.name, "batch": True, "items": len(receipts), "ok": ok, "failed": len(receipts) - ok,
        "cached": sum(1 for r in items if r.get("cached")),
        "tiers": {t: sum(1 for r in items if r.get("tier") == t) for t in sorted({r.get("tier") or "-" for r in items})},
        "input_tokens": int(total("input_tokens") or 0), "output_tokens": int(total("output_tokens") or 0),
        "cost_usd": total("cost_usd"),
        # Measured and estimated savings apart, as in `usage` (docs/accounting.md).
        "baseline_usd": _sum(r.get("baseline_usd") for r in items if not r.get("estimated")),
        "saved_usd": _sum(r.get("saved_usd") for r in items if not r.get("estimated")),
        **({"estimated_saved_usd": _sum(r.get("saved_usd") for r in items if r.get("estimated"))}
           if any(r.get("estimated") for r in items) else {}),
        "attempts_total": sum(len(r.get("attempts") or ()) for r in items),
        **({"batch_api": sum(1 for r in items if r.get("batch_api"))} if any(r.get("batch_api") for r in items)
           else {}),
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "per_item": [{"index": i, **r} for i, r in enumerate(receipts) if r and _notable(r)],
    }


@dataclass(frozen=True)
class BatchPlan:
    """A batch call's checked arguments: the shared ones, the items, the ladder they run on, and the batch id their
    ledger rows share."""

    spec: ToolSpec
    name: str
    shared: dict[str, Any]
    items: list[Any]
    ladder: list[str]
    options: CallOptions
    batch_id: str


def plan_batch(runner: Runner, spec: ToolSpec, args: dict[str, Any], options: CallOptions,
               batch_id: str | None = None) -> BatchPlan:
    """Check a batch call's arguments (before any model is asked).

    Raises:
        ArgumentsError: `items` is not a non-empty list within the spec's max_items, or is mixed with the argument
            it stands for.
        CallError: no tier can run the call.
    """
    from tiered_mcp.call.runner import schema_problems

    assert spec.batch is not None
    args = dict(args)
    name, items = spec.batch.argument, args.pop("items")
    requested = args.pop("tier", None)
    item_schema = {"type": "array", "minItems": 1, "maxItems": spec.batch.max_items,
                   "items": spec.input_schema["properties"][name]}
    problems = schema_problems(item_schema, items, "arguments.items")
    if name in args:
        problems.append(f"arguments: give either {name} or items, not both")
    if problems:
        raise ArgumentsError("; ".join(problems))
    # The shared arguments are checked once, with the first item standing in; items were checked above.
    shared = runner.check_arguments(spec, {**args, name: items[0]})
    shared.pop(name)
    ladder = runner.ladder(spec, requested, effective(runner.config, spec, options).ceiling)
    return BatchPlan(spec, name, shared, list(items), ladder, options, batch_id or uuid.uuid4().hex[:12])


LOCAL_PASS = 256
"""Items whose first requests share one pass of the local model."""

ItemDone = Callable[[int, "Result | CallError", CallWrite], Awaitable[None]]
"""Told of each finished item: its index, its outcome and its ledger row (which the callee writes)."""


@dataclass
class BatchJob:
    """What a task's executor runs: the checked batch, the indices still to answer, and where to report each item.

    `record(index, outcome, write)` must be awaited once per item answered (its outcome and its ledger row); the
    task saves it. The executor returns when every pending item is recorded; cancelling it stops the task.
    `owner` is the replica holding the task (writes of the executor's own state are fenced by it). `later(work)`
    starts work that outlives the job, such as settling a cancelled provider batch once the provider has stopped
    it (None: there is nowhere to run it).
    """

    task_id: str
    plan: BatchPlan
    pending: list[int]
    record: ItemDone
    owner: str | None = None
    later: Callable[[Callable[[], Awaitable[None]]], None] | None = None


Executor = Callable[["Runner", BatchJob], Awaitable[None]]
"""Who runs a task's items (serve/tasks.py): the model path item by item, or a provider's Batch API."""


async def run_items(runner: Runner, plan: BatchPlan, indices: Iterable[int], on_item: ItemDone,
                    workers: int | None = None, prepared: Mapping[int, Prepared] | None = None,
                    started: Callable[[int], None] | None = None) -> None:
    """Run the items at `indices` through the one model path, concurrently (the provider's limit bounds the
    requests in flight); `workers` bounds the items under way at once (None: all of them). On a ladder that starts
    on a tier with a shared pass (the local tier), the items' first requests go `LOCAL_PASS` (at most `workers`) to
    a pass. `prepared`: answers the provider's Batch API already gave, per index (each is its item's first
    attempt). `started(i)` is told of each item as it starts (from then on it writes its own ledger row, even when
    cancelled)."""
    todo = list(indices)
    given = prepared or {}

    async def one(i: int, seat: Seat | None = None) -> None:
        if started is not None:
            started(i)
        outcome, write = await runner.run_item(plan.spec, {**plan.shared, plan.name: plan.items[i]}, plan.ladder,
                                               plan.options, plan.batch_id, seat, given.get(i))
        await on_item(i, outcome, write)

    async def worker(queue: list[int]) -> None:
        while queue:
            await one(queue.pop())

    first = plan.ladder[0] if plan.ladder and plan.spec.local_task is not None else None
    if first is not None and todo and runner.path.shared_pass(first, 1) is not None:
        await _in_passes(runner, first, todo, one, workers)
        return
    async with anyio.create_task_group() as tg:
        if workers is None or workers >= len(todo):
            for i in todo:
                tg.start_soon(one, i)
        else:
            queue = todo[::-1]  # popped from the end: items start in index order
            for _ in range(workers):
                tg.start_soon(worker, queue)


async def _in_passes(runner: Runner, tier: str, todo: list[int], one: Callable[[int, Seat], Awaitable[None]],
                     workers: int | None) -> None:
    """Start the items in index order, `LOCAL_PASS` (at most `workers`) to a shared pass of `tier`'s model; a pass
    runs once all its items have made their first request (or found they need none), while the next pass's items
    get ready. At most `workers` items are under way at once."""
    size = min(LOCAL_PASS, workers or LOCAL_PASS)
    room = anyio.Semaphore(workers) if workers is not None else None

    async def item(i: int, seat: Seat) -> None:
        try:
            await one(i, seat)
        finally:
            seat.release()
            if room is not None:
                room.release()

    async with anyio.create_task_group() as tg:
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            shared = runner.path.shared_pass(tier, len(chunk))
            assert shared is not None
            tg.start_soon(shared.run)
            for i in chunk:
                if room is not None:
                    await room.acquire()  # a chunk is no larger than `workers`, so its items all get room
                tg.start_soon(item, i, shared.seat())


async def run_batch(runner: Runner, spec: ToolSpec, args: dict[str, Any], progress: Progress | None,
                    options: CallOptions) -> Result:
    """Run every item of a batch call.

    Raises:
        ArgumentsError: `items` is not a non-empty list within the spec's max_items, or is mixed with the argument
            it stands for.
        ToolFailed: every item failed (the receipt lists each one).
    """
    plan = plan_batch(runner, spec, args, options)
    started = time.perf_counter()
    items = plan.items
    results: list[dict[str, Any]] = [{} for _ in items]
    receipts: list[dict[str, Any] | None] = [None] * len(items)
    writes: list[CallWrite] = []
    order: list[int] = []  # the item each write belongs to
    done = 0

    async def record(i: int, outcome: Result | CallError, write: CallWrite) -> None:
        nonlocal done
        writes.append(write)
        order.append(i)
        results[i], receipts[i] = item_result(i, outcome), outcome.receipt
        done += 1
        if progress is not None:
            said = "failed" if isinstance(outcome, CallError) else f"ok on {outcome.receipt['tier']}"
            await progress(done, len(items), f"item {i}: {said}")

    try:
        await run_items(runner, plan, range(len(items)), record)
    finally:
        # Shielded, so a cancelled batch still records what its finished items spent.
        with anyio.CancelScope(shield=True):
            lost = await runner.writer.put(writes)
    if lost:  # ledger_durable: an item whose row could not be committed is not answered
        where = {id(w): i for w, i in zip(writes, order, strict=True)}
        for write in lost:
            i = where[id(write)]
            receipt = receipts[i]
            if receipt is not None and receipt.get("ok"):
                error = runner.not_recorded(receipt)
                results[i], receipts[i] = item_result(i, error), error.receipt
    return batch_result(spec, results, receipts, started)


def item_result(i: int, outcome: Result | CallError) -> dict[str, Any]:
    """One item's place in the batch result: its output, or its error."""
    if isinstance(outcome, CallError):
        return {"index": i, "error": str(outcome)}
    return {"index": i, "output": outcome.output}


def batch_result(spec: ToolSpec, results: list[dict[str, Any]], receipts: list[dict[str, Any] | None],
                 started: float) -> Result:
    """The compact batch result (`started`: a perf_counter reading).

    Raises:
        ToolFailed: every item failed (the receipt lists each one).
    """
    from tiered_mcp.call.runner import Result

    receipt = batch_receipt(spec, receipts, started)
    if receipt["ok"] == 0:
        first = next(r["error"] for r in results if "error" in r)
        raise ToolFailed(f"every item of the batch failed; the first: {first}", receipt)
    return Result(output={"results": results, "failed": receipt["failed"]}, receipt=receipt)
