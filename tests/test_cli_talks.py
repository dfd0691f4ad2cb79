"""The CLI talks: arguments from files and stdin, plain text, progress, batch receipts, one-line failures."""

import io
import json
import subprocess
import sys

import pytest

from tiered_mcp.cli.call import read_arguments, receipt_line, text_field
from tiered_mcp.cli.config_edit import set_tool_tiers, write_tool_tiers
from tiered_mcp.cli.main import main
from tiered_mcp.core.errors import ConfigError
from tiered_mcp.testing import FakeResponse

from .conftest import server_env


def run_cli(*argv, env, stdin=None):
    return subprocess.run([sys.executable, "-m", "tiered_mcp", *argv], env={**env, "PATH": ""}, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_arguments_come_from_json_a_file_or_stdin(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{"text": "hi"}', encoding="utf-8")
    assert read_arguments('{"text": "hi"}') == read_arguments(f"@{f}") == read_arguments("-", io.StringIO('{"text": "hi"}'))
    with pytest.raises(ValueError, match="cannot read"):
        read_arguments(f"@{tmp_path / 'nope.json'}")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_arguments("-", io.StringIO("[1]"))


def test_text_output_picks_the_answers_text(specs):
    assert text_field(specs.get("draft").output_schema) == "text"
    assert text_field(specs.get("classify").output_schema) is None


def test_call_text_from_stdin_keeps_stdout_clean(upstream, tmp_path):
    upstream.push("gpt-5.4-mini", FakeResponse(content={"text": "Hello there."}, usage=(100, 10)))
    out = run_cli("call", "draft", "--args", "-", "--text", "--ledger", str(tmp_path / "l.db"),
                  env=server_env(upstream, tmp_path), stdin='{"instructions": "greet"}')
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello there.\n"
    assert "receipt" in out.stderr and "saved" in out.stderr


def test_a_batch_prints_its_receipt(upstream, tmp_path):
    for _ in range(2):
        upstream.push("gpt-5.4-nano", FakeResponse(content={"label": "bug", "labels": ["bug"], "confidence": 0.9,
                                                            "reason": "r"}, usage=(100, 10)))
    args = json.dumps({"items": ["crash on save", "crash on load"], "labels": ["bug", "feature"]})
    out = run_cli("call", "classify", "--args", args, "--ledger", str(tmp_path / "l.db"),
                  env=server_env(upstream, tmp_path))
    assert out.returncode == 0, out.stderr
    assert "classify batch: 2/2 ok (2 on nano)" in out.stdout


def test_receipt_line_says_what_was_saved():
    line = receipt_line({"tool": "classify", "tier": "nano", "model": "m", "input_tokens": 10, "output_tokens": 2,
                         "cost_usd": 0.001, "baseline_usd": 0.004, "saved_usd": 0.003, "latency_ms": 12})
    assert "saved $0.003000 (75%)" in line


def test_failures_are_one_line_with_documented_exit_codes(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "c.jsonl"), "--tiers", "nano,gpt5"]) == 2
    err = capsys.readouterr().err
    assert "--tiers: 'gpt5' is not a configured tier" in err and "Traceback" not in err
    assert main(["serve", "--ledger", "/proc/nope/x.db"]) == 2
    assert "ledger /proc/nope/x.db: cannot open it" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[tools.clasify]\ntier = "nano"\n', encoding="utf-8")
    for cmd in (["doctor"], ["tools"], ["call", "classify"]):
        assert main([*cmd, "--config", str(bad)]) == 2
        assert "[tools.clasify] names no loaded tool" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["spec-schema"], ["config", "--json"], ["tools", "--json"]])
def test_a_closed_pipe_is_quiet(cmd, tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "tiered_mcp", *cmd],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "PATH": ""})
    p.stdout.close()  # the reader is gone before the first write, like `| head -0`
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err


def test_write_config_merges_and_keeps_the_rest(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('# mine\nstore_inputs = true\n\n[tools.classify]\nshadow_rate = 0.1\ntier = "mini"\n\n'
                   '[tiers.nano]\nmodel = "x"\n', encoding="utf-8")
    said = write_tool_tiers(cfg, {"classify": "nano", "rank": "mini"}, "snippet", "from eval")
    text = cfg.read_text()
    assert said.startswith("updated") and "# mine" in text and "shadow_rate = 0.1" in text
    assert 'tier = "nano"' in text and "[tools.rank]" in text and 'model = "x"' in text
    import tomllib

    data = tomllib.loads(text)
    assert data["tools"]["classify"] == {"shadow_rate": 0.1, "tier": "nano"} and data["tools"]["rank"]["tier"] == "mini"
    with pytest.raises(ConfigError, match="--force"):
        set_tool_tiers('tools = { classify = { tier = "mini" } }\n', {"classify": "nano"}, "n")
    assert write_tool_tiers(cfg, {"classify": "nano"}, "# new\n", "n", force=True).startswith("replaced")
    assert cfg.read_text() == "# new\n"


def test_demo_runs_real_calls_and_totals_the_saving(upstream, tmp_path):
    out = run_cli("demo", env=server_env(upstream, tmp_path))
    assert out.returncode == 0, out.stderr
    assert "on the flagship they would have cost" in out.stdout and "saved" in out.stdout
    assert not (tmp_path / "state" / "tiered-mcp" / "ledger.sqlite3").exists()  # a throwaway ledger


def test_an_unexpanded_key_is_reported_as_unset_by_config_tools_and_doctor(monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "${OPENAI_API_KEY}")
    assert main(["config", "--json"]) == 0
    assert "NOT SET (unexpanded '${OPENAI_API_KEY}')" in json.loads(capsys.readouterr().out)["providers"]["openai"]["api_key"]
    assert main(["tools", "--json"]) == 0
    captured = capsys.readouterr()
    rows = {r["tool"]: r for r in json.loads(captured.out)}
    assert rows["extract"]["ladder"] == [] and "literal text" in captured.err
    main(["doctor"])
    assert "unexpanded" in capsys.readouterr().out


def test_progress_lines_say_each_attempt_and_the_local_model_load(capsys):
    import anyio

    from tiered_mcp.cli.call import _Progress

    progress = _Progress(enabled=True)

    async def go():
        await progress(1, None, "local (use-multilingual-v3): first")
        await progress(2, None, "nano (gpt-5.4-nano): escalation")
        await progress(1, 3, "item 0: ok on nano")
    anyio.run(go)
    err = capsys.readouterr().err
    assert "attempt 1: local" in err and "loading the local model" in err and "attempt 2: nano" in err
    assert "1/3 item 0: ok on nano" in err
    quiet = _Progress(enabled=False)
    anyio.run(quiet, 1, None, "x")
    assert capsys.readouterr().err == ""
