"""The command line: `call` spawns the real server over stdio; the rest run in-process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiered_mcp.cli.main import main
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.receipts import Attempt, Receipt
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.testing import FakeResponse

from .conftest import SECRET, server_env

ARGS = json.dumps({"text": "The app crashes when I click save.", "labels": ["bug", "feature"]})


def run_cli(*argv, env):
    return subprocess.run([sys.executable, "-m", "tiered_mcp", *argv], env={**env, "PATH": ""},
                          capture_output=True, text=True, timeout=60)


def test_call_prints_the_validated_result_and_its_receipt(upstream, tmp_path):
    upstream.push("gpt-5.4-nano", FakeResponse(content={"label": "bug", "labels": ["bug"], "confidence": 0.9,
                                                        "reason": "crash"}, usage=(200, 25)))
    ledger = str(tmp_path / "l.sqlite3")
    out = run_cli("call", "classify", "--args", ARGS, "--ledger", ledger, "--json", env=server_env(upstream, tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["result"]["label"] == "bug" and data["is_error"] is False
    assert data["receipt"]["tier"] == "nano" and data["receipt"]["input_tokens"] == 200
    assert data["receipt"]["cost_usd"] == pytest.approx((200 * 0.2 + 25 * 1.25) / 1e6)
    assert SECRET not in out.stdout + out.stderr
    pretty = run_cli("call", "classify", "--args", ARGS, "--ledger", ledger, env=server_env(upstream, tmp_path))
    assert pretty.returncode == 0 and "answered from the cache" in pretty.stdout
    fresh = run_cli("call", "classify", "--args", ARGS, "--ledger", ledger, "--options", '{"cache": false}',
                    env=server_env(upstream, tmp_path))
    assert fresh.returncode == 0 and "baseline (flagship alone)" in fresh.stdout
    assert len(Ledger(ledger).calls()) == 3


def test_call_exit_codes(upstream, tmp_path):
    env = server_env(upstream, tmp_path)
    for model in ("gpt-5.4-nano", "gpt-5.4-mini", "gpt-5.4"):
        upstream.push(model, FakeResponse(status=401, json_body={"error": {"message": f"bad key {SECRET}"}}))
    failed = run_cli("call", "classify", "--args", ARGS, env=env)
    assert failed.returncode == 1 and "HTTP 401" in failed.stderr and SECRET not in failed.stdout + failed.stderr
    unknown = run_cli("call", "nope", "--args", "{}", env=env)
    assert unknown.returncode == 2 and "unknown tool 'nope'" in unknown.stderr
    not_json = run_cli("call", "classify", "--args", "{text: x}", env=env)
    assert not_json.returncode == 2 and "--args must be a JSON object" in not_json.stderr
    refused = run_cli("call", "classify", "--args", '{"text": "x"}', env=env)  # the schema refuses it: bad usage
    assert refused.returncode == 2 and "'labels' is a required property" in refused.stderr


def test_a_broken_spec_stops_start_up_with_file_and_field(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\ntitle: t\ndescription: d\ntier: nano\n", encoding="utf-8")
    out = run_cli("serve", "--specs", str(tmp_path), env={})
    assert out.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}: input_schema: Field required" in out.stderr
    assert out.stdout == ""


def test_a_bad_config_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tiers.nano]\nmodel = "x"\ntemprature = 0.2\n', encoding="utf-8")
    assert main(["config", "--config", str(cfg)]) == 2
    assert "tiers.nano.temprature: unknown key" in capsys.readouterr().err
    cfg.write_text('[tiers.nano]\nprovider = "nowhere"\nmodel = "x"\n', encoding="utf-8")
    assert main(["tools", "--config", str(cfg)]) == 2
    assert "tiers.nano.provider is 'nowhere'" in capsys.readouterr().err


def seed(ledger_path: Path) -> None:
    cfg = config_from_dict({})
    led = Ledger(ledger_path)
    for tool, tier, tokens in [("classify", "nano", 1000), ("classify", "mini", 2000), ("summarize", "mini", 4000)]:
        r = Receipt(tool=tool, tier=tier, model=cfg.tiers[tier].model, ok=True)
        r.attempts.append(Attempt(tier=tier, model=cfg.tiers[tier].model, reason="first", outcome="ok",
                                  input_tokens=tokens, output_tokens=100,
                                  cost_usd=(tokens * cfg.tiers[tier].input_price + 100 * cfg.tiers[tier].output_price) / 1e6))
        led.record(r, cfg)
    led.close()


def test_usage_totals_by_tool_and_tier(tmp_path, capsys):
    path = tmp_path / "l.sqlite3"
    seed(path)
    assert main(["usage", "--ledger", str(path), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in [*usage["by_tool"], usage["total"]]}
    assert rows["classify"]["calls"] == 2 and rows["summarize"]["calls"] == 1 and rows["all"]["calls"] == 3
    assert rows["all"]["input_tokens"] == 7000
    assert rows["all"]["baseline_usd"] == pytest.approx((7000 * 2.5 + 300 * 15) / 1e6, abs=1e-12)
    assert rows["all"]["saved_usd"] == pytest.approx(rows["all"]["baseline_usd"] - rows["all"]["cost_usd"], abs=1e-12)
    assert main(["usage", "--ledger", str(path), "--by", "tier"]) == 0
    table = capsys.readouterr().out
    assert "nano" in table and "mini" in table and "saved" in table
    assert main(["usage", "--ledger", str(path), "--since", "2999-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["calls"] == 0
    assert main(["usage", "--ledger", str(path), "--since", "yesterday"]) == 2


def test_config_masks_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[providers.openai]\ndefault_headers = { "X-Api-Key" = "hunter2", "X-Title" = "me" }\n'
                   'base_url = "https://user:pw@example.test/v1"\nbase_url_env = "NOPE"\n', encoding="utf-8")
    assert main(["config", "--config", str(cfg), "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)["providers"]["openai"]
    assert data["api_key"] == "set (hidden)" and data["default_headers"] == {"X-Api-Key": "***", "X-Title": "me"}
    assert data["effective_base_url"] == "https://***@example.test/v1"
    assert SECRET not in out and "hunter2" not in out and ":pw@" not in out


def test_tools_table_lists_every_tool(capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert main(["tools"]) == 0
    out = capsys.readouterr().out
    for name in ("classify", "extract", "summarize", "review_code", "rank", "draft"):
        assert name in out
    assert "gpt-5.4-nano" in out


def test_doctor(upstream, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "OPENAI_API_KEY NOT" in out and "extract cannot run" in out and "[tiers.nano]" in out
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "answers (3 models)" in out and "classify" in out and SECRET not in out


def test_spec_schema_prints_json(capsys):
    assert main(["spec-schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "tiered-mcp tool spec"
