"""Run one tool call: validate the arguments, answer from the cache or climb the tier ladder (render, check the
budget, call the model, validate, repair, retry, escalate on the configured triggers), write the receipt to the
ledger, and maybe start a shadow comparison in the background.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskGroup

from tiered_mcp.call.budget import Budget
from tiered_mcp.call.options import CallOptions, effective
from tiered_mcp.call.routing import ladder_for
from tiered_mcp.core import tracing
from tiered_mcp.core.config import TRIGGERS, Config
from tiered_mcp.core.errors import (
    ArgumentsError,
    BudgetExceeded,
    CallError,
    ModelError,
    Permanent,
    RateLimited,
    TierNotAllowed,
    ToolFailed,
    Transient,
)
from tiered_mcp.core.prices import cost_of
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.core.tokens import count as count_tokens
from tiered_mcp.core.tokens import count_messages
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.models.base import Model, ModelReply, ModelRequest
from tiered_mcp.models.local import LocalEngine
from tiered_mcp.specs.schema_safety import caller_schema_problem as _meta_schema_problem
from tiered_mcp.specs.schema_safety import schema_problems
from tiered_mcp.specs.spec import Specs, ToolSpec, strict_compatible
from tiered_mcp.specs.validators import run_validators

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""progress(done, total, message): called as the call moves through its steps."""

Observer = Callable[["Runner", ToolSpec, dict[str, Any], Receipt, dict[str, Any]], Awaitable[None]]
"""observer(runner, spec, arguments, receipt, output): started in the background after a sampled answer (shadow runs,
wired in by the serving layer, which sits above the call path)."""

QUALITY_TRIGGERS = frozenset(TRIGGERS)


class UnknownTool(LookupError):
    """No tool of that name; the server answers this with a protocol error, not a tool result."""


@dataclass(frozen=True)
class Result:
    """A validated output and its receipt (already a plain dict, as sent to the client)."""

    output: dict[str, Any]
    receipt: dict[str, Any]


class _PerSchema:
    """Something derived from a schema, computed once per schema object.

    Keyed by identity: specs' schemas live as long as the specs, and bound schemas are memoised per spec (see
    ToolSpec.model_output_schema), so a batch of a thousand items builds one validator, not a thousand.
    """

    def __init__(self, build: Callable[[dict[str, Any]], Any]) -> None:
        self._build, self._memo = build, {}  # type: ignore[var-annotated]

    def __call__(self, schema: dict[str, Any]) -> Any:
        hit = self._memo.get(id(schema))
        if hit is None or hit[0] is not schema:
            if len(self._memo) > 2048:
                self._memo.clear()
            hit = self._memo[id(schema)] = (schema, self._build(schema))
        return hit[1]


_strict = _PerSchema(strict_compatible)


def _with_defaults(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    out = dict(arguments)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and isinstance(prop, dict) and "default" in prop:
            out[name] = prop["default"]
    return out


def cache_key(spec: ToolSpec, model: str, arguments: dict[str, Any]) -> str:
    """Same tool, spec version, model and arguments → same key."""
    blob = json.dumps([spec.name, spec.version, model, arguments], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Runner:
    """Runs tool calls.

    Args:
        config: the effective config.
        specs: the loaded tools.
        model: the seam every model request goes through.
        ledger: where receipts are written (None: nowhere; budgets then count this process only).
        local: the embedded local tier (None: a default engine, used only if its packages are installed).
        env: where provider keys are looked for, to tell which tiers can run.
        sleep: how to wait between retries (tests pass a recorder).
        jitter: returns a factor in [0, 1) for backoff jitter.
        sample: returns a number in [0, 1) to decide whether a call is shadowed.
        session: this server session's id (default: a fresh one); budgets per session use it.
    """

    def __init__(
        self,
        config: Config,
        specs: Specs,
        model: Model,
        ledger: Ledger | None = None,
        *,
        local: LocalEngine | None = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random,
        sample: Callable[[], float] = random.random,
        session: str | None = None,
        observers: tuple[Observer, ...] = (),
    ) -> None:
        self.config, self.specs, self.model, self.ledger = config, specs, model, ledger
        self.local = local if local is not None else LocalEngine()
        self.session = session or uuid.uuid4().hex[:12]
        self.budget = Budget(config, ledger, self.session)
        self._env = os.environ if env is None else env
        self._sleep, self._jitter, self._sample = sleep, jitter, sample
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._background: TaskGroup | None = None
        self.shadows_pending = 0
        self.shadows_skipped = 0
        self._observers = observers

    def usable(self, tier: str) -> bool:
        """Whether `tier` can run now: its provider's key is set, or for the local tier, its packages are installed."""
        settings = self.config.tiers.get(tier)
        if settings is None:
            return False
        provider = self.config.providers[settings.provider]
        if provider.kind == "embedded":
            return self.local.is_installed
        return provider.has_key(self._env)

    def ladder(self, spec: ToolSpec, requested: str | None = None, ceiling: str | None = None) -> list[str]:
        """The tiers a call of `spec` may use now; see `routing.ladder_for`."""
        return ladder_for(self.config, spec, requested, self.usable, ceiling)

    def _limiter(self, provider: str) -> anyio.CapacityLimiter:
        if provider not in self._limiters:
            self._limiters[provider] = anyio.CapacityLimiter(self.config.providers[provider].max_concurrency)
        return self._limiters[provider]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runner]:
        """Own a task group for background shadow runs while the server serves. On exit, pending shadow runs get
        `shadow.drain_s` to finish (they delay shutdown, never an answer), then are cancelled; the model's
        connections are closed."""
        try:
            async with anyio.create_task_group() as tg:
                self._background = tg
                try:
                    yield self
                finally:
                    self._background = None
                    with anyio.move_on_after(self.config.shadow.drain_s, shield=True):
                        while self.shadows_pending:
                            await anyio.sleep(0.02)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Close the model's connections (the seam may have none)."""
        close = getattr(self.model, "aclose", None)
        if close is not None:
            await close()

    # ---- entry point -----------------------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any] | None, progress: Progress | None = None,
                   options: CallOptions | None = None) -> Result:
        """Run `tool` with `arguments` (a batch when the tool takes `items` and they are given).

        Raises:
            UnknownTool: no such tool.
            CallError: the call could not run or every tier failed (the error carries the receipt).
        """
        spec = self.specs.get(tool)
        if spec is None:
            raise UnknownTool(f"unknown tool {tool!r}; available: {', '.join(sorted(self.specs.tools))}")
        args = dict(arguments or {})
        options = options or CallOptions()
        if spec.batch is not None and "items" in args:
            from tiered_mcp.call.batch import run_batch

            return await run_batch(self, spec, args, progress, options)
        return await self.call_one(spec, args, progress, options)

    async def call_one(
        self,
        spec: ToolSpec,
        arguments: dict[str, Any],
        progress: Progress | None = None,
        options: CallOptions | None = None,
        *,
        kind: str = "call",
        batch: str | None = None,
        forced_tier: str | None = None,
        checked: bool = False,
        sink: list[tuple[Receipt, Any, Any]] | None = None,
    ) -> Result:
        """One call of `spec`. `forced_tier` runs exactly that tier, no escalation, past the per-call ceiling
        (shadow runs and bake-offs); `kind` labels the ledger row ("call", "shadow", "eval"); `checked` says the
        arguments were validated (and defaulted) already, as a batch does once for all its items; with `sink`, the
        ledger row is appended there for the caller to write (a batch writes all its rows in one transaction)."""
        options = options or CallOptions()
        args = dict(arguments)
        requested = args.pop("tier", None)
        receipt = Receipt(tool=spec.name, kind=kind, session=self.session, batch=batch)
        started = time.perf_counter()
        output: dict[str, Any] | None = None
        failure: CallError | None = None
        with tracing.span("tiered.call", tool=spec.name, kind=kind) as span:
            try:
                if not checked:
                    args = self._check_arguments(spec, args)
                if forced_tier is not None:
                    if not self.usable(forced_tier):
                        raise TierNotAllowed(f"tier {forced_tier!r} cannot run here (not configured, or no key)")
                    if self.config.providers[self.config.tiers[forced_tier].provider].kind == "embedded" and (
                            spec.local_task is None):
                        raise TierNotAllowed(f"the local tier does not serve {spec.name}")
                    ladder = [forced_tier]
                else:
                    ladder = self.ladder(spec, requested, options.escalation_ceiling)
                output = self._from_cache(spec, args, ladder, receipt, options)
                if output is None:
                    output = await self._climb(spec, args, ladder, receipt, progress, options)
                    self._to_cache(spec, args, ladder, receipt, output, options)
            except anyio.get_cancelled_exc_class():
                receipt.error = "cancelled by the client" if kind == "call" else "cancelled (the server stopped)"
                raise
            except CallError as e:
                receipt.error, failure = str(e), e
                raise
            finally:
                receipt.latency_ms = (time.perf_counter() - started) * 1000
                if sink is not None:
                    sink.append((receipt, args, output))
                elif self.ledger is not None:
                    # Shielded: a cancelled call is still written down, with what it spent before the cancel.
                    with anyio.CancelScope(shield=True):
                        receipt.call_id = await self.ledger.arecord(receipt, self.config, args, output)
                    self.budget.written(spec.name, receipt.cost_usd)
                receipt.budget = self.budget.status(spec.name) or None
                span.set(tier=receipt.tier, ok=receipt.ok, cost_usd=receipt.cost_usd, attempts=len(receipt.attempts),
                         cached=receipt.cached)
                if failure is not None:
                    failure.receipt = receipt.to_dict(self.config)
        assert output is not None
        result = Result(output=output, receipt=receipt.to_dict(self.config))
        if kind == "call" and not receipt.cached:
            self._maybe_shadow(spec, args, receipt, output)
        return result

    def _check_arguments(self, spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
        problems = schema_problems(spec.input_schema, args, "arguments")
        if problems:
            raise ArgumentsError("; ".join(problems) + f" (see the input schema of {spec.name})")
        args = _with_defaults(spec.input_schema, args)
        for b in spec.bindings:
            if b.as_ == "schema":
                problem = _meta_schema_problem(args[b.argument])
                if problem is not None:
                    raise ArgumentsError(f"arguments.{b.argument}: not a valid JSON Schema: {problem}")
        return args

    # ---- cache -----------------------------------------------------------------------------------------------------

    def _cache_on(self, spec: ToolSpec, options: CallOptions) -> bool:
        # Tools marked not idempotent (draft) are expected to answer anew each time.
        return (self.ledger is not None and options.cache and self.config.cache_ttl_s > 0
                and spec.annotations.idempotent)

    def _from_cache(self, spec: ToolSpec, args: dict[str, Any], ladder: list[str], receipt: Receipt,
                    options: CallOptions) -> dict[str, Any] | None:
        if not ladder or not self._cache_on(spec, options):
            return None
        assert self.ledger is not None
        hit = self.ledger.cache_get(cache_key(spec, self.config.tiers[ladder[0]].model, args))
        if hit is None:
            return None
        output, tier, model = hit
        receipt.ok, receipt.tier, receipt.model, receipt.cached = True, tier, model, True
        return output

    def _to_cache(self, spec: ToolSpec, args: dict[str, Any], ladder: list[str], receipt: Receipt,
                  output: dict[str, Any], options: CallOptions) -> None:
        if self._cache_on(spec, options) and receipt.tier and receipt.model:
            assert self.ledger is not None
            self.ledger.cache_put(cache_key(spec, self.config.tiers[ladder[0]].model, args), output,
                                  receipt.tier, receipt.model, self.config.cache_ttl_s)

    # ---- the ladder ------------------------------------------------------------------------------------------------

    def _triggers(self, spec: ToolSpec, options: CallOptions) -> frozenset[str]:
        return effective(self.config, spec, options).triggers

    def _threshold(self, spec: ToolSpec, options: CallOptions) -> float:
        return effective(self.config, spec, options).threshold

    async def _climb(self, spec: ToolSpec, args: dict[str, Any], ladder: list[str], receipt: Receipt,
                     progress: Progress | None, options: CallOptions) -> dict[str, Any]:
        if not ladder:
            raise TierNotAllowed(f"no configured tier can run {spec.name}; add a [tiers.{spec.tier}] table to the config")
        messages = spec.render(args)
        schema = spec.model_output_schema(args)
        base = dict(messages=messages, schema=schema, schema_name=spec.name, strict=_strict(schema))
        triggers = self._triggers(spec, options)
        failures: list[str] = []
        trigger: str | None = None
        unsure: tuple[dict[str, Any], Attempt] | None = None  # the best answer that was valid but not confident
        stopped = ""
        for i, tier in enumerate(ladder):
            more = i + 1 < len(ladder)
            try:
                if self.config.providers[self.config.tiers[tier].provider].kind == "embedded":
                    output = await self._on_local(tier, spec, args, base, receipt, trigger, progress)
                else:
                    output = await self._on_tier(tier, spec, args, base, receipt, trigger, progress, triggers)
            except BudgetExceeded:
                if unsure is None:
                    raise
                output = None
                stopped = "the budget stops the climb"
            last = receipt.attempts[-1]
            if output is not None:
                confidence = output.get(spec.confidence_field) if spec.confidence_field else None
                threshold = self._threshold(spec, options)
                if isinstance(confidence, (int, float)) and confidence < threshold:
                    note = f"confidence {confidence:g} is under the tool's threshold {threshold:g}"
                    if more and "low_confidence" in triggers:
                        last.outcome, last.detail = "low_confidence", f"{note}; escalating"
                        unsure, trigger = (output, last), "low_confidence"
                        continue
                    last.detail = note + ("; answered (low_confidence is not an escalation trigger here)"
                                          if more else ", but no tier above can run; answered anyway")
                receipt.ok, receipt.tier, receipt.model = True, tier, last.model
                return output
            if stopped:
                break
            trigger = last.outcome
            failures.append(f"{tier} ({last.model}): {last.outcome}: {last.detail}")
            if last.outcome in QUALITY_TRIGGERS and last.outcome not in triggers:
                stopped = f"{last.outcome} is not an escalation trigger for {spec.name}"
                break
        if unsure is not None:
            # The tiers above failed or were out of budget; a valid answer of low confidence is better than none.
            output, attempt = unsure
            attempt.detail += f"; {stopped or 'the tiers above failed'}, so this answer stands"
            receipt.ok, receipt.tier, receipt.model = True, attempt.tier, attempt.model
            return output
        hint = f" Escalation stopped: {stopped}." if stopped else ""
        if not stopped and ladder[-1] != "flagship":
            hint = (f" Escalation stops at {ladder[-1]!r} (escalation_ceiling); raise [tools.{spec.name}] "
                    "escalation_ceiling in the config to let it climb further.")
        raise ToolFailed(f"{spec.name} failed on every tier it may use: " + " | ".join(failures) + hint)

    def _start_attempt(self, tier: str, receipt: Receipt, reason: str, trigger: str | None) -> Attempt:
        attempt = Attempt(tier=tier, model=self.config.tiers[tier].model, reason=reason,
                          trigger=trigger if reason == "escalation" else None)
        receipt.attempts.append(attempt)
        return attempt

    async def _on_local(self, tier: str, spec: ToolSpec, args: dict[str, Any], base: dict[str, Any],
                        receipt: Receipt, trigger: str | None, progress: Progress | None) -> dict[str, Any] | None:
        """Run the tool's local task in process. No model call: the tokens recorded are what the prompt would use."""
        attempt = self._start_attempt(tier, receipt, "first" if not receipt.attempts else "escalation", trigger)
        if progress is not None:
            await progress(len(receipt.attempts), None, f"{tier} ({attempt.model}): {attempt.reason}")
        t0 = time.perf_counter()
        try:
            output = await self.local.run(spec.local_task or "", args)
        finally:
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
        attempt.model = self.local.model_name
        # What the prompt and this answer come to in o200k tokens: the basis of the nano and flagship baselines.
        attempt.input_tokens = count_messages(base["messages"])
        attempt.output_tokens = count_tokens(json.dumps(output, ensure_ascii=False))
        attempt.cost_usd = cost_of(self.config.tiers[tier], attempt.input_tokens, attempt.output_tokens)
        problems = schema_problems(base["schema"], output, "output")
        if problems:
            attempt.outcome, attempt.detail = "invalid", "; ".join(problems)
            return None
        attempt.outcome = "ok"
        attempt.detail = "answered in process; tokens are what the prompt and answer come to (o200k), for the baselines"
        return output

    async def _on_tier(self, tier: str, spec: ToolSpec, args: dict[str, Any], base: dict[str, Any],
                       receipt: Receipt, trigger: str | None, progress: Progress | None,
                       triggers: frozenset[str]) -> dict[str, Any] | None:
        """Try one tier: retries for transient failures, one repair for an invalid answer. None means escalate."""
        settings = self.config.tiers[tier]
        provider = self.config.providers[settings.provider]
        messages: list[dict[str, str]] = base["messages"]
        reason = "first" if not receipt.attempts else "escalation"
        retries = repaired = 0
        while True:
            attempt = self._start_attempt(tier, receipt, reason, trigger)
            if progress is not None:
                await progress(len(receipt.attempts), None, f"{tier} ({settings.model}): {reason}")
            try:
                reserved = self.budget.reserve(spec.name, tier, settings, messages)
            except BudgetExceeded as e:
                attempt.outcome, attempt.detail = "budget", str(e)
                raise
            request = ModelRequest(tier=tier, settings=settings, provider=provider, **{**base, "messages": messages})
            t0 = time.perf_counter()
            try:
                with tracing.span("tiered.attempt", tool=spec.name, tier=tier, model=settings.model, reason=reason):
                    async with self._limiter(settings.provider):
                        reply = await self.model.complete(request)
            except anyio.get_cancelled_exc_class():
                attempt.outcome, attempt.detail = "cancelled", "cancelled by the client"
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
                self.budget.settle(spec.name, reserved, 0.0)
                raise
            except ModelError as e:
                attempt.outcome, attempt.detail = e.kind, str(e)
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
                self.budget.settle(spec.name, reserved, 0.0)
                if isinstance(e, Permanent) or not isinstance(e, Transient) or retries >= provider.max_retries:
                    return None
                delay = self._backoff(retries, e)
                if delay is None:
                    attempt.detail += f" (Retry-After beyond retry.max_retry_after_s={self.config.retry.max_retry_after_s}s)"
                    return None
                retries += 1
                reason = "retry"
                await self._sleep(delay)
                continue
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
            attempt.input_tokens, attempt.output_tokens = reply.input_tokens, reply.output_tokens
            attempt.cost_usd = cost_of(settings, reply.input_tokens, reply.output_tokens)
            self.budget.settle(spec.name, reserved, attempt.cost_usd)
            if reply.model:
                attempt.model = reply.model
            output, (outcome, detail) = self._judge(reply, base["schema"], spec, args)
            if output is not None and outcome == "validator" and "validator" not in triggers:
                attempt.outcome, attempt.detail = "ok", f"{detail} (accepted: validator is not an escalation trigger)"
                return output
            if outcome == "ok":
                attempt.outcome = "ok"
                return output
            attempt.outcome, attempt.detail = outcome, detail
            if outcome not in ("invalid", "validator") or repaired:
                return None
            repaired = 1
            reason = "repair"
            what = "not valid against the required JSON Schema" if outcome == "invalid" else "wrong"
            messages = [
                *base["messages"],
                {"role": "assistant", "content": reply.content or ""},
                {"role": "user", "content": f"That answer is {what}: {detail}. Answer again with the whole "
                                            "corrected JSON object and nothing else."},
            ]

    def _judge(self, reply: ModelReply, schema: dict[str, Any], spec: ToolSpec,
               args: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str]]:
        if reply.refusal:
            return None, ("refused", f"the model refused: {reply.refusal}")
        if reply.finish_reason == "content_filter":
            return None, ("refused", "the provider's content filter stopped the answer")
        if reply.finish_reason == "length":
            return None, ("truncated", f"the answer hit the output cap ({reply.output_tokens} tokens); raise "
                                       "max_output_tokens for this tier")
        try:
            output = json.loads(reply.content or "")
        except json.JSONDecodeError as e:
            return None, ("invalid", f"not JSON ({e.msg} at line {e.lineno} column {e.colno})")
        if not isinstance(output, dict):
            return None, ("invalid", f"expected a JSON object, got {type(output).__name__}")
        problems = schema_problems(schema, output, "output")
        if problems:
            return None, ("invalid", "; ".join(problems))
        found = run_validators(spec.validators, output, args)
        if found:
            return output, ("validator", "; ".join(found))
        return output, ("ok", "")

    def _backoff(self, retries: int, error: ModelError) -> float | None:
        r = self.config.retry
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return None if error.retry_after > r.max_retry_after_s else error.retry_after
        return min(r.max_s, r.base_s * 2**retries) * self._jitter()

    # ---- shadow comparisons ----------------------------------------------------------------------------------------

    def _maybe_shadow(self, spec: ToolSpec, args: dict[str, Any], receipt: Receipt, output: dict[str, Any]) -> None:
        settings = self.config.tools.get(spec.name)
        if not settings or settings.shadow_rate <= 0 or receipt.tier == settings.shadow_tier:
            return
        if self._sample() >= settings.shadow_rate:
            return
        if self._background is None or self.shadows_pending >= self.config.shadow.max_pending:
            self.shadows_skipped += 1  # bounded: a burst of calls must not pile up shadow work
            return
        for observer in self._observers:
            self.shadows_pending += 1
            self._background.start_soon(observer, self, spec, args, receipt, output)
