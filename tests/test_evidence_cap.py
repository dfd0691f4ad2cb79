"""`[tools.X] evidence_daily_usd` caps every evidence request of the tool on the one model path: shadow runs and the
judge calls that score them (and an auto tool's probes and guards), worked by hand from the prices per million
tokens below (docs/accounting.md, docs/routing.md)."""

import anyio
import pytest

from tiered_mcp.call.budget import utc_now, worst_case_usd
from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.evidence.tiering import AutoTiering
from tiered_mcp.testing import ScriptedModel, idle, reply

pytestmark = pytest.mark.anyio

NANO, MINI, FLAG = (0.20, 1.25), (0.75, 4.50), (2.50, 15.00)  # USD per million input / output tokens
SUMMARY = {"summary": "s", "key_points": [], "method": "abstractive"}


def usd(price, tokens_in, tokens_out):
    return (tokens_in * price[0] + tokens_out * price[1]) / 1e6


def close(a, b):
    return a == pytest.approx(b, abs=1e-12, rel=0)


def auto_runner(config, specs, ledger, model, sleeps, steering=None):
    """A Runner wired as the server wires an auto tool's steering (the config's, unless one is given)."""
    steering = steering or AutoTiering.for_config(config, specs, ledger, utc_now)
    assert steering is not None
    return Runner(config, specs, model, ledger, env={"OPENAI_API_KEY": "sk-test"}, sleep=sleeps,
                  jitter=lambda: 1.0, observers=(steering,), steering=steering), steering


def answer(req):
    if req.schema_name == "judge":  # the judge (nano: neither mini nor the flagship) is expensive on purpose
        return reply({"score_a": 0.9, "score_b": 0.9, "reason": "fine"}, input_tokens=20_000, output_tokens=1_000)
    tokens = {"nano": (600, 80), "mini": (2000, 100), "flagship": (2000, 120)}[req.tier]
    return reply(SUMMARY, input_tokens=tokens[0], output_tokens=tokens[1])


async def test_the_cap_stops_evidence_when_shadow_and_judge_spend_reach_it(make_runner, ledger):
    cap = 0.02
    model = ScriptedModel(fallback=answer)
    runner = make_runner(model, tools={"summarize": {"shadow_rate": 1.0, "evidence_daily_usd": cap}},
                         tiers={"flagship": {"max_output_tokens": 200}, "nano": {"max_output_tokens": 1000}})
    shadow, judged = usd(FLAG, 2000, 120), usd(NANO, 20_000, 1_000)
    assert close(shadow, 0.0068) and close(judged, 0.00525)
    for i in range(3):
        async with runner.running():
            await runner.call("summarize", {"text": f"A long text, number {i}."})

    # The worst cases the budget reserves: the prompt's o200k tokens at the input price plus the whole output cap.
    shadow_request = next(r for r in model.requests if r.tier == "flagship")
    judge_request = next(r for r in model.requests if r.schema_name == "judge")
    w_shadow = worst_case_usd(runner.config.tiers["flagship"], shadow_request.messages)
    w_judge = worst_case_usd(runner.config.tiers["nano"], judge_request.messages)
    assert w_shadow < 0.004 and 0.00125 < w_judge < 0.0015
    # Call 1: shadow (0 + w_shadow <= cap) and judge (0.0068 + w_judge <= cap) run: 0.01205 spent.
    # Call 2: shadow runs (0.01205 + w_shadow <= cap): 0.01885; its judge is refused (0.01885 + w_judge > cap).
    # Call 3: the shadow is refused (0.01885 + w_shadow > cap). Had the judge's spend not counted, the evidence
    # would stand at 2 x 0.0068 = 0.0136 and call 3's shadow would have run (0.0136 + w_shadow <= cap).
    assert shadow + w_judge <= cap and shadow + judged + w_shadow <= cap
    assert 2 * shadow + judged + w_judge > cap and 2 * shadow + judged + w_shadow > cap
    assert 2 * shadow + w_shadow <= cap

    assert sum(r.tier == "flagship" for r in model.requests) == 2  # call 3's shadow was never sent
    assert sum(r.schema_name == "judge" for r in model.requests) == 1
    evidence = [c for c in ledger.calls() if c["kind"] != "call"]
    spent = [(c["kind"], c["ok"], c["cost_usd"]) for c in evidence]
    assert sorted(spent, key=str) == sorted([("shadow", 1, pytest.approx(shadow)), ("judge", 1, pytest.approx(judged)),
                                             ("shadow", 1, pytest.approx(shadow)), ("judge", 0, 0.0),
                                             ("shadow", 0, 0.0)], key=str)
    refused = [c for c in evidence if not c["ok"]]
    assert all("tools.summarize.evidence_daily_usd" in (c["error"] or "") for c in refused)
    usage = ledger.usage()
    assert close(usage.evidence_usd, 2 * shadow + judged) and usage.evidence_usd <= cap
    rows = sorted(ledger.shadows(tool="summarize"), key=lambda r: r.status)
    assert [r.status for r in rows] == ["scored", "skipped", "skipped"]
    [judge_refused] = [r for r in rows if "judge refused by the budget" in r.detail]
    [run_refused] = [r for r in rows if "over budget" in r.detail]
    assert judge_refused.score is None and judge_refused.agree is None
    assert "evidence_daily_usd" in judge_refused.detail and "evidence_daily_usd" in run_refused.detail
    # Answers are never held to the evidence cap.
    assert sum(c["kind"] == "call" and c["ok"] for c in ledger.calls()) == 3


async def test_an_auto_tools_day_of_evidence_spend_counts_its_judge_calls(ledger, specs, sleeps):
    """summarize on auto starts on the flagship and probes nano and mini on every call; each probe is scored by a
    judge that is neither arm (mini grades nano, nano grades mini). The day's evidence spend is all four."""
    model = ScriptedModel(fallback=answer)
    config = config_from_dict({"cache_ttl_s": 0, "tools": {"summarize": {"auto": True}}})
    runner, steering = auto_runner(config, specs, ledger, model, sleeps)
    async with runner.running():
        await runner.call("summarize", {"text": "A long text."})
        await idle(runner)
    judges = sorted(r.tier for r in model.requests if r.schema_name == "judge")
    assert judges == ["mini", "nano"]
    expected = usd(NANO, 600, 80) + usd(MINI, 2000, 100) + usd(MINI, 20_000, 1_000) + usd(NANO, 20_000, 1_000)
    state = ledger.autotier_states()["summarize"][1]
    assert close(state["day_spend"], expected)
    assert close(ledger.usage().evidence_usd, expected)


async def test_a_probe_whose_judge_the_cap_refuses_is_a_skip_not_a_failure(ledger, specs, sleeps):
    """summarize on auto, first call: nano's probe runs (its worst case fits the cap), but the judge that would score
    it (mini, whose output cap makes its worst case pass the cap) is refused; mini's own probe run is refused too.
    Both are skips: two skipped rows, skipped_total 2, and the day's spend is nano's run alone."""
    cap = 0.005
    model = ScriptedModel(fallback=answer)
    config = config_from_dict({"cache_ttl_s": 0, "tools": {"summarize": {"auto": True, "evidence_daily_usd": cap}},
                               "tiers": {"nano": {"max_output_tokens": 1000}, "mini": {"max_output_tokens": 2000}}})
    runner, steering = auto_runner(config, specs, ledger, model, sleeps)
    async with runner.running():
        await runner.call("summarize", {"text": "A long text."})
        await idle(runner)
    nano_run = usd(NANO, 600, 80)
    assert [(r.tier, r.schema_name) for r in model.requests] == [("flagship", "summarize"), ("nano", "summarize")]
    # The worst cases the budget reserved: nano's run fits; mini's output cap alone (2000 x $4.50/M) passes the cap.
    assert worst_case_usd(config.tiers["nano"], model.requests[1].messages) <= cap < 2000 * MINI[1] / 1e6
    rows = {r.tier: r for r in ledger.shadows(tool="summarize")}
    assert (rows["nano"].status, rows["mini"].status) == ("skipped", "skipped")
    assert "judge refused by the budget" in rows["nano"].detail and rows["nano"].score is None
    assert "run skipped" in rows["mini"].detail
    state = ledger.autotier_states()["summarize"][1]
    assert (state["skipped_today"], state["skipped_total"]) == (2, 2)
    assert close(state["day_spend"], nano_run) and close(ledger.usage().evidence_usd, nano_run)
    assert steering.skipped == 2


async def test_a_failed_probes_spend_counts_in_the_days_evidence_spend(ledger, specs, sleeps):
    """classify on auto, first call on the flagship: mini's probe agrees; nano's answers are never valid JSON, so
    its probe fails after its attempts, each of which was paid for. The day's spend is mini's run plus every nano
    attempt, by hand."""
    def answer(req):
        if req.tier == "nano":
            return reply("not json", input_tokens=600, output_tokens=80)
        return reply({"label": "bug", "labels": ["bug"], "confidence": 0.95, "reason": "r"},
                     input_tokens=600, output_tokens=80)

    model = ScriptedModel(fallback=answer)
    config = config_from_dict({"cache_ttl_s": 0, "tools": {"classify": {"auto": True}}})
    runner, steering = auto_runner(config, specs, ledger, model, sleeps)
    async with runner.running():
        await runner.call("classify", {"text": "It crashes", "labels": ["bug", "feature"]})
        await idle(runner)
    nano_attempts = sum(r.tier == "nano" for r in model.requests)
    assert nano_attempts >= 2  # the first answer and at least one repair
    rows = {r.tier: r for r in ledger.shadows(tool="classify")}
    assert rows["nano"].status == "failed" and rows["mini"].status == "scored"
    expected = nano_attempts * usd(NANO, 600, 80) + usd(MINI, 600, 80)
    state = ledger.autotier_states()["classify"][1]
    assert close(state["day_spend"], expected) and close(ledger.usage().evidence_usd, expected)


async def test_evidence_skipped_for_too_many_runs_in_flight_is_counted(ledger, specs, sleeps):
    """shadow.max_pending = 1, and any evidence run is held in flight: later calls' probes are skipped, written as
    skipped rows and counted in the state like skips over the limit."""
    gate = anyio.Event()

    async def held(req):
        if req.tier != "flagship":
            await gate.wait()
        return answer(req)

    model = ScriptedModel(fallback=held)
    config = config_from_dict({"cache_ttl_s": 0, "shadow": {"max_pending": 1}, "tools": {"summarize": {"auto": True}}})
    runner, steering = auto_runner(config, specs, ledger, model, sleeps)
    async with runner.running():
        for i in range(4):
            await runner.call("summarize", {"text": f"A long text, number {i}."})
        await runner.writer.flush()
        rows = ledger.shadows(tool="summarize")
        # The first call's evidence may run (and hold the one slot) or be skipped itself: the rest are skipped.
        assert len(rows) >= 3 and all(r.status == "skipped" and "max_pending" in r.detail for r in rows)
        assert steering.skipped == len(rows)
        gate.set()
        await idle(runner)
    state = ledger.autotier_states()["summarize"][1]
    assert state["skipped_today"] == state["skipped_total"] == len(rows)


async def test_a_guard_rerun_the_cap_refuses_counts_its_probe_as_skipped_too(ledger, specs, sleeps):
    """classify on auto, on mini with nano still open: every call is guarded (guard_share 2), and a guard probes
    nano against the flagship's rerun. The flagship's worst case (a 2,000-token output cap: 2000 x $15/M = $0.03)
    passes the $0.01 cap, so the rerun is refused; nano's probe, which needed it, is a skip too: 2 per call."""
    from tiered_mcp.evidence.autotier import ToolState

    config = config_from_dict({"cache_ttl_s": 0, "tiers": {"flagship": {"max_output_tokens": 2000}},
                               "tools": {"classify": {"auto": True, "evidence_daily_usd": 0.01}}})
    version = str(specs.get("classify").version)
    keys = {t: f"{t}|{config.tiers[t].model}|{version}" for t in ("nano", "mini")}
    state = ToolState(tool="classify", tier="mini", evidence={keys["mini"]: (500, 500), keys["nano"]: (5, 5)})
    ledger.autotier_update("classify", lambda _: (state.as_dict(), []))
    model = ScriptedModel(fallback=lambda req: reply({"label": "bug", "labels": ["bug"], "confidence": 0.95,
                                                      "reason": "r"}, input_tokens=600, output_tokens=80))
    runner, steering = auto_runner(config, specs, ledger, model, sleeps,
                                   AutoTiering(config, specs, ledger, utc_now, overrides={"guard_share": 2.0}))
    async with runner.running():
        await steering.load(runner)
        for i in range(2):
            result = await runner.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
            assert result.receipt["tier"] == "mini"
            await idle(runner)
    assert [r.tier for r in model.requests] == ["mini", "mini"]  # neither the rerun nor the probe was sent
    rows = ledger.shadows(tool="classify")
    assert len(rows) == 2 and all(r.status == "skipped" and "reference run skipped" in r.detail for r in rows)
    saved = ledger.autotier_states()["classify"][1]
    assert (saved["skipped_today"], saved["skipped_total"]) == (4, 4) and steering.skipped == 4
    assert saved["day_spend"] == 0.0
