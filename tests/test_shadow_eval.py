"""Shadow comparisons, the report and bake-offs, against scripted tiers whose errors are known in advance."""

import json

import anyio
import pytest

from tiered_mcp.cli.html_report import render_html
from tiered_mcp.cli.main import main
from tiered_mcp.evidence.evaluate import Case, cheapest_meeting, config_snippet, load_cases, pairwise, run_eval
from tiered_mcp.evidence.report import build_report, wilson
from tiered_mcp.evidence.shadow import args_key, sampled
from tiered_mcp.testing import ScriptedModel, idle, reply

from .conftest import server_env

pytestmark = pytest.mark.anyio

LABELS = ["bug", "feature"]


def truth(i: int) -> str:
    return "bug" if i % 2 else "feature"


def tiers_that_differ(wrong_on_nano: set[int]):
    """nano is wrong exactly on the items in `wrong_on_nano`; mini and flagship are always right."""

    def answer(req):
        if req.schema_name == "judge":
            return reply({"score": 0.9, "reason": "as good"})
        text = req.messages[1]["content"].split("<text>")[1]
        i = int(text.split("item-")[1].split()[0])
        if req.schema_name == "extract":
            city = "Nowhere" if req.tier == "nano" and i in wrong_on_nano else f"City{i}"
            return reply({"data": {"city": city}, "missing": []})
        label = truth(i)
        if req.tier == "nano" and i in wrong_on_nano:
            label = "bug" if label == "feature" else "feature"
        return reply({"label": label, "labels": [label], "confidence": 0.95, "reason": "r"})

    return ScriptedModel(fallback=answer)


async def test_shadow_agreement_matches_the_known_truth(make_runner, ledger):
    model = tiers_that_differ(wrong_on_nano=set(range(0, 40, 2)))  # extract on nano: wrong on half
    runner = make_runner(model, tools={"classify": {"shadow_rate": 1.0}, "extract": {"shadow_rate": 1.0}},
                         shadow={"max_pending": 256})
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    async with runner.running():
        for i in range(40):
            await runner.call("classify", {"text": f"item-{i} text", "labels": LABELS})
            await runner.call("extract", {"text": f"item-{i} ships to City{i} or Nowhere", "schema": schema})
        await idle(runner)
    reports = {r.tool: r for r in build_report(ledger)}
    cls, ext = reports["classify"], reports["extract"]
    assert (cls.calls, cls.shadowed, cls.scored) == (40, 40, 40)
    # classify's nano is wrong on the even items too: 20 of 40 disagree.
    assert cls.agreement == 0.5 and ext.agreement == 0.5
    assert "move to flagship, or improve the prompt" in cls.recommendation
    assert cls.comparison_cost_per_call > cls.cost_per_call


async def test_a_tier_that_agrees_is_kept(make_runner, ledger):
    runner = make_runner(tiers_that_differ(set()), tools={"classify": {"shadow_rate": 1.0}}, shadow={"max_pending": 64})
    async with runner.running():
        for i in range(60):
            await runner.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(runner)
        # 60 of 60 agree: the anytime-valid lower bound (89%) is not yet at the 90% bar, and the report says how
        # many more comparisons it needs rather than deciding early.
        [early] = build_report(ledger)
        assert early.decision == "undecided" and early.more_needed is not None and early.more_needed <= 15
        assert f"about {early.more_needed} more comparisons would decide it" in early.recommendation
        for i in range(60, 60 + early.more_needed):
            await runner.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(runner)
    [r] = build_report(ledger)
    n = 60 + early.more_needed
    assert r.agreement == 1.0 and r.decision == "clears" and r.recommendation.startswith("classify: nano agrees 100% ± ")
    assert f"with flagship over {n} calls (anytime-valid bounds" in r.recommendation
    assert r.recommendation.endswith("keep nano")
    assert [row["kind"] for row in ledger.calls()].count("shadow") == n


async def test_shadow_runs_are_sampled_bounded_and_never_delay_the_answer(make_runner, ledger):
    gate = anyio.Event()

    async def slow_flagship(req):
        if req.tier == "flagship":
            await gate.wait()
        return reply({"label": "bug", "labels": ["bug"], "confidence": 0.95, "reason": "r"})

    texts = [f"item-{i}" for i in range(200)]
    key = lambda t: args_key(make_runner().specs.get("classify"), {"text": t, "labels": LABELS, "multi_label": False})  # noqa: E731
    chosen = [t for t in texts if sampled(key(t), 0.1)][:4] + [t for t in texts if not sampled(key(t), 0.1)][:1]
    runner = make_runner(ScriptedModel(fallback=slow_flagship), tools={"classify": {"shadow_rate": 0.1}},
                         shadow={"max_pending": 2})
    async with runner.running():
        for text in chosen:
            with anyio.fail_after(2):  # answered while the shadow run is still waiting on the flagship
                await runner.call("classify", {"text": text, "labels": LABELS})
        # 4 sampled by their arguments' hash, 2 over the bound: skipped, and written down as skipped.
        assert runner.background_pending >= 2
        gate.set()
        await idle(runner)
    rows = ledger.shadows()
    assert sorted(r.status for r in rows) == ["scored", "scored", "skipped", "skipped"]
    [r] = build_report(ledger)
    assert (r.scored, r.skipped) == (2, 2)


def test_shadow_sampling_is_deterministic_by_arguments():
    keys = [f"{i:032x}" for i in range(0, 16**6, 16**6 // 10_000)]
    share = sum(sampled(k[::-1], 0.25) for k in keys) / len(keys)
    assert 0.23 < share < 0.27
    assert all(sampled(k, 0.25) == sampled(k, 0.25) for k in keys[:100])
    assert sampled("0" * 32, 0.01) and not sampled("f" * 32, 0.99)


async def test_identical_arguments_are_compared_once_and_a_model_swap_starts_afresh(make_runner, ledger, specs):
    model = tiers_that_differ(wrong_on_nano=set(range(10)))  # the old nano is wrong on items 0-9
    runner = make_runner(model, tools={"classify": {"shadow_rate": 1.0}}, shadow={"max_pending": 64})
    async with runner.running():
        for i in list(range(20)) + list(range(20)):  # every argument twice
            await runner.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(runner)
    [old] = build_report(ledger, config=runner.config, specs=specs)
    assert (old.scored, old.agreement, old.model) == (20, 0.5, "gpt-5.4-nano")
    # nano is pointed at a new model that is always right: the report judges it alone, and says what it left out.
    swapped = make_runner(tiers_that_differ(set()), tiers={"nano": {"model": "gpt-5.5-nano"}},
                          tools={"classify": {"shadow_rate": 1.0}}, shadow={"max_pending": 64})
    [fresh] = build_report(ledger, config=swapped.config, specs=specs)
    assert (fresh.scored, fresh.older, fresh.agreement) == (0, 20, None)
    async with swapped.running():
        for i in range(20):
            await swapped.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(swapped)
    [new] = build_report(ledger, config=swapped.config, specs=specs)
    assert (new.model, new.scored, new.agreement, new.older) == ("gpt-5.5-nano", 20, 1.0, 20)
    assert "20 comparisons of earlier models or spec versions are not counted" in new.recommendation


def blind_judge(candidate_score, reference_summary="ref"):
    """A judge that finds the reference by its text, whichever side it is on, and scores it 1.0 (the candidate gets
    `candidate_score`)."""

    def answer(req):
        if req.schema_name == "judge":
            text = req.messages[1]["content"]
            a = text.split("<answer_a>")[1].split("</answer_a>")[0]
            first_is_reference = f'"{reference_summary}"' in a
            scores = (1.0, candidate_score) if first_is_reference else (candidate_score, 1.0)
            return reply({"score_a": scores[0], "score_b": scores[1], "reason": "fine"}, input_tokens=500,
                         output_tokens=10)
        summary = reference_summary if req.tier == "flagship" else "mine"
        return reply({"summary": summary, "key_points": [], "method": "abstractive"})

    return answer


async def test_judge_comparisons_are_blind_and_by_a_tier_that_is_not_an_arm(make_runner, ledger):
    model = ScriptedModel(fallback=blind_judge(0.7))
    runner = make_runner(model, tools={"summarize": {"shadow_rate": 1.0}}, shadow={"max_pending": 64})
    async with runner.running():
        for i in range(12):
            await runner.call("summarize", {"text": f"A long text number {i}."})
        await idle(runner)
    rows = ledger.shadows()
    assert len(rows) == 12 and {(r.tier, r.comparison_tier) for r in rows} == {("mini", "flagship")}
    # The candidate falls 0.3 short of the reference wherever it was shown: the score does not depend on the side.
    assert {round(r.score, 9) for r in rows} == {0.7} and not any(r.agree for r in rows)
    judges = [r for r in model.requests if r.schema_name == "judge"]
    assert {j.tier for j in judges} == {"nano"}  # neither mini nor the flagship grades its own answer
    assert "faithfully" in judges[0].messages[0]["content"]  # the spec's rubric
    sides = {'"mine"' in j.messages[1]["content"].split("</answer_a>")[0] for j in judges}
    assert sides == {True, False}  # the candidate is shown first for some calls and second for others
    assert "judge nano (gpt-5.4-nano, $" in rows[0].detail  # the judge's cost is shown with its verdict
    assert "judge" in [c["kind"] for c in ledger.calls()]


async def test_a_judge_tier_that_is_an_arm_is_refused(make_runner, ledger):
    model = ScriptedModel(fallback=blind_judge(1.0))
    runner = make_runner(model, tools={"summarize": {"shadow_rate": 1.0, "judge_tier": "flagship"}})
    async with runner.running():
        await runner.call("summarize", {"text": "A long text."})
        await idle(runner)
    [row] = ledger.shadows()
    assert row.status == "failed" and "without being one of them" in row.detail
    assert not [r for r in model.requests if r.schema_name == "judge"]


def test_wilson_interval():
    lo, hi = wilson(97, 100)
    assert lo == pytest.approx(0.9155, abs=1e-4) and hi == pytest.approx(0.9897, abs=1e-4)  # known values
    assert wilson(0, 0) == (0.0, 1.0)


async def test_a_bake_off_scores_tiers_against_expected_answers(make_runner, ledger):
    cases = [Case("classify", {"text": f"item-{i} text", "labels": LABELS},
                  {"label": truth(i), "labels": [truth(i)], "confidence": 1, "reason": ""}) for i in range(10)]
    runner = make_runner(tiers_that_differ({0, 3, 6}))
    scores, runs = await run_eval(runner, cases, ["flagship", "nano", "mini"], concurrency=4)
    by_tier = {s.tier: s for s in scores}
    assert [s.tier for s in scores] == ["nano", "mini", "flagship"]
    assert by_tier["nano"].quality == pytest.approx(0.7) and by_tier["mini"].quality == 1.0
    assert by_tier["nano"].valid_rate == 1.0 and by_tier["nano"].basis == "expected"
    assert by_tier["nano"].cost_usd < by_tier["mini"].cost_usd < by_tier["flagship"].cost_usd
    assert len(runs) == 30 and {r["kind"] for r in ledger.calls()} == {"eval"}
    assert cheapest_meeting(scores, 0.9) == {"classify": "mini"}
    assert cheapest_meeting(scores, 0.6) == {"classify": "nano"}
    assert '[tools.classify]\ntier = "mini"' in config_snippet({"classify": "mini"}, 0.9)
    # Paired on the same ten cases: nano missed three that mini got, and none the other way round. Exact McNemar:
    # p = 2 * P(X <= 0 | X ~ Binomial(3, 1/2)) = 2 / 8.
    pairs = {(p["first"], p["second"]): p for p in pairwise(runs, cases, {"classify": 0.8})}
    nano_mini = pairs[("nano", "mini")]
    assert (nano_mini["cases"], nano_mini["b"], nano_mini["c"]) == (10, 0, 3)
    assert nano_mini["p_value"] == pytest.approx(0.25) and nano_mini["difference"] == pytest.approx(-0.3)
    assert pairs[("mini", "flagship")]["p_value"] == 1.0


async def test_without_expected_answers_quality_is_agreement_with_the_strongest_tier(make_runner):
    cases = [Case("classify", {"text": f"item-{i} text", "labels": LABELS}) for i in range(4)]
    scores, _ = await run_eval(make_runner(tiers_that_differ({1})), cases, ["nano", "flagship"])
    assert {s.tier: (s.quality, s.basis) for s in scores} == {"nano": (0.75, "agreement"),
                                                             "flagship": (1.0, "agreement")}


def test_shipped_case_files_load(specs):
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "examples" / "cases").glob("*.jsonl"))
    assert {f.stem for f in files} == set(specs.tools)
    for f in files:
        cases = load_cases(f)
        assert cases and all(c.tool == f.stem for c in cases)


def test_eval_and_report_commands(upstream, tmp_path, monkeypatch, capsys):
    for k, v in server_env(upstream, tmp_path).items():
        monkeypatch.setenv(k, v)
    cases = tmp_path / "cases.jsonl"
    cases.write_text("\n".join(json.dumps({"tool": "rank", "arguments": {"query": "q", "items": ["a", "b"]}})
                               for _ in range(3)), encoding="utf-8")
    ledger, out_cfg, page = tmp_path / "l.sqlite3", tmp_path / "best.toml", tmp_path / "eval.html"
    code = main(["eval", str(cases), "--tiers", "nano,mini", "--ledger", str(ledger), "--min-quality", "0.9",
                 "--write-config", str(out_cfg), "--html", str(page)])
    out = capsys.readouterr().out
    assert code == 0 and "bake-off" in out and "cheapest tier meeting 0.9 is nano" in out
    assert 'tier = "nano"' in out_cfg.read_text() and "<svg" in page.read_text()
    assert len(upstream.completions()) == 3 * 2 + 2  # every case on both tiers, after one warm-up per tier
    assert main(["report", "--ledger", str(ledger), "--html", str(tmp_path / "r.html")]) == 0
    assert "No shadow comparisons yet" in capsys.readouterr().out
    assert main(["eval", "--ledger", str(ledger)]) == 2


def test_html_report_is_self_contained(make_runner):
    from tiered_mcp.evidence.report import ToolReport

    r = ToolReport(tool="classify", tier="nano", comparison_tier="flagship", model="gpt-5.4-nano",
                   comparison_model="gpt-5.4", spec_version="1", calls=10, shadowed=10, scored=10, skipped=0,
                   failed=0, older=0, agreement=0.9, interval=(0.6, 0.98), mean_score=0.9, cost_per_call=0.0001,
                   comparison_cost_per_call=0.001, recommendation="keep <nano>")
    page = render_html([r])
    assert page.startswith("<!doctype html>") and "<svg" in page and "http" not in page.split("<svg")[0]
    assert "keep &lt;nano&gt;" in page


async def test_pending_shadow_runs_finish_at_shutdown_within_the_drain_time(make_runner, ledger):
    async def slow(req):
        if req.tier == "flagship":
            await anyio.sleep(0.2)
        return reply({"label": "bug", "labels": ["bug"], "confidence": 0.95, "reason": "r"})

    runner = make_runner(ScriptedModel(fallback=slow), tools={"classify": {"shadow_rate": 1.0}})
    async with runner.running():
        await runner.call("classify", {"text": "item-1", "labels": LABELS})
    assert len(ledger.shadows()) == 1  # the exit waited for it
    runner = make_runner(ScriptedModel(fallback=slow), tools={"classify": {"shadow_rate": 1.0}},
                         shadow={"drain_s": 0})
    async with runner.running():
        await runner.call("classify", {"text": "item-2", "labels": LABELS})
    assert len(ledger.shadows()) == 1
    assert ledger.calls()[-1]["error"] == "cancelled (the server stopped)"


async def test_eval_replays_stored_calls_from_the_ledger(upstream, tmp_path, monkeypatch, capsys, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger

    path = tmp_path / "l.sqlite3"
    config = tmp_path / "c.toml"
    config.write_text("store_inputs = true\n", encoding="utf-8")
    led = Ledger(path, store_inputs=True)
    runner = Runner(config_from_dict({"store_inputs": True}), specs, ScriptedModel(), led,
                    env={"OPENAI_API_KEY": "k"})
    for i in range(3):
        await runner.call("rank", {"query": f"q{i}", "items": ["a", "b"]})
    led.close()
    for k, v in server_env(upstream, tmp_path).items():
        monkeypatch.setenv(k, v)
    code = await anyio.to_thread.run_sync(lambda: main(
        ["eval", "--from-ledger", "--ledger", str(path), "--config", str(config), "--tiers", "nano,mini", "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and {(s["tool"], s["tier"], s["cases"]) for s in out["scores"]} == {("rank", "nano", 3),
                                                                                           ("rank", "mini", 3)}
    assert len(upstream.completions()) == 3 * 2 + 2  # after one warm-up run per tier


def test_the_cheapest_tier_is_chosen_by_measured_cost_not_by_ladder_order():
    from tiered_mcp.evidence.evaluate import TierScore

    def score(tier, quality, cost):
        return TierScore("classify", tier, 10, quality, 1.0, cost * 10, cost, 5.0, 9.0)

    # mini answered in far fewer tokens than nano: measured, it is the cheaper of the two that meet the bar.
    scores = [score("nano", 0.95, 0.0004), score("mini", 0.96, 0.0002), score("flagship", 0.99, 0.002)]
    assert cheapest_meeting(scores, 0.9) == {"classify": "mini"}
    assert cheapest_meeting(scores, 0.97) == {"classify": "flagship"}
    assert cheapest_meeting([score("nano", 0.95, 0.0004), score("mini", 0.96, 0.0004)], 0.9) == {"classify": "nano"}


async def test_the_report_recommends_the_cheapest_confidence_threshold_that_meets_the_bar(make_runner, ledger):
    def answer(req):
        i = int(req.messages[-1]["content"].split("item-")[1].split()[0])
        if req.tier == "flagship":
            return reply({"label": "bug", "labels": ["bug"], "confidence": 0.99, "reason": "r"},
                         input_tokens=1000, output_tokens=10)
        # nano is right and sure on 60 items, wrong and unsure on 20: its confidence tells them apart.
        sure = i < 60
        label, confidence = ("bug", 0.95) if sure else ("feature", 0.55)
        return reply({"label": label, "labels": [label], "confidence": confidence, "reason": "r"},
                     input_tokens=1000, output_tokens=10)

    runner = make_runner(ScriptedModel(fallback=answer), tools={"classify": {"shadow_rate": 1.0,
                                                                             "confidence_threshold": 0.0}},
                         shadow={"max_pending": 256})
    async with runner.running():
        for i in range(80):
            await runner.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(runner)
    [r] = build_report(ledger)
    assert (r.scored, r.agreement, r.decision) == (80, 0.75, "below")
    # Escalating what is under 0.95 (a quarter of the calls) serves answers whose lower bound clears 90%: per call,
    # nano's answer plus a quarter of a flagship answer (1000 in / 10 out tokens each).
    nano, flagship = (1000 * 0.20 + 10 * 1.25) / 1e6, (1000 * 2.50 + 10 * 15) / 1e6
    assert r.threshold == 0.95 and r.threshold_escalated_share == 0.25
    assert r.threshold_cost_per_call == pytest.approx(nano + 0.25 * flagship, abs=1e-12)
    assert "at confidence threshold 0.95, 25% would escalate" in r.recommendation
    assert [p["threshold"] for p in r.frontier][0] == 0.55 and r.frontier[-1]["blended"] == 1.0


async def test_a_bake_off_from_the_ledger_uses_stored_flagship_answers_and_pays_only_for_the_new_tiers(
        ledger_target, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.evidence.evaluate import cases_from_ledger
    from tiered_mcp.ledger.base import open_ledger

    led = open_ledger(ledger_target, store_inputs=True)
    # Twelve classify calls served on the flagship (two of them asked twice), then a bake-off of nano, which is
    # wrong on items 0, 3 and 6: against the stored answers, nano reaches 7 of the 10 distinct cases.
    served = Runner(config_from_dict({"store_inputs": True, "cache_ttl_s": 0,
                                      "tools": {"classify": {"tier": "flagship"}}}), specs,
                    tiers_that_differ(set()), led, env={"OPENAI_API_KEY": "k"})
    async with served.running():
        for i in [*range(10), 1, 2]:
            await served.call("classify", {"text": f"item-{i} text", "labels": LABELS})
        await idle(served)
    bake = tiers_that_differ({0, 3, 6})
    runner = Runner(config_from_dict({"store_inputs": True, "cache_ttl_s": 0}), specs, bake, led,
                    env={"OPENAI_API_KEY": "k"})
    stored = cases_from_ledger(led, specs, "flagship", limit=50)
    assert (len(stored.cases), stored.duplicates, stored.models) == (10, 2, {"gpt-5.4": 10})
    assert all(c.reference_tier == "flagship" and c.expected["label"] == truth(int(c.arguments["text"][5:].split()[0]))
               for c in stored.cases)
    async with runner.running():
        scores, runs = await run_eval(runner, stored.cases, ["nano", "flagship"], warm_up=False)
    assert bake.tiers_called() == ["nano"] * 10  # the flagship is not asked again
    [s] = scores
    assert (s.tier, s.cases, s.quality, s.basis) == ("nano", 10, pytest.approx(0.7), "stored flagship")
    # An answer given under another version of the spec is not a fair reference: it is counted and left out.
    led.close()
    led = open_ledger(ledger_target, store_inputs=True)
    with led._transaction() as cur:
        cur.execute("UPDATE calls SET spec_version = 'old' WHERE kind = 'call' AND arguments LIKE ?",
                    ('%item-9 %',))
    again = cases_from_ledger(led, specs, "flagship", limit=50)
    assert (len(again.cases), again.other_spec) == (9, 1)
    led.close()


async def test_eval_from_the_ledger_on_the_command_line_does_not_call_the_flagship(upstream, tmp_path, monkeypatch,
                                                                                  capsys, specs):
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger

    path, config = tmp_path / "l.sqlite3", tmp_path / "c.toml"
    config.write_text("store_inputs = true\n", encoding="utf-8")
    led = Ledger(path, store_inputs=True)
    runner = Runner(config_from_dict({"store_inputs": True, "tools": {"rank": {"tier": "flagship"}}}), specs,
                    ScriptedModel(), led, env={"OPENAI_API_KEY": "k"})
    async with runner.running():
        for i in range(3):
            await runner.call("rank", {"query": f"q{i}", "items": ["a", "b"]})
        await idle(runner)
    led.close()
    for k, v in server_env(upstream, tmp_path).items():
        monkeypatch.setenv(k, v)
    code = await anyio.to_thread.run_sync(lambda: main(
        ["eval", "--from-ledger", "--ledger", str(path), "--config", str(config), "--tiers", "nano,mini,flagship",
         "--json"]))
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and {(s["tier"], s["cases"], s["basis"]) for s in out["scores"]} == {
        ("nano", 3, "stored flagship"), ("mini", 3, "stored flagship")}
    assert out["reference"] == {"reference_tier": "flagship", "cases": 3, "models": {"gpt-5.4": 3}, "answers": 3,
                                "duplicates": 0, "other_spec_version": 0}
    assert "3 stored flagship answers are the reference" in captured.err
    assert {s.body["model"] for s in upstream.completions()} == {"gpt-5.4-nano", "gpt-5.4-mini"}
    assert len(upstream.completions()) == 3 * 2 + 2  # after one warm-up run per compared tier


def test_an_auto_tool_is_judged_against_its_quality_bar_not_keep_at(ledger, specs):
    """1,860 of 2,000 agree (93 %): a keep at the report's 90 % bar, but not at an auto tool's 95 % quality bar,
    where the anytime-valid upper bound is under the bar: move."""
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.base import ShadowRow

    rows = [ShadowRow(tool="classify", call_id=f"c{i}", shadow_call_id=f"s{i}", tier="nano", comparison_tier="flagship",
                      score=1.0 if i < 1860 else 0.0, agree=i < 1860, detail="label", cost_usd=0.0002,
                      comparison_cost_usd=0.0027, model="gpt-5.4-nano", comparison_model="gpt-5.4",
                      spec_version=str(specs.get("classify").version), args_key=f"k{i}") for i in range(2000)]
    by_hand = config_from_dict({"cache_ttl_s": 0})
    ledger.write([], rows, by_hand)
    [manual] = build_report(ledger, config=by_hand, specs=specs)
    assert manual.decision == "clears" and manual.recommendation.endswith("keep nano")
    auto = config_from_dict({"tools": {"classify": {"auto": True, "quality_bar": 0.95}}})
    [report] = build_report(ledger, config=auto, specs=specs)
    assert report.decision == "below" and report.bounds[1] < 0.95
    assert "move to flagship" in report.recommendation and "quality_bar 95%" in report.recommendation


def test_a_rate_too_close_to_the_bar_says_so_rather_than_a_huge_count(ledger, specs):
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.evidence.report import FAR
    from tiered_mcp.evidence.stats import decide
    from tiered_mcp.ledger.base import ShadowRow

    # 90 of 95 against a 95 % bar: the observed rate sits on the bar, and the projection runs past 10,000.
    assert decide(90, 95, 0.95).more_needed > FAR
    rows = [ShadowRow(tool="classify", call_id=f"c{i}", shadow_call_id=f"s{i}", tier="nano", comparison_tier="flagship",
                      score=1.0 if i < 90 else 0.0, agree=i < 90, detail="label", cost_usd=0.0002,
                      comparison_cost_usd=0.0027, model="gpt-5.4-nano", comparison_model="gpt-5.4",
                      spec_version=str(specs.get("classify").version), args_key=f"k{i}") for i in range(95)]
    config = config_from_dict({"tools": {"classify": {"auto": True, "quality_bar": 0.95}}})
    ledger.write([], rows, config)
    [report] = build_report(ledger, config=config, specs=specs)
    assert "over 10,000 more comparisons at this rate" in report.recommendation
