"""Batch tasks through the provider's Batch API (OpenAI-style /v1/files + /v1/batches, about half price).

A tier opts in with `[tiers.X] batch_api = true` (a tool opts out with `[tools.Y] batch_api = false`); only batch
calls run as MCP tasks use it, since a provider batch may take up to its 24-hour completion window. For such a
task whose ladder starts on that tier, `ProviderBatches`:

1. builds one Chat Completions request per pending item the cache cannot answer (those the cache can take the
   model path, which answers them from it), exactly the body the model path would send for the item's first
   attempt (`Runner.first_request`, `BatchApi.chat_body`), and splits them, in index order, into provider batches
   of at most `[batch_api] max_requests` requests and `max_bytes` bytes of JSONL each (OpenAI's limits: 50,000 and
   200 MB), for as many items as the budget caps leave room for at their worst cases at the batch rate. Each batch
   reserves its own budget hold at once. Items beyond the room are not submitted (nor a batch whose hold another
   call's spend got to first, nor the ones after it): they go through the model path, whose budget check refuses
   them (or runs them, if room came free meanwhile), with an ordinary budget receipt;
2. records every batch in the ledger (`provider_batches`, one row per batch, numbered by `part`) before sending
   anything; then, one batch after another, uploads its JSONL file, creates it (completion window 24h, its tag in
   its metadata: the task id, `<task id>:<part>` for every batch after the first) and records its id. A server
   restarted at any point resumes each batch on its own: with no batch id recorded it first looks for a batch
   carrying that batch's tag, so no item is ever submitted twice;
3. polls the batches together, each every `[batch_api] poll_s` seconds, recording each status and the provider's
   request counts (requests answered, and answered with an error, so far) as they change: tasks/get reports their
   sums while the batches run (serve/tasks.py);
4. as each batch ends, downloads its output and error files and settles its hold at what the answers cost at the
   batch rate;
5. runs each of its items through the runner with its batch answer as its first attempt (`Prepared`): accounted
   by the model path at the batch rate, validated, repaired and escalated like any answer (repairs and escalations
   are ordinary synchronous requests). An item in the error file, or missing when the batch expired or failed, gets
   a first attempt with outcome `batch_unanswered` (cost 0) and then runs on the model path at once, on the same
   tier, synchronously (reason `retry`, full price), and climbs from there as usual.
   A provider that refuses the upload or the batch leaves that batch's items to the model path the same way.
   Each item's row carries its index (`Prepared.item`), so the ledger knows which batch answers it books
   (`ProviderBatchStore.booked`): after a restart, an item whose row (cancelled by the stop) booked its answer goes
   on from that answer at $0, and a cancel taken over books none of them again.

A task cancelled by its client cancels its provider batches at once, and leaves their settling to work that
outlives the task (`BatchJob.later`): it polls each batch until the provider has stopped it, downloads what it
answered before it stopped (a cancelled batch's output file has those answers), books each answer no item's row
books yet as a call cancelled by the client, at the batch rate, and lets the batch's hold go with those rows (an
item already handed to the runner writes its own row). A task given up at shutdown leaves its batches running for
the next server. A hold otherwise lasts the completion window and a margin; its batch's last item row drops it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
"""Items checked (and escalated) at once once a batch's answers are in."""
HOLD_TTL_S = 26 * 3600.0
"""A batch's budget hold outlives the 24-hour completion window (a hold that expires stops counting)."""
METADATA_KEY = "tiered_mcp_task"
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


def metadata_tag(task_id: str, part: int) -> str:
    """What a task's batch carries in its metadata (`METADATA_KEY`): the task id, and for every batch after its
    first, the batch's number (so each is found on its own after a restart)."""
    return task_id if part == 0 else f"{task_id}:{part}"


def split(lines: list[tuple[bytes, float]], room: float, max_requests: int,
          max_bytes: int) -> tuple[list[list[int]], list[float]]:
    """Positions in `lines` per provider batch, each within `max_requests` and `max_bytes`, and each batch's worst
    case: the lines in order while their worst cases fit in `room` (the budget); a line larger than a batch takes
    none (its item goes to the model path)."""
    parts: list[list[int]] = []
    costs: list[float] = []
    size = total = 0.0
    for n, (line, worst) in enumerate(lines):
        if total + worst > room:
            break
        if len(line) > max_bytes:
            continue
        if not parts or len(parts[-1]) >= max_requests or size + len(line) > max_bytes:
            parts.append([])
            costs.append(0.0)
            size = 0.0
        parts[-1].append(n)
        costs[-1] += worst
        size += len(line)
        total += worst
    return parts, costs


@dataclass
class _Live:
    """What this process knows of one of the task's batches while it runs: the batch as last seen, its answers
    once downloaded (and the hold settled at them), and the items handed to the runner since (each writes its own
    ledger row, even when cancelled)."""

    state: BatchState | None = None
    answers: dict[str, ModelReply | ModelError] | None = None
    started: set[int] = field(default_factory=set)


class ProviderBatches:
    """An `Executor` (serve/tasks.py) that sends a task's first attempts through the provider's Batch API when its
    tier opts in, and otherwise runs the items on the model path as the default executor does.

    Args:
        api: the provider's Batch API (None: no batch API, every task runs on the model path).
        ledger: where tasks and their provider batches live.
        sleep: how to wait between polls (tests pass a quick one).
        clock: now, as a Unix time.
        max_requests: requests in one provider batch (None: `[batch_api] max_requests`).
        max_bytes: bytes of one batch's input file (None: `[batch_api] max_bytes`).
    """

    def __init__(self, api: BatchApi | None, ledger: SqlLedger, *,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 clock: Callable[[], float] = time.time, max_requests: int | None = None,
                 max_bytes: int | None = None) -> None:
        self.api, self.store, self.tasks = api, ProviderBatchStore(ledger), TaskStore(ledger)
        self.sleep, self.clock = sleep, clock
        self.max_requests, self.max_bytes = max_requests, max_bytes
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
        live: dict[int, _Live] = {}
        try:
            rows = await off_loop(self.store.rows, job.task_id)
            tier = rows[0].tier if rows else self.tier_for(runner, job.plan)
            if tier is None or self.api is None:
                await run_items(runner, job.plan, job.pending, job.record, workers=WORKERS)
                return
            # Resumed: items whose batch answer a row (cancelled by the restart) already books go on from it at 0.
            booked = await off_loop(self.store.booked, job.plan.batch_id) if rows else set()
            if not rows:
                rows = await self._prepare(runner, job, tier)
            pending = set(job.pending)
            chosen = {i for row in rows for i in row.items}
            rest = [i for i in job.pending if i not in chosen]
            async with anyio.create_task_group() as tg:
                if rest:  # not submitted (over the budget): the model path decides, as for any call
                    tg.start_soon(run_items, runner, job.plan, rest, job.record, WORKERS)
                turn: anyio.Event | None = None  # the batches are submitted one after another, in order
                for row in rows:
                    submitted = [i for i in row.items if i in pending]
                    if submitted:
                        live[row.part] = _Live()
                        tg.start_soon(self._run_batch, runner, job, row, submitted, live[row.part], turn,
                                      turn := anyio.Event(), booked)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if self.api is not None and await off_loop(self.tasks.cancel_requested, job.task_id):
                    await self._cancelled(runner, job, live)
            raise

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

    async def _prepare(self, runner: Runner, job: BatchJob, tier: str) -> list[ProviderBatchRow]:
        """Split the items into provider batches (each within the batch limits; all of them within the room the
        budget caps leave), reserve each, and record them all before sending anything."""
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
        limits = runner.config.batch_api
        parts, costs = split(lines, room, self.max_requests or limits.max_requests, self.max_bytes or limits.max_bytes)
        rows: list[ProviderBatchRow] = []
        # Shielded: a hold taken must be recorded with its batch (or given back), or it would block the budget
        # for its whole lifetime.
        with anyio.CancelScope(shield=True):
            for part, (positions, cost) in enumerate(zip(parts, costs)):
                hold = None
                if capped:
                    try:
                        hold = await runner.budget.reserve_usd(
                            plan.spec.name, cost, f"a {tier} batch of {len(positions)} requests ({settings.model}, "
                            "Batch API)", HOLD_TTL_S)
                    except CallError:  # another call took the room meanwhile: this batch and the later ones wait
                        break
                    if hold is not None:
                        self._mine.add(hold.id)
                rows.append(ProviderBatchRow(job.task_id, tier, [candidates[n] for n in positions], hold_json(hold),
                                             None, None, PREPARING, None, None, self.clock(), None, False, part))
            chosen = sum(len(r.items) for r in rows)
            if chosen < len(job.pending):
                log.info("task %s: %d of %d items go to the Batch API (its limits, the budget); the rest to the "
                         "model path", job.task_id, chosen, len(job.pending))
            if rows and not await off_loop(self.store.create, rows, job.owner):
                for row in rows:  # nothing will be submitted: give the room back now
                    await runner.budget.settle(hold_from_json(row.hold, here=True), 0.0)
                raise RuntimeError(f"task {job.task_id}: no longer held here; nothing submitted")
        if len(rows) > 1:
            log.info("task %s: %d items in %d provider batches", job.task_id, chosen, len(rows))
        return rows

    async def _submit(self, runner: Runner, job: BatchJob, row: ProviderBatchRow) -> BatchState:
        """The batch for `row`: the one already submitted (found by its id, or by its tag in its metadata),
        else a new one."""
        assert self.api is not None
        provider = runner.config.providers[runner.config.tiers[row.tier].provider]
        if row.batch_id is not None:
            return await self.api.batch_get(provider, row.batch_id)
        tag = metadata_tag(job.task_id, row.part)
        found = (await self.api.batch_find(provider, METADATA_KEY, tag, since=row.created - 3600)
                 if row.input_file else None)
        if found is None:
            input_file = row.input_file
            if input_file is None:
                lines = await self._lines(runner, job.plan, row.tier, row.items)
                input_file = await self.api.batch_upload(provider, b"".join(line for line, _ in lines))
                await off_loop(partial(self.store.update, job.task_id, job.owner, part=row.part,
                                       input_file=input_file))
            found = await self.api.batch_create(provider, input_file, runner.config.batch_api.completion_window,
                                                {METADATA_KEY: tag})
            log.info("task %s: %d items submitted to the Batch API as %s", job.task_id, len(row.items), found.id)
        await off_loop(partial(self.store.update, job.task_id, job.owner, part=row.part, batch_id=found.id,
                               status=found.status))
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
                stored: ProviderBatchRow | None = await off_loop(self.store.get, job.task_id, row.part)
                row = stored or row
                if attempt == SUBMIT_TRIES or row.input_file is None:
                    raise
                log.warning("task %s: submitting to the Batch API failed (%s); trying again", job.task_id, e)
                await self.sleep(runner.config.batch_api.poll_s)
        raise AssertionError("unreachable")

    async def _find(self, job: BatchJob, row: ProviderBatchRow, provider: Any) -> BatchState | None:
        """The batch the provider made for `row`, if it may have made one (raises the provider's error)."""
        assert self.api is not None
        stored: ProviderBatchRow | None = await off_loop(self.store.get, job.task_id, row.part)
        row = stored or row
        if row.input_file is None:
            return None  # nothing was uploaded: no batch can exist
        if row.batch_id is not None:
            return await self.api.batch_get(provider, row.batch_id)
        return await self.api.batch_find(provider, METADATA_KEY, metadata_tag(job.task_id, row.part),
                                         since=row.created - 3600)

    async def _cancel_any(self, runner: Runner, job: BatchJob, row: ProviderBatchRow, provider: Any) -> None:
        """Cancel a batch the provider may have made for `row` although submitting failed (its items now run on
        the model path, and must not be paid for twice)."""
        try:
            found = await self._find(job, row, provider)
        except ModelError as e:
            log.warning("task %s: could not look for a batch to cancel (%s)", job.task_id, e)
            return
        if found is not None and not found.ended:
            await self._cancel(provider, found.id)

    # ---- waiting and answering -------------------------------------------------------------------------------------

    async def _run_batch(self, runner: Runner, job: BatchJob, row: ProviderBatchRow, submitted: list[int],
                         live: _Live, after: anyio.Event | None, submitted_now: anyio.Event,
                         booked: set[int]) -> None:
        """Submit `row`'s batch (once the one before it is, `after`), poll it until it ends, settle its hold and
        run its items through the runner with their answers (those in `booked` at 0: a row books them already)."""
        assert self.api is not None
        settings = runner.config.tiers[row.tier]
        provider = runner.config.providers[settings.provider]
        refused: ModelError | None = None  # the provider would not take the batch: every item's first attempt
        try:
            if after is not None:
                await after.wait()
            state = live.state = await self._submit_retrying(runner, job, row)
        except ModelError as e:
            log.warning("task %s: the Batch API did not take the batch (%s); its items run on the model path",
                        job.task_id, e)
            await self._cancel_any(runner, job, row, provider)
            refused, state = e, BatchState("", "failed", row.input_file or "")
            live.state = state
        finally:
            submitted_now.set()
        seen = (state.status, state.completed, state.failed)
        # A state made up here (the provider refused the batch, or to report on it) has no request counts of its
        # own: written, its zeros would replace what the provider last reported, and progress would go back.
        made_up = refused is not None
        while not state.ended:
            await self.sleep(runner.config.batch_api.poll_s)
            try:
                state = live.state = await self.api.batch_get(provider, state.id)
            except Permanent as e:
                log.warning("task %s: the Batch API refuses to report on %s (%s); cancelling it and running "
                            "its items on the model path", job.task_id, state.id, e)
                await self._cancel(provider, state.id)
                state = live.state = BatchState(state.id, "failed", state.input_file)
                made_up = True
                break
            except ModelError as e:
                log.warning("task %s: polling batch %s failed (%s); polling again", job.task_id, state.id, e)
                continue
            if (state.status, state.completed, state.failed) != seen:
                seen = (state.status, state.completed, state.failed)
                await off_loop(partial(self.store.update, job.task_id, job.owner, part=row.part, status=state.status,
                                       completed=state.completed, failed=state.failed))
        ended = self.clock()
        counts = {} if made_up else {"completed": state.completed, "failed": state.failed}
        await off_loop(partial(self.store.update, job.task_id, job.owner, part=row.part, status=state.status,
                               output_file=state.output_file, error_file=state.error_file, ended=row.ended or ended,
                               **counts))
        answers = await self._answers(runner, provider, row, state)
        latency_ms = ((row.ended or ended) - row.created) * 1000
        where = f"{row.tier} ({settings.model}, Batch API)"
        prepared: dict[int, Prepared] = {}
        for i in submitted:
            outcome = answers.get(str(i)) or refused or BatchUnanswered(
                f"{where}: batch {state.id} ended {state.status} without answering this item")
            prepared[i] = Prepared(row.tier, outcome, latency_ms, i, i in booked)
        hold = await self._settle(runner, job, row, answers)
        live.answers = answers
        left = len(submitted)

        async def record(i: int, outcome: Result | CallError, write: CallWrite) -> None:
            nonlocal left
            left -= 1
            if left == 0 and hold is not None:
                write.receipt.holds.append(hold.id)  # the last row drops the batch's hold as it books its spend
            await job.record(i, outcome, write)

        await run_items(runner, job.plan, submitted, record, WORKERS, prepared, live.started.add)

    async def _answers(self, runner: Runner, provider: Any, row: ProviderBatchRow,
                       state: BatchState) -> dict[str, ModelReply | ModelError]:
        """An ended batch's answers and errors, per custom_id (an answer in the output file wins)."""
        answers: dict[str, ModelReply | ModelError] = {}
        for file_id in (state.error_file, state.output_file):
            if file_id:
                answers.update(await self._download(runner, provider, row, file_id))
        return answers

    async def _settle(self, runner: Runner, job: BatchJob, row: ProviderBatchRow,
                      answers: dict[str, ModelReply | ModelError], fenced: bool = True) -> Hold | None:
        """Shrink `row`'s hold to what the answers cost at the batch rate (the items' rows book the same figures,
        attempt by attempt), once; the hold. `fenced` False: the task has ended, no replica holds it."""
        settings = runner.config.tiers[row.tier]
        actual = sum(batch_cost_of(settings, r.input_tokens, r.output_tokens, r.cached_input_tokens) or 0.0
                     for r in answers.values() if isinstance(r, ModelReply))
        hold = hold_from_json(row.hold, here=row.hold is not None and row.hold["id"] in self._mine)
        if hold is not None and not row.settled:
            await runner.budget.settle(hold, actual, HOLD_TTL_S)
            await off_loop(partial(self.store.update, job.task_id, job.owner if fenced else None, part=row.part,
                                   settled=True))
        return hold

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

    async def _cancel(self, provider: Any, batch_id: str) -> BatchState | None:
        """Ask the provider to stop a batch; the batch as it then says it is (None: the request failed)."""
        assert self.api is not None
        try:
            state = await self.api.batch_cancel(provider, batch_id)
            log.info("batch %s cancelled at the provider", batch_id)
            return state
        except ModelError as e:
            log.warning("cancelling batch %s at the provider failed: %s", batch_id, e)
            return None

    # ---- cancelled by the client -----------------------------------------------------------------------------------

    async def _cancelled(self, runner: Runner, job: BatchJob, live: dict[int, _Live]) -> None:
        """The client cancelled the task: stop the batches seen running at the provider now, and leave settling
        them all (their holds, the answers the provider gave before it stopped) to work that outlives the task."""
        rows = {row.part: row for row in await off_loop(self.store.rows, job.task_id)}
        if not rows:
            return  # nothing was prepared: no hold, no batch
        for part, seen in live.items():
            if seen.state is not None and seen.state.id and not seen.state.ended and part in rows:
                provider = runner.config.providers[runner.config.tiers[rows[part].tier].provider]
                seen.state = await self._cancel(provider, seen.state.id) or seen.state
        if job.later is not None:
            job.later(partial(self._settle_cancelled, runner, job, live))
        else:
            log.warning("task %s: cancelled with nowhere to settle its provider batches; their budget holds "
                        "expire after %.0f h", job.task_id, HOLD_TTL_S / 3600)

    async def _settle_cancelled(self, runner: Runner, job: BatchJob, live: dict[int, _Live]) -> None:
        rows = await off_loop(self.store.rows, job.task_id)
        pending = set(job.pending)
        async with anyio.create_task_group() as tg:
            for row in rows:
                if not pending.intersection(row.items):
                    continue  # answered before this run: its rows booked it and let its hold go
                tg.start_soon(self._settle_one_cancelled, runner, job, row, live.get(row.part) or _Live())

    async def _settle_one_cancelled(self, runner: Runner, job: BatchJob, row: ProviderBatchRow, live: _Live) -> None:
        """`_settle_cancelled_batch`, its failure kept to itself: the task's other batches settle all the same."""
        try:
            await self._settle_cancelled_batch(runner, job, row, live)
        except Exception:  # a bug, or a ledger that stayed down: this batch's hold expires, its answers unbooked
            log.exception("task %s: could not settle cancelled batch %s (part %d); its budget hold expires after "
                          "%.0f h", job.task_id, row.batch_id or "(none)", row.part, HOLD_TTL_S / 3600)

    async def _settle_cancelled_batch(self, runner: Runner, job: BatchJob, row: ProviderBatchRow,
                                      live: _Live) -> None:
        """Once the provider has stopped a cancelled task's batch: book, as cancelled calls at the batch rate, the
        answers it gave that no item's row books yet, and let the batch's hold go. The task has ended, so these
        writes are not fenced."""
        settings = runner.config.tiers[row.tier]
        provider = runner.config.providers[settings.provider]
        answers = live.answers
        if answers is None:  # the answers were not in when the client cancelled: wait for the provider to stop
            state = await self._stopped(runner, job, row, provider, live.state)
            if state is None:
                return
            if state.id:
                await off_loop(partial(self.store.update, job.task_id, None, part=row.part, status=state.status,
                                       output_file=state.output_file, error_file=state.error_file,
                                       ended=row.ended or self.clock(), completed=state.completed,
                                       failed=state.failed))
            answers = await self._answers(runner, provider, row, state)
        hold = await self._settle(runner, job, row, answers, fenced=False)
        # Booked already: items started here (each writes its own row) and items whose row an earlier run wrote.
        skip = live.started | await off_loop(self.store.booked, job.plan.batch_id)
        pending = set(job.pending)
        latency_ms = ((row.ended or self.clock()) - row.created) * 1000
        plan = job.plan

        def build() -> list[CallWrite]:  # rendering and token counting: tens of microseconds an answer
            return [runner.unchecked_item(plan.spec, {**plan.shared, plan.name: plan.items[i]}, plan.batch_id,
                                          Prepared(row.tier, reply, latency_ms, i))
                    for i in row.items if i in pending and i not in skip
                    and isinstance(reply := answers.get(str(i)), ModelReply)]

        writes = await anyio.to_thread.run_sync(build)
        if writes:
            if hold is not None:
                writes[-1].receipt.holds.append(hold.id)  # booked and let go in one transaction
            await runner.writer.put(writes)
        else:
            await runner.budget.drop(hold, HOLD_TTL_S)  # what the started items spent, their own rows book
        log.info("task %s: batch %s settled after the cancel: %d answers booked unchecked", job.task_id,
                 row.batch_id or "(none)", len(writes))

    async def _stopped(self, runner: Runner, job: BatchJob, row: ProviderBatchRow, provider: Any,
                       state: BatchState | None) -> BatchState | None:
        """`row`'s batch once it has ended after a cancel, polled every poll_s: an empty state when none was made
        (nothing to pay), None when the provider will not say (the hold then stays until it expires)."""
        assert self.api is not None
        deadline = row.created + HOLD_TTL_S
        try:
            if state is None or not state.id:
                state = await self._find(job, row, provider)
            if state is None:
                return BatchState("", "failed", "")
            if not state.ended and state.status != "cancelling":
                await self._cancel(provider, state.id)
        except ModelError as e:
            log.warning("task %s: could not look at its cancelled batch (%s)", job.task_id, e)
            return None
        while not state.ended:
            if self.clock() > deadline:
                return None
            await self.sleep(runner.config.batch_api.poll_s)
            try:
                state = await self.api.batch_get(provider, state.id)
            except Permanent as e:
                log.warning("task %s: the Batch API refuses to report on %s (%s)", job.task_id, state.id, e)
                return None
            except ModelError:
                continue
        return state


def default_executor(runner: Runner) -> ProviderBatches | None:
    """The executor for a server whose config lets some tier use the Batch API (None: the model path alone). The
    Batch API is the runner's remote model's, when it has one (`batch_api()`, as `OpenAIModels` does)."""
    if not any(t.batch_api for t in runner.config.tiers.values()) or not isinstance(runner.ledger, SqlLedger):
        return None
    get = getattr(runner.model.remote, "batch_api", None)
    return ProviderBatches(get() if callable(get) else None, runner.ledger)
