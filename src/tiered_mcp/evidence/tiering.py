"""Auto-tiering in the server (`[tools.X] auto = true`): the policy of evidence/autotier.py, fed by real calls.

`AutoTiering` is the runner's `Steering` and one of its observers:

- `begin` (each host call of an auto tool, before the ladder is built): plans the call with `Policy.plan` on this
  replica's copy of the tool's state (no I/O) and returns the tier to start on; the plan waits for the answer.
- the observer (each answered call): runs the plan's evidence in the background, through `Runner.run_shadow` and
  `compare_answers` like every shadow (budget, evidence concurrency, accounting), writes each comparison as a
  shadow row, then feeds the verdicts to `Policy.observe`.
- every change to the state goes through `LedgerStore.autotier_update`: the stored state is read under a lock,
  the step is applied to it, and the new state and any switch are written in one transaction. Replicas sharing a
  PostgreSQL ledger thus take each decision once: a second replica's observation lands on the state the first
  one wrote. Each replica refreshes its copy from the ledger in the background, at most every `refresh_s`
  seconds per tool (a read of one small row), so `begin` stays O(1) and never waits.

Evidence spend (the reference and probe runs and the judge calls that score them) counts per tool and UTC day
against `evidence_daily_usd` twice over: the plan skips evidence whose estimated cost would pass the day's spend in
the state, and every evidence request is held to the cap by the budget on the one model path (which refuses a
request whose worst case could pass it, whatever planned it). A run over it is skipped, counted in the state and
written as a skipped shadow row.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tiered_mcp.core.config import Config
from tiered_mcp.core.errors import BudgetExceeded, CallError
from tiered_mcp.core.prices import price_of
from tiered_mcp.core.receipts import Receipt
from tiered_mcp.core.secrets import redact
from tiered_mcp.evidence.autotier import (
    SET_GUARD_SHARE,
    AutoTierConfig,
    Event,
    Plan,
    Policy,
    ToolState,
    Versions,
    hash_sample,
)
from tiered_mcp.evidence.shadow import Shadows, args_key, compare_answers, verdict_status
from tiered_mcp.evidence.stats import clear_log_evalue
from tiered_mcp.ledger.base import LedgerStore, ShadowRow, off_loop
from tiered_mcp.specs.spec import Specs, ToolSpec

if TYPE_CHECKING:
    from tiered_mcp.call.runner import Runner

log = logging.getLogger(__name__)

DRIFT_GAP = 0.15
"""The drift detector is tuned to catch agreement this far under the bar (0.80 at the default bar of 0.95)."""
DEFAULT_TOKENS = (1000.0, 200.0)
"""Input and output tokens a call is assumed to take before any call of the tool has been seen."""
PENDING = 4096  # plans kept waiting for their answer (a call that fails or is cached never collects its plan)


def policy_config(config: Config, tool: str, **overrides: Any) -> AutoTierConfig:
    """The policy's knobs for one auto tool, from its [tools.X] table (`overrides` are for the simulation)."""
    settings = config.tools[tool]
    guard = settings.guard_share
    if guard is None:
        guard = SET_GUARD_SHARE if settings.sentinel_set else AutoTierConfig.guard_share
    knobs: dict[str, Any] = dict(ladder=tuple(config.auto_ladder(tool)), quality_bar=settings.quality_bar,
                                 guard_share=guard, daily_evidence_limit=settings.evidence_daily_usd,
                                 drift_rate=settings.quality_bar - DRIFT_GAP, sentinel_set=settings.sentinel_set)
    return AutoTierConfig(**{**knobs, **overrides})


def versions_of(config: Config, spec: ToolSpec, ladder: tuple[str, ...]) -> Versions:
    """What evidence is about: each tier's configured model and the spec's version."""
    return Versions(models={t: config.tiers[t].model for t in ladder}, spec_version=str(spec.version))


def switch_row(event: Event, bar: float) -> dict[str, Any]:
    """A `tier_switches` row from a policy event: the evidence's counts and bounds, the bar, model, spec version."""
    ev = dict(event.evidence)
    bounds = ev.get("bounds") or {}
    key = str(ev.get("key", ""))
    _, _, rest = key.partition("|")
    model, _, spec_version = rest.rpartition("|")
    return {"kind": event.kind, "from_tier": event.from_tier, "to_tier": event.to_tier, "reason": event.reason,
            "successes": bounds.get("successes"), "trials": bounds.get("trials"),
            "lower_bound": bounds.get("lower"), "upper_bound": bounds.get("upper"), "bar": bar,
            "model": model or None, "spec_version": spec_version or None, "call_n": event.call, "evidence": ev}


def switch_evalue(row: dict[str, Any]) -> float | None:
    """The e-value a switch was taken on, from its stored evidence: a step down's one-sided test that the tier's
    agreement is above the bar (it steps at >= 1/alpha), a step up's drift detector (it alarms at >=
    1/drift_alpha; a step up for an upper bound under the bar shows the detector as it stood). None: no such
    figure (a step up because the tier's model has no evidence)."""
    ev = row.get("evidence") or {}
    log_e = ev.get("log_evalue") if row.get("kind") == "step_down" else ev.get("detector")
    return None if log_e is None else math.exp(min(700.0, float(log_e)))


@dataclass(frozen=True)
class _Pending:
    plan: Plan
    key: str
    versions: Versions


class AutoTiering:
    """Auto-tiering for the tools with `auto = true` (see the module docstring).

    Args:
        config: the effective config.
        specs: the loaded tools.
        ledger: where states and switches live (None: in this process only).
        clock: now, UTC (the policy's spend day and event times; the runner's clock in the simulation).
        refresh_s: how stale this replica's copy of a tool's state may get before it is read again.
        sample: the policy's hash draw (the simulation varies it per seed).
        overrides: policy knobs over the config's (the simulation's tuning runs).
    """

    def __init__(self, config: Config, specs: Specs, ledger: LedgerStore | None,
                 clock: Callable[[], datetime], refresh_s: float = 5.0,
                 sample: Callable[[str], float] = hash_sample, overrides: Mapping[str, Any] | None = None) -> None:
        self.config, self.specs, self.ledger = config, specs, ledger
        self.refresh_s = refresh_s
        self.policies = {name: Policy(policy_config(config, name, **(overrides or {})), sample=sample, clock=clock)
                         for name, s in config.tools.items() if s.auto and specs.get(name) is not None}
        self._states: dict[str, ToolState] = {}
        self._seq: dict[str, int] = {}
        self._planned: dict[str, int] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._refreshed: dict[str, float] = {}
        self._refreshing: set[str] = set()
        self._tokens: dict[str, tuple[float, float]] = {}
        self._sets: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        self.skipped = 0

    @classmethod
    def for_config(cls, config: Config, specs: Specs, ledger: LedgerStore | None,
                   clock: Callable[[], datetime]) -> AutoTiering | None:
        """The steering for a server, or None when no tool is auto."""
        tiering = cls(config, specs, ledger, clock)
        return tiering if tiering.policies else None

    # ---- the Steering protocol ------------------------------------------------------------------------------------

    async def load(self, runner: Runner) -> None:
        """Read every auto tool's stored state once as the server starts."""
        if self.ledger is None:
            return
        try:
            stored = await off_loop(self.ledger.autotier_states)
        except Exception:  # start on the reference tier (always safe) and read the states again on the first calls
            log.warning("auto-tiering could not read the stored tool states; starting from the reference tier",
                        exc_info=True)
            return
        for tool, (seq, data) in stored.items():
            if tool in self.policies and data:
                self._states[tool], self._seq[tool] = ToolState.from_dict(data), seq
                self._refreshed[tool] = time.monotonic()

    def state(self, tool: str) -> ToolState:
        """This replica's copy of the tool's state."""
        return self._states.get(tool) or self.policies[tool].new_state(tool)

    def current(self, spec: ToolSpec) -> str | None:
        """The tier the tool is on now (None: not an auto tool)."""
        return self.state(spec.name).tier if spec.name in self.policies else None

    def begin(self, runner: Runner, spec: ToolSpec, args: dict[str, Any], receipt: Receipt) -> str | None:
        """Plan one host call: the tier to start on, and (kept until the answer comes) the evidence to gather."""
        policy = self.policies.get(spec.name)
        if policy is None:
            return None
        try:
            return self._begin(runner, spec, policy, args, receipt)
        except Exception:  # a bug here must not fail the call; the reference tier is always safe to serve
            log.exception("auto-tiering could not plan a call of %s; serving it on %s", spec.name,
                          policy.config.reference)
            return policy.config.reference

    def _begin(self, runner: Runner, spec: ToolSpec, policy: Policy, args: dict[str, Any],
               receipt: Receipt) -> str:
        tool = spec.name
        self._maybe_refresh(runner, tool)
        versions = versions_of(self.config, spec, policy.config.ladder)
        key = args_key(spec, args)
        before = self.state(tool)
        state, plan, events = policy.plan(before, key, versions, self.costs(tool, policy.config.ladder))
        self._states[tool] = state
        self._planned[tool] = self._planned.get(tool, 0) + 1
        if events:
            runner.spawn(self._write, tool, lambda s: policy.climb(s, versions))
        if plan.skipped:
            self.skipped += 1
            runner.spawn(self._write, tool, lambda s: (policy.skip(s), []))
            runner.spawn_write(self._skip_row(spec, plan, policy, receipt, key,
                                              "skipped: the tool's evidence_daily_usd is reached for today"))
        if plan.reference or plan.probes or plan.collect or plan.replay is not None:
            assert receipt.call_id is not None
            self._pending[receipt.call_id] = _Pending(plan, key, versions)
            while len(self._pending) > PENDING:
                self._pending.popitem(last=False)
        return plan.tier

    # ---- the observer ---------------------------------------------------------------------------------------------

    def __call__(self, runner: Runner, spec: ToolSpec, args: dict[str, Any], primary: Receipt,
                 answer: dict[str, Any]) -> None:
        policy = self.policies.get(spec.name)
        if policy is None:
            return
        self._learn_tokens(spec.name, primary)
        pending = self._pending.pop(primary.call_id or "", None)
        if pending is None:
            return
        if primary.tier != pending.plan.tier:
            return  # the planned tier did not answer (it escalated): its answer cannot be compared
        if runner.background_pending >= runner.config.shadow.max_pending or not runner.spawn(
                self._evidence, runner, spec, args, primary, answer, pending):
            self.skipped += 1
            runner.spawn(self._write, spec.name, lambda s: (policy.skip(s), []))
            runner.spawn_write(self._skip_row(spec, pending.plan, policy, primary, pending.key,
                                              "skipped: shadow.max_pending runs were in flight"))

    async def _evidence(self, runner: Runner, spec: ToolSpec, args: dict[str, Any], primary: Receipt,
                        answer: dict[str, Any], pending: _Pending) -> None:
        """Run the plan's reference and probes, score them, write the comparisons, observe the verdicts."""
        policy = self.policies[spec.name]
        plan, ref = pending.plan, policy.config.reference
        agree_at = spec.compare.agree_at if spec.compare else 0.8
        why = "sentinel" if plan.sentinel else "alert" if plan.alert else "guard" if plan.reference else "probe"
        verdicts: dict[str, bool | None] = {}
        rows: list[ShadowRow] = []
        spend = 0.0
        judged: list[float] = []  # judge calls' costs (free-text tools): evidence spend like the runs they score
        base = Shadows._row(runner, spec, primary, ref, self.config.tiers[ref].model, pending.key, answer)
        reference, reference_cost, reference_id = answer, primary.cost_usd, primary.call_id
        refused = 0  # runs and judges a cap refused: skips like the plan's
        try:
            if plan.reference:
                shadow = await runner.run_shadow(spec, args, ref)
                reference, reference_cost = shadow.output, shadow.receipt.get("cost_usd")
                reference_id = shadow.receipt.get("call_id")
                spend += reference_cost or 0.0
                value, detail, no_judge = await compare_answers(runner, spec, (plan.tier, ref), args, answer,
                                                                reference, costs=judged)
                refused += no_judge
                verdicts[plan.tier] = None if value is None else value >= agree_at
                rows.append(replace(base, shadow_call_id=reference_id, score=value, agree=verdicts[plan.tier],
                                    detail=f"auto {why}: {detail}", comparison_cost_usd=reference_cost,
                                    status=verdict_status(value, no_judge)))
        except (BudgetExceeded, CallError) as e:
            status = "skipped" if isinstance(e, BudgetExceeded) else "failed"
            text = str(e) if self.config.store_inputs else redact(str(e), args)
            failed_cost = 0.0 if isinstance(e, BudgetExceeded) else (e.receipt or {}).get("cost_usd") or 0.0
            rows.append(replace(base, status=status, detail=f"auto {why}: reference run {status}: {text}",
                                comparison_cost_usd=failed_cost or None))
            await runner.writer.put([], rows)
            if isinstance(e, BudgetExceeded):
                # Refused by a cap: a skip like one the plan makes, for the rerun and for each run that needed it
                # (the probes scored against it, the replay planned beside it).
                dropped = 1 + len(plan.probes) + (plan.replay is not None)
                self.skipped += dropped

                def skips(state: ToolState) -> tuple[ToolState, list[Event]]:
                    for _ in range(dropped):
                        state = policy.skip(state)
                    return state, []

                await self._write(spec.name, skips)
            elif failed_cost:  # a failed run's spend is evidence spend all the same
                await self._write(spec.name, lambda s: (policy.charge(s, failed_cost), []))
            return
        for tier in plan.probes:
            row = replace(base, tier=tier, model=self.config.tiers[tier].model, call_id=primary.call_id,
                          cost_usd=None, confidence=None, comparison_cost_usd=reference_cost)
            try:
                probe = await runner.run_shadow(spec, args, tier)
            except (BudgetExceeded, CallError) as e:
                status = "skipped" if isinstance(e, BudgetExceeded) else "failed"
                refused += isinstance(e, BudgetExceeded)
                text = str(e) if self.config.store_inputs else redact(str(e), args)
                failed_cost = 0.0 if isinstance(e, BudgetExceeded) else (e.receipt or {}).get("cost_usd") or 0.0
                spend += failed_cost
                rows.append(replace(row, status=status, detail=f"auto probe: run {status}: {text}",
                                    cost_usd=failed_cost or None))
                continue
            cost = probe.receipt.get("cost_usd")
            spend += cost or 0.0
            value, detail, no_judge = await compare_answers(runner, spec, (tier, ref), args, probe.output,
                                                            reference, costs=judged)
            refused += no_judge
            verdicts[tier] = None if value is None else value >= agree_at
            confidence = probe.output.get(spec.confidence_field) if spec.confidence_field else None
            rows.append(replace(row, shadow_call_id=probe.receipt.get("call_id"), score=value, agree=verdicts[tier],
                                detail=f"auto probe: {detail}", cost_usd=cost,
                                confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
                                status=verdict_status(value, no_judge)))
        collected, replayed = 0, None
        set_key = pending.versions.key(ref)
        if plan.collect and (plan.tier == ref or plan.reference):
            # The reference's answer (the served one on the reference, else the guard rerun's); the verdicts say
            # which tiers agreed with it then.
            baselines = {pending.versions.key(t): bool(v) for t, v in verdicts.items() if v is not None}
            collected = int(await self._keep(spec.name, set_key, {
                "args_key": pending.key, "arguments": args, "reference": reference, "baselines": baselines}))
        if plan.replay is not None:
            replayed, cost, refused_replay = await self._replay(runner, spec, plan, pending, primary, rows, judged)
            spend += cost
            refused += refused_replay
        await runner.writer.put([], rows)
        spend += sum(judged)
        self.skipped += refused
        costs = self.costs(spec.name, policy.config.ladder)

        def step(state: ToolState) -> tuple[ToolState, list[Event]]:
            state, events = policy.observe(state, plan, verdicts, pending.versions, spend, costs, replayed,
                                           collected)
            for _ in range(refused):
                state = policy.skip(state)
            return state, events

        await self._write(spec.name, step)

    # ---- the sentinel set -----------------------------------------------------------------------------------------

    async def _keep(self, tool: str, set_key: str, item: dict[str, Any]) -> bool:
        """Keep one sentinel-set item (in the ledger, shared by replicas); False when it was kept already."""
        stamp, items = self._sets.get((tool, set_key), (-math.inf, []))
        if any(i["args_key"] == item["args_key"] for i in items):
            return False
        if self.ledger is not None and not await off_loop(
                self.ledger.sentinel_add, tool, set_key, item["args_key"], item["arguments"], item["reference"],
                item["baselines"]):
            return False
        self._sets[(tool, set_key)] = (stamp, [*items, item])
        return True

    async def _set_items(self, tool: str, set_key: str, size: int) -> list[dict[str, Any]]:
        """The tool's sentinel set; read again from the ledger (at most every `refresh_s`) while the state counts
        more items than this replica holds (another replica kept them)."""
        stamp, items = self._sets.get((tool, set_key), (-math.inf, []))
        now = time.monotonic()
        if self.ledger is not None and len(items) < size and now - stamp >= self.refresh_s:
            items = await off_loop(self.ledger.sentinel_items, tool, set_key)
            self._sets[(tool, set_key)] = (now, items)
        return items

    async def _replay(self, runner: Runner, spec: ToolSpec, plan: Plan, pending: _Pending, primary: Receipt,
                      rows: list[ShadowRow], judged: list[float]) -> tuple[bool | None, float, int]:
        """Replay one sentinel-set item on the serving tier and compare it with the kept reference answer.

        Only items the serving tier agreed on at their baseline are compared: an unchanged model keeps agreeing on
        them, so a disagreement is news about the model, not the luck of which items the set holds (a set that
        happened to hold many hard items would otherwise look like a drift at every pass). An item's baseline on a
        tier is its cold-start probe's verdict; an item with none for the serving tier's model (a model that came
        after the set was kept) may be picked too, and its first replay on that model becomes its baseline (kept in
        the ledger) instead of a verdict. Returns the verdict (None: nothing to replay, a baseline, or not
        comparable), the run's cost, and 1 when a cap refused it or its judge."""
        policy = self.policies[spec.name]
        ref, tier = policy.config.reference, plan.tier
        set_key, tier_key = pending.versions.key(ref), pending.versions.key(tier)
        items = await self._set_items(spec.name, set_key, self.state(spec.name).set_size)
        pool = [i for i in items if i["baselines"].get(tier_key) is not False]
        if not pool or plan.replay is None:
            return None, 0.0, 0
        item = pool[min(len(pool) - 1, int(plan.replay * len(pool)))]
        first = tier_key not in item["baselines"]
        args = item["arguments"]
        row = ShadowRow(tool=spec.name, call_id=primary.call_id, shadow_call_id=None, tier=tier, comparison_tier=ref,
                        score=None, agree=None, detail="", cost_usd=None, comparison_cost_usd=None,
                        model=self.config.tiers[tier].model, comparison_model=self.config.tiers[ref].model,
                        spec_version=str(spec.version), args_key=item["args_key"], status="replay")
        try:
            run = await runner.run_shadow(spec, args, tier)
        except (BudgetExceeded, CallError) as e:
            status = "skipped" if isinstance(e, BudgetExceeded) else "failed"
            text = str(e) if self.config.store_inputs else redact(str(e), args)
            spent = (e.receipt or {}).get("cost_usd") or 0.0 if isinstance(e, CallError) else 0.0
            rows.append(replace(row, detail=f"auto replay: run {status}: {text}", cost_usd=spent or None,
                                status="skipped" if isinstance(e, BudgetExceeded) else "replay"))
            return None, spent, int(isinstance(e, BudgetExceeded))
        cost = run.receipt.get("cost_usd") or 0.0
        agree_at = spec.compare.agree_at if spec.compare else 0.8
        value, detail, no_judge = await compare_answers(runner, spec, (tier, ref), args, run.output,
                                                        item["reference"], costs=judged)
        verdict = None if value is None else value >= agree_at
        if first and verdict is not None:
            item["baselines"] = {**item["baselines"], tier_key: verdict}
            if self.ledger is not None:
                await off_loop(self.ledger.sentinel_baseline, spec.name, set_key, item["args_key"], tier_key, verdict)
            detail = f"baseline for {tier_key}: {detail}"
        # Status "replay" whatever the verdict (report counts traffic, and a fixed set's repeats are not new draws
        # of it); "skipped" when a cap refused the judge, like any comparison whose judge was refused.
        rows.append(replace(row, shadow_call_id=run.receipt.get("call_id"), score=value, agree=verdict, cost_usd=cost,
                            detail=f"auto replay: {detail}", status="skipped" if no_judge else "replay"))
        return (None if first else verdict), cost, int(no_judge)

    # ---- state in the ledger --------------------------------------------------------------------------------------

    async def _write(self, tool: str, step: Callable[[ToolState], tuple[ToolState, list[Event]]]) -> None:
        """Apply `step` to the stored state under the ledger's lock; keep what was written as this copy."""
        policy = self.policies[tool]
        planned = self._planned.pop(tool, 0)

        def update(stored: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            state = ToolState.from_dict(stored) if stored else policy.new_state(tool)
            state, events = step(replace(state, calls=state.calls + planned))
            return state.as_dict(), [switch_row(e, policy.config.quality_bar) for e in events]

        if self.ledger is None:
            state, events = step(self.state(tool))
            seq, data = self._seq.get(tool, 0) + 1, state.as_dict()
            switches = [switch_row(e, policy.config.quality_bar) for e in events]
        else:
            try:
                seq, data, switches = await off_loop(self.ledger.autotier_update, tool, update)
            except Exception:
                self._planned[tool] = self._planned.get(tool, 0) + planned  # counted at the next write
                raise
        if seq > self._seq.get(tool, -1):
            self._states[tool], self._seq[tool] = ToolState.from_dict(data), seq
            self._refreshed[tool] = time.monotonic()
        for w in switches:
            log.info("auto-tiering: %s %s %s -> %s (%s)", tool, w["kind"], w["from_tier"], w["to_tier"], w["reason"],
                     extra={"tool": tool, "switch": w["kind"], "from_tier": w["from_tier"], "to_tier": w["to_tier"]})

    def _maybe_refresh(self, runner: Runner, tool: str) -> None:
        if self.ledger is None or tool in self._refreshing:
            return
        now = time.monotonic()
        if now - self._refreshed.get(tool, -math.inf) < self.refresh_s:
            return
        self._refreshed[tool] = now
        self._refreshing.add(tool)
        if not runner.spawn(self._refresh, tool):
            self._refreshing.discard(tool)

    async def _refresh(self, tool: str) -> None:
        assert self.ledger is not None
        try:
            stored = await off_loop(self.ledger.autotier_states, tool)
        finally:
            self._refreshing.discard(tool)
        if tool in stored:
            seq, data = stored[tool]
            if data and seq > self._seq.get(tool, -1):
                self._states[tool], self._seq[tool] = ToolState.from_dict(data), seq

    async def describe(self, switches: int = 1) -> list[dict[str, Any]]:
        """`summary` of every auto tool from the ledger (this process's copies without one), with each tool's
        newest `switches` switches."""
        if self.ledger is None:
            states = {t: (self._seq.get(t, 0), self.state(t).as_dict()) for t in self.policies}
            return summary(self.config, self.specs, states, [])
        ledger = self.ledger

        def read() -> tuple[dict[str, tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
            return ledger.autotier_states(), [w for t in self.policies for w in ledger.tier_switches(t, switches)]

        states, rows = await off_loop(read)
        return summary(self.config, self.specs, states, rows)

    # ---- cost estimates and rows -----------------------------------------------------------------------------------

    def _learn_tokens(self, tool: str, receipt: Receipt) -> None:
        if receipt.input_tokens or receipt.output_tokens:
            old = self._tokens.get(tool)
            new = (float(receipt.input_tokens), float(receipt.output_tokens))
            # A moving average: the policy only needs the tiers' cost ratio and the size of a day's spend.
            self._tokens[tool] = new if old is None else (0.9 * old[0] + 0.1 * new[0], 0.9 * old[1] + 0.1 * new[1])

    def costs(self, tool: str, ladder: tuple[str, ...]) -> dict[str, float]:
        """Estimated USD per call of each tier: the tool's recent mean tokens at each tier's prices (at the service
        tier its requests ask for, where that price is known)."""
        tokens_in, tokens_out = self._tokens.get(tool, DEFAULT_TOKENS)
        settings = self.config.tools.get(tool)
        out = {}
        for t in ladder:
            tier = self.config.tiers[t]
            service = (settings.service_tier if settings else None) or tier.service_tier
            price = (price_of(tier, service) if service else None) or price_of(tier)
            out[t] = 0.0 if price is None else (tokens_in * price.input + tokens_out * price.output) / 1e6
        return out

    def _skip_row(self, spec: ToolSpec, plan: Plan, policy: Policy, receipt: Receipt, key: str,
                  detail: str) -> ShadowRow:
        ref = policy.config.reference
        return ShadowRow(tool=spec.name, call_id=receipt.call_id, shadow_call_id=None, tier=plan.tier,
                         comparison_tier=ref, score=None, agree=None, detail=detail, cost_usd=None,
                         comparison_cost_usd=None, model=self.config.tiers[plan.tier].model,
                         comparison_model=self.config.tiers[ref].model, spec_version=str(spec.version),
                         args_key=key, status="skipped")


def summary(config: Config, specs: Specs, states: Mapping[str, tuple[int, dict[str, Any]]],
            switches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per auto tool: the tier it is on, its ladder and bar, each cheaper tier's evidence for the current models
    (k of n with the anytime-valid bounds, and the step-down test's e-value and verdict the policy steps on), the
    day's evidence spend and skips, and its
    switches (newest first). `report`, `report --json` and the `tiered://tiers` resource show this."""
    from datetime import timezone

    out = []
    for name, settings in sorted(config.tools.items()):
        spec = specs.get(name)
        if not settings.auto or spec is None:
            continue
        policy = Policy(policy_config(config, name), clock=lambda: datetime.now(timezone.utc))
        seq, data = states.get(name, (0, None))
        state = policy.today(ToolState.from_dict(data) if data else policy.new_state(name))
        versions = versions_of(config, spec, policy.config.ladder)
        bar = policy.config.quality_bar
        evidence = {}
        for tier in policy.config.ladder[:-1]:
            b = policy.bounds(state, tier, versions)
            evidence[tier] = {"model": versions.models[tier], "successes": b.successes, "trials": b.trials,
                              "lower": b.lower, "upper": b.upper,
                              # the step-down test the policy steps on (stats.clears_bar)
                              "e_value": math.exp(min(700.0, clear_log_evalue(b.successes, b.trials, bar))),
                              "clears": policy.cleared(state, tier, versions)}
        out.append({"tool": name, "tier": state.tier, "ladder": list(policy.config.ladder),
                    "reference": policy.config.reference, "quality_bar": policy.config.quality_bar,
                    "spec_version": versions.spec_version, "seq": seq, "evidence": evidence,
                    "detector": state.detector, "left": state.left, "day": state.day, "day_spend_usd": state.day_spend,
                    "evidence_daily_usd": policy.config.daily_evidence_limit, "skipped_today": state.skipped_today,
                    "skipped_total": state.skipped_total,
                    # With a sentinel set: items kept of its size, and (agreed, compared) sentinels since the switch.
                    "sentinel_set": {"kept": state.set_size, "size": policy.config.sentinel_set,
                                     "sentinels": list(state.sentinels)} if policy.config.sentinel_set else None,
                    "switches": [{**w, "e_value": switch_evalue(w)} for w in switches if w["tool"] == name]})
    return out
