"""Auto-tiering on a shared ledger (SQLite and PostgreSQL): replicas that observe at once take one decision."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import anyio
import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.evidence.autotier import ToolState
from tiered_mcp.evidence.shadow import Shadows
from tiered_mcp.evidence.tiering import AutoTiering, policy_config, versions_of
from tiered_mcp.ledger.base import open_ledger
from tiered_mcp.testing import ScriptedModel, reply

from .test_autotier_server import Tiers

NEED = 88  # by hand (tests/test_autotier.py): every comparison agreeing, the step-down test clears at 88
CONFIG = config_from_dict({"cache_ttl_s": 0, "shadow": {"max_pending": 64}, "tools": {"classify": {"auto": True}}})


def on_the_brink(specs) -> ToolState:
    """On the flagship, one agreeing comparison short of mini's step down; nano clearly below the bar (so it is
    neither probed nor waited for)."""
    ladder = policy_config(CONFIG, "classify").ladder
    v = versions_of(CONFIG, specs.get("classify"), ladder)
    return ToolState(tool="classify", tier="flagship", evidence={v.key("mini"): (NEED - 1, NEED - 1),
                                                                 v.key("nano"): (10, 300)})


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_replicas_observing_at_once_switch_once(ledger_target, specs) -> None:
    brink = on_the_brink(specs)
    setup = open_ledger(ledger_target)
    setup.autotier_update("classify", lambda stored: (brink.as_dict(), []))
    setup.close()
    replicas = 6
    barrier = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def replica() -> None:
        led = open_ledger(ledger_target)
        tiering = AutoTiering(CONFIG, specs, led, now)
        policy = tiering.policies["classify"]
        versions = versions_of(CONFIG, specs.get("classify"), policy.config.ladder)
        state = brink
        state, plan, _ = policy.plan(state, "k", versions, tiering.costs("classify", policy.config.ladder))
        assert plan.probes == ("mini",)
        barrier.wait()
        try:
            # Each replica saw mini agree once, on the state it had in hand: alone, each would step down.
            led.autotier_update("classify", lambda stored: _observe(policy, stored, plan, versions))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            led.close()

    threads = [threading.Thread(target=replica) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    led = open_ledger(ledger_target)
    try:
        switches = led.tier_switches("classify")
        [(seq, stored)] = led.autotier_states().values()
    finally:
        led.close()
    assert [(w["kind"], w["from_tier"], w["to_tier"]) for w in switches] == [("step_down", "flagship", "mini")]
    assert seq == 1 + replicas and stored["tier"] == "mini"
    ladder = policy_config(CONFIG, "classify").ladder
    key = versions_of(CONFIG, specs.get("classify"), ladder).key("mini")
    assert stored["evidence"][key] == [NEED - 1 + replicas, NEED - 1 + replicas]  # every observation counted


def _observe(policy, stored, plan, versions):
    from tiered_mcp.evidence.tiering import switch_row

    state, events = policy.observe(ToolState.from_dict(stored), plan, {"mini": True}, versions, 0.0)
    return state.as_dict(), [switch_row(e, 0.95) for e in events]


@pytest.mark.anyio
async def test_two_runners_on_one_ledger_take_one_switch_and_both_follow_it(ledger_target, specs) -> None:
    brink = on_the_brink(specs)
    ledgers = [open_ledger(ledger_target) for _ in range(2)]
    ledgers[0].autotier_update("classify", lambda stored: (brink.as_dict(), []))

    def runner(led) -> tuple[Runner, AutoTiering]:
        tiering = AutoTiering(CONFIG, specs, led, now, refresh_s=0.0)
        return Runner(CONFIG, specs, ScriptedModel(fallback=Tiers()), led, env={"OPENAI_API_KEY": "sk-test"},
                      observers=(Shadows(), tiering), steering=tiering), tiering

    (a, ta), (b, tb) = runner(ledgers[0]), runner(ledgers[1])
    try:
        async with a.running(), b.running():
            assert ta.state("classify").tier == tb.state("classify").tier == "flagship"  # loaded at start
            served = []

            async def call(r: Runner, i: int) -> None:
                result = await r.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
                served.append(result.receipt["tier"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, a, 1)
                tg.start_soon(call, b, 2)
            with anyio.fail_after(20):
                while a.background_pending or b.background_pending:
                    await anyio.sleep(0.01)
            assert served == ["flagship", "flagship"]
            switches = ledgers[0].tier_switches("classify")
            assert [(w["from_tier"], w["to_tier"]) for w in switches] == [("flagship", "mini")]
            # Each replica keeps the state its own write returned, which includes the other's: both are on mini.
            assert ta.state("classify").tier == tb.state("classify").tier == "mini"
            result = await b.call("classify", {"text": "case 3", "labels": ["bug", "feature"]})
            assert result.receipt["tier"] == "mini"
    finally:
        for led in ledgers:
            led.close()


def test_a_replica_picks_up_a_switch_another_wrote(ledger_target, specs) -> None:
    """A replica that did not take part refreshes its copy from the ledger (here: `refresh_s` = 0, so on its
    next call's plan, in the background)."""
    brink = on_the_brink(specs)
    led = open_ledger(ledger_target)
    try:
        tiering = AutoTiering(CONFIG, specs, led, now, refresh_s=0.0)
        runner = Runner(CONFIG, specs, ScriptedModel(fallback=lambda req: reply(
            {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"})), led,
            env={"OPENAI_API_KEY": "sk-test"}, observers=(Shadows(), tiering), steering=tiering)

        async def scenario() -> list[str]:
            tiers = []
            async with runner.running():
                other = open_ledger(ledger_target)
                other.autotier_update("classify", lambda stored: (ToolState.from_dict(
                    {**brink.as_dict(), "tier": "mini", "left": "flagship"}).as_dict(), []))
                other.close()
                for i in range(2):
                    tiers.append((await runner.call("classify", {"text": f"c{i}", "labels": ["bug", "x"]}))
                                 .receipt["tier"])
                    with anyio.fail_after(10):
                        while runner.background_pending:
                            await anyio.sleep(0.01)
            return tiers

        # The first call was planned on the copy loaded at start (the flagship); its refresh brought mini.
        assert anyio.run(scenario) == ["flagship", "mini"]
    finally:
        led.close()


def test_a_batch_starts_on_the_tools_current_tier(ledger_target, specs) -> None:
    brink = on_the_brink(specs)
    led = open_ledger(ledger_target)
    try:
        led.autotier_update("classify", lambda stored: ({**brink.as_dict(), "tier": "mini"}, []))
        tiering = AutoTiering(CONFIG, specs, led, now)
        model = ScriptedModel(fallback=Tiers())
        runner = Runner(CONFIG, specs, model, led, env={"OPENAI_API_KEY": "sk-test"},
                        observers=(Shadows(), tiering), steering=tiering)

        async def scenario() -> None:
            async with runner.running():
                await runner.call("classify", {"items": ["a bug", "another bug"], "labels": ["bug", "feature"]})

        anyio.run(scenario)
        assert model.tiers_called() == ["mini", "mini"]  # no plan, no evidence: a batch only follows the tier
    finally:
        led.close()
