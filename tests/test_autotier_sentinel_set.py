"""The fixed sentinel set (`[tools.X] sentinel_set = N`): the policy keeps the first N calls served on the
reference and replays them on the serving tier; replays feed the drift detector and the sentinels' counts, never
the tier's evidence; in the server the set lives in the ledger, replays go through the one model path as shadow
runs with status `replay`, and a release caught by replays alone steps the tool up. Figures by hand."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.evidence.autotier import SET_GUARD_SHARE, AutoTierConfig, Policy, ToolState, Versions
from tiered_mcp.evidence.shadow import Shadows
from tiered_mcp.evidence.tiering import AutoTiering, policy_config
from tiered_mcp.ledger.base import open_ledger
from tiered_mcp.specs.spec import default_specs_dir, load_specs
from tiered_mcp.testing import ScriptedModel, idle, reply

V = Versions(models={"nano": "n-1", "mini": "m-1", "flagship": "f-1"}, spec_version="3")
COSTS = {"nano": 0.00022, "mini": 0.00081, "flagship": 0.0027}
T0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
STEP = math.log(0.2 / 0.05)  # the detector's step on a disagreement (drift_rate 0.8 against the bar 0.95)


def policy(sample=lambda s: 0.5, **kw) -> Policy:
    return Policy(AutoTierConfig(sentinel_set=3, **kw), sample=sample, clock=lambda: T0)


def on_nano(set_size: int = 3) -> ToolState:
    return ToolState(tool="t", tier="nano", evidence={V.key("nano"): (1000, 1000), V.key("mini"): (500, 500)},
                     set_key=V.key("flagship"), set_size=set_size)


def test_the_reference_collects_until_the_set_is_full_and_a_new_reference_starts_again() -> None:
    p = policy()
    s = p.new_state("t")
    for n in range(3):
        s, plan, _ = p.plan(s, f"k{n}", V, COSTS)
        assert plan.collect and plan.tier == "flagship" and s.set_key == V.key("flagship")
        s, _ = p.observe(s, plan, {"nano": False, "mini": False}, V, 0.0, COSTS, collected=1)
        assert s.set_size == n + 1
    s, plan, _ = p.plan(s, "k3", V, COSTS)
    assert not plan.collect
    v2 = Versions(models={**V.models, "flagship": "f-2"}, spec_version="3")
    s, plan, _ = p.plan(s, "k4", v2, COSTS)
    assert plan.collect and s.set_size == 0 and s.set_key == v2.key("flagship")


def test_replay_rate_and_guard_rate_by_hand() -> None:
    p = policy()
    # replay_share * (reference - tier) / tier: 0.005 * (0.0027 - 0.00022) / 0.00022 = 0.0563636...
    assert p.replay_rate("nano", COSTS) == pytest.approx(0.005 * 0.00248 / 0.00022)
    assert p.replay_rate("mini", COSTS) == pytest.approx(0.005 * 0.00189 / 0.00081)
    # With a set no hash-chosen sentinel reruns come out of the guard's allowance: 0.01 * 0.00248 / 0.0027.
    q = policy(guard_share=SET_GUARD_SHARE)
    assert q.guard_rate("nano", COSTS) == pytest.approx(0.01 * 0.00248 / 0.0027)
    # ... while without a set the sentinel rate 0.01 does.
    plain = Policy(AutoTierConfig(guard_share=0.05), clock=lambda: T0)
    assert plain.guard_rate("nano", COSTS) == pytest.approx(0.05 * 0.00248 / 0.0027 - 0.01)


def test_replays_are_drawn_at_the_rate_and_on_every_call_under_an_alert() -> None:
    rate = 0.005 * 0.00248 / 0.00022
    below = policy(sample=lambda s: rate - 1e-9 if s.startswith("replay") else 0.7)
    s, plan, _ = below.plan(on_nano(), "k", V, COSTS)
    assert plan.replay == 0.7 and not plan.reference and plan.cost == pytest.approx(COSTS["nano"])
    above = policy(sample=lambda s: rate + 1e-9 if s.startswith("replay") else 0.7)
    assert above.plan(on_nano(), "k", V, COSTS)[1].replay is None
    alert = ToolState(**{**on_nano().__dict__, "detector": 0.1})
    s, plan, _ = above.plan(alert, "k", V, COSTS)
    assert plan.replay == 0.7 and plan.alert
    assert above.plan(on_nano(set_size=0), "k", V, COSTS)[1].replay is None  # nothing kept yet
    # No hash-chosen sentinel with a set, whatever the hash.
    low = policy(sample=lambda s: 0.0 if s.startswith("sentinel") else 0.99)
    assert not low.plan(on_nano(), "k", V, COSTS)[1].sentinel


def test_a_replay_moves_the_detector_and_the_sentinels_but_not_the_evidence() -> None:
    p = policy(sample=lambda s: 0.0 if s.startswith("replay") else 0.99)
    s = on_nano()
    for i in range(3):
        s, plan, _ = p.plan(s, f"k{i}", V, COSTS)
        s, events = p.observe(s, plan, {}, V, COSTS["nano"], COSTS, replayed=False)
        assert events == [] and s.detector == pytest.approx((i + 1) * STEP)
        assert s.sentinels == (0, i + 1) and s.evidence[V.key("nano")] == (1000, 1000)
    s, plan, _ = p.plan(s, "k3", V, COSTS)
    s, events = p.observe(s, plan, {}, V, COSTS["nano"], COSTS, replayed=False)
    (e,) = events  # 4 * log 4 = 5.55 >= log 100 = 4.61
    assert (e.kind, e.from_tier, e.to_tier) == ("step_up", "nano", "mini") and e.reason.startswith("drift detector")
    assert e.evidence["discarded"] == [1000, 1000]
    # An agreeing replay brings the detector down by log(0.8 / 0.95), to no less than 0.
    s, plan, _ = p.plan(on_nano(), "k", V, COSTS)
    s, _ = p.observe(ToolState(**{**s.__dict__, "detector": 1.0}), plan, {}, V, 0.0, COSTS, replayed=True)
    assert s.detector == pytest.approx(1.0 + math.log(0.8 / 0.95)) and s.sentinels == (1, 1)


def test_the_config_key_turns_the_set_on_and_lowers_the_guard_default() -> None:
    cfg = config_from_dict({"tools": {"classify": {"auto": True, "sentinel_set": 64}}})
    knobs = policy_config(cfg, "classify")
    assert (knobs.sentinel_set, knobs.guard_share) == (64, SET_GUARD_SHARE)
    cfg = config_from_dict({"tools": {"classify": {"auto": True, "sentinel_set": 64, "guard_share": 0.03}}})
    assert policy_config(cfg, "classify").guard_share == 0.03
    cfg = config_from_dict({"tools": {"classify": {"auto": True}}})
    assert (policy_config(cfg, "classify").sentinel_set, policy_config(cfg, "classify").guard_share) == (0, 0.05)


def kept_on_nano(tmp_path: Path, set_key: str, baselines: dict[str, bool], reason: str,
                 evidence: dict[str, tuple[int, int]]):
    """A ledger where classify serves on nano with `evidence`, and a full set of 3 kept under `set_key` (each
    item's kept answer "bug", with `reason`, and `baselines`)."""
    ledger = open_ledger(tmp_path / "ledger.sqlite3")
    for n in range(3):
        ledger.sentinel_add("classify", set_key, f"k{n}", {"text": f"kept {n}", "labels": ["bug", "feature"]},
                            {"label": "bug", "labels": ["bug"], "confidence": 0.95, "reason": reason}, baselines)
    state = ToolState(tool="classify", tier="nano", evidence=evidence, set_key=set_key, set_size=3)
    ledger.autotier_update("classify", lambda _: (state.as_dict(), []))
    return ledger


class Tiers:
    """classify by label: every tier says "bug" until `drift` makes nano say "feature"; records what it was asked."""

    def __init__(self) -> None:
        self.drift = False
        self.asked: list[tuple[str, str]] = []

    def __call__(self, req):
        self.asked.append((req.tier, req.arguments["text"]))
        label = "feature" if self.drift and req.tier == "nano" else "bug"
        return reply({"label": label, "labels": [label], "confidence": 0.95, "reason": "r"},
                     input_tokens=600, output_tokens=80)


async def _run(tmp_path: Path, sentinel_set: int) -> None:
    specs = load_specs([default_specs_dir()])
    config = config_from_dict({"cache_ttl_s": 0, "shadow": {"max_pending": 64},
                               "tools": {"classify": {"auto": True, "sentinel_set": sentinel_set}}})
    ledger = open_ledger(tmp_path / "ledger.sqlite3")
    # Every call on nano replays (replay_share 1: rate min(1, 2480/220)); no guard or alert reruns on the flagship,
    # so only replays can see the release.
    tiering = AutoTiering(config, specs, ledger, clock=lambda: T0,
                          overrides={"replay_share": 1.0, "guard_share": 0.0, "alert_rate": 0.0})
    model = Tiers()
    runner = Runner(config, specs, ScriptedModel(fallback=model), ledger, env={"OPENAI_API_KEY": "sk-test"},
                    clock=lambda: T0, observers=(Shadows(), tiering), steering=tiering)

    async def call(i: int) -> str:
        result = await runner.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
        await idle(runner)
        return str(result.receipt["tier"])

    async with runner.running():
        served = [await call(i) for i in range(88)]  # 88 all-agreeing comparisons clear the bar (test_autotier.py)
        assert set(served) == {"flagship"}
        key = f"flagship|{config.tiers['flagship'].model}|{specs.get('classify').version}"
        items = ledger.sentinel_items("classify", key)
        if not sentinel_set:
            assert items == [] and tiering.state("classify").set_size == 0
            return
        # The first 3 calls served on the flagship, with its answers and the probes' verdicts then.
        assert [i["arguments"]["text"] for i in items] == ["case 0", "case 1", "case 2"]
        assert all(i["reference"]["label"] == "bug" for i in items)
        nano_key = f"nano|{config.tiers['nano'].model}|{specs.get('classify').version}"
        assert all(i["baselines"][nano_key] is True for i in items)
        assert tiering.state("classify").set_size == 3
        assert await call(88) == "nano"
        model.asked.clear()
        assert await call(89) == "nano"
        # The replay asked nano about a kept item, not the call's own text.
        replayed = [text for tier, text in model.asked if tier == "nano" and text != "case 89"]
        assert len(replayed) == 1 and replayed[0] in {"case 0", "case 1", "case 2"}
        # Replays are not traffic: nano's evidence holds the cold start's 88 probes and neither replay, which
        # count as sentinels (calls 88 and 89 each replayed one item).
        assert tiering.state("classify").evidence[nano_key] == (88, 88)
        assert tiering.state("classify").sentinels == (2, 2)
        (described,) = await tiering.describe()  # what report --json and the tiered://tiers resource show
        assert described["sentinel_set"] == {"kept": 3, "size": 3, "sentinels": [2, 2]}
        from tiered_mcp.cli.reports import _auto_lines
        assert "sentinel set 3 of 3 kept, replays since the last switch 2 of 2 agree" in _auto_lines([described])[0]
        model.drift = True
        served = [await call(i) for i in range(90, 100)]
        # Four disagreeing replays: 4 * log 4 >= log 100, so the fifth call after the release runs on mini.
        assert served[:4] == ["nano"] * 4 and served[4] == "mini"
        await runner.writer.flush()
        (up, _down) = ledger.tier_switches("classify")
        assert (up["kind"], up["from_tier"], up["to_tier"]) == ("step_up", "nano", "mini")
        assert up["evidence"]["detector"] == pytest.approx(4 * math.log(4))
        replays = [r for r in ledger.shadows(tool="classify") if r.detail.startswith("auto replay")]
        assert all(r.status == "replay" and r.comparison_tier == "flagship" for r in replays)
        # On mini (after the step up) the kept items replay too, and mini still agrees.
        assert {r.tier for r in replays} == {"nano", "mini"} and all(r.agree for r in replays if r.tier == "mini")
        rows = [r for r in replays if r.tier == "nano"]
        # A replay is a nano call at 600 input and 80 output tokens: 600 * 0.20 / 1e6 + 80 * 1.25 / 1e6.
        assert all(r.cost_usd == pytest.approx(0.00022) for r in rows)
        assert [r.agree for r in rows][-4:] == [False] * 4
        # report leaves replays out: its nano-vs-flagship group holds the 88 cold-start probes only.
        from tiered_mcp.evidence.report import build_report
        nano_report = next(r for r in build_report(ledger, config=config, specs=specs) if r.tier == "nano")
        assert (nano_report.shadowed, nano_report.scored, nano_report.agreement) == (88, 88, 1.0)
    ledger.close()


@pytest.mark.anyio
async def test_in_the_server_the_set_is_kept_replayed_and_catches_a_release(tmp_path) -> None:
    await _run(tmp_path, 3)


@pytest.mark.anyio
async def test_without_a_set_no_arguments_are_kept(tmp_path) -> None:
    await _run(tmp_path, 0)


def test_the_ledger_keeps_each_item_once_per_set_on_both_backends(ledger) -> None:
    args, ref = {"text": "crash", "labels": ["bug", "feature"]}, {"label": "bug"}
    assert ledger.sentinel_add("t", "flagship|f-1|1", "a", args, ref, {"nano|n-1|1": True})
    assert not ledger.sentinel_add("t", "flagship|f-1|1", "a", args, {"label": "other"}, {})  # a second replica
    assert ledger.sentinel_add("t", "flagship|f-2|1", "a", args, ref, {})  # a new reference: a new set
    assert ledger.sentinel_items("t", "flagship|f-1|1") == [
        {"args_key": "a", "arguments": args, "reference": ref, "baselines": {"nano|n-1|1": True}}]
    assert ledger.sentinel_items("u", "flagship|f-1|1") == []


@pytest.mark.anyio
async def test_a_model_that_came_after_the_set_gets_its_baselines_from_its_first_replays(tmp_path) -> None:
    specs = load_specs([default_specs_dir()])
    config = config_from_dict({"cache_ttl_s": 0, "shadow": {"max_pending": 64},
                               "tools": {"classify": {"auto": True, "sentinel_set": 3}}})
    version = str(specs.get("classify").version)
    set_key = f"flagship|{config.tiers['flagship'].model}|{version}"
    nano_key = f"nano|{config.tiers['nano'].model}|{version}"
    mini_key = f"mini|{config.tiers['mini'].model}|{version}"
    # The set was kept while nano was another model: its baselines name that one only.
    ledger = kept_on_nano(tmp_path, set_key, {f"nano|older-nano|{version}": True}, "r",
                          {nano_key: (1000, 1000), mini_key: (1000, 1000)})
    tiering = AutoTiering(config, specs, ledger, clock=lambda: T0,
                          overrides={"replay_share": 1.0, "guard_share": 0.0, "alert_rate": 0.0})
    model = Tiers()
    runner = Runner(config, specs, ScriptedModel(fallback=model), ledger, env={"OPENAI_API_KEY": "sk-test"},
                    clock=lambda: T0, observers=(Shadows(), tiering), steering=tiering)

    async def call(i: int) -> str:
        result = await runner.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
        await idle(runner)
        return str(result.receipt["tier"])

    async with runner.running():
        await tiering.load(runner)
        i = 0
        while not all(nano_key in it["baselines"] for it in ledger.sentinel_items("classify", set_key)):
            assert await call(i) == "nano"
            i += 1
            assert i < 50
        # A baseline is not a verdict: nothing moved the detector or the sentinels' counts.
        assert tiering.state("classify").detector == 0.0
        replays = [r for r in ledger.shadows(tool="classify") if r.detail.startswith("auto replay")]
        assert sum("baseline for" in r.detail for r in replays) == 3
        assert tiering.state("classify").sentinels == (len(replays) - 3, len(replays) - 3)
        assert all(it["baselines"][nano_key] is True for it in ledger.sentinel_items("classify", set_key))
        model.drift = True
        served = [await call(i) for i in range(100, 105)]
        assert served == ["nano"] * 4 + ["mini"]  # four disagreeing replays against the new baselines
        (up,) = ledger.tier_switches("classify")
        assert up["evidence"]["detector"] == pytest.approx(4 * math.log(4))
    ledger.close()


def test_a_replay_still_in_flight_after_a_switch_does_not_count_against_the_new_tier() -> None:
    """A nano replay whose verdict lands after the tool stepped up to mini speaks for nano, not mini."""
    p = policy(sample=lambda s: 0.0 if s.startswith("replay") else 0.99)
    s, plan, _ = p.plan(on_nano(), "k", V, COSTS)
    assert plan.tier == "nano" and plan.replay is not None
    # Another call's evidence stepped the tool up meanwhile (nano's evidence discarded with the alarm).
    on_mini = ToolState(**{**s.__dict__, "tier": "mini", "evidence": {V.key("mini"): (500, 500)}})
    for _ in range(5):  # four would alarm (4 log 4 >= log 100) were they counted
        on_mini, events = p.observe(on_mini, plan, {}, V, COSTS["nano"], COSTS, replayed=False)
        assert events == []
    assert on_mini.tier == "mini" and on_mini.detector == 0.0 and on_mini.sentinels == (0, 0)
    assert on_mini.day_spend == pytest.approx(5 * COSTS["nano"])  # its cost is evidence spend all the same


def test_guard_reruns_fill_a_set_left_short_below_the_reference() -> None:
    """A new flagship model starts a new, empty set while the tool is on nano: guard reruns, which give a reference
    answer, collect into it until it is full, so replays resume."""
    p = policy(sample=lambda s: 0.0 if s.startswith("guard") else 0.99)
    v2 = Versions(models={**V.models, "flagship": "f-2"}, spec_version="3")
    s = on_nano()
    for n in range(3):
        s, plan, _ = p.plan(s, f"k{n}", v2, COSTS)
        assert plan.reference and plan.collect and s.set_key == v2.key("flagship")
        s, _ = p.observe(s, plan, {"nano": True}, v2, COSTS["flagship"], COSTS, collected=1)
    assert s.set_size == 3 and s.tier == "nano"
    s, plan, _ = p.plan(s, "k3", v2, COSTS)
    assert plan.reference and not plan.collect


def test_flagship_probes_are_not_exempt_from_the_days_limit() -> None:
    """On the reference a hash-chosen 'sentinel' watches nothing served: its probes are held to the limit."""
    p = Policy(AutoTierConfig(daily_evidence_limit=0.001), sample=lambda s: 0.0, clock=lambda: T0)
    s = ToolState(**{**p.new_state("t").__dict__, "day": T0.date().isoformat(), "day_spend": 0.001})
    s, plan, _ = p.plan(s, "k", V, COSTS)
    assert plan.tier == "flagship" and plan.skipped and plan.probes == () and s.skipped_today == 1


@pytest.mark.anyio
async def test_a_new_flagship_model_gets_a_new_set_from_guard_reruns(tmp_path) -> None:
    specs = load_specs([default_specs_dir()])
    config = config_from_dict({"cache_ttl_s": 0, "shadow": {"max_pending": 64},
                               "tools": {"classify": {"auto": True, "sentinel_set": 3}}})
    version = str(specs.get("classify").version)
    old_set = f"flagship|older-flagship|{version}"
    new_set = f"flagship|{config.tiers['flagship'].model}|{version}"
    nano_key = f"nano|{config.tiers['nano'].model}|{version}"
    ledger = kept_on_nano(tmp_path, old_set, {nano_key: True}, "old", {nano_key: (1000, 1000)})
    # guard_share 2: a rerun on every nano call (2 x 2480/2700 >= 1); no replays, so only guards collect.
    tiering = AutoTiering(config, specs, ledger, clock=lambda: T0,
                          overrides={"replay_share": 0.0, "guard_share": 2.0, "alert_rate": 0.0})

    def answer(req):  # every tier agrees on the label; the reason says who answered
        return reply({"label": "bug", "labels": ["bug"], "confidence": 0.95, "reason": req.tier},
                     input_tokens=600, output_tokens=80)

    runner = Runner(config, specs, ScriptedModel(fallback=answer), ledger, env={"OPENAI_API_KEY": "sk-test"},
                    clock=lambda: T0, observers=(Shadows(), tiering), steering=tiering)
    async with runner.running():
        await tiering.load(runner)
        for i in range(4):
            result = await runner.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
            assert result.receipt["tier"] == "nano"
            await idle(runner)
    items = ledger.sentinel_items("classify", new_set)
    assert [i["arguments"]["text"] for i in items] == ["case 0", "case 1", "case 2"]  # full at 3: case 3 not kept
    assert all(i["reference"]["reason"] == "flagship" for i in items)  # the rerun's answer, not the served one
    assert all(i["baselines"] == {nano_key: True} for i in items)
    assert tiering.state("classify").set_size == 3 and tiering.state("classify").set_key == new_set
    ledger.close()
