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
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

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
from tiered_mcp.core.prices import cost_of
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.core.tokens import count, count_messages
from tiered_mcp.models.base import Model, ModelReply, ModelRequest

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

    async def request(self, receipt: Receipt, tier: str, request: ModelRequest, *, reason: str,
                      trigger: str | None = None, progress: Progress | None = None) -> tuple[ModelReply | None, Attempt]:
        """Make `request` on `tier`, retrying transient failures; each try is an Attempt on `receipt`.

        Returns:
            (reply, attempt): the reply, or None when the tier failed (the attempt's outcome and detail say how),
            and the last attempt made.

        Raises:
            BudgetExceeded: a cap would be passed (the attempt is on the receipt with outcome "budget").
        """
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
            async with self.limiter(settings.provider, receipt.evidence):
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
                            reply = await self.model.complete(request)
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
                    retries, reason = 0, "fallback"
                    continue
                return None, attempt
            retries += 1
            reason = "retry"
            await self._sleep(delay)

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
        # Priced at the service tier the provider reports it used (one that names none: the standard rates).
        attempt.service_tier = reply.service_tier
        attempt.cost_usd = cost_of(settings, attempt.input_tokens, attempt.output_tokens, attempt.cached_input_tokens,
                                   service_tier=reply.service_tier)

    def _backoff(self, retries: int, error: ModelError) -> float | None:
        r = self.config.retry
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return None if error.retry_after > r.max_retry_after_s else error.retry_after
        return min(r.max_s, r.base_s * 2**retries) * self._jitter()
