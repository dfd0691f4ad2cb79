"""The MCP Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663, protocol 2026-07-28) for batch calls.

A client that lists the extension in a `tools/call` request's capabilities and sends a batch (`items`) gets a task
handle at once (`resultType: "task"`); the batch runs in the background through the same item loop as a synchronous
batch (`call.batch.run_items`, the one model path), and the client polls `tasks/get` for its status, progress and,
once it is `completed`, the very result the synchronous call would have returned. `tasks/cancel` stops it (items in
flight are cancelled; finished items stay in the ledger). `tasks/update` is acknowledged: a batch never asks for
input. The 2026-07-28 extension has no `tasks/list` and no `tasks/result`.

Tasks live in the ledger (ledger/tasks.py): each finished item is saved as it finishes (in chunks), so a task
outlives the session that started it, and on a shared PostgreSQL ledger the replica that runs it: another replica
takes it over once its lease runs out (at once when the holder shut down cleanly) and runs only the items not yet
answered. A task is visible to its caller only (the named token on HTTP; on stdio, whoever shares the ledger).

Who runs a job's items is pluggable (`Executor`): by default the model path item by item (on the local tier, the
items' first requests share one pass of the model, `WORKERS` at a time: `call.batch.run_items`); another executor
(e.g. a provider's batch API) gets the same `BatchJob` and reports each item through `job.record`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp.server.extension import Extension, MethodBinding, compose_tool_call_handler
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from tiered_mcp.call.batch import BatchJob, BatchPlan, Executor, batch_result, item_result, plan_batch, run_items
from tiered_mcp.call.options import CallOptions, parse_options
from tiered_mcp.call.runner import Result, Runner
from tiered_mcp.core.errors import CallError, NotRecorded
from tiered_mcp.core.identity import Caller, current_caller
from tiered_mcp.ledger.base import CallWrite, now_iso, off_loop
from tiered_mcp.ledger.provider_batches import BatchProgress, ProviderBatchStore
from tiered_mcp.ledger.tasks import CANCELLED, COMPLETED, FAILED, WORKING, ItemRow, TaskRow, TaskStore
from tiered_mcp.serve import results
from tiered_mcp.specs.schema_safety import excerpt

log = logging.getLogger("tiered_mcp")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
PROGRESS_META_KEY = "tiered-mcp/progress"
"""Where a task object's `_meta` carries its progress: total, done, failed, cost_usd, unpriced (and batch_api, the
provider's request counts, for a task sent through its Batch API)."""
TTL_S = 24 * 3600.0
"""How long a finished task stays readable (from when it finished; `ttlMs` counts from creation, as the spec says)."""
POLL_INTERVAL_MS = 2000
LEASE_S = 30.0
"""How long a replica holds a running task without renewing (it renews every third of that)."""
FLUSH_S, FLUSH_ITEMS = 0.5, 256
"""Finished items are saved at least this often, or every this many, whichever comes first."""
WORKERS = 256
"""Items started at once by the default executor (the provider's limit still bounds the requests in flight); on the
local tier, also the most items one shared pass of the model answers (`call.batch.LOCAL_PASS` caps it too)."""
TASK_ID = re.compile(r"[0-9a-f]{32}")
MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)


async def path_executor(runner: Runner, job: BatchJob) -> None:
    """The default: each item through the one model path, as a synchronous batch runs it."""
    await run_items(runner, job.plan, job.pending, job.record, workers=WORKERS)


class TaskIdParams(types.RequestParams):
    task_id: str = Field(alias="taskId")


class UpdateTaskParams(TaskIdParams):
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def task_object(row: TaskRow, batches: BatchProgress | None = None) -> dict[str, Any]:
    """The spec's `DetailedTask` for a stored task, with our progress in `_meta`; `batches`: what the provider
    reports of the task's Batch API batches, if it has any."""
    if row.status == WORKING:
        message = (f"{row.done} of {row.total} items answered ({row.failed} failed); "
                   f"${row.cost_usd:.6f} spent so far")
        if batches is not None:
            message += (f"; the provider has answered {batches.completed + batches.failed} of the "
                        f"{batches.requests} requests sent to its Batch API ({batches.failed} with an error)")
    else:
        message = row.message or row.status
    progress: dict[str, Any] = {"total": row.total, "done": row.done, "failed": row.failed,
                                "cost_usd": row.cost_usd, "unpriced": row.unpriced}
    if batches is not None:
        progress["batch_api"] = {"requests": batches.requests, "completed": batches.completed,
                                 "failed": batches.failed}
    task: dict[str, Any] = {
        "taskId": row.id, "status": row.status, "statusMessage": message, "createdAt": row.created,
        "lastUpdatedAt": row.updated, "ttlMs": max(0, round((row.expires - _unix(row.created)) * 1000)),
        "pollIntervalMs": POLL_INTERVAL_MS, "_meta": {PROGRESS_META_KEY: progress},
    }
    if row.status == COMPLETED and row.result is not None:
        task["result"] = json.loads(row.result)
    if row.status == FAILED and row.error is not None:
        task["error"] = json.loads(row.error)
    return task


def final_result(plan: BatchPlan, items: list[ItemRow], started: float) -> tuple[str, str]:
    """The task's result (as JSON text) and its status message: the compact batch result the synchronous call
    gives, over the saved items. CPU work for a large batch: run it in a worker thread."""
    try:
        answered = batch_result(plan.spec, [i.result for i in items], [i.receipt for i in items], started)
        result = results.answer(answered)
        message = f"{answered.receipt['ok']} of {len(items)} items answered, {answered.receipt['failed']} failed"
    except CallError as e:
        result, message = results.failure(e), str(e)
    return results.dumps(result.model_dump(by_alias=True, mode="json", exclude_none=True)), message


def missing_capability() -> MCPError:
    return MCPError(types.MISSING_REQUIRED_CLIENT_CAPABILITY, "Missing required client capability",
                    {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})


def not_found(why: str = "Task not found") -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"Failed to retrieve task: {why}")


@dataclass
class _Held:
    """A task this process runs."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cancel: bool = False  # the client asked
    lost: bool = False  # another replica holds it now


class TaskManager:
    """Creates, runs, resumes and answers for batch tasks over one ledger.

    Args:
        runner: runs the items (through `executor`).
        store: the ledger's tasks.
        executor: who runs a job's items (default: the model path).
        lease_s: how long this process holds a task without renewing it.
        ttl_s: how long a finished task stays readable.
        clock: now, as a Unix time (leases and expiry).
    """

    def __init__(self, runner: Runner, store: TaskStore, executor: Executor = path_executor, *,
                 lease_s: float = LEASE_S, ttl_s: float = TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.runner, self.store, self.executor = runner, store, executor
        self.batches = ProviderBatchStore(store.ledger)  # what a Batch API executor records of a task's batches
        self.lease_s, self.ttl_s, self.clock = lease_s, ttl_s, clock
        self.owner = uuid.uuid4().hex
        self._held: dict[str, _Held] = {}
        self._later: set[anyio.CancelScope] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopping = False

    def wants(self, name: str, arguments: Any) -> bool:
        """Whether a call is a batch this manager can run as a task (while it is running)."""
        spec = self.runner.specs.get(name)
        return (self._tg is not None and spec is not None and spec.batch is not None
                and isinstance(arguments, dict) and "items" in arguments)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskManager]:
        """Run tasks while the server serves: on entry, take over tasks no replica holds; on exit, stop the ones
        this process runs and give them up (saved items stay), so the next replica resumes them at once."""
        async with anyio.create_task_group() as tg:
            keeper = anyio.CancelScope()

            async def keep() -> None:
                with keeper:
                    await self._keep()

            self._tg, self._stopping = tg, False
            tg.start_soon(keep)
            try:
                yield self
            finally:
                self._tg, self._stopping = None, True
                keeper.cancel()
                for held in self._held.values():
                    held.scope.cancel()
                for scope in self._later:
                    scope.cancel()

    # ---- the requests ----------------------------------------------------------------------------------------------

    async def create(self, name: str, arguments: dict[str, Any], options: CallOptions) -> TaskRow:
        """Check a batch call and start it as a task; returns once the task is in the ledger.

        Raises:
            CallError: the call cannot run (bad arguments, no usable tier): the synchronous path says why.
        """
        spec = self.runner.specs.get(name)
        assert spec is not None and self._tg is not None
        plan = plan_batch(self.runner, spec, arguments, options)
        caller = current_caller.get()
        text = await anyio.to_thread.run_sync(json.dumps, arguments)
        now, iso = self.clock(), now_iso()
        row = TaskRow(id=uuid.uuid4().hex, caller=caller.name if caller else None,
                      daily_usd=caller.daily_usd if caller else None, tool=name, status=WORKING, message=None,
                      created=iso, updated=iso, expires=now + self.ttl_s, arguments=text,
                      options=options.model_dump_json(), batch=plan.batch_id, total=len(plan.items), done=0, failed=0,
                      cost_usd=0.0, unpriced=0, owner=self.owner, lease=now + self.lease_s, cancel=False, result=None,
                      error=None)
        # The spec: no handle before a tasks/get for it would resolve.
        await off_loop(self.store.create, row)
        if self._tg is None:  # the server began to stop meanwhile: the next one to start resumes the task
            await off_loop(self.store.release, self.owner, [row.id])
            return row
        self._start(row, plan, list(range(row.total)), caller)
        log.info("task %s: %s batch of %d items started", row.id, name, row.total)
        return row

    async def visible(self, task_id: str) -> TaskRow:
        """The caller's task.

        Raises:
            MCPError: invalid params, when the id is malformed, unknown, another caller's, or expired.
        """
        if not TASK_ID.fullmatch(task_id):
            raise not_found(f"taskId {excerpt(task_id)} is not a task id (32 lowercase hex digits)")
        row = await off_loop(self.store.get, task_id)
        caller = current_caller.get()
        if row is None or row.caller != (caller.name if caller else None):
            raise not_found()  # another caller's task: as if it did not exist
        if row.status != WORKING and row.expires < self.clock():
            raise not_found("Task has expired")
        return row

    async def cancel(self, task_id: str) -> None:
        row = await self.visible(task_id)
        if row.status != WORKING:
            return  # finished already: the ack is all the spec asks
        await off_loop(self.store.request_cancel, task_id)
        held = self._held.get(task_id)
        if held is not None:
            held.cancel = True
            held.scope.cancel()
            return
        # Held by another replica: it sees the flag at its next save or renewal. Held by none, with provider
        # batches recorded: taken over here and stopped at once, so that its executor stops what it left running
        # and gives back their budget holds. Otherwise (nothing left running, or this server is stopping) finished
        # here outright: starting its items only to cancel them would write a row for each.
        if self._tg is not None:
            running = await off_loop(self.batches.rows, task_id)
            if running:
                await self._resume(task_id)
                return
        await self._finish_cancelled(row, None, self.clock() + self.ttl_s, now=self.clock())

    async def _finish_cancelled(self, row: TaskRow, owner: str | None, expires: float, **kw: Any) -> None:
        """Finish a task its client cancelled, without running it (again)."""
        await off_loop(partial(self.store.finish, row.id, owner, CANCELLED,
                               f"cancelled after {row.done} of {row.total} items", expires, **kw))

    # ---- running ---------------------------------------------------------------------------------------------------

    def _start(self, row: TaskRow, plan: BatchPlan, pending: list[int], caller: Caller | None,
               cancel: bool = False) -> None:
        """Run a task here; `cancel`: one a client cancelled while no replica held it, stopped at once (its
        executor sees a cancel, as if it had come while the task ran)."""
        assert self._tg is not None
        held = self._held[row.id] = _Held()
        if cancel:
            held.cancel = True
            held.scope.cancel()
        self._tg.start_soon(self._run, row, plan, pending, caller, held)

    async def _run(self, row: TaskRow, plan: BatchPlan, pending: list[int], caller: Caller | None,
                   held: _Held) -> None:
        current_caller.set(caller)  # this task's own context: a resumed task runs as the caller who started it
        buffer: list[ItemRow] = []
        writes: list[CallWrite] = []
        lock = anyio.Lock()
        last = time.monotonic()

        async def flush() -> None:
            nonlocal buffer, writes, last
            with anyio.CancelScope(shield=True):
                async with lock:
                    if not buffer:
                        return
                    items, calls, buffer, writes, last = buffer, writes, [], [], time.monotonic()
                    await self._write_calls(calls)
                    verdict = await off_loop(self.store.save_items, row.id, self.owner, items)
            if verdict != "saved":
                held.lost, held.cancel = verdict == "lost", verdict == "cancel"
                held.scope.cancel()

        async def record(i: int, outcome: Result | CallError, write: CallWrite) -> None:
            buffer.append(ItemRow(i, not isinstance(outcome, CallError), item_result(i, outcome), outcome.receipt))
            writes.append(write)
            if len(buffer) >= FLUSH_ITEMS or time.monotonic() - last >= FLUSH_S:
                await flush()

        failure: BaseException | None = None
        try:
            with held.scope:
                async with anyio.create_task_group() as tg:
                    async def tick() -> None:
                        # Progress shows even while no item finishes (slow items, an executor that waits on a
                        # provider): what finished is saved at least every FLUSH_S.
                        while True:
                            await anyio.sleep(FLUSH_S)
                            await flush()

                    tg.start_soon(tick)
                    await self.executor(self.runner, BatchJob(row.id, plan, pending, record, self.owner,
                                                              self._run_later))
                    tg.cancel_scope.cancel()
        except Exception as e:  # a bug, or a ledger that stayed down: the task fails, the server stays up
            log.exception("task %s failed", row.id)
            failure = e
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    try:
                        await flush()
                    except NotRecorded as e:  # ledger_durable: the last items' rows are lost, so the task fails
                        log.error("task %s: %s", row.id, e)
                        failure = failure or e
                    await self._settle(row, plan, held, failure)
                except Exception:
                    log.exception("task %s: could not record how it ended; another replica may resume it", row.id)
                finally:
                    self._held.pop(row.id, None)

    def _run_later(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run an executor's work that outlives its task (`BatchJob.later`) while the server runs; stopped at
        shutdown."""
        if self._tg is None:
            return

        async def run() -> None:
            if self._stopping:  # started after the shutdown cancelled the others
                return
            scope = anyio.CancelScope()
            self._later.add(scope)
            try:
                with scope:
                    await work()
            except Exception:  # the executor's own bookkeeping: it must not take the server with it
                log.exception("work left by a task failed")
            finally:
                self._later.discard(scope)

        self._tg.start_soon(run)

    async def _write_calls(self, calls: list[CallWrite]) -> None:
        # The calls' rows go first, in their own transaction (not queued behind other calls' writes), so an item
        # saved as answered always has its spend in the ledger; if that fails, the writer's retries take them.
        ledger = self.runner.ledger
        assert ledger is not None  # a manager exists only over a ledger
        try:
            await off_loop(ledger.write, calls, [], self.runner.config)
        except Exception:
            log.warning("writing %d rows of a task failed; queued for the ledger writer", len(calls), exc_info=True)
            # With ledger_durable the put waits for the writer's retries; rows still lost fail the task rather
            # than let its items be saved as answered without them.
            lost = await self.runner.writer.put(calls)
            if lost:
                raise NotRecorded(f"{len(lost)} of {len(calls)} rows of a task could not be committed") from None

    async def _settle(self, row: TaskRow, plan: BatchPlan, held: _Held, failure: BaseException | None) -> None:
        expires = self.clock() + self.ttl_s
        if held.lost:
            log.warning("task %s: another replica holds it now; stopped here", row.id)
            return
        if failure is not None:
            message = f"internal error in tiered-mcp ({type(failure).__name__}); see server log"
            error = {"code": types.INTERNAL_ERROR, "message": message}
            await off_loop(partial(self.store.finish, row.id, self.owner, FAILED, message, expires,
                                   error=json.dumps(error)))
            return
        if held.scope.cancel_called:
            if held.cancel or await off_loop(self.store.cancel_requested, row.id):
                now = await off_loop(self.store.get, row.id)
                done = now.done if now else 0
                await off_loop(partial(self.store.finish, row.id, self.owner, CANCELLED,
                                       f"cancelled after {done} of {row.total} items", expires))
                log.info("task %s cancelled after %d of %d items", row.id, done, row.total)
            elif self._stopping:
                await off_loop(self.store.release, self.owner, [row.id])
                log.info("task %s: given up at shutdown; the next replica resumes it", row.id)
            return
        items = await off_loop(self.store.items, row.id)
        if len(items) != row.total:
            raise RuntimeError(f"task {row.id}: {len(items)} of {row.total} items saved")
        started = time.perf_counter() - (time.time() - _unix(row.created))
        text, message = await anyio.to_thread.run_sync(final_result, plan, items, started)
        await off_loop(partial(self.store.finish, row.id, self.owner, COMPLETED, message, expires, result=text))
        log.info("task %s completed: %s", row.id, message)

    async def _keep(self) -> None:
        """Renew this process's leases, stop tasks it lost or whose cancel another replica took, take over tasks
        nobody holds, and delete expired ones; every third of the lease."""
        while True:
            try:
                await self._tend()
            except Exception:  # a ledger that is down now and then must not take the server with it
                log.warning("tending the tasks failed; trying again", exc_info=True)
            await anyio.sleep(self.lease_s / 3)

    async def _tend(self) -> None:
        now = self.clock()
        if self._held:
            ids = list(self._held)
            kept = await off_loop(self.store.renew, self.owner, ids, now + self.lease_s)
            for task_id in ids:
                held = self._held.get(task_id)
                if held is not None and task_id not in kept:
                    held.lost = True
                    held.scope.cancel()
            for task_id in await off_loop(self.store.cancels_among, list(kept)):
                if (held := self._held.get(task_id)) is not None:
                    held.cancel = True
                    held.scope.cancel()
        for task_id in await off_loop(self.store.orphans, now):
            if task_id not in self._held and self._tg is not None:
                await self._resume(task_id)
        await off_loop(self.store.purge, now)

    async def _resume(self, task_id: str) -> None:
        now = self.clock()
        if not await off_loop(self.store.claim, task_id, self.owner, now, self.lease_s):
            return  # another replica took it first
        row = await off_loop(self.store.get, task_id)
        if row is None:
            return
        caller = Caller(row.caller, row.daily_usd) if row.caller is not None else None
        spec = self.runner.specs.get(row.tool)
        expires = now + self.ttl_s
        try:
            if spec is None or spec.batch is None or row.arguments is None:
                raise CallError(f"tool {row.tool!r} takes no batch on this replica")
            plan = plan_batch(self.runner, spec, json.loads(row.arguments),
                              CallOptions.model_validate_json(row.options or "{}"), batch_id=row.batch)
        except CallError as e:  # it cannot run here now (its tool changed, no tier is usable): the result says why
            if row.cancel:
                await self._finish_cancelled(row, self.owner, expires)
                return
            text = results.dumps(results.failure(e).model_dump(by_alias=True, mode="json", exclude_none=True))
            await off_loop(partial(self.store.finish, task_id, self.owner, COMPLETED, str(e), expires, result=text))
            return
        except Exception as e:  # a row it cannot read: fail it rather than take it over again and again
            log.exception("task %s: cannot resume it", task_id)
            message = f"internal error in tiered-mcp ({type(e).__name__}); see server log"
            await off_loop(partial(self.store.finish, task_id, self.owner, FAILED, message, expires,
                                   error=json.dumps({"code": types.INTERNAL_ERROR, "message": message})))
            return
        if row.cancel and not (await off_loop(self.batches.rows, task_id)):
            # Nothing of it runs anywhere (no provider batch): finished as cancelled, no item started.
            await self._finish_cancelled(row, self.owner, expires)
            return
        answered = await off_loop(self.store.answered, task_id)
        pending = [i for i in range(row.total) if i not in answered]
        if row.cancel:
            log.info("task %s: cancelled while no replica held it; stopping it here", task_id)
        else:
            log.info("task %s: resumed here with %d of %d items still to answer", task_id, len(pending), row.total)
        self._start(row, plan, pending, caller, cancel=row.cancel)


class TasksExtension(Extension):
    """The Tasks extension over a `TaskManager`: `tasks/get`, `tasks/update`, `tasks/cancel`, and a `tools/call`
    interceptor that answers an opted-in batch call with a task handle."""

    identifier = TASKS_EXTENSION

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    def methods(self) -> Sequence[MethodBinding]:
        return (MethodBinding("tasks/get", TaskIdParams, self._get, MODERN),
                MethodBinding("tasks/update", UpdateTaskParams, self._update, MODERN),
                MethodBinding("tasks/cancel", TaskIdParams, self._cancel, MODERN))

    async def intercept_tool_call(self, params: types.CallToolRequestParams, ctx: Any, call_next: Any) -> Any:
        if not (opted_in(ctx) and self.manager.wants(params.name, params.arguments)):
            return await call_next(ctx)
        try:
            row = await self.manager.create(params.name, dict(params.arguments or {}), parse_options(params.meta))
        except CallError:
            return await call_next(ctx)  # refused before any work: the synchronous path refuses it the same way
        return {"resultType": "task", **task_object(row)}

    async def _get(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        require(ctx)
        row = await self.manager.visible(params.task_id)
        batches = await off_loop(self.manager.batches.progress, row.id)
        # A finished batch's result may be megabytes of JSON: parsed in a worker thread.
        return await anyio.to_thread.run_sync(task_object, row, batches)

    async def _update(self, ctx: Any, params: UpdateTaskParams) -> dict[str, Any]:
        require(ctx)
        await self.manager.visible(params.task_id)
        return {}  # a batch never asks for input: no response can match an outstanding request, all are ignored

    async def _cancel(self, ctx: Any, params: TaskIdParams) -> dict[str, Any]:
        require(ctx)
        await self.manager.cancel(params.task_id)
        return {}


def opted_in(ctx: Any) -> bool:
    """Whether this request declared the extension (capabilities are per request in the 2026-07-28 era)."""
    if ctx.protocol_version not in MODERN:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(capabilities is not None and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions)


def require(ctx: Any) -> None:
    if not opted_in(ctx):
        raise missing_capability()


def apply_extensions(server: Server[Any], extensions: Sequence[Extension], call_tool: Any) -> None:
    """Apply SEP-2133 extensions to a low-level server through its public surface, as `MCPServer(extensions=...)`
    does: their methods (gated to their protocol versions), their capability ad, and their `tools/call`
    interceptors folded around `call_tool`."""
    for extension in extensions:
        for method in extension.methods():
            if server.get_request_handler(method.method) is not None:
                raise ValueError(f"extension {extension.identifier!r}: {method.method!r} is already served")
            server.add_request_handler(method.method, method.params_type, _gated(method))
        server.extensions[extension.identifier] = extension.settings()
    if any(type(e).intercept_tool_call is not Extension.intercept_tool_call for e in extensions):
        server.add_request_handler("tools/call", types.CallToolRequestParams,
                                   compose_tool_call_handler(extensions, call_tool))


def _gated(method: MethodBinding) -> Any:
    if method.protocol_versions is None:
        return method.handler
    versions = method.protocol_versions

    async def gated(ctx: Any, params: Any) -> Any:
        if ctx.protocol_version not in versions:
            raise MCPError(types.METHOD_NOT_FOUND, "Method not found", method.method)
        return await method.handler(ctx, params)

    return gated
