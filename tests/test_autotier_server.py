"""Auto-tiering through the production wiring and a real MCP client: a tool steps down on evidence, its guard
shadows keep comparing it with the flagship, a drift steps it back up; the switch rows, the report, `logs
--switches` and the tiered://tiers resource show it, with figures checked against hand computations."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

import tiered_mcp
from tiered_mcp.cli.main import main
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import ConfigError
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.evidence.stats import confidence_sequence, prior_for
from tiered_mcp.serve.server import TIERS_URI, build_runner, build_server
from tiered_mcp.testing import ScriptedModel, idle, reply

from .conftest import server_env

SRC = Path(tiered_mcp.__file__).resolve().parents[1]

pytestmark = pytest.mark.anyio

PRIOR = prior_for(0.95, 20)
NEED = 88  # by hand (tests/test_autotier.py): the least n with (1/20) sum_j (q_j / 0.95)^n >= 20, q_j on (0.95, 1)


def _log_evalue(k: int, n: int) -> float:
    """log E_n for k agreeing of n, from the definition (docs/auto-tiering.md), not from stats.py."""
    qs = [0.95 + 0.05 * (j - 0.5) / 20 for j in range(1, 21)]
    return math.log(sum((q / 0.95) ** k * ((1 - q) / 0.05) ** (n - k) for q in qs) / 20)
"""All-agreeing comparisons until the step-down test clears 0.95 (88, see tests/test_stats.py)."""


class Tiers:
    """classify answered by label: every tier says "bug", until `drift` makes nano say "feature"."""

    def __init__(self) -> None:
        self.drift = False

    def __call__(self, req):
        label = "feature" if self.drift and req.tier == "nano" else "bug"
        return reply({"label": label, "labels": [label], "confidence": 0.95, "reason": "r"},
                     input_tokens=600, output_tokens=80)


def write_config(tmp_path, **tool) -> str:
    lines = ["cache_ttl_s = 0", "[shadow]", "max_pending = 64", "[tools.classify]", "auto = true"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in tool.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_config_errors_name_the_key() -> None:
    for tool, key in [({"auto": True, "tier": "nano"}, "tools.classify.tier"),
                      ({"auto": True, "shadow_rate": 0.1}, "tools.classify.shadow_rate"),
                      ({"auto": True, "quality_bar": 1.2}, "tools.classify.quality_bar"),
                      ({"auto": True, "evidence_daily_usd": -1}, "tools.classify.evidence_daily_usd"),
                      ({"auto": True, "shadow_tier": "nano"}, "tools.classify.auto")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({"tools": {"classify": tool}})
    cfg = config_from_dict({"tools": {"classify": {"auto": True}}})
    assert cfg.auto_ladder("classify") == ["nano", "mini", "flagship"]  # never the embedded local tier


async def test_steps_down_on_evidence_guards_then_steps_up_on_drift(tmp_path, capsys) -> None:
    ledger_path = str(tmp_path / "ledger.sqlite3")
    # guard_share 1: the guard rate on nano is 1 * (2700 - 220) / 2700 - 0.01 sentinel share = 90.9 % (at 600
    # input and 80 output tokens a call), so the guards show up within a few calls.
    config = write_config(tmp_path, guard_share=1.0)
    model = Tiers()
    runner = build_runner(config, ledger_path=ledger_path, env={"OPENAI_API_KEY": "sk-test"},
                          model=ScriptedModel(fallback=model))
    assert runner.steering is not None and runner.ledger is not None
    args = lambda i: {"text": f"case {i}: the app crashes when I click save", "labels": ["bug", "feature"]}  # noqa: E731
    served: list[str] = []
    async with Client(build_server(runner)) as client:
        i = 0

        async def call() -> str:
            nonlocal i
            i += 1
            result = await client.call_tool("classify", args(i))
            assert not result.is_error, result.content
            await idle(runner)
            served.append(result.meta[RECEIPT_META_KEY]["tier"])
            return served[-1]

        # Cold start: every call is served on the flagship and probes nano and mini.
        for _ in range(NEED):
            assert await call() == "flagship"
        switches = runner.ledger.tier_switches("classify")
        # nano and mini cleared on the same comparison: the step goes straight to nano.
        assert [(w["kind"], w["from_tier"], w["to_tier"]) for w in switches] == [("step_down", "flagship", "nano")]
        w = switches[0]
        assert (w["successes"], w["trials"], w["bar"], w["model"], w["spec_version"]) == (NEED, NEED, 0.95,
                                                                                          "gpt-5.4-nano", "1")
        # The row shows the two-sided bounds beside the e-value the step was taken on.
        assert w["lower_bound"] == pytest.approx(confidence_sequence(NEED, NEED, 0.05, PRIOR).lower)
        assert w["evidence"]["log_evalue"] == pytest.approx(_log_evalue(NEED, NEED))
        assert w["evidence"]["log_evalue"] >= math.log(20) > _log_evalue(NEED - 1, NEED - 1)
        assert w["reason"] == "nano's e-value 20 >= 20 against bar 0.95"  # E_88 = 20.3 by hand
        assert await call() == "nano"
        await call()
        rows = [r for r in runner.ledger.shadows(tool="classify") if r.tier == "nano" and "guard" in r.detail]
        assert rows and rows[-1].comparison_tier == "flagship" and rows[-1].agree is True
        # A release makes nano disagree: four guarded disagreements in a row put the CUSUM at 4 * log(0.2/0.05),
        # e-value 4**4 = 256 >= 1/0.01, and the tool steps up one rung.
        model.drift = True
        on_nano = 0
        while await call() == "nano":
            on_nano += 1
            assert on_nano < 200
        assert served[-1] == "mini"
        switches = runner.ledger.tier_switches("classify")
        up = switches[0]
        assert (up["kind"], up["from_tier"], up["to_tier"]) == ("step_up", "nano", "mini")
        assert up["reason"] == f"drift detector e-value {math.exp(4 * math.log(4)):.0f} >= 100"
        assert up["evidence"]["detector"] == pytest.approx(4 * math.log(4))
        assert len(switches) == 2

        # Hosts see the current tier and the last switch.
        res = await client.read_resource(TIERS_URI)
        row = next(r for r in json.loads(res.contents[0].text) if r["tool"] == "classify")
        assert row["tier"] == "mini" and row["ladder"][0] == "mini"
        assert row["auto"]["last_switch"]["kind"] == "step_up" and row["auto"]["quality_bar"] == 0.95
        # nano's evidence for its model was discarded with the alarm: it must earn its place again. (The call
        # served on mini may have had a guard rerun that probed nano once more, and the drifted nano disagreed.)
        nano = row["auto"]["evidence"]["nano"]
        assert nano["trials"] <= 1 and nano["successes"] == 0
        mini = row["auto"]["evidence"]["mini"]
        assert mini["trials"] >= NEED and mini["clears"] is True
        assert mini["e_value"] == pytest.approx(math.exp(_log_evalue(mini["successes"], mini["trials"])))
        assert nano["clears"] is False

    assert main(["logs", "--switches", "--ledger", ledger_path, "--config", config, "--json"]) == 0
    logged = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["from_tier"], r["to_tier"]) for r in logged] == [
        ("step_up", "nano", "mini"), ("step_down", "flagship", "nano")]
    # Each switch's e-value: the step down's test (E_88 = 20.3 by hand), the step up's detector (4**4 = 256).
    down_e = math.exp(_log_evalue(NEED, NEED))
    assert f"{down_e:.1f}" == "20.3"
    assert [r["e_value"] for r in logged] == [pytest.approx(256.0), pytest.approx(down_e)]
    assert main(["logs", "--switches", "--ledger", ledger_path, "--config", config]) == 0
    table = capsys.readouterr().out
    assert "step_up" in table and "e-value" in table and "20.3" in table and "256.0" in table
    assert main(["report", "--ledger", ledger_path, "--config", config, "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    auto = next(r["auto"] for r in reports if r["tool"] == "classify")
    assert auto["tier"] == "mini" and len(auto["switches"]) == 2
    assert main(["report", "--ledger", ledger_path, "--config", config]) == 0
    text = capsys.readouterr().out
    assert "classify: auto, on mini" in text and "step_down flagship -> nano" in text
    flat = " ".join(text.split())  # the console wraps long lines
    assert f"{NEED} of {NEED} agree" in flat and "e-value 20.3, bar 95%" in flat and "e-value 256.0" in flat
    assert [w["e_value"] for w in auto["switches"]] == [pytest.approx(256.0), pytest.approx(down_e)]


async def test_the_daily_evidence_limit_skips_and_records(tmp_path) -> None:
    # $0.001 a day: one cold-start probe pair costs 600 * (0.20 + 0.75) / 1e6 + 80 * (1.25 + 4.50) / 1e6 = $0.00103,
    # so the first plan (cost estimated at the default 1000/200 tokens, $0.00265) is already over it.
    config = write_config(tmp_path, evidence_daily_usd=0.001)
    runner = build_runner(config, ledger_path=str(tmp_path / "l.sqlite3"), env={"OPENAI_API_KEY": "sk-test"},
                          model=ScriptedModel(fallback=Tiers()))
    assert runner.ledger is not None
    async with runner.running():
        for i in range(3):
            await runner.call("classify", {"text": f"case {i}", "labels": ["bug", "feature"]})
            await idle(runner)
        stored = runner.ledger.autotier_states()["classify"][1]
    assert stored["skipped_total"] == stored["skipped_today"] == 3
    rows = runner.ledger.shadows(tool="classify")
    assert len(rows) == 3 and all(r.status == "skipped" and "evidence_daily_usd" in r.detail for r in rows)


async def test_over_stdio_the_tool_steps_down_and_the_resource_says_so(upstream, tmp_path) -> None:
    """The real server process and the real openai client against the loopback upstream, whose tiers all answer
    alike: after NEED calls on the flagship (each probing nano and mini), the tool steps down."""
    config = write_config(tmp_path)
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "tiered_mcp", "serve", "--config", config, "--ledger",
                                         str(tmp_path / "ledger.sqlite3")],
                                   # This checkout's code, whichever copy of the package the venv installed.
                                   env=server_env(upstream, tmp_path, PYTHONPATH=str(SRC)))
    async with Client(params, mode="legacy") as client:
        tiers = []
        for i in range(NEED):
            result = await client.call_tool("classify", {"text": f"case {i}: a bug in save",
                                                         "labels": ["bug", "feature"]})
            tiers.append(result.meta[RECEIPT_META_KEY]["tier"])
        assert set(tiers) == {"flagship"}
        with anyio.fail_after(20):
            while True:
                res = await client.read_resource(TIERS_URI)
                row = next(r for r in json.loads(res.contents[0].text) if r["tool"] == "classify")
                if row["tier"] != "flagship":
                    break
                await anyio.sleep(0.05)
        # Every tier agreed: nano cleared with mini, and the step went straight to it.
        assert row["tier"] == "nano" and row["auto"]["last_switch"]["to_tier"] == "nano"
        assert row["auto"]["last_switch"]["trials"] == NEED
        result = await client.call_tool("classify", {"text": "one more: a bug", "labels": ["bug", "feature"]})
        assert result.meta[RECEIPT_META_KEY]["tier"] == "nano"
