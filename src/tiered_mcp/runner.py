"""Run one tool call: validate the arguments, render the prompt, call the model, validate the answer, repair,
retry and escalate, and write the receipt to the ledger.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import anyio
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .config import Config
from .errors import (
    ArgumentsError,
    CallError,
    ModelError,
    Permanent,
    RateLimited,
    TierNotAllowed,
    ToolFailed,
    Transient,
)
from .ledger import Ledger
from .local import LocalEngine, estimate_tokens, output_tokens
from .models import Model, ModelReply, ModelRequest
from .prices import cost_of
from .receipts import Attempt, Receipt
from .routing import ladder_for
from .specs import Specs, ToolSpec, strict_compatible

Progress = Callable[[float, float | None, str], Awaitable[None]]
"""progress(done, total, message): called as the call moves through its steps."""


class UnknownTool(LookupError):
    """No tool of that name; the server answers this with a protocol error, not a tool result."""


@dataclass(frozen=True)
class Result:
    """A validated output and its receipt (already a plain dict, as sent to the client)."""

    output: dict[str, Any]
    receipt: dict[str, Any]


def schema_problems(schema: dict[str, Any], instance: Any, what: str, limit: int = 5) -> list[str]:
    """Readable validation errors, each naming the field (as a JSON path) and the rule it breaks."""
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(map(str, e.path)))
    out = []
    for e in errors[:limit]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        out.append(f"{what}{path}: {e.message}")
    return out


def _with_defaults(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    out = dict(arguments)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and isinstance(prop, dict) and "default" in prop:
            out[name] = prop["default"]
    return out


class Runner:
    """Runs tool calls.

    Args:
        config: the effective config.
        specs: the loaded tools.
        model: the seam every model request goes through.
        ledger: where receipts are written (None: nowhere).
        local: the embedded local tier (None: a default engine, used only if its packages are installed).
        env: where provider keys are looked for, to tell which tiers can run.
        sleep: how to wait between retries (tests pass a recorder).
        jitter: returns a factor in [0, 1) for backoff jitter.
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
    ) -> None:
        self.config, self.specs, self.model, self.ledger = config, specs, model, ledger
        self.local = local if local is not None else LocalEngine()
        self._env = os.environ if env is None else env
        self._sleep, self._jitter = sleep, jitter

    def usable(self, tier: str) -> bool:
        """Whether `tier` can run now: its provider's key is set, or for the local tier, its packages are installed."""
        settings = self.config.tiers.get(tier)
        if settings is None:
            return False
        provider = self.config.providers[settings.provider]
        if provider.kind == "embedded":
            return self.local.is_installed
        return provider.has_key(self._env)

    # ---- routing ---------------------------------------------------------------------------------------------------

    def ladder(self, spec: ToolSpec, requested: str | None = None) -> list[str]:
        """The tiers a call of `spec` may use now; see `routing.ladder_for`."""
        return ladder_for(self.config, spec, requested, self.usable)

    # ---- one call --------------------------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any] | None, progress: Progress | None = None) -> Result:
        """Run `tool` with `arguments`.

        Raises:
            UnknownTool: no such tool.
            CallError: the call could not run or every tier failed (ToolFailed carries the receipt).
        """
        spec = self.specs.get(tool)
        if spec is None:
            raise UnknownTool(f"unknown tool {tool!r}; available: {', '.join(sorted(self.specs.tools))}")
        args = dict(arguments or {})
        requested = args.pop("tier", None)
        receipt = Receipt(tool=tool)
        started = time.perf_counter()
        output: dict[str, Any] | None = None
        failure: CallError | None = None
        try:
            args = self._check_arguments(spec, args)
            output = await self._climb(spec, args, self.ladder(spec, requested), receipt, progress)
        except anyio.get_cancelled_exc_class():
            receipt.error = "cancelled by the client"
            raise
        except CallError as e:
            receipt.error, failure = str(e), e
            raise
        finally:
            receipt.latency_ms = (time.perf_counter() - started) * 1000
            if self.ledger is not None:
                # Shielded: a cancelled call is still written down, with what it spent before the cancel.
                with anyio.CancelScope(shield=True):
                    receipt.call_id = await self.ledger.arecord(receipt, self.config, args, output)
            if failure is not None:
                failure.receipt = receipt.to_dict(self.config)
        return Result(output=output, receipt=receipt.to_dict(self.config))

    def _check_arguments(self, spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
        problems = schema_problems(spec.input_schema, args, "arguments")
        if problems:
            raise ArgumentsError("; ".join(problems) + f" (see the input schema of {spec.name})")
        args = _with_defaults(spec.input_schema, args)
        for b in spec.bindings:
            if b.as_ == "schema":
                try:
                    Draft202012Validator.check_schema(args[b.argument])
                except SchemaError as e:
                    raise ArgumentsError(f"arguments.{b.argument}: not a valid JSON Schema: {e.message}") from None
        return args

    def _threshold(self, spec: ToolSpec) -> float:
        settings = self.config.tools.get(spec.name)
        if settings and settings.confidence_threshold is not None:
            return settings.confidence_threshold
        return spec.confidence_threshold

    async def _climb(
        self, spec: ToolSpec, args: dict[str, Any], ladder: list[str], receipt: Receipt, progress: Progress | None
    ) -> dict[str, Any]:
        if not ladder:
            raise TierNotAllowed(f"no configured tier can run {spec.name}; add a [tiers.{spec.tier}] table to the config")
        messages = spec.render(args)
        schema = spec.model_output_schema(args)
        request_base = dict(messages=messages, schema=schema, schema_name=spec.name, strict=strict_compatible(schema))
        failures: list[str] = []
        trigger: str | None = None
        unsure: tuple[dict[str, Any], Attempt] | None = None  # the best answer that was valid but not confident
        for i, tier in enumerate(ladder):
            if self.config.providers[self.config.tiers[tier].provider].kind == "embedded":
                output = await self._on_local(tier, spec, args, request_base, receipt, trigger, progress)
            else:
                output = await self._on_tier(tier, request_base, receipt, trigger, progress)
            last = receipt.attempts[-1]
            if output is not None:
                confidence = output.get(spec.confidence_field) if spec.confidence_field else None
                threshold = self._threshold(spec)
                if isinstance(confidence, (int, float)) and confidence < threshold:
                    note = f"confidence {confidence:g} is under the tool's threshold {threshold:g}"
                    if i + 1 < len(ladder):
                        last.outcome, last.detail = "low_confidence", f"{note}; escalating"
                        unsure = (output, last)
                        trigger = last.outcome
                        continue
                    last.detail = f"{note}, but no tier above can run; answered anyway"
                receipt.ok, receipt.tier, receipt.model = True, tier, last.model
                return output
            trigger = last.outcome
            failures.append(f"{tier} ({last.model}): {last.outcome}: {last.detail}")
        if unsure is not None:
            # The tiers above failed outright; a valid answer of low confidence is better than none.
            output, attempt = unsure
            attempt.detail += "; the tiers above failed, so this answer stands"
            receipt.ok, receipt.tier, receipt.model = True, attempt.tier, attempt.model
            return output
        top = ladder[-1]
        hint = ""
        if top != "flagship":
            hint = (f" Escalation stops at {top!r} (escalation_ceiling); raise [tools.{spec.name}] "
                    "escalation_ceiling in the config to let it climb further.")
        raise ToolFailed(f"{spec.name} failed on every tier it may use: " + " | ".join(failures) + hint)

    async def _on_local(
        self,
        tier: str,
        spec: ToolSpec,
        args: dict[str, Any],
        base: dict[str, Any],
        receipt: Receipt,
        trigger: str | None,
        progress: Progress | None,
    ) -> dict[str, Any] | None:
        """Run the tool's local task in process. No model call: the tokens recorded are what the prompt would use."""
        settings = self.config.tiers[tier]
        attempt = Attempt(tier=tier, model=settings.model, reason="first" if not receipt.attempts else "escalation",
                          trigger=trigger if receipt.attempts else None)
        receipt.attempts.append(attempt)
        if progress is not None:
            await progress(len(receipt.attempts), None, f"{tier} ({settings.model}): {attempt.reason}")
        t0 = time.perf_counter()
        try:
            output = await self.local.run(spec.local_task or "", args)
        finally:
            attempt.latency_ms = (time.perf_counter() - t0) * 1000
        attempt.model = self.local.model_name
        attempt.input_tokens = sum(estimate_tokens(m["content"]) for m in base["messages"])
        attempt.output_tokens = output_tokens(output)
        attempt.cost_usd = cost_of(settings, attempt.input_tokens, attempt.output_tokens)
        problems = schema_problems(base["schema"], output, "output")
        if problems:
            attempt.outcome, attempt.detail = "invalid", "; ".join(problems)
            return None
        attempt.outcome = "ok"
        attempt.detail = "answered in process; tokens are estimates of what the prompt would have used"
        return output

    async def _on_tier(
        self,
        tier: str,
        base: dict[str, Any],
        receipt: Receipt,
        trigger: str | None,
        progress: Progress | None,
    ) -> dict[str, Any] | None:
        """Try one tier: retries for transient failures, one repair for an invalid answer. None means escalate."""
        settings = self.config.tiers[tier]
        provider = self.config.providers[settings.provider]
        messages: list[dict[str, str]] = base["messages"]
        reason = "first" if not receipt.attempts else "escalation"
        retries = repaired = 0
        while True:
            attempt = Attempt(tier=tier, model=settings.model, reason=reason,
                              trigger=trigger if reason == "escalation" else None)
            receipt.attempts.append(attempt)
            if progress is not None:
                await progress(len(receipt.attempts), None, f"{tier} ({settings.model}): {reason}")
            request = ModelRequest(tier=tier, settings=settings, provider=provider, **{**base, "messages": messages})
            t0 = time.perf_counter()
            try:
                reply = await self.model.complete(request)
            except anyio.get_cancelled_exc_class():
                attempt.outcome, attempt.detail = "cancelled", "cancelled by the client"
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
                raise
            except ModelError as e:
                attempt.outcome, attempt.detail = e.kind, str(e)
                attempt.latency_ms = (time.perf_counter() - t0) * 1000
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
            if reply.model:
                attempt.model = reply.model
            output, problem = self._judge(reply, base["schema"])
            if output is not None:
                attempt.outcome = "ok"
                return output
            attempt.outcome, attempt.detail = problem
            if attempt.outcome != "invalid" or repaired:
                return None
            repaired = 1
            reason = "repair"
            messages = [
                *base["messages"],
                {"role": "assistant", "content": reply.content or ""},
                {"role": "user", "content": "That answer is not valid against the required JSON Schema: "
                 + problem[1] + ". Answer again with the whole corrected JSON object and nothing else."},
            ]

    def _judge(self, reply: ModelReply, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str]]:
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
        return output, ("ok", "")

    def _backoff(self, retries: int, error: ModelError) -> float | None:
        r = self.config.retry
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return None if error.retry_after > r.max_retry_after_s else error.retry_after
        return min(r.max_s, r.base_s * 2**retries) * self._jitter()
