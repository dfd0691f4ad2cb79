"""The auto-tiering policy on scripted streams: cold start, step down on evidence, hold, drift alarm, new releases,
sentinels, the daily evidence limit, and state that survives a round trip through JSON."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from tiered_mcp.evidence.autotier import AutoTierConfig, Policy, ToolState, Versions, hash_sample
from tiered_mcp.evidence.stats import comparisons_to_clear

V = Versions(models={"nano": "n-1", "mini": "m-1", "flagship": "f-1"}, spec_version="3")
COSTS = {"nano": 0.0002, "mini": 0.0008, "flagship": 0.0027}
T0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def policy(sample=lambda s: 0.5, clock=None, **kw) -> Policy:
    # sample 0.5: never a sentinel (rate 0.01), never a guard (rate < 0.05); probes always (rate 1).
    return Policy(AutoTierConfig(**kw), sample=sample, clock=clock or Clock())


def test_hash_sample_is_deterministic_and_uniformish() -> None:
    assert hash_sample("abc") == hash_sample("abc")
    draws = [hash_sample(str(i)) for i in range(2000)]
    assert all(0 <= d < 1 for d in draws)
    assert abs(sum(d < 0.1 for d in draws) / 2000 - 0.1) < 0.03


def test_cold_start_on_the_reference_probes_every_open_tier() -> None:
    p = policy()
    s = p.new_state("classify")
    assert s.tier == "flagship"
    s, plan, events = p.plan(s, "k", V, COSTS)
    assert (plan.tier, plan.reference, plan.probes, events) == ("flagship", False, ("nano", "mini"), [])
    assert plan.cost == pytest.approx(COSTS["nano"] + COSTS["mini"])


def _all_agree_clears_at() -> int:
    # By hand: with every comparison agreeing, E_n = (1/20) * sum_j (q_j / 0.95)^n, q_j = 0.95 + 0.05 (j - 1/2) / 20.
    qs = [0.95 + 0.05 * (j - 0.5) / 20 for j in range(1, 21)]
    return next(n for n in range(1, 1000) if sum((q / 0.95) ** n for q in qs) / 20 >= 20)


def test_steps_straight_to_the_cheapest_tier_that_clears() -> None:
    p = policy()
    need = _all_agree_clears_at()
    assert need == 88
    s = p.new_state("classify")
    for i in range(1, need + 1):
        s, plan, _ = p.plan(s, f"k{i}", V, COSTS)
        s, events = p.observe(s, plan, {t: True for t in plan.probes}, V, plan.cost, COSTS)
        if i < need:
            assert events == [], i
    # nano and mini cleared together: the step goes past mini to nano.
    assert [(e.kind, e.from_tier, e.to_tier) for e in events] == [("step_down", "flagship", "nano")]
    assert events[0].evidence["bounds"]["trials"] == need and s.tier == "nano" and s.left == "flagship"
    assert events[0].evidence["log_evalue"] >= math.log(20)


def _state(tier: str, **evidence: tuple[int, int]) -> ToolState:
    return ToolState(tool="t", tier=tier, evidence={V.key(k): v for k, v in evidence.items()})


def test_steps_down_to_mini_when_nano_is_below_the_bar() -> None:
    p = policy()
    s = _state("flagship", mini=(88, 88), nano=(60, 88))  # nano 68 %: its upper bound is under the bar
    assert p.bounds(s, "nano", V).upper < 0.95
    s, events = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert [(e.from_tier, e.to_tier) for e in events] == [("flagship", "mini")]


def test_holds_on_the_reference_while_the_cheaper_tiers_evidence_pays() -> None:
    p = policy()
    s = _state("flagship", mini=(300, 300), nano=(290, 300))  # nano 96.7 %: not yet shown above the bar
    assert p.cleared(s, "mini", V) and not p.cleared(s, "nano", V)
    # By hand: project at 29/30 + sqrt(29/30 * 1/30 / 300); each comparison on the flagship costs
    # flagship - mini + nano = 0.0027 - 0.0008 + 0.0002 = 0.0021 and nano saves mini - nano = 0.0006 a call, so the
    # hold is worth it while more * 0.0021 <= hold_payback * 0.0006.
    rate = 29 / 30 + math.sqrt(29 / 30 / 30 / 300)
    more = comparisons_to_clear(290, 300, 0.95, 0.05, rate=rate)
    assert more is not None and 0 < more < 2000
    payback = math.ceil(more * 0.0021 / 0.0006 - 1e-9)  # the least payback that holds
    held, events = policy(hold_payback=payback).observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert events == [] and held.tier == "flagship"
    moved, events = policy(hold_payback=payback - 1).observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert moved.tier == "mini" and events[0].kind == "step_down"
    # hold_limit counts comparisons in all: with room for one fewer than the projection needs, it steps at once.
    room, _ = policy(hold_payback=10**9, hold_limit=300 + more).observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0,
                                                                       COSTS)
    short, _ = policy(hold_payback=10**9, hold_limit=300 + more - 1).observe(s, p.plan(s, "k", V, COSTS)[1], {}, V,
                                                                            0.0, COSTS)
    assert (room.tier, short.tier) == ("flagship", "mini")
    # Past hold_limit comparisons it steps; without costs the hold is by count alone.
    s3, _ = policy(hold_limit=300).observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0)
    assert s3.tier == "mini"
    s4, _ = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0)
    assert s4.tier == "flagship"
    s = _state("flagship", mini=(300, 300), nano=(284, 300))  # 94.7 %: even one standard error up, far off
    s5, events = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert s5.tier == "mini" and events[0].kind == "step_down"


def test_drift_detector_steps_up_after_four_straight_disagreements() -> None:
    # Guard every call (sample 0.0 is below every rate), on nano with good evidence.
    p = policy(sample=lambda s: 0.0 if s.startswith("guard") else 0.5)
    s = _state("nano", nano=(1000, 1000), mini=(500, 500))
    step = math.log(0.2 / 0.05)  # a disagreement under drift_rate 0.8 against the bar 0.95
    assert 3 * step < math.log(100) < 4 * step
    for i in range(4):
        s, plan, _ = p.plan(s, f"k{i}", V, COSTS)
        assert plan.reference and plan.tier == "nano"
        s, events = p.observe(s, plan, {"nano": False}, V, plan.cost)
        if i < 3:
            assert events == [] and s.detector == pytest.approx((i + 1) * step)
    (e,) = events
    assert (e.kind, e.from_tier, e.to_tier) == ("step_up", "nano", "mini")
    assert e.reason.startswith("drift detector") and e.evidence["discarded"] == [1000, 1004]
    assert V.key("nano") not in s.evidence and s.detector == 0.0 and s.tier == "mini"
    # Mini is not the bottom and nano's evidence is gone: no immediate step back down.
    s, plan, _ = p.plan(s, "after", V, COSTS)
    s, events = p.observe(s, plan, {"mini": True}, V, plan.cost)
    assert events == [] and s.tier == "mini"


def test_agreement_resets_the_detector_and_raises_the_guard_rate_meanwhile() -> None:
    p = policy(sample=lambda s: 0.3 if s.startswith("guard") else 0.9, alert_rate=0.5)
    s = _state("nano", nano=(1000, 1000))
    s, plan, _ = p.plan(s, "a", V, COSTS)
    assert not plan.reference  # 0.3 is above the guard rate
    s = ToolState(**{**s.__dict__, "detector": 1.0})
    s, plan, _ = p.plan(s, "b", V, COSTS)
    assert plan.reference  # ... and below the alert rate 0.5
    s, _ = p.observe(s, plan, {"nano": True}, V, plan.cost)
    assert s.detector == pytest.approx(max(0.0, 1.0 + math.log(0.8 / 0.95)))


def test_upper_bound_alarm() -> None:
    p = policy(sample=lambda s: 0.0 if s.startswith("guard") else 0.5, drift_alpha=1e-12)
    s = _state("nano", nano=(85, 100))
    assert p.bounds(s, "nano", V).upper < 0.95
    s, plan, _ = p.plan(s, "k", V, COSTS)
    s, events = p.observe(s, plan, {"nano": True}, V, plan.cost)
    assert events[0].kind == "step_up" and events[0].reason.startswith("upper bound")


def test_a_new_model_release_is_unproven() -> None:
    p = policy()
    s = _state("nano", nano=(1000, 1000), mini=(500, 500))
    v2 = Versions(models={**V.models, "nano": "n-2"}, spec_version="3")
    s, plan, events = p.plan(s, "k", v2, COSTS)
    assert plan.tier == "mini" and events[0].kind == "step_up" and "n-2" in events[0].reason


def test_an_unproven_start_tier_climbs_to_the_first_tier_with_evidence() -> None:
    p = policy(start_tier="nano")
    s, plan, events = p.plan(p.new_state("t"), "k", V, COSTS)
    assert plan.tier == "flagship" and [(e.from_tier, e.to_tier) for e in events] == [("nano", "mini"),
                                                                                      ("mini", "flagship")]


def test_holds_for_a_first_look_and_for_an_early_promising_rate() -> None:
    p = policy()
    s = _state("flagship", mini=(300, 300))  # nano never compared: wait for it
    s2, events = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert events == [] and s2.tier == "flagship"
    s = _state("flagship", mini=(300, 300), nano=(9, 10))  # 90 % of 10, but one standard error up is 99.5 %
    s3, events = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert events == [] and s3.tier == "flagship"
    s = _state("flagship", mini=(300, 300), nano=(7, 10))  # 70 % + 14.5 %: under the bar, no wait
    s4, events = p.observe(s, p.plan(s, "k", V, COSTS)[1], {}, V, 0.0, COSTS)
    assert s4.tier == "mini"


def test_sentinels_are_chosen_by_hash_and_ignore_the_spend_limit() -> None:
    clock = Clock()
    p = policy(sample=lambda s: 0.001 if s == "sentinel:t:special" else 0.9, clock=clock, daily_evidence_limit=0.0)
    s = _state("nano", nano=(1000, 1000))
    s, plan, _ = p.plan(s, "special", V, COSTS)
    assert plan.sentinel and plan.reference and not plan.skipped
    s, _ = p.observe(s, plan, {"nano": False}, V, plan.cost)
    assert s.sentinels == (0, 1)
    s, plan, _ = p.plan(s, "ordinary", V, COSTS)
    assert not plan.sentinel and not plan.reference


def test_daily_evidence_limit_skips_and_counts_then_resets_next_day() -> None:
    clock = Clock()
    p = policy(clock=clock, daily_evidence_limit=0.0025)  # room for two probe rounds of 0.001 each
    s = p.new_state("t")
    plans = []
    for i in range(4):
        s, plan, _ = p.plan(s, f"k{i}", V, COSTS)
        s, _ = p.observe(s, plan, {t: True for t in plan.probes}, V, plan.cost)
        plans.append(plan)
    assert [pl.skipped for pl in plans] == [False, False, True, True]
    assert s.skipped_today == 2 and s.day_spend == pytest.approx(0.002)
    clock.now = T0 + timedelta(days=1)
    s, plan, _ = p.plan(s, "tomorrow", V, COSTS)
    assert not plan.skipped and plan.probes and s.skipped_today == 0 and s.skipped_total == 2


def test_state_round_trips_through_json_and_the_policy_is_deterministic() -> None:
    def run() -> tuple[ToolState, list[dict]]:
        p = Policy(AutoTierConfig(), sample=hash_sample, clock=lambda: T0)
        s, log = p.new_state("rank"), []
        for i in range(400):
            s, plan, ev = p.plan(s, f"k{i}", V, COSTS)
            verdicts = {t: hash_sample(f"v{i}{t}") < 0.99 for t in plan.probes}
            if plan.reference:
                verdicts[plan.tier] = hash_sample(f"w{i}") < 0.99
            s, ev2 = p.observe(s, plan, verdicts, V, plan.cost)
            log += [e.as_dict() for e in ev + ev2]
        return s, log
    (s1, log1), (s2, log2) = run(), run()
    assert s1 == s2 and log1 == log2 and log1  # something happened, identically
    assert ToolState.from_dict(json.loads(json.dumps(s1.as_dict()))) == s1
    assert json.loads(json.dumps(log1)) == log1


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        AutoTierConfig(ladder=("flagship",))
    with pytest.raises(ValueError):
        AutoTierConfig(drift_rate=0.97)
    with pytest.raises(ValueError):
        Policy(AutoTierConfig())


def test_the_policy_never_mutates_the_state_it_is_given() -> None:
    p = policy(sample=lambda s: 0.0 if s.startswith("guard") else 0.5)
    evidence = {V.key("nano"): (1000, 1000), V.key("mini"): (500, 500)}
    s = ToolState(tool="t", tier="nano", evidence=evidence)
    before = json.dumps(s.as_dict(), sort_keys=True)
    s2, plan, _ = p.plan(s, "k", V, COSTS)
    for _ in range(5):
        s2, _ = p.observe(s2, plan, {"nano": False}, V, plan.cost)
    assert s2.tier == "mini"
    assert json.dumps(s.as_dict(), sort_keys=True) == before and evidence == {V.key("nano"): (1000, 1000),
                                                                             V.key("mini"): (500, 500)}


def test_the_summary_shows_todays_spend_and_skips_not_a_past_days() -> None:
    from tiered_mcp.cli.reports import _auto_lines
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.evidence.tiering import summary
    from tiered_mcp.specs.spec import load_specs

    config = config_from_dict({"tools": {"classify": {"auto": True, "evidence_daily_usd": 0.5}}})
    today = datetime.now(timezone.utc).date()
    stale = ToolState(tool="classify", tier="flagship", day=(today - timedelta(days=1)).isoformat(),
                      day_spend=0.4, skipped_today=7, skipped_total=9)
    [row] = summary(config, load_specs(), {"classify": (3, stale.as_dict())}, [])
    assert (row["day"], row["day_spend_usd"], row["skipped_today"], row["skipped_total"]) == (
        today.isoformat(), 0.0, 0, 9)
    line = _auto_lines([row])[0]
    assert "evidence today $0.0000 of $0.5" in line and "skipped 0 today, 9 in all" in line
    fresh = ToolState(**{**stale.__dict__, "day": today.isoformat()})
    [row] = summary(config, load_specs(), {"classify": (3, fresh.as_dict())}, [])
    assert (row["day_spend_usd"], row["skipped_today"]) == (0.4, 7)
