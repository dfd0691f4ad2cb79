"""The one path every model request takes: first attempt, retry, repair, escalation, batch item, shadow run, judge
call and bake-off case alike.

`ModelPath.request` applies, in this one place each: the budget (reserve the worst case before, settle the actual
cost after), the provider's concurrency limit with answers first (evidence work — shadow, judge, eval — has a share
of its own and never takes an answer's slot), retries with backoff and jitter (Retry-After honoured up to a cap),
a trace span, secret scrubbing of error text, and the attempt's accounting (tokens, cached and reasoning tokens,
estimates where no usage was reported, cost at the service tier the provider reports). The local tier is a model
behind the same seam (`models.base.Models`).

A provider's service tier (`[tiers.X] service_tier`, or `[tools.X] service_tier` for every request of a tool) is
set on the request here, with the tier's timeout (900 s for flex unless `timeout_s` says otherwise) and retries.
A 429 `resource_unavailable` (flex without capacity) is retried with backoff like any 429; once the retries are
spent, a tier with `service_tier_fallback` makes the same request on that service tier (an attempt with reason
"fallback", with retries of its own) before the tier counts as failed.

`ModelPath.shared_pass` lets many requests share one model pass (a batch's first requests on the local tier): each
still goes through `request` (its own attempt, reservation, span and accounting); only the model call is shared,
and the pass takes one concurrency slot, since it is one request to the model.

A batch item answered through the provider's Batch API (call/provider_batch.py) was requested outside this path's
request loop; `ModelPath.accept` books its answer here all the same (attempt, trace span, scrubbing, accounting at
the batch rate), and everything after it (repair, escalation) is an ordinary `request`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import anyio

from tiered_mcp.call.budget import Budget
from tiered_mcp.core import tracing
from tiered_mcp.core.config import Config
from tiered_mcp.core.errors import (
    BudgetExceeded,
    ModelError,
    Permanent,
    RateLimited,
    ServiceTierUnavailable,
    Transient,
)
from tiered_mcp.core.prices import batch_cost_of, cost_of
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.core.tokens import count, count_messages
from tiered_mcp.models.base import ManyModel, Model, ModelReply, ModelRequest

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""progress(done, total, message): called as the call moves through its steps."""


class ModelPath:
    """Makes model requests for the runner, batches, shadow runs, judges and bake-offs.

    Args:
        config: tiers, providers, retry policy.
        model: the seam (remote and local models behind one `complete`).
        budget: caps to reserve against.
        sleep: how to wait between retries (tests pass a recorder).
        jitter: a factor in [0, 1) for backoff jitter.
        scrub: removes secrets from text that leaves the process (error details).
    """

    def __init__(self, config: Config, model: Model, budget: Budget, *,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep, jitter: Callable[[], float],
                 scrub: Callable[[str], str] = lambda text: text) -> None:
        self.config, self.model, self.budget = config, model, budget
        self._sleep, self._jitter, self.scrub = sleep, jitter, scrub
        self._limiters: dict[tuple[str, bool], anyio.CapacityLimiter] = {}

    def limiter(self, provider: str, evidence: bool) -> anyio.CapacityLimiter:
        """The provider's share for answers, or its separate share for evidence work."""
        key = (provider, evidence)
        if key not in self._limiters:
            p = self.config.providers[provider]
            self._limiters[key] = anyio.CapacityLimiter(p.evidence_slots() if evidence else p.max_concurrency)
        return self._limiters[key]

    def shared_pass(self, tier: str, size: int) -> SharedPass | None:
        """A pass that answers up to `size` requests on `tier` in one model call (`complete_many`), or None when
        the tier's model answers one request at a time (remote models: each request then goes alone).

        Each of the `size` members gets a `Seat` (`SharedPass.seat`) and passes it to `request(..., seat=...)` for
        its one shared request, or releases it (`Seat.release`) if it makes none; the owner awaits
        `SharedPass.run()`, which waits for every seat, makes the one model call and hands each its answer.
        """
        settings = self.config.tiers[tier]
        provider = self.config.providers[settings.provider]
        if not isinstance(self.model, ManyModel) or not self.model.answers_together(provider):
            return None
        return SharedPass(self.model, self.limiter(settings.provider, False), size)

    async def request_many(self, receipts: Sequence[Receipt], tier: str, requests: Sequence[ModelRequest], *,
                           reason: str) -> list[tuple[ModelReply | None, Attempt] | Exception]:
        """Make each request on `tier` for its receipt, all in one model pass where the tier's model can (else one by
        one, concurrently); each is a `request` of its own (attempt, reservation, span, accounting, retries).

        Returns:
            Per request, in order: what `request` returns, or the exception it raised (e.g. BudgetExceeded).
        """
        out: list[tuple[ModelReply | None, Attempt] | Exception] = [ValueError("not run")] * len(requests)
        shared = self.shared_pass(tier, len(requests))

        async def one(i: int, seat: Seat | None) -> None:
            try:
                out[i] = await self.request(receipts[i], tier, requests[i], reason=reason, seat=seat)
            except Exception as e:  # noqa: BLE001 (each request's failure is its own)
                out[i] = e

        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i, shared.seat() if shared is not None else None)
            if shared is not None:
                await shared.run()
        return out

    async def request(self, receipt: Receipt, tier: str, request: ModelRequest, *, reason: str,
                      trigger: str | None = None, progress: Progress | None = None,
                      seat: Seat | None = None) -> tuple[ModelReply | None, Attempt]:
        """Make `request` on `tier`, retrying transient failures; each try is an Attempt on `receipt`.

        With a `seat` (of `shared_pass`), the first try is answered in the shared pass (which holds the concurrency
        slot); retries go alone.

        Returns:
            (reply, attempt): the reply, or None when the tier failed (the attempt's outcome and detail say how),
            and the last attempt made.

        Raises:
            BudgetExceeded: a cap would be passed (the attempt is on the receipt with outcome "budget").
        """
        try:
            return await self._request(receipt, tier, request, reason, trigger, progress, seat)
        finally:
            if seat is not None:  # used by now, or never will be (refused by the budget): the pass must not wait
                seat.release()

    async def _request(self, receipt: Receipt, tier: str, request: ModelRequest, reason: str, trigger: str | None,
                       progress: Progress | None, seat: Seat | None) -> tuple[ModelReply | None, Attempt]:
        settings = self.config.tiers[tier]
        provider = self.config.providers[settings.provider]
        max_retries = provider.max_retries if settings.max_retries is None else settings.max_retries
        fallback = settings.service_tier_fallback
        if provider.kind != "embedded":
            tool = self.config.tools.get(receipt.tool)
            service_tier = (tool.service_tier if tool is not None else None) or settings.service_tier
            timeout = settings.request_timeout_s(provider, service_tier)
            request = replace(request, service_tier=service_tier,
                              timeout_s=None if timeout == provider.timeout_s else timeout)
        retries = 0
        while True:
            attempt = Attempt(tier=tier, model=settings.model, reason=reason,
                              trigger=trigger if reason == "escalation" else None, service_tier=request.service_tier)
            receipt.attempts.append(attempt)
            if progress is not None:
                await progress(len(receipt.attempts), None, f"{tier} ({settings.model}): {reason}")
            reply: ModelReply | None = None
            error: ModelError | None = None
            # A slot first, then the budget: requests queued behind the provider's limit hold no reservation.
            slot: Any = contextlib.nullcontext() if seat is not None else self.limiter(settings.provider,
                                                                                       receipt.evidence)
            async with slot:
                try:
                    hold = await self.budget.reserve(receipt.tool, tier, settings, request.messages,
                                                     evidence=receipt.evidence, service_tier=request.service_tier,
                                                     timeout_s=request.timeout_s or provider.timeout_s)
                except BudgetExceeded as e:
                    attempt.outcome, attempt.detail = "budget", str(e)
                    raise
                if hold is not None:
                    receipt.holds.append(hold.id)
                t0 = time.perf_counter()
                try:
                    with tracing.span("tiered.attempt", tool=receipt.tool, kind=receipt.kind, tier=tier,
                                      model=settings.model, reason=reason) as span:
                        try:
                            reply = await (seat.complete(request) if seat is not None
                                           else self.model.complete(request))
                        except ModelError as e:
                            error = e
                            attempt.outcome, attempt.detail = e.kind, self.scrub(str(e))
                        else:
                            self._account(attempt, reply, request)
                        span.set(outcome=attempt.outcome if error else "answered", input_tokens=attempt.input_tokens,
                                 output_tokens=attempt.output_tokens, cost_usd=attempt.cost_usd)
                except anyio.get_cancelled_exc_class():
                    attempt.outcome, attempt.detail = "cancelled", "cancelled by the client"
                    raise
                finally:
                    attempt.latency_ms = (time.perf_counter() - t0) * 1000
                    with anyio.CancelScope(shield=True):
                        await self.budget.settle(hold, attempt.cost_usd if reply is not None else 0.0)
                    if hold is not None:
                        receipt.budget = hold.status
            if reply is not None:
                return reply, attempt
            assert error is not None
            if isinstance(error, Permanent) or not isinstance(error, Transient):
                return None, attempt
            delay = None if retries >= max_retries else self._backoff(retries, error)
            if delay is None:
                if retries < max_retries:
                    attempt.detail += (f" (Retry-After beyond retry.max_retry_after_s="
                                       f"{self.config.retry.max_retry_after_s}s)")
                if (isinstance(error, ServiceTierUnavailable) and fallback is not None
                        and request.service_tier != fallback):
                    # No capacity at this service tier: the same request at the fallback one, with its own retries.
                    request = replace(request, service_tier=fallback)
                    retries, reason, seat = 0, "fallback", None
                    continue
                return None, attempt
            retries += 1
            reason, seat = "retry", None
            await self._sleep(delay)

    def accept(self, receipt: Receipt, tier: str, request: ModelRequest, outcome: ModelReply | ModelError,
               latency_ms: float = 0.0, booked: bool = False) -> tuple[ModelReply | None, Attempt]:
        """Book the provider's Batch API answer to `request` (or its error) as the call's first attempt, priced at
        the tier's batch rate. The budget was reserved for the whole batch before it was submitted. `booked`: an
        earlier row of this item (cancelled by a restart) booked the answer already, so this one costs 0 here (its
        tokens stay: the baseline prices them).

        Returns:
            (reply, attempt), as `request` does.
        """
        settings = self.config.tiers[tier]
        attempt = Attempt(tier=tier, model=settings.model, reason="first", batch_api=True, latency_ms=latency_ms)
        receipt.attempts.append(attempt)
        with tracing.span("tiered.attempt", tool=receipt.tool, kind=receipt.kind, tier=tier, model=settings.model,
                          reason="first", batch_api=True) as span:
            if isinstance(outcome, ModelError):
                attempt.outcome, attempt.detail = outcome.kind, self.scrub(str(outcome))
                reply = None
            else:
                reply = outcome
                self._account(attempt, reply, request)
                if booked:
                    attempt.cost_usd = 0.0
            span.set(outcome=attempt.outcome if reply is None else "answered", input_tokens=attempt.input_tokens,
                     output_tokens=attempt.output_tokens, cost_usd=attempt.cost_usd)
        return reply, attempt

    def _account(self, attempt: Attempt, reply: ModelReply, request: ModelRequest) -> None:
        settings = self.config.tiers[attempt.tier]
        if reply.model:
            attempt.model = reply.model
        if reply.usage_reported:
            attempt.input_tokens, attempt.output_tokens = reply.input_tokens, reply.output_tokens
            attempt.cached_input_tokens, attempt.reasoning_tokens = reply.cached_input_tokens, reply.reasoning_tokens
        else:
            # No usage reported (the local tier sends nothing; some providers omit it): o200k counts, flagged. Never
            # booked at $0 for a paid tier.
            attempt.input_tokens = reply.input_tokens or count_messages(request.messages)
            attempt.output_tokens = reply.output_tokens or count(reply.content or reply.refusal or "")
            attempt.estimated = True
        # Priced at the service tier the provider reports it used (one that names none: the standard rates); a
        # Batch API answer at the tier's batch rate.
        attempt.service_tier = reply.service_tier
        if attempt.batch_api:
            attempt.cost_usd = batch_cost_of(settings, attempt.input_tokens, attempt.output_tokens,
                                             attempt.cached_input_tokens)
        else:
            attempt.cost_usd = cost_of(settings, attempt.input_tokens, attempt.output_tokens,
                                       attempt.cached_input_tokens, service_tier=reply.service_tier)

    def _backoff(self, retries: int, error: ModelError) -> float | None:
        r = self.config.retry
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return None if error.retry_after > r.max_retry_after_s else error.retry_after
        return min(r.max_s, r.base_s * 2**retries) * self._jitter()


class Seat:
    """One member's place in a `SharedPass`: used once by `ModelPath.request`, or released unused."""

    __slots__ = ("_pass", "done", "error", "reply", "request", "used")

    def __init__(self, shared: SharedPass) -> None:
        self._pass = shared
        self.used = False
        self.request: ModelRequest | None = None
        self.reply: ModelReply | None = None
        self.error: BaseException | None = None
        self.done = anyio.Event()

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Wait for the pass to answer `request` (raises what the model raised for it)."""
        if self.used:
            raise RuntimeError("a seat answers one request")
        self.used, self.request = True, request
        self._pass.arrived()
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    def release(self) -> None:
        """Give the seat up without a request (no-op once used or released)."""
        if not self.used:
            self.used = True
            self._pass.arrived()


class SharedPass:
    """Requests of many members answered by one `complete_many` call (see `ModelPath.shared_pass`)."""

    def __init__(self, model: ManyModel, slot: anyio.CapacityLimiter, size: int) -> None:
        self._model, self._slot, self.size = model, slot, size
        self._seats: list[Seat] = []
        self._arrived = 0
        self._ready = anyio.Event()

    def seat(self) -> Seat:
        if len(self._seats) >= self.size:
            raise RuntimeError("every seat of this pass is taken")
        seat = Seat(self)
        self._seats.append(seat)
        return seat

    def arrived(self) -> None:
        self._arrived += 1
        if self._arrived >= self.size:
            self._ready.set()

    async def run(self) -> int:
        """Wait until every seat is used or released, answer the requests in one model call; returns how many."""
        await self._ready.wait()
        waiting = [s for s in self._seats if s.request is not None]
        if not waiting:
            return 0
        replies: list[ModelReply | Exception] = [RuntimeError("the shared pass was cancelled")] * len(waiting)
        try:
            async with self._slot:
                replies = list(await self._model.complete_many([s.request for s in waiting if s.request]))
            if len(replies) != len(waiting):
                replies = [RuntimeError(f"{len(replies)} answers for {len(waiting)} requests")] * len(waiting)
        except Exception as e:  # noqa: BLE001 (e.g. the local model failed to load: every member gets it)
            replies = [e] * len(waiting)
        finally:
            # Cancelled or not, no member is left waiting on a pass that will not answer.
            for seat, r in zip(waiting, replies):
                if isinstance(r, ModelReply):
                    seat.reply = r
                else:
                    seat.error = r
                seat.done.set()
        return len(waiting)
