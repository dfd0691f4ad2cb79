"""Batch tasks through the provider's Batch API (OpenAI-style /v1/files + /v1/batches, about half price).

A tier opts in with `[tiers.X] batch_api = true` (a tool opts out with `[tools.Y] batch_api = false`); only batch
calls run as MCP tasks use it, since a provider batch may take up to its 24-hour completion window. For such a
task whose ladder starts on that tier, `ProviderBatches`:

1. builds one Chat Completions request per pending item the cache cannot answer (those the cache can take the
   model path, which answers them from it), exactly the body the model path would send for the item's first attempt (`Runner.first_request`, `BatchApi.chat_body`), and reserves the budget for the batch at once: the
   items' worst cases at the batch rate, as many items (in index order) as the caps leave room for. Items beyond
   that are not submitted: they go through the model path, whose budget check refuses them (or runs them, if room
   came free meanwhile), with an ordinary budget receipt;
2. records the batch in the ledger (`provider_batches`) before sending anything, uploads the JSONL file, creates the
   batch (completion window 24h, the task id in its metadata) and records its id. A server restarted at any point
   resumes the same batch: with no batch id recorded it first looks for a batch carrying the task's id, so the
   items are never submitted twice;
3. polls the batch every `[batch_api] poll_s` seconds, recording each status seen, until it ends (completed,
   expired, failed or cancelled);
4. downloads the output and error files and settles the hold at what the answers cost at the batch rate;
5. runs each submitted item through the runner with its batch answer as its first attempt (`Prepared`): accounted
   by the model path at the batch rate, validated, repaired and escalated like any answer (repairs and escalations
   are ordinary synchronous requests). An item in the error file, or missing when the batch expired or failed, gets
   a first attempt with outcome `batch_unanswered` (cost 0) and then runs on the model path at once, on the same
   tier, synchronously (reason `retry`, full price), and climbs from there as usual.
   A provider that refuses the upload or the batch leaves every item to the model path the same way.

A task cancelled by its client cancels the provider batch too; one given up at shutdown leaves it running for the
next server. The budget hold lasts the completion window and a margin; the last item's ledger row drops it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from tiered_mcp.call.batch import BatchJob, BatchPlan, run_items
from tiered_mcp.call.budget import Cap, Hold, worst_case_usd
from tiered_mcp.call.runner import Prepared, Result, Runner
from tiered_mcp.core.errors import BatchUnanswered, CallError, ModelError, Permanent, Transient
from tiered_mcp.core.prices import batch_cost_of
from tiered_mcp.ledger.base import CallWrite, off_loop
from tiered_mcp.ledger.provider_batches import ProviderBatchRow, ProviderBatchStore
from tiered_mcp.ledger.sql import SqlLedger
from tiered_mcp.ledger.tasks import TaskStore
from tiered_mcp.models.base import BatchApi, BatchState, ModelReply

log = logging.getLogger("tiered_mcp")

WORKERS = 256
"""Items checked (and escalated) at once once the batch's answers are in."""
HOLD_TTL_S = 26 * 3600.0
"""A batch's budget hold outlives the 24-hour completion window (a hold that expires stops counting)."""
METADATA_KEY = "tiered_mcp_task"
MAX_REQUESTS, MAX_BYTES = 50_000, 190 * 1024 * 1024
"""What one provider batch takes (OpenAI: 50,000 requests, a 200 MB file); a task's further items take the path."""
PREPARING = "preparing"
DOWNLOAD_TRIES = 5
SUBMIT_TRIES = 5  # creating or looking up the batch after the upload, while the provider fails transiently


def hold_json(hold: Hold | None) -> dict[str, Any] | None:
    if hold is None:
        return None
    return {"id": hold.id, "tool": hold.tool, "amount": hold.amount, "status": hold.status,
            "caps": [[c.name, c.key, c.usd] for c in hold.caps]}


def hold_from_json(data: dict[str, Any] | None, here: bool) -> Hold | None:
    """A stored hold; `here` False (another process took it) leaves out the session cap, which that process kept
    in its own memory."""
    if data is None:
        return None
    caps = [Cap(name, key, usd) for name, key, usd in data["caps"] if here or key is not None]
    return Hold(data["id"], data["tool"], caps, data["amount"], dict(data["status"]))


class ProviderBatches:
    """An `Executor` (serve/tasks.py) that sends a task's first attempts through the provider's Batch API when its
    tier opts in, and otherwise runs the items on the model path as the default executor does.

    Args:
        api: the provider's Batch API (None: no batch API, every task runs on the model path).
        ledger: where tasks and their provider batches live.
        sleep: how to wait between polls (tests pass a quick one).
        clock: now, as a Unix time.
    """

    def __init__(self, api: BatchApi | None, ledger: SqlLedger, *,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.api, self.store, self.tasks = api, ProviderBatchStore(ledger), TaskStore(ledger)
        self.sleep, self.clock = sleep, clock
        self._mine: set[str] = set()  # holds this process took (their session share is in its memory)

    def tier_for(self, runner: Runner, plan: BatchPlan) -> str | None:
        """The tier whose Batch API a task of this plan would use, or None (the model path runs it)."""
        if self.api is None or not plan.ladder:
            return None
        tier = plan.ladder[0]
        tool = runner.config.tools.get(plan.spec.name)
        if not runner.config.tiers[tier].batch_api or runner.embedded(tier) or (tool is not None and not tool.batch_api):
            return None
        return tier

    async def __call__(self, runner: Runner, job: BatchJob) -> None:
        row = await off_loop(self.store.get, job.task_id)
        tier = row.tier if row is not None else self.tier_for(runner, job.plan)
        if tier is None or self.api is None:
            await run_items(runner, job.plan, job.pending, job.record, workers=WORKERS)
            return
        if row is None:
            row = await self._prepare(runner, job, tier)
        pending, chosen = set(job.pending), set(row.items)
        submitted = [i for i in row.items if i in pending]
        rest = [i for i in job.pending if i not in chosen]
        async with anyio.create_task_group() as tg:
            if rest:  # not submitted (over the budget): the model path decides, as for any call
                tg.start_soon(run_items, runner, job.plan, rest, job.record, WORKERS)
            if submitted:
                await self._run_batch(runner, job, row, submitted)

    # ---- submitting ------------------------------------------------------------------------------------------------

    async def _lines(self, runner: Runner, plan: BatchPlan, tier: str, indices: list[int],
                     worst: bool = False) -> list[tuple[bytes, float]]:
        """Per item, its JSONL line and (with `worst`) its worst case at the batch rate; built in a worker thread."""
        assert self.api is not None
        api, settings = self.api, runner.config.tiers[tier]

        def build() -> list[tuple[bytes, float]]:
            out = []
            for i in indices:
                request = runner.first_request(plan.spec, {**plan.shared, plan.name: plan.items[i]}, tier)
                line = json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                   "body": api.chat_body(request)}, ensure_ascii=False, separators=(",", ":"))
                cost = (worst_case_usd(settings, request.messages) or 0.0) * settings.batch_discount if worst else 0.0
                out.append((line.encode() + b"\n", cost))
            return out

        return await anyio.to_thread.run_sync(build)

    async def _prepare(self, runner: Runner, job: BatchJob, tier: str) -> ProviderBatchRow:
        """Choose the items one provider batch takes (its limits, and the room the budget caps leave), reserve
        them, and record the batch before sending anything."""
        plan, settings = job.plan, runner.config.tiers[tier]
        capped = bool(runner.budget.caps(plan.spec.name))
        hits = await runner.cached(plan.spec, [{**plan.shared, plan.name: plan.items[i]} for i in job.pending],
                                   plan.ladder, plan.options)
        candidates = [i for i, hit in zip(job.pending, hits) if not hit]  # the cache answers the others, free
        lines = await self._lines(runner, plan, tier, candidates, worst=capped)
        room = float("inf")
        if capped:
            room = min((f["remaining_usd"] for f in (await runner.budget.status(plan.spec.name)).values()),
                       default=float("inf"))
        total = size = 0.0
        n = 0
        while (n < len(lines) and n < MAX_REQUESTS and size + len(lines[n][0]) <= MAX_BYTES
               and total + lines[n][1] <= room):
            total, size, n = total + lines[n][1], size + len(lines[n][0]), n + 1
        chosen = candidates[:n]
        hold = None
        if chosen and capped:
            try:
                hold = await runner.budget.reserve_usd(
                    plan.spec.name, total, f"a {tier} batch of {n} requests ({settings.model}, Batch API)", HOLD_TTL_S)
            except CallError:  # another call took the room meanwhile: nothing is submitted
                chosen, hold = [], None
            if hold is not None:
                self._mine.add(hold.id)
        if len(chosen) < len(job.pending):
            log.info("task %s: %d of %d items go to the Batch API (its limits, the budget); the rest to the model "
                     "path", job.task_id, len(chosen), len(job.pending))
        row = ProviderBatchRow(job.task_id, tier, chosen, hold_json(hold), None, None, PREPARING, None, None,
                               self.clock(), None, False)
        if not await off_loop(self.store.create, row, job.owner):
            await runner.budget.settle(hold, 0.0)  # nothing will be submitted: give the room back now
            raise RuntimeError(f"task {job.task_id}: no longer held here; nothing submitted")
        return row

    async def _submit(self, runner: Runner, job: BatchJob, row: ProviderBatchRow) -> BatchState:
        """The batch for `row`: the one already submitted (found by its id, or by the task id in its metadata),
        else a new one."""
        assert self.api is not None
        provider = runner.config.providers[runner.config.tiers[row.tier].provider]
        if row.batch_id is not None:
            return await self.api.batch_get(provider, row.batch_id)
        found = (await self.api.batch_find(provider, METADATA_KEY, job.task_id, since=row.created - 3600)
                 if row.input_file else None)
        if found is None:
            input_file = row.input_file
            if input_file is None:
                lines = await self._lines(runner, job.plan, row.tier, row.items)
                input_file = await self.api.batch_upload(provider, b"".join(line for line, _ in lines))
                await off_loop(partial(self.store.update, job.task_id, job.owner, input_file=input_file))
            found = await self.api.batch_create(provider, input_file, runner.config.batch_api.completion_window,
                                                {METADATA_KEY: job.task_id})
            log.info("task %s: %d items submitted to the Batch API as %s", job.task_id, len(row.items), found.id)
        await off_loop(partial(self.store.update, job.task_id, job.owner, batch_id=found.id, status=found.status))
        return found

    async def _submit_retrying(self, runner: Runner, job: BatchJob, row: ProviderBatchRow) -> BatchState:
        """`_submit`, again every poll_s while the provider fails transiently once the file is uploaded (up to
        SUBMIT_TRIES): a failed create or look-up may hide a batch the provider did make, whose items would then be
        paid for twice, so each try starts from the stored row (the file, the id) and finds such a batch by its
        metadata rather than making a second. A failed upload leaves no batch: its items go to the model path."""
        for attempt in range(1, SUBMIT_TRIES + 1):
            try:
                return await self._submit(runner, job, row)
            except Transient as e:
                stored: ProviderBatchRow | None = await off_loop(self.store.get, job.task_id)
                row = stored or row
                if attempt == SUBMIT_TRIES or row.input_file is None:
                    raise
                log.warning("task %s: submitting to the Batch API failed (%s); trying again", job.task_id, e)
                await self.sleep(runner.config.batch_api.poll_s)
        raise AssertionError("unreachable")

    async def _cancel_any(self, runner: Runner, job: BatchJob, provider: Any) -> None:
        """Cancel a batch the provider may have made for this task although submitting failed (its items now run
        on the model path, and must not be paid for twice)."""
        assert self.api is not None
        row: ProviderBatchRow | None = await off_loop(self.store.get, job.task_id)
        if row is None or row.input_file is None:
            return  # nothing was uploaded: no batch can exist
        try:
            found = (await self.api.batch_get(provider, row.batch_id) if row.batch_id is not None else
                     await self.api.batch_find(provider, METADATA_KEY, job.task_id, since=row.created - 3600))
        except ModelError as e:
            log.warning("task %s: could not look for a batch to cancel (%s)", job.task_id, e)
            return
        if found is not None and not found.ended:
            await self._cancel(provider, found.id)

    # ---- waiting and answering -------------------------------------------------------------------------------------

    async def _run_batch(self, runner: Runner, job: BatchJob, row: ProviderBatchRow, submitted: list[int]) -> None:
        assert self.api is not None
        settings = runner.config.tiers[row.tier]
        provider = runner.config.providers[settings.provider]
        state: BatchState | None = None
        refused: ModelError | None = None  # the provider would not take the batch: every item's first attempt
        try:
            try:
                state = await self._submit_retrying(runner, job, row)
            except ModelError as e:
                log.warning("task %s: the Batch API did not take the batch (%s); its items run on the model path",
                            job.task_id, e)
                await self._cancel_any(runner, job, provider)
                refused, state = e, BatchState("", "failed", row.input_file or "")
            seen = state.status
            while not state.ended:
                await self.sleep(runner.config.batch_api.poll_s)
                try:
                    state = await self.api.batch_get(provider, state.id)
                except Permanent as e:
                    log.warning("task %s: the Batch API refuses to report on %s (%s); cancelling it and running "
                                "its items on the model path", job.task_id, state.id, e)
                    await self._cancel(provider, state.id)
                    state = BatchState(state.id, "failed", state.input_file)
                except ModelError as e:
                    log.warning("task %s: polling batch %s failed (%s); polling again", job.task_id, state.id, e)
                    continue
                if state.status != seen:
                    seen = state.status
                    await off_loop(partial(self.store.update, job.task_id, job.owner, status=seen))
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if state is not None and state.id and await off_loop(self.tasks.cancel_requested, job.task_id):
                    await self._cancel(provider, state.id)
            raise
        ended = self.clock()
        await off_loop(partial(self.store.update, job.task_id, job.owner, status=state.status,
                               output_file=state.output_file, error_file=state.error_file, ended=row.ended or ended))
        answers: dict[str, ModelReply | ModelError] = {}
        for file_id in (state.error_file, state.output_file):  # an answer in the output file wins
            if file_id:
                answers.update(await self._download(runner, provider, row, file_id))
        latency_ms = ((row.ended or ended) - row.created) * 1000
        where = f"{row.tier} ({settings.model}, Batch API)"
        prepared: dict[int, Prepared] = {}
        for i in submitted:
            outcome = answers.get(str(i)) or refused or BatchUnanswered(
                f"{where}: batch {state.id} ended {state.status} without answering this item")
            prepared[i] = Prepared(row.tier, outcome, latency_ms)
        # What the answers cost at the batch rate (the items' rows book the same figures, attempt by attempt).
        actual = sum(batch_cost_of(settings, r.input_tokens, r.output_tokens, r.cached_input_tokens) or 0.0
                     for r in answers.values() if isinstance(r, ModelReply))
        hold = hold_from_json(row.hold, here=row.hold is not None and row.hold["id"] in self._mine)
        if hold is not None and not row.settled:
            await runner.budget.settle(hold, actual, HOLD_TTL_S)  # the items' rows come as they are checked
            await off_loop(partial(self.store.update, job.task_id, job.owner, settled=True))
        left = len(submitted)

        async def record(i: int, outcome: Result | CallError, write: CallWrite) -> None:
            nonlocal left
            left -= 1
            if left == 0 and hold is not None:
                write.receipt.holds.append(hold.id)  # the last row drops the batch's hold as it books its spend
            await job.record(i, outcome, write)

        await run_items(runner, job.plan, submitted, record, WORKERS, prepared)

    async def _download(self, runner: Runner, provider: Any, row: ProviderBatchRow,
                        file_id: str) -> dict[str, ModelReply | ModelError]:
        """A result file, asked for again (every poll_s) while the provider fails transiently, up to
        DOWNLOAD_TRIES times; then its items count as unanswered."""
        assert self.api is not None
        model = runner.config.tiers[row.tier].model
        for n in range(DOWNLOAD_TRIES):
            try:
                return await self.api.batch_results(provider, row.tier, model, file_id)
            except Transient as e:
                log.warning("task %s: downloading %s failed (%s)", row.task_id, file_id, e)
                if n + 1 < DOWNLOAD_TRIES:
                    await self.sleep(runner.config.batch_api.poll_s)
            except ModelError as e:
                log.warning("task %s: downloading %s failed (%s)", row.task_id, file_id, e)
                break
        return {}

    async def _cancel(self, provider: Any, batch_id: str) -> None:
        assert self.api is not None
        try:
            await self.api.batch_cancel(provider, batch_id)
            log.info("batch %s cancelled at the provider", batch_id)
        except ModelError as e:
            log.warning("cancelling batch %s at the provider failed: %s", batch_id, e)


def default_executor(runner: Runner) -> ProviderBatches | None:
    """The executor for a server whose config lets some tier use the Batch API (None: the model path alone). The
    Batch API is the runner's remote model's, when it has one (`batch_api()`, as `OpenAIModels` does)."""
    if not any(t.batch_api for t in runner.config.tiers.values()) or not isinstance(runner.ledger, SqlLedger):
        return None
    get = getattr(runner.model.remote, "batch_api", None)
    return ProviderBatches(get() if callable(get) else None, runner.ledger)
