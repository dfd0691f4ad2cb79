"""Host set-up, checked by the hosts' own CLIs where they are installed (Claude Code and Codex from npm), and the
entries `tiered-mcp install` writes.

The host CLIs are looked up on PATH, then in $TIERED_MCP_TEST_NPM_PREFIX/bin (where .ci/run installs them); the
tests that need them skip, saying so, when neither has them. They run offline with a throwaway HOME.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tiered_mcp.cli.install import entry_for, merge_codex, merge_json, server_command
from tiered_mcp.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BIN = str(Path(sys.executable).parent)  # where this venv's tiered-mcp script lives


def host_cli(name: str) -> str:
    found = shutil.which(name)
    prefix = os.environ.get("TIERED_MCP_TEST_NPM_PREFIX")
    if not found and prefix and (Path(prefix) / "bin" / name).exists():
        found = str(Path(prefix) / "bin" / name)
    if not found:
        pytest.skip(f"`{name}` is not installed (npm i -g --prefix DIR {'@anthropic-ai/claude-code' if name == 'claude' else '@openai/codex'}"
                    f" and set TIERED_MCP_TEST_NPM_PREFIX=DIR; .ci/run does this when npm can reach its registry)")
    return found


def host_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CODEX_HOME": str(home / ".codex"),
            "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"), "NO_COLOR": "1",
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def example_command(path: Path) -> list[str]:
    """The first command line of an example shell script (its `claude mcp add ...`)."""
    line = next(ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("claude "))
    return shlex.split(line)


# ---- the entries `tiered-mcp install` writes ------------------------------------------------------------------------


def test_the_entry_names_this_installation_by_absolute_path():
    command = server_command()
    assert Path(command[0]).is_absolute() and command[-1] == "serve"
    assert entry_for("claude-code")["env"] == {"OPENAI_API_KEY": "${OPENAI_API_KEY:-}"}
    assert entry_for("cursor")["env"] == {"OPENAI_API_KEY": "${env:OPENAI_API_KEY}"}
    assert entry_for("claude-desktop")["env"] == {}  # Desktop expands nothing: no literal placeholder
    assert entry_for("codex")["env_vars"] == ["OPENAI_API_KEY"]


def test_json_hosts_keep_other_servers_and_refuse_to_replace_without_force(tmp_path):
    f = tmp_path / "mcp.json"
    f.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}), encoding="utf-8")
    said = merge_json(f, "mcpServers", "tiered", {"command": "/a", "args": ["serve"]}, force=False)
    assert "1 other server(s) kept" in said
    data = json.loads(f.read_text())
    assert data["mcpServers"]["other"] == {"command": "x"} and data["theme"] == "dark"
    with pytest.raises(ValueError, match="--force"):
        merge_json(f, "mcpServers", "tiered", {"command": "/b"}, force=False)
    merge_json(f, "mcpServers", "tiered", {"command": "/b"}, force=True)
    assert json.loads(f.read_text())["mcpServers"]["tiered"] == {"command": "/b"}
    f.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not JSON"):
        merge_json(f, "mcpServers", "tiered", {"command": "/b"}, force=True)


def test_install_writes_each_file_host(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["install", "vscode"]) == 0
    vs = json.loads((tmp_path / ".vscode" / "mcp.json").read_text())
    assert vs["servers"]["tiered"]["type"] == "stdio" and vs["inputs"][0]["id"] == "openai-api-key"
    assert main(["install", "cursor", "--scope", "project"]) == 0
    assert "tiered" in json.loads((tmp_path / ".cursor" / "mcp.json").read_text())["mcpServers"]
    desktop = tmp_path / "desktop.json"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-copied")
    assert main(["install", "claude-desktop", "--file", str(desktop), "--copy-env", "OPENAI_API_KEY"]) == 0
    assert json.loads(desktop.read_text())["mcpServers"]["tiered"]["env"] == {"OPENAI_API_KEY": "sk-copied"}
    codex = tmp_path / "codex.toml"
    codex.write_text('model = "o4"\n\n[mcp_servers.other]\ncommand = "x"\n', encoding="utf-8")
    assert main(["install", "codex", "--file", str(codex)]) == 0
    data = tomllib.loads(codex.read_text())
    assert data["model"] == "o4" and data["mcp_servers"]["other"] == {"command": "x"}
    assert data["mcp_servers"]["tiered"]["args"] == ["serve"]
    assert main(["install", "codex", "--file", str(codex)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["install", "codex", "--file", str(codex), "--force", "--config", "c.toml"]) == 2  # no such file
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text('[providers.openrouter]\napi_key_env = "OPENROUTER_API_KEY"\n'
                                     '[tiers.nano]\nprovider = "openrouter"\nmodel = "openai/gpt-5.4-nano"\n',
                                     encoding="utf-8")
    assert main(["install", "codex", "--file", str(codex), "--force", "--config", "c.toml"]) == 0
    # The entry passes the key variables the config's providers read.
    assert tomllib.loads(codex.read_text())["mcp_servers"]["tiered"]["env_vars"] == ["OPENROUTER_API_KEY",
                                                                                      "OPENAI_API_KEY"]
    assert tomllib.loads(codex.read_text())["mcp_servers"]["tiered"]["args"][-1] == str(tmp_path / "c.toml")
    capsys.readouterr()
    assert main(["install", "claude-code", "--print"]) == 0
    assert capsys.readouterr().out.startswith("claude mcp add-json tiered ")


def test_codex_replace_keeps_the_other_tables(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[mcp_servers.tiered]\ncommand = "old"\n[mcp_servers.tiered.env]\nA = "1"\n\n[profiles.x]\nmodel = "m"\n',
                 encoding="utf-8")
    merge_codex(f, "tiered", {"command": "/new", "args": ["serve"]}, force=True)
    data = tomllib.loads(f.read_text())
    assert data["mcp_servers"]["tiered"] == {"command": "/new", "args": ["serve"]} and data["profiles"]["x"]["model"] == "m"


# ---- the hosts' own CLIs ---------------------------------------------------------------------------------------------


def test_claude_code_accepts_the_example_and_health_checks_the_server(tmp_path):
    claude = host_cli("claude")
    env, project = host_env(tmp_path), tmp_path / "project"
    project.mkdir()
    argv = example_command(EXAMPLES / "claude-code.sh")
    added = run([claude, *argv[1:]], env, project)
    assert added.returncode == 0, added.stdout + added.stderr
    got = run([claude, "mcp", "get", "tiered"], env, project)
    assert got.returncode == 0 and "Connected" in got.stdout, got.stdout + got.stderr
    # The form the README used to give: -e swallows the name.
    old = run([claude, "mcp", "add", "--transport", "stdio", "--env", "OPENAI_API_KEY=${OPENAI_API_KEY}", "old", "--",
               "tiered-mcp", "serve"], env, project)
    assert old.returncode != 0 and "Invalid environment variable format" in old.stdout + old.stderr


def test_claude_code_takes_the_entry_tiered_mcp_install_makes(tmp_path):
    claude = host_cli("claude")
    env, project = host_env(tmp_path), tmp_path / "project"
    project.mkdir()
    env["PATH"] = f"{Path(claude).parent}{os.pathsep}{env['PATH']}"
    done = run([sys.executable, "-m", "tiered_mcp", "install", "claude-code", "--name", "t2"], env, project)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = run([claude, "mcp", "list"], env, project)
    assert re.search(r"t2: .*tiered-mcp serve - .*Connected", listed.stdout), listed.stdout + listed.stderr
    again = run([sys.executable, "-m", "tiered_mcp", "install", "claude-code", "--name", "t2"], env, project)
    assert again.returncode == 1 and "--force" in again.stderr


def test_codex_reads_the_example_and_the_installed_entry(tmp_path):
    codex = host_cli("codex")
    env, project = host_env(tmp_path), tmp_path / "project"
    project.mkdir()
    home = Path(env["CODEX_HOME"])
    home.mkdir(parents=True)
    shutil.copy(EXAMPLES / "codex" / "config.toml", home / "config.toml")
    got = run([codex, "mcp", "get", "tiered", "--json"], env, project)
    assert got.returncode == 0, got.stdout + got.stderr
    entry = json.loads(got.stdout[got.stdout.index("{"):])
    assert entry["transport"]["env_vars"] == ["OPENAI_API_KEY"] and entry["startup_timeout_sec"] == 30
    done = run([sys.executable, "-m", "tiered_mcp", "install", "codex", "--name", "t2"], env, project)
    assert done.returncode == 0, done.stdout + done.stderr
    added = run([codex, "mcp", "add", "t3", "--", "tiered-mcp", "serve"], env, project)
    assert added.returncode == 0, added.stdout + added.stderr
    listed = run([codex, "mcp", "list"], env, project)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert all(name in listed.stdout for name in ("tiered", "t2", "t3"))
    # codex rewrote the file it shares with us; what `install` wrote is still there and still parses.
    data = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    assert data["mcp_servers"]["t2"]["env_vars"] == ["OPENAI_API_KEY"]
