"""Run one tool call: validate the arguments, render the prompt, call the model, check the answer, repair once,
climb the tier ladder on the configured triggers.

Every model request goes through `ModelPath` (budget, concurrency with answers first, retries, tracing, scrubbing,
accounting). The four kinds of call each have their own entry point: `call` (a host's call, which may be a batch),
`run_item` (one item of a batch), `run_shadow` and `run_eval` (one run on a fixed tier, evidence work). Receipts go
to the ledger through `LedgerWriter`; answers are cached through `Cache`; observers (shadow runs, wired in by the
serving layer) are offered each answered host call.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from tiered_mcp.call.budget import Budget, Clock, utc_now
from tiered_mcp.call.cache import Cache, cache_key, key_json, keyed
from tiered_mcp.call.options import CallOptions, effective
from tiered_mcp.call.path import ModelPath, Progress, Seat
from tiered_mcp.call.routing import ladder_for
from tiered_mcp.call.writer import LedgerWriter
from tiered_mcp.core import tracing
from tiered_mcp.core.config import FLAGSHIP, LOCAL, TRIGGERS, Config
from tiered_mcp.core.errors import (
    ArgumentsError,
    BudgetExceeded,
    CallError,
    ModelError,
    NotRecorded,
    TierNotAllowed,
    ToolFailed,
)
from tiered_mcp.core.identity import current_caller
from tiered_mcp.core.receipts import Receipt
from tiered_mcp.core.secrets import Scrubber
from tiered_mcp.core.tokens import encoding as token_encoding
from tiered_mcp.ledger.base import CacheEntry, CallWrite, LedgerStore, ShadowRow, off_loop
from tiered_mcp.models.base import Model, ModelReply, ModelRequest, Models
from tiered_mcp.models.embedded import EmbeddedModel
from tiered_mcp.models.local import LocalEngine
from tiered_mcp.specs.fastcheck import quick_valid
from tiered_mcp.specs.schema_safety import caller_schema_problem as _meta_schema_problem
from tiered_mcp.specs.schema_safety import excerpt, schema_problems
from tiered_mcp.specs.spec import Specs, ToolSpec, strict_compatible
from tiered_mcp.specs.validators import Candidate, Verdict, best_answer, check

__all__ = ["Observer", "Prepared", "Progress", "Result", "Runner", "Steering", "UnknownTool", "schema_problems"]

Observer = Callable[["Runner", ToolSpec, dict[str, Any], Receipt, dict[str, Any]], None]
"""observer(runner, spec, arguments, receipt, output): offered every answered host call that was not cached (shadow
sampling, wired in by the serving layer, which sits above the call path); it may start work with `Runner.spawn`."""


class Steering(Protocol):
    """Where an auto tool starts (`[tools.X] auto = true`), wired in by the serving layer (evidence/tiering.py).

    `begin` is called once per host call, before the ladder is built, and must be quick and never wait (no I/O
    on the event loop); it may start background work with `Runner.spawn`. `current` is the tier a batch of the
    tool starts on.
    """

    async def load(self, runner: Runner) -> None: ...
    def begin(self, runner: Runner, spec: ToolSpec, args: dict[str, Any], receipt: Receipt) -> str | None: ...
    def current(self, spec: ToolSpec) -> str | None: ...


log = logging.getLogger(__name__)

QUALITY_TRIGGERS = frozenset(TRIGGERS)
SWEEP_EVERY_S = 300.0


class UnknownTool(LookupError):
    """No tool of that name; the server answers this with a protocol error, not a tool result."""


@dataclass(frozen=True)
class Result:
    """A validated output and its receipt (already a plain dict, as sent to the client)."""

    output: dict[str, Any]
    receipt: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A batch item's first answer, already given by the provider's Batch API (call/provider_batch.py): the reply,
    or why there is none, how long the batch took, the item's index in its batch (its row says which answer it
    books), and whether an earlier row of the item (cancelled by a restart) already booked that answer (then this
    row books it at 0)."""

    tier: str
    outcome: ModelReply | ModelError
    latency_ms: float = 0.0
    item: int | None = None
    booked: bool = False


class _PerSchema:
    """Something derived from a schema, computed once per schema object.

    Keyed by identity: specs' schemas live as long as the specs, and bound schemas are memoised per spec (see
    ToolSpec.model_output_schema), so a batch of a thousand items builds one validator, not a thousand.
    """

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build, self._memo = build, {}  # type: ignore[var-annotated]

    def __call__(self, schema: Any) -> Any:
        hit = self._memo.get(id(schema))
        if hit is None or hit[0] is not schema:
            if len(self._memo) > 2048:
                self._memo.clear()
            hit = self._memo[id(schema)] = (schema, self._build(schema))
        return hit[1]


_strict = _PerSchema(strict_compatible)


_spec_digest = _PerSchema(lambda spec: cache_key([spec.model_dump(mode="json")], {}))
"""A digest of everything in a spec (prompt, schemas, validators), computed once per loaded spec."""


def _with_defaults(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    out = dict(arguments)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and isinstance(prop, dict) and "default" in prop:
            out[name] = prop["default"]
    return out


@dataclass(frozen=True)
class _Plan:
    """What one call will do, decided before any model is asked."""

    spec: ToolSpec
    args: dict[str, Any]  # validated, defaults filled in, `tier` removed
    ladder: list[str]
    kind: str  # the receipt's kind: "call" (a host's call or a batch item), "shadow" or "eval"
    options: CallOptions
    batch: str | None = None
    prepared: Prepared | None = None

    @property
    def cacheable(self) -> bool:
        return self.kind == "call"


@dataclass
class _Climb:
    output: dict[str, Any]
    clean: bool  # passed every check with the tiers above able to run: fit to cache


class Runner:
    """Runs tool calls.

    Args:
        config: the effective config.
        specs: the loaded tools.
        model: the remote model seam (OpenAI-compatible endpoints, or a test double).
        ledger: where receipts are written (None: nowhere; budgets then count this process only).
        local: the embedded local tier (None: a default engine, used only if its packages are installed).
        env: where provider keys are looked for, to tell which tiers can run.
        sleep: how to wait between retries, of model requests and of ledger transactions (tests pass a recorder).
        jitter: returns a factor in [0, 1) for backoff jitter.
        clock: now, as an aware UTC datetime (budget days, cache expiry).
        session: this server session's id (default: a fresh one); budgets per session use it.
        observers: offered each answered host call (see `Observer`).
        scrubber: removes every secret the config knows from error text (default: built from config and env).
        steering: chooses auto tools' tiers (see `Steering`).
    """

    def __init__(
        self,
        config: Config,
        specs: Specs,
        model: Model,
        ledger: LedgerStore | None = None,
        *,
        local: LocalEngine | None = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Clock = utc_now,
        session: str | None = None,
        observers: tuple[Observer, ...] = (),
        scrubber: Scrubber | None = None,
        steering: Steering | None = None,
    ) -> None:
        self.config, self.specs, self.ledger = config, specs, ledger
        self.local = local if local is not None else LocalEngine()
        self.model = Models(remote=model, local=EmbeddedModel(self.local))
        self.session = session or uuid.uuid4().hex[:12]
        self.clock = clock
        self.writer = LedgerWriter(ledger, config, sleep)
        self.budget = Budget(config, ledger, self.session, clock, self.writer)
        self._env = os.environ if env is None else env
        self.scrubber = scrubber if scrubber is not None else Scrubber.from_config(config, self._env)
        self.path = ModelPath(config, self.model, self.budget, sleep=sleep, jitter=jitter, scrub=self.scrubber.scrub)
        self.cache = Cache(ledger)
        self._key_parts: dict[tuple[Any, ...], tuple[ToolSpec, str]] = {}  # per tool, ladder, checks and scope
        self._observers = observers
        self.steering = steering
        self._background: TaskGroup | None = None
        self.background_pending = 0

    def usable(self, tier: str) -> bool:
        """Whether `tier` can run now: its provider's key is set, or for the local tier, its packages are installed."""
        settings = self.config.tiers.get(tier)
        if settings is None:
            return False
        provider = self.config.providers[settings.provider]
        if provider.kind == "embedded":
            return self.local.is_installed
        return provider.has_key(self._env)

    def embedded(self, tier: str) -> bool:
        return self.config.providers[self.config.tiers[tier].provider].kind == "embedded"

    def ladder(self, spec: ToolSpec, requested: str | None = None, ceiling: str | None = None,
               auto_tier: str | None = None) -> list[str]:
        """The tiers a call of `spec` may use now; see `routing.ladder_for`. An auto tool starts on `auto_tier`,
        else on its current tier."""
        if auto_tier is None and requested is None and self.steering is not None:
            auto_tier = self.steering.current(spec)
        return ladder_for(self.config, spec, requested, self.usable, ceiling, auto_tier)

    # ---- lifetime --------------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runner]:
        """Own the background work while the server serves: the ledger writer, the cache sweep and observers' tasks
        (shadow runs). On exit, background tasks get `shadow.drain_s` to finish (they delay shutdown, never an
        answer), queued ledger writes are flushed, and the model's connections are closed."""
        try:
            async with anyio.create_task_group() as tg:
                # The o200k table (~0.3 s to build) loads in a thread as the server starts, rather than inside the
                # first request that needs a count; start-up does not wait for it.
                tg.start_soon(anyio.to_thread.run_sync, token_encoding)
                await tg.start(self.writer.run)
                if self.ledger is not None:
                    await tg.start(self.cache.run)
                if self.steering is not None:
                    await self.steering.load(self)
                tg.start_soon(self._sweep)
                self._background = tg
                try:
                    yield self
                finally:
                    self._background = None
                    with anyio.CancelScope(shield=True):
                        with anyio.move_on_after(self.config.shadow.drain_s):
                            while self.background_pending:
                                await anyio.sleep(0.02)
                        await self.writer.close()
                        await self.writer.flush()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def _sweep(self) -> None:
        while True:
            await anyio.sleep(SWEEP_EVERY_S)
            try:
                await self.cache.sweep(self.clock().timestamp())
                if self.ledger is not None:
                    await off_loop(self.ledger.budget_sweep, self.clock().timestamp())
            except Exception:  # a ledger that is down now and then must not take the server with it
                log.warning("the periodic sweep of expired cache entries and budget holds failed", exc_info=True)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> bool:
        """Start background work (while `running`); False when there is nowhere to run it."""
        if self._background is None:
            return False
        self.background_pending += 1

        async def run() -> None:
            try:
                await fn(*args)
            except Exception:  # side work (a shadow run, teaching the local tier) never takes the server down
                log.exception("background work %s failed", getattr(fn, "__qualname__", fn))
            finally:
                self.background_pending -= 1

        self._background.start_soon(run)
        return True

    def teach_local(self, spec: ToolSpec, args: dict[str, Any], output: dict[str, Any]) -> None:
        """Keep a higher tier's answer as a labelled example for the local tier (in the background; an escalation
        from local, or a shadow run of a tool answered on local). The evidence (shadow, report) then measures the
        local tier like any other, so it decides when local is good enough."""
        if spec.local_task is not None and self.local.is_installed:
            self.spawn(self._learn, spec.local_task, args, output)

    async def _learn(self, task: str, args: dict[str, Any], output: dict[str, Any]) -> None:
        try:
            await self.local.learn(task, args, output)
        except CallError:
            pass  # the local model could not load: nothing to teach

    def spawn_write(self, row: ShadowRow) -> None:
        """Queue a shadow row from sync code (an observer) without waiting for it."""
        async def put() -> None:
            await self.writer.put([], [row])

        self.spawn(put)

    async def aclose(self) -> None:
        """Close the models' connections."""
        await self.model.aclose()

    # ---- the four kinds of call ------------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any] | None, progress: Progress | None = None,
                   options: CallOptions | None = None) -> Result:
        """A host's call of `tool` (a batch when the tool takes `items` and they are given).

        Raises:
            UnknownTool: no such tool.
            CallError: the call could not run or every tier failed (the error carries the receipt).
        """
        spec = self.specs.get(tool)
        if spec is None:
            raise UnknownTool(f"unknown tool {excerpt(tool)}; available: {', '.join(sorted(self.specs.tools))}")
        args = dict(arguments or {})
        options = options or CallOptions()
        if spec.batch is not None and "items" in args:
            from tiered_mcp.call.batch import run_batch

            return await run_batch(self, spec, args, progress, options)
        receipt = self._receipt(spec, "call")
        try:
            with self._failing(receipt):
                requested = args.pop("tier", None)
                args = self.check_arguments(spec, args)
                auto = (self.steering.begin(self, spec, args, receipt)
                        if self.steering is not None and requested is None else None)
                ladder = self.ladder(spec, requested, effective(self.config, spec, options).ceiling, auto)
        except CallError:
            await self.writer.put([CallWrite(receipt, args)])  # refused before any model was asked: still a call
            raise
        plan = _Plan(spec, args, ladder, "call", options)
        result, write = await self._run(plan, receipt, progress)
        result = await self.record(write, result)
        if isinstance(result, CallError):
            raise result
        return result

    async def record(self, write: CallWrite, result: Result | CallError) -> Result | CallError:
        """Hand a call's row to the writer. With `ledger_durable` this returns once the row is committed, and an
        answer whose row could not be committed (after the writer's retries) becomes `NotRecorded`: no answer
        goes out without its spend in the ledger. An error stays the error it was (the lost row is logged)."""
        lost = await self.writer.put([write])
        if lost and isinstance(result, Result):
            return self.not_recorded(result.receipt)
        return result

    def not_recorded(self, receipt: dict[str, Any]) -> NotRecorded:
        """The error that replaces an answer whose ledger row could not be committed (`ledger_durable`)."""
        message = ("the answer is withheld: its ledger row could not be committed (ledger_durable is on; the server "
                   "log says why); what it spent may be missing from the budgets; calling again runs it again")
        return NotRecorded(message, {**receipt, "ok": False, "error": message, "error_kind": NotRecorded.kind})

    async def run_item(self, spec: ToolSpec, args: dict[str, Any], ladder: list[str], options: CallOptions,
                       batch: str, seat: Seat | None = None,
                       prepared: Prepared | None = None) -> tuple[Result | CallError, CallWrite]:
        """One item of a batch, with arguments already checked; the caller writes the row (one transaction for
        the whole batch). With a `seat` (of `ModelPath.shared_pass` on the ladder's first tier), the item's first
        request is answered in that shared pass; the seat is released if the item makes none (a cache hit). With
        `prepared` (the Batch API's answer on the ladder's first tier) that answer is the first attempt, checked,
        repaired and escalated like any other; the cache is not asked (it was paid for)."""
        receipt = self._receipt(spec, "call")
        if prepared is not None:
            receipt.batch_item = prepared.item
        try:
            return await self._run(_Plan(spec, args, ladder, "call", options, batch, prepared), receipt, None, seat)
        finally:
            if seat is not None:
                seat.release()

    async def cached(self, spec: ToolSpec, items: list[dict[str, Any]], ladder: list[str],
                     options: CallOptions) -> list[bool]:
        """Which of these batch items (checked arguments) the cache would answer now: a Batch API batch leaves
        them out, so the cache answers them for free."""
        plans = [_Plan(spec, args, ladder, "call", options) for args in items]
        hits = [False] * len(plans)
        if not plans or not self._cache_on(plans[0]):
            return hits
        now = self.clock().timestamp()

        async def one(i: int, key: str) -> None:
            hits[i] = await self.cache.get(key, now) is not None

        async with anyio.create_task_group() as tg:
            for i, plan in enumerate(plans):
                tg.start_soon(one, i, self._cache_key(plan))
        return hits

    def unchecked_item(self, spec: ToolSpec, args: dict[str, Any], batch: str, prepared: Prepared) -> CallWrite:
        """The ledger row of a batch item whose Batch API answer came in but was never checked, because the client
        cancelled its task first: the answer booked as its first attempt (at the batch rate, as `run_item` books
        it), the call cancelled by the client."""
        receipt = self._receipt(spec, "call")
        receipt.batch, receipt.latency_ms, receipt.batch_item = batch, prepared.latency_ms, prepared.item
        receipt.error = "cancelled by the client"
        _, attempt = self.path.accept(receipt, prepared.tier, self.first_request(spec, args, prepared.tier),
                                      prepared.outcome, prepared.latency_ms, prepared.booked)
        attempt.outcome, attempt.detail = "cancelled", "cancelled by the client before the answer was checked"
        return CallWrite(receipt, args, None)

    def first_request(self, spec: ToolSpec, args: dict[str, Any], tier: str) -> ModelRequest:
        """The request an item's first attempt on `tier` makes (checked arguments): what a batch submits."""
        settings = self.config.tiers[tier]
        return ModelRequest(tier=tier, settings=settings, provider=self.config.providers[settings.provider],
                            **self._base(spec, args))

    def _base(self, spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
        messages = spec.render(args)
        schema = spec.model_output_schema(args)
        return dict(messages=messages, schema=schema, schema_name=spec.name, strict=_strict(schema),
                    local_task=spec.local_task, arguments=args)

    async def run_shadow(self, spec: ToolSpec, args: dict[str, Any], tier: str) -> Result:
        """The same (checked) arguments on `tier` alone: no escalation, no cache, evidence priority."""
        return await self._forced(spec, args, tier, "shadow")

    async def run_eval(self, spec: ToolSpec, args: dict[str, Any], tier: str) -> Result:
        """A bake-off case on `tier` alone (arguments checked here): no escalation, no cache, evidence priority."""
        return await self._forced(spec, args, tier, "eval", check=True)

    async def _forced(self, spec: ToolSpec, args: dict[str, Any], tier: str, kind: str, check: bool = False) -> Result:
        receipt = self._receipt(spec, kind)
        with self._failing(receipt):
            if check:
                args = self.check_arguments(spec, {k: v for k, v in args.items() if k != "tier"})
            if not self.usable(tier):
                raise TierNotAllowed(f"tier {tier!r} cannot run here (not configured, or no key)")
            if self.embedded(tier) and spec.local_task is None:
                raise TierNotAllowed(f"the local tier does not serve {spec.name}")
        result, write = await self._run(_Plan(spec, args, [tier], kind, CallOptions(cache=False)), receipt, None)
        result = await self.record(write, result)
        if isinstance(result, CallError):
            raise result
        return result

    def _receipt(self, spec: ToolSpec, kind: str) -> Receipt:
        caller = current_caller.get()
        return Receipt(tool=spec.name, kind=kind, session=self.session, spec_version=str(spec.version),
                       caller=caller.name if caller else None, call_id=uuid.uuid4().hex[:16],
                       day=self.clock().strftime("%Y-%m-%d"))

    @contextmanager
    def _failing(self, receipt: Receipt) -> Iterator[None]:
        """Errors raised before any model is asked (bad arguments, a tier not allowed) carry the receipt too."""
        try:
            yield
        except CallError as e:
            receipt.error, receipt.error_kind = str(e), e.kind
            e.receipt = receipt.to_dict(self.config)
            raise

    def check_arguments(self, spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments checked against the spec's input schema (and a caller's schema against the meta-schema),
        with defaults filled in.

        Raises:
            ArgumentsError: naming the field and the rule it breaks.
        """
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

    # ---- one call --------------------------------------------------------------------------------------------------

    async def _run(self, plan: _Plan, receipt: Receipt, progress: Progress | None,
                   seat: Seat | None = None) -> tuple[Result | CallError, CallWrite]:
        """Answer from the cache or climb; returns the result (or the error to raise) and the ledger row to write.
        Cancellation propagates after the row is written (shielded), with what the call spent before it."""
        spec, args = plan.spec, plan.args
        receipt.batch = plan.batch
        started = time.perf_counter()
        outcome: Result | CallError | None = None
        output: dict[str, Any] | None = None
        entry: CacheEntry | None = None
        with tracing.span("tiered.call", tool=spec.name, kind=plan.kind) as span:
            try:
                key = self._cache_key(plan) if self._cache_on(plan) else None
                hit = (await self.cache.get(key, self.clock().timestamp())
                       if key and plan.prepared is None else None)
                if hit is not None:
                    output, receipt.tier, receipt.model = hit
                    receipt.ok = receipt.cached = True
                else:
                    climb = await self._climb(plan, receipt, progress, seat)
                    output = climb.output
                    if key and climb.clean and receipt.tier and receipt.model:
                        entry = self.cache.entry(key, output, receipt.tier, receipt.model,
                                                 self.clock().timestamp() + self.config.cache_ttl_s)
            except anyio.get_cancelled_exc_class():
                receipt.error = "cancelled by the client" if plan.kind == "call" else "cancelled (the server stopped)"
                receipt.latency_ms = (time.perf_counter() - started) * 1000
                with anyio.CancelScope(shield=True):  # no answer goes out, so nothing waits for the commit
                    await self.writer.put([CallWrite(receipt, args, None)], wait=False)
                raise
            except CallError as e:
                receipt.error, receipt.error_kind, outcome = str(e), e.kind, e
            receipt.latency_ms = (time.perf_counter() - started) * 1000
            span.set(tier=receipt.tier, ok=receipt.ok, cost_usd=receipt.cost_usd, attempts=len(receipt.attempts),
                     cached=receipt.cached)
        as_dict = receipt.to_dict(self.config)
        if isinstance(outcome, CallError):
            outcome.receipt = as_dict
        else:
            assert output is not None
            outcome = Result(output=output, receipt=as_dict)
            if plan.kind == "call" and not receipt.cached:
                for observer in self._observers:
                    observer(self, spec, args, receipt, output)
                if receipt.tier != LOCAL and any(a.tier == LOCAL for a in receipt.attempts):
                    self.teach_local(spec, args, output)
        return outcome, CallWrite(receipt, args, output, entry)

    # ---- cache -----------------------------------------------------------------------------------------------------

    def _cache_on(self, plan: _Plan) -> bool:
        # Tools marked not idempotent (draft) are expected to answer anew each time.
        return (plan.cacheable and self.ledger is not None and plan.options.cache and self.config.cache_ttl_s > 0
                and plan.spec.annotations.idempotent and bool(plan.ladder))

    def _cache_key(self, plan: _Plan) -> str:
        spec, caller = plan.spec, current_caller.get()
        triggers, threshold = self._triggers(spec, plan.options), self._threshold(spec, plan.options)
        scope = caller.name if caller and not self.config.share_across_callers else None
        memo = (spec.name, tuple(plan.ladder), triggers, threshold, scope)
        hit = self._key_parts.get(memo)
        if hit is None or hit[0] is not spec:
            checks = [sorted(triggers), threshold, [v.model_dump() for v in spec.validators]]
            # The tiers as configured (model, endpoint, parameters) and the spec as loaded (prompt, schemas): an edit
            # to either, even without a new spec version, misses the cache rather than serving an answer to another
            # prompt.
            tiers = [[self.config.tiers[t].model_dump(), self.config.providers[self.config.tiers[t].provider].base_url]
                     for t in plan.ladder]
            if len(self._key_parts) > 4096:
                self._key_parts.clear()
            hit = self._key_parts[memo] = (spec, key_json([spec.name, spec.version, _spec_digest(spec), tiers, checks,
                                                           scope]))
        return keyed(hit[1], plan.args)

    # ---- the ladder ------------------------------------------------------------------------------------------------

    def _triggers(self, spec: ToolSpec, options: CallOptions) -> frozenset[str]:
        return effective(self.config, spec, options).triggers

    def _threshold(self, spec: ToolSpec, options: CallOptions) -> float:
        return effective(self.config, spec, options).threshold

    async def _climb(self, plan: _Plan, receipt: Receipt, progress: Progress | None,
                     seat: Seat | None = None) -> _Climb:
        spec, args, ladder = plan.spec, plan.args, plan.ladder
        if not ladder:
            raise TierNotAllowed(f"no configured tier can run {spec.name}; add a [tiers.{spec.tier}] table to the config")
        base = self._base(spec, args)
        triggers = self._triggers(spec, plan.options)
        threshold = self._threshold(spec, plan.options)
        failures: list[str] = []
        candidates: list[tuple[Candidate, int]] = []  # schema-valid answers that failed a validator
        trigger: str | None = None
        unsure: tuple[dict[str, Any], int] | None = None  # the best answer that was valid but not confident
        stopped = ""
        for i, tier in enumerate(ladder):
            more = i + 1 < len(ladder)
            try:
                output, clean = await self._on_tier(tier, spec, args, base, receipt, trigger, progress, triggers,
                                                    candidates, seat if i == 0 else None,
                                                    plan.prepared if i == 0 else None)
            except BudgetExceeded:
                if unsure is None:
                    raise
                output, clean = None, False
                stopped = "the budget stops the climb"
            finally:
                if seat is not None:  # used by now, or never will be: the shared pass must not wait on this item
                    seat.release()
                    seat = None
            last = receipt.attempts[-1]
            if output is not None:
                confidence = output.get(spec.confidence_field) if spec.confidence_field else None
                if isinstance(confidence, (int, float)) and confidence < threshold:
                    note = f"confidence {confidence:g} is under the tool's threshold {threshold:g}"
                    if more and "low_confidence" in triggers:
                        last.outcome, last.detail = "low_confidence", f"{note}; escalating"
                        unsure, trigger = (output, len(receipt.attempts) - 1), "low_confidence"
                        continue
                    last.detail = note + ("; answered (low_confidence is not an escalation trigger here)"
                                          if more else ", but no tier above can run; answered anyway")
                    clean = False  # an unsure answer is never cached
                receipt.ok, receipt.tier, receipt.model = True, tier, last.model
                receipt.answered_by = len(receipt.attempts) - 1
                return _Climb(output, clean)
            if stopped:
                break
            trigger = last.outcome
            failures.append(f"{tier} ({last.model}): {last.outcome}: {last.detail}")
            if last.outcome in QUALITY_TRIGGERS and last.outcome not in triggers:
                stopped = f"{last.outcome} is not an escalation trigger for {spec.name}"
                break
        if unsure is not None:
            # The tiers above failed or were out of budget; a valid answer of low confidence is better than none.
            output, index = unsure
            attempt = receipt.attempts[index]
            attempt.detail += f"; {stopped or 'the tiers above failed'}, so this answer stands"
            receipt.ok, receipt.tier, receipt.model, receipt.answered_by = True, attempt.tier, attempt.model, index
            return _Climb(output, clean=False)
        best = best_answer([c for c, _ in candidates])
        if best is not None:
            # No tier passed every validator, none strict: the best schema-valid answer, with what stayed unverified.
            index = next(i for c, i in candidates if c is best)
            attempt = receipt.attempts[index]
            attempt.detail += "; no tier did better, so this answer stands with its unverified values named"
            receipt.ok, receipt.tier, receipt.model, receipt.answered_by = True, attempt.tier, attempt.model, index
            receipt.unverified = best.verdict.unverified
            return _Climb(best.output, clean=False)
        hint = f" Escalation stopped: {stopped}." if stopped else ""
        if not stopped and ladder[-1] != FLAGSHIP and plan.kind == "call":
            hint = (f" Escalation stops at {ladder[-1]!r} (escalation_ceiling); raise [tools.{spec.name}] "
                    "escalation_ceiling in the config to let it climb further.")
        raise ToolFailed(f"{spec.name} failed on every tier it may use: " + " | ".join(failures) + hint)

    async def _on_tier(self, tier: str, spec: ToolSpec, args: dict[str, Any], base: dict[str, Any],
                       receipt: Receipt, trigger: str | None, progress: Progress | None,
                       triggers: frozenset[str], candidates: list[tuple[Candidate, int]],
                       seat: Seat | None = None,
                       prepared: Prepared | None = None) -> tuple[dict[str, Any] | None, bool]:
        """Try one tier: one repair for an invalid answer (retries happen in the path). (None, _) means climb; the
        flag says whether the answer passed every check."""
        settings = self.config.tiers[tier]
        messages: list[dict[str, str]] = base["messages"]
        reason = "first" if not receipt.attempts else "escalation"
        repaired = False
        while True:
            request = ModelRequest(tier=tier, settings=settings, provider=self.config.providers[settings.provider],
                                   **{**base, "messages": messages})
            if prepared is not None and prepared.tier == tier:
                reply, attempt = self.path.accept(receipt, tier, request, prepared.outcome, prepared.latency_ms,
                                                  prepared.booked)
                prepared = None
                if reply is None:
                    reason = "retry"  # the Batch API gave no answer: the same tier at once, synchronously
                    continue
            else:
                reply, attempt = await self.path.request(receipt, tier, request, reason=reason, trigger=trigger,
                                                         progress=progress, seat=seat)
                seat = None  # a repair goes alone
            if reply is None:
                return None, False
            output, (outcome, detail), verdict = self._check(reply, base["schema"], spec, args)
            if self.embedded(tier) and outcome == "ok":
                attempt.outcome = "ok"
                attempt.detail = "answered in process; tokens are o200k counts of the prompt and answer (estimates)"
                return output, True
            if output is not None and outcome == "validator" and "validator" not in triggers:
                attempt.outcome, attempt.detail = "ok", f"{detail} (accepted: validator is not an escalation trigger)"
                return output, False
            if outcome == "ok":
                attempt.outcome = "ok"
                return output, True
            attempt.outcome, attempt.detail = outcome, self.path.scrub(detail)
            if output is not None and verdict is not None:
                candidates.append((Candidate(output, verdict, tier), len(receipt.attempts) - 1))
            if outcome not in ("invalid", "validator") or repaired or self.embedded(tier):
                return None, False
            repaired = True
            reason = "repair"
            what = "not valid against the required JSON Schema" if outcome == "invalid" else "wrong"
            messages = [
                *base["messages"],
                {"role": "assistant", "content": reply.content or ""},
                {"role": "user", "content": f"That answer is {what}: {detail}. Answer again with the whole "
                                            "corrected JSON object and nothing else."},
            ]

    def _check(self, reply: ModelReply, schema: dict[str, Any], spec: ToolSpec,
               args: dict[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, str], Verdict | None]:
        if reply.refusal:
            return None, ("refused", f"the model refused: {reply.refusal}"), None
        if reply.finish_reason == "content_filter":
            return None, ("refused", "the provider's content filter stopped the answer"), None
        if reply.finish_reason == "length":
            return None, ("truncated", f"the answer hit the output cap ({reply.output_tokens} tokens); raise "
                                       "max_output_tokens for this tier"), None
        try:
            output = json.loads(reply.content or "")
        except json.JSONDecodeError as e:
            return None, ("invalid", f"not JSON ({e.msg} at line {e.lineno} column {e.colno})"), None
        if not isinstance(output, dict):
            return None, ("invalid", f"expected a JSON object, got {type(output).__name__}"), None
        problems = [] if quick_valid(schema, output) else schema_problems(schema, output, "output")
        if problems:
            return None, ("invalid", "; ".join(problems)), None
        verdict = check(spec.validators, output, args, schema)
        if not verdict.ok:
            return output, ("validator", "; ".join(verdict.problems)), verdict
        return output, ("ok", ""), verdict
