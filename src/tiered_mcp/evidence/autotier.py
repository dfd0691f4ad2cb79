"""Auto-tiering (`[tools.X] auto = true`): a pure state machine that moves a tool along the tier ladder on evidence.

Each call goes through `Policy.plan` (which tier serves it, which evidence to gather) and, once the answers are
compared, `Policy.observe` (update the evidence, maybe switch tier). All state is a `ToolState` value that
round-trips through a dict, so the server can keep it in a ledger row and let one replica decide under a database
lock; the policy itself holds only its configuration and the injected `sample` (hash) and `clock` functions, and
never mutates what it is given.

How it decides (docs/auto-tiering.md has the formulas):

- Evidence is counted per (tier, model, spec version): agreement with the reference (last) tier of the ladder.
- Cold start on the reference tier. Every call there (`probe_rate`) also runs the cheaper tiers still undecided;
  their answers are compared with the served reference answer, so that evidence costs only the cheap calls.
- Step down when a cheaper tier clears the bar: its one-sided e-value against "agreement <= bar"
  (stats.clears_bar, a mixture of likelihood ratios) reaches 1/alpha. The step goes straight to the cheapest tier
  that clears. On the reference the step waits for a still cheaper tier that is undecided while the evidence it is
  projected to need (at its observed rate plus one standard error) is repaid by `hold_payback` calls of its saving,
  and never past `hold_limit` comparisons: there its evidence is cheapest (off the reference, each comparison needs a
  reference run too).
- Below the reference, a guard share of calls (from `guard_share`, raised to `alert_rate` while the drift detector is
  above zero) and every sentinel call (chosen by a hash of the arguments, `sentinel_rate`) rerun on the reference.
- Step up one rung on an alarm: the drift detector (a CUSUM e-detector, Page 1954; Shin, Ramdas & Rinaldo 2022)
  crosses 1/drift_alpha, or the current tier's upper bound (all its evidence, or its sentinels since the switch)
  falls below the bar, or the current tier's model or spec version has no evidence at all (a new release). The
  alarm discards that tier's evidence for the current model: it no longer describes the model.
- Evidence spend is capped per tool and UTC day (`daily_evidence_limit`); over it, guard and probe runs are skipped
  and counted, sentinels still run.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Literal, Mapping

from tiered_mcp.evidence.stats import (
    Bounds,
    clear_log_evalue,
    clears_bar,
    comparisons_to_clear,
    confidence_sequence,
    prior_for,
)

__all__ = ["SET_GUARD_SHARE", "AutoTierConfig", "Event", "Plan", "Policy", "ToolState", "Versions", "hash_sample"]


def hash_sample(text: str) -> float:
    """A deterministic uniform draw in [0, 1) from a string: the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2 ** 64


SET_GUARD_SHARE = 0.01
"""The guard share when a sentinel set is kept: the replays catch a new release at the serving tier's price, so
the reference reruns are left to keep the tier's own evidence current (docs/auto-tiering.md, "Sentinel set")."""


@dataclass(frozen=True)
class AutoTierConfig:
    """The policy's knobs; the defaults are the ones docs/auto-tiering.md and the simulation use."""

    ladder: tuple[str, ...] = ("nano", "mini", "flagship")
    """Tiers cheapest first; the last is the reference every agreement is measured against."""
    quality_bar: float = 0.95
    alpha: float = 0.05
    """Error rate of the step-down bounds, over the whole sequence of looks."""
    prior_strength: float = 20.0
    """The mixture prior is Beta centred on the bar with a + b = prior_strength (stats.prior_for)."""
    probe_rate: float = 1.0
    hold_payback: int = 2000
    """On the reference, the step down waits for a still cheaper, undecided tier while the evidence it is projected
    to need (stats.comparisons_to_clear at its observed rate plus one standard error, each comparison costing a reference call instead of
    the tier the step would go to, plus the cheap call) is repaid by hold_payback calls of that tier's saving."""
    hold_limit: int = 2000
    """... and never past hold_limit comparisons of that tier."""
    guard_share: float = 0.05
    """Guard and sentinel reruns on a tier below the reference cost this share of what the tier saves: together
    they rerun guard_share * (reference cost - tier cost) / reference cost of its calls (4.6 % on nano, 3.5 % on
    mini at list prices)."""
    alert_rate: float = 1.0
    """The rerun rate while the drift detector is above zero. Each false alert costs the comparisons the detector
    needs to fall back to zero whatever the rate, so a high rate costs little more and confirms a drift sooner."""
    sentinel_rate: float = 0.01
    """Without a sentinel set: the share of calls (by a hash of the arguments) rerun on the reference as sentinels."""
    sentinel_set: int = 0
    """The size of a fixed sentinel set (0: none). The first calls served on the reference, with its answers, are
    kept; below the reference, calls replay one of them on the serving tier (which costs that tier's price, not
    the reference's) and compare with the kept reference answer. With a set, hash-chosen calls are no longer rerun
    on the reference: the replays take the sentinels' place."""
    replay_share: float = 0.005
    """With a sentinel set: replays cost this share of what the serving tier saves (a rate of replay_share *
    (reference cost - tier cost) / tier cost of its calls: 5.6 % on nano, 1.2 % on mini at list prices), and every
    call replays one while the drift detector is above zero."""
    drift_rate: float = 0.80
    """The agreement the drift detector is tuned to catch (its alternative hypothesis)."""
    drift_alpha: float = 0.01
    """The detector alarms at e-value 1/drift_alpha: at the bar, false alarms come at most once per 1/drift_alpha
    comparisons on average (and far more rarely above the bar)."""
    daily_evidence_limit: float | None = None
    """USD of evidence (guard, sentinel and probe runs) per tool and UTC day; None for no limit."""
    start_tier: str | None = None
    """Where a new tool starts; None means the reference tier."""

    def __post_init__(self) -> None:
        if len(self.ladder) < 2:
            raise ValueError("the ladder needs a cheaper tier and a reference")
        if not 0 < self.drift_rate < self.quality_bar < 1:
            raise ValueError("need 0 < drift_rate < quality_bar < 1")
        if self.start_tier is not None and self.start_tier not in self.ladder:
            raise ValueError(f"start_tier {self.start_tier!r} is not on the ladder")

    @property
    def reference(self) -> str:
        """The tier every comparison is made against."""
        return self.ladder[-1]


@dataclass(frozen=True)
class Versions:
    """What the evidence is about: each tier's model id and the tool's spec version."""

    models: Mapping[str, str]
    spec_version: str

    def key(self, tier: str) -> str:
        """The evidence key of `tier`: tier, model and spec version."""
        return f"{tier}|{self.models.get(tier, '?')}|{self.spec_version}"


@dataclass(frozen=True)
class ToolState:
    """One tool's auto-tiering state. Plain data; `as_dict`/`from_dict` round-trip it through JSON."""

    tool: str
    tier: str
    evidence: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Evidence key (Versions.key) -> (agreed, compared) against the reference."""
    left: str | None = None
    """The tier the tool last stepped down from (kept for the report; guards rerun on the reference whatever it is)."""
    detector: float = 0.0
    """The drift detector's log statistic for the current tier (0 = no suspicion)."""
    sentinels: tuple[int, int] = (0, 0)
    """(agreed, compared) among sentinel calls on the current tier since the last switch."""
    day: str = ""
    day_spend: float = 0.0
    skipped_today: int = 0
    skipped_total: int = 0
    calls: int = 0
    set_key: str = ""
    """With a sentinel set: the reference's evidence key the set was collected under (a new reference model or spec
    version starts a new set, since the kept answers no longer describe it)."""
    set_size: int = 0
    """Items kept in the sentinel set under `set_key`."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a ledger row."""
        d = asdict(self)
        d["evidence"] = {k: list(v) for k, v in self.evidence.items()}
        d["sentinels"] = list(self.sentinels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolState:
        """The inverse of `as_dict`."""
        d = dict(data)
        d["evidence"] = {k: (int(v[0]), int(v[1])) for k, v in d.get("evidence", {}).items()}
        d["sentinels"] = tuple(d.get("sentinels", (0, 0)))
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """What to do for one call: serve `tier`; if `reference`, rerun it on the reference tier; run each of `probes`
    (cheaper tiers) and compare with the reference answer (the served one when `tier` is the reference)."""

    tier: str
    reference: bool = False
    probes: tuple[str, ...] = ()
    sentinel: bool = False
    skipped: bool = False
    """Evidence was due but the day's evidence limit was reached."""
    alert: bool = False
    """The rerun was drawn at `alert_rate` (the drift detector was above zero), not at the guard rate."""
    cost: float = 0.0
    """Estimated evidence cost of the plan, USD."""
    collect: bool = False
    """Keep this call (arguments and the reference's answer: the served one on the reference, else the guard
    rerun's) in the sentinel set."""
    replay: float | None = None
    """Replay a sentinel-set item on the serving tier: the draw in [0, 1) that picks which one."""


@dataclass(frozen=True)
class Event:
    """A tier switch with its evidence, for a ledger row, `report`, `logs` and the hosts' resource."""

    tool: str
    kind: Literal["step_down", "step_up"]
    from_tier: str
    to_tier: str
    reason: str
    at: str
    call: int
    evidence: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a ledger row."""
        return asdict(self)


class Policy:
    """The auto-tiering rules over `ToolState` values (the policy keeps no state of its own).

    Args:
        config: the knobs.
        sample: a deterministic map from a string to [0, 1), used for every sampling decision (default SHA-256).
        clock: the current time (UTC); it names the spend day and stamps events.
    """

    def __init__(self, config: AutoTierConfig, sample: Callable[[str], float] = hash_sample,
                 clock: Callable[[], datetime] | None = None) -> None:
        if clock is None:
            raise ValueError("inject a clock (e.g. lambda: datetime.now(timezone.utc))")
        self.config = config
        self.sample = sample
        self.clock = clock
        self._prior = prior_for(config.quality_bar, config.prior_strength)
        bar, p1 = config.quality_bar, config.drift_rate
        # Per-comparison log likelihood ratio of "agreement is drift_rate" against "agreement is the bar".
        self._llr = {True: math.log(p1 / bar), False: math.log((1 - p1) / (1 - bar))}
        self._alarm_at = math.log(1 / config.drift_alpha)

    def new_state(self, tool: str) -> ToolState:
        """A tool with no evidence, on the start tier."""
        return ToolState(tool=tool, tier=self.config.start_tier or self.config.reference)

    def bounds(self, state: ToolState, tier: str, versions: Versions) -> Bounds:
        """The anytime-valid bounds on `tier`'s agreement for the current model and spec version."""
        k, n = state.evidence.get(versions.key(tier), (0, 0))
        return confidence_sequence(k, n, self.config.alpha, self._prior)

    def guard_rate(self, tier: str, costs: Mapping[str, float]) -> float:
        """The share of `tier`'s calls rerun on the reference (see `AutoTierConfig.guard_share`)."""
        ref = costs.get(self.config.reference, 0.0)
        share = self.config.guard_share
        rate = share if ref <= 0 else share * max(0.0, ref - costs.get(tier, 0.0)) / ref
        # Sentinel reruns come out of the same allowance (with a sentinel set there are none: replays cost apart).
        return max(0.0, rate - (0.0 if self.config.sentinel_set else self.config.sentinel_rate))

    def replay_rate(self, tier: str, costs: Mapping[str, float]) -> float:
        """The share of `tier`'s calls that replay a sentinel-set item (see `AutoTierConfig.replay_share`)."""
        ref, own = costs.get(self.config.reference, 0.0), costs.get(tier, 0.0)
        if not self.config.sentinel_set or ref <= 0 or own <= 0:
            return self.config.replay_share if self.config.sentinel_set else 0.0
        return min(1.0, self.config.replay_share * max(0.0, ref - own) / own)

    def cleared(self, state: ToolState, tier: str, versions: Versions) -> bool:
        """Whether `tier`'s evidence shows its agreement is above the bar (stats.clears_bar, the step-down test)."""
        k, n = state.evidence.get(versions.key(tier), (0, 0))
        return clears_bar(k, n, self.config.quality_bar, self.config.alpha)

    def _open(self, state: ToolState, tier: str, versions: Versions) -> bool:
        """Not cleared yet, but not shown to be below the bar either: more evidence could clear it."""
        return not self.cleared(state, tier, versions) and self.bounds(state, tier, versions).upper >= \
            self.config.quality_bar

    def _hold(self, state: ToolState, tier: str, target: str, versions: Versions,
              costs: Mapping[str, float] | None) -> bool:
        """On the reference: wait for `tier` (cheaper than `target`, the tier a step would go to)?"""
        cfg = self.config
        k, n = state.evidence.get(versions.key(tier), (0, 0))
        if not self._open(state, tier, versions) or n >= cfg.hold_limit:
            return False
        if n == 0:
            return True  # wait for a first look
        # Project optimistically, one standard error above the observed rate: early estimates are noisy, and the
        # error shrinks as evidence comes in, so a tier that stays close to the bar stops being waited for.
        p_hat = k / n
        more = comparisons_to_clear(k, n, cfg.quality_bar, cfg.alpha, limit=cfg.hold_limit - n,  # in all, not more
                                    rate=min(1.0, p_hat + math.sqrt(p_hat * (1 - p_hat) / n)))
        if more is None:
            return False
        if not costs:
            return True
        per_comparison = costs.get(cfg.reference, 0.0) - costs.get(target, 0.0) + costs.get(tier, 0.0)
        saving = costs.get(target, 0.0) - costs.get(tier, 0.0)
        return more * per_comparison <= cfg.hold_payback * saving

    def _event(self, state: ToolState, kind: Literal["step_down", "step_up"], to: str, reason: str,
               evidence: Mapping[str, Any]) -> Event:
        return Event(state.tool, kind, state.tier, to, reason, self.clock().isoformat(), state.calls, dict(evidence))

    def _roll_set(self, state: ToolState, versions: Versions) -> ToolState:
        """A new reference model or spec version starts a new sentinel set: the kept answers describe the old one."""
        key = versions.key(self.config.reference)
        if not self.config.sentinel_set or state.set_key == key:
            return state
        return replace(state, set_key=key, set_size=0)

    def _roll_day(self, state: ToolState) -> ToolState:
        day = self.clock().date().isoformat()
        return state if state.day == day else replace(state, day=day, day_spend=0.0, skipped_today=0)

    def plan(self, state: ToolState, key: str, versions: Versions,
             costs: Mapping[str, float]) -> tuple[ToolState, Plan, list[Event]]:
        """Decide how to serve one call and what evidence to gather.

        Args:
            state: the tool's state.
            key: a stable hash of the call's arguments (it picks sentinels).
            versions: the tiers' current models and the spec version.
            costs: estimated USD per call of each tier (for the spend limit).

        Returns:
            The new state, the plan, and a step-up event when the current tier's model or spec is new.
        """
        cfg = self.config
        state, events = self.climb(replace(self._roll_day(state), calls=state.calls + 1), versions)
        idx = cfg.ladder.index(state.tier)
        tick = f"{state.tool}:{state.calls}:{key}"
        with_set = cfg.sentinel_set > 0
        state = self._roll_set(state, versions)
        sentinel = not with_set and self.sample(f"sentinel:{state.tool}:{key}") < cfg.sentinel_rate
        if state.tier == cfg.reference:
            probes: tuple[str, ...] = ()
            if self.sample(f"probe:{tick}") < cfg.probe_rate:
                probes = tuple(t for t in cfg.ladder[:-1] if self._open(state, t, versions))
            plan = Plan(state.tier, False, probes, sentinel, cost=sum(costs.get(t, 0.0) for t in probes),
                        collect=with_set and state.set_size < cfg.sentinel_set)
        else:
            alert = state.detector > 0
            rate = cfg.alert_rate if alert else self.guard_rate(state.tier, costs)
            replay = None
            if with_set and state.set_size > 0 and (
                    alert or self.sample(f"replay:{tick}") < self.replay_rate(state.tier, costs)):
                replay = self.sample(f"pick:{tick}")
            cost = costs.get(state.tier, 0.0) if replay is not None else 0.0
            if sentinel or self.sample(f"guard:{tick}") < rate:
                below = cfg.ladder[idx - 1] if idx > 0 else None
                probes = (below,) if below and self._open(state, below, versions) else ()
                cost += costs.get(cfg.reference, 0.0) + sum(costs.get(t, 0.0) for t in probes)
                # A guard rerun gives a reference answer too: it fills a set left short (the tool stepped down
                # before the set was full, or a new reference model or spec version started a new one).
                plan = Plan(state.tier, True, probes, sentinel, cost=cost, alert=alert and not sentinel,
                            replay=replay, collect=with_set and state.set_size < cfg.sentinel_set)
            else:
                plan = Plan(state.tier, cost=cost, replay=replay, alert=alert and replay is not None)
        limit = cfg.daily_evidence_limit
        exempt = sentinel and state.tier != cfg.reference  # a sentinel watches a served cheaper tier
        if limit is not None and plan.cost > 0 and not exempt and state.day_spend + plan.cost > limit:
            plan = Plan(state.tier, sentinel=False, skipped=True)
            state = self.skip(state)
        return state, plan, events

    def climb(self, state: ToolState, versions: Versions) -> tuple[ToolState, list[Event]]:
        """A new model or spec version on the current tier is unproven: climb to the first tier with evidence
        (`plan` does this first; a replica that shares its state applies the same step to the stored state)."""
        cfg = self.config
        events: list[Event] = []
        idx = cfg.ladder.index(state.tier) if state.tier in cfg.ladder else len(cfg.ladder) - 1
        if state.tier not in cfg.ladder:  # the ladder changed under a stored state: start again at the top
            state = replace(state, tier=cfg.reference, left=None, detector=0.0, sentinels=(0, 0))
        while state.tier != cfg.reference and state.evidence.get(versions.key(state.tier), (0, 0))[1] == 0:
            up = cfg.ladder[idx + 1]
            events.append(self._event(state, "step_up", up, f"no evidence for {versions.key(state.tier)}",
                                      {"key": versions.key(state.tier)}))
            state = replace(state, tier=up, left=None, detector=0.0, sentinels=(0, 0))
            idx += 1
        return state, events

    def today(self, state: ToolState) -> ToolState:
        """The state with its day's figures (spend, skips) reset when its day is not today's."""
        return self._roll_day(state)

    def charge(self, state: ToolState, usd: float) -> ToolState:
        """Add evidence spend that gave no verdict to the day's spend (a failed reference run)."""
        state = self._roll_day(state)
        return replace(state, day_spend=state.day_spend + usd)

    def skip(self, state: ToolState) -> ToolState:
        """Count one evidence run skipped over the day's limit."""
        state = self._roll_day(state)
        return replace(state, skipped_today=state.skipped_today + 1, skipped_total=state.skipped_total + 1)

    def observe(self, state: ToolState, plan: Plan, verdicts: Mapping[str, bool | None], versions: Versions,
                spend: float, costs: Mapping[str, float] | None = None, replayed: bool | None = None,
                collected: int = 0) -> tuple[ToolState, list[Event]]:
        """Take one call's comparisons into the state and switch tier if the evidence says so.

        Args:
            state: the state `plan` returned.
            plan: the plan the call followed.
            verdicts: tier -> did its answer agree with the reference's (None: could not be compared); the served
                tier's verdict when it was rerun on the reference, and one per probe.
            versions: as given to `plan`.
            spend: USD actually spent on evidence for this call.
            costs: estimated USD per call of each tier (the hold on the reference weighs them); None holds for any
                open cheaper tier, up to `hold_limit` comparisons.
            replayed: did the plan's sentinel-set replay agree with the kept reference answer (None: no replay,
                or it could not be compared). It feeds the drift detector and the sentinels' counts, not the
                tier's evidence: the set is a fixed sample, so its repeats are not new draws of the traffic.
            collected: items this call added to the sentinel set.

        Returns:
            The new state and the switch events (at most one).
        """
        cfg = self.config
        state = self._roll_set(self._roll_day(state), versions)
        evidence = dict(state.evidence)
        for tier, agreed in verdicts.items():
            if agreed is None or tier == cfg.reference:
                continue
            k, n = evidence.get(versions.key(tier), (0, 0))
            evidence[versions.key(tier)] = (k + int(agreed), n + 1)
        detector, sentinels = state.detector, state.sentinels
        current = verdicts.get(state.tier)
        # A replay speaks for the tier it ran on: one still in flight when the tool switched (another call's
        # evidence moved it) must not count against the tier the tool is on now.
        replayed = replayed if plan.tier == state.tier else None
        for verdict, is_sentinel in ((current, plan.sentinel), (replayed, True)):
            if state.tier != cfg.reference and verdict is not None:
                # Page's CUSUM, W = max(0, W + log LR): exp(W) is the largest likelihood-ratio product over every
                # possible start of a drift, the CUSUM e-detector of Shin, Ramdas & Rinaldo.
                detector = max(0.0, detector + self._llr[bool(verdict)])
                if is_sentinel:
                    sentinels = (sentinels[0] + int(verdict), sentinels[1] + 1)
        state = replace(state, evidence=evidence, detector=detector, sentinels=sentinels,
                        day_spend=state.day_spend + spend, set_size=state.set_size + collected)
        idx = cfg.ladder.index(state.tier)
        bar = cfg.quality_bar
        if state.tier != cfg.reference:
            b = self.bounds(state, state.tier, versions)
            s = confidence_sequence(*sentinels, alpha=cfg.alpha, prior=self._prior)
            reason = None
            if detector >= self._alarm_at:
                reason = f"drift detector e-value {math.exp(detector):.0f} >= {1 / cfg.drift_alpha:.0f}"
            elif b.upper < bar:
                reason = f"upper bound {b.upper:.3f} < bar {bar:g}"
            elif s.upper < bar:
                reason = f"sentinels' upper bound {s.upper:.3f} < bar {bar:g}"
            if reason is not None:
                up = cfg.ladder[idx + 1]
                key = versions.key(state.tier)
                ev: dict[str, Any] = {"key": key, "bounds": b.as_dict(), "sentinels": s.as_dict(), "detector": detector,
                      "discarded": list(evidence.get(key, (0, 0)))}
                event = self._event(state, "step_up", up, reason, ev)
                evidence.pop(key, None)
                state = replace(state, tier=up, left=None, evidence=evidence, detector=0.0, sentinels=(0, 0))
                return state, [event]
        if idx == 0:
            return state, []
        # Step straight to the cheapest tier below that clears the bar (from the reference, past a cleared mini to a
        # cleared nano); on the reference, wait for a still cheaper open tier while its evidence pays (`_hold`).
        target = next((t for t in cfg.ladder[:idx] if self.cleared(state, t, versions)), None)
        if target is None:
            return state, []
        if state.tier == cfg.reference:
            for cheaper in cfg.ladder[:cfg.ladder.index(target)]:
                if self._hold(state, cheaper, target, versions, costs):
                    return state, []
        k, n = evidence.get(versions.key(target), (0, 0))
        b = self.bounds(state, target, versions)
        log_e = clear_log_evalue(k, n, bar)
        ev = {"key": versions.key(target), "bounds": b.as_dict(), "log_evalue": log_e}
        event = self._event(state, "step_down", target,
                            f"{target}'s e-value {math.exp(log_e):.0f} >= {1 / cfg.alpha:g} against bar {bar:g}", ev)
        return replace(state, tier=target, left=state.tier, detector=0.0, sentinels=(0, 0)), [event]
