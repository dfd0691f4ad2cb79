"""`tiered-mcp install HOST`: register this installation's server with a host, or print the entry.

Each entry names this machine's absolute command path (hosts such as Claude Desktop do not start servers from
your shell, so `tiered-mcp` alone is often not found) and passes the key so that an unset variable stays unset:

- claude-code: `claude mcp add-json NAME JSON --scope S`, the key as `${OPENAI_API_KEY:-}` (Claude Code expands it
  when it starts the server; unset, it expands to nothing).
- codex: `[mcp_servers.NAME]` in ~/.codex/config.toml with `env_vars = ["OPENAI_API_KEY"]` (passed through only
  when set).
- cursor: `mcpServers.NAME` in ~/.cursor/mcp.json (or ./.cursor/mcp.json with --scope project), the key as
  `${env:OPENAI_API_KEY}`.
- vscode: `servers.NAME` in ./.vscode/mcp.json, the key from a password prompt (`${input:openai-api-key}`).
- claude-desktop: `mcpServers.NAME` in Claude's claude_desktop_config.json. It expands nothing: without
  `--copy-env OPENAI_API_KEY` (which writes the key's current value into the file) the server runs on the local
  tier only.

Other servers in the same file are never touched; an existing entry of the same name is replaced only with --force.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tiered_mcp.cli.output import FAILED, OK, USAGE, fail

HOSTS = ("claude-code", "claude-desktop", "cursor", "vscode", "codex")
KEY_ENV = "OPENAI_API_KEY"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("install", help="register the server with a host (claude-code, claude-desktop, cursor, "
                                       "vscode, codex), or --print the entry")
    p.add_argument("host", choices=HOSTS)
    p.add_argument("--name", default="tiered", help="the server's name in the host (default tiered)")
    p.add_argument("--scope", choices=["local", "user", "project"],
                   help="claude-code: local (default), user or project; cursor: user (default) or project")
    p.add_argument("--config", metavar="PATH", help="pass this config file to the server (default: the server "
                                                    "reads the default location)")
    p.add_argument("--copy-env", metavar="NAME", action="append", default=[],
                   help="write this variable's current value into the entry (claude-desktop cannot expand "
                        "variables); the file then holds the secret")
    p.add_argument("--file", metavar="PATH", help="the host's config file to edit (default: the host's usual one)")
    p.add_argument("--print", action="store_true", dest="print_only", help="print the entry or command; change nothing")
    p.add_argument("--force", action="store_true", help="replace an existing entry of the same name")


def server_command() -> list[str]:
    """This installation's server command with an absolute path (the script next to this Python, else -m)."""
    exe = Path(sys.executable)
    for name in ("tiered-mcp", "tiered-mcp.exe"):
        script = exe.parent / name
        if script.is_file():
            return [str(script), "serve"]
    found = shutil.which("tiered-mcp")
    if found:
        return [str(Path(found).resolve()), "serve"]
    return [str(exe), "-m", "tiered_mcp", "serve"]


def needed_variables(config: Any) -> tuple[list[str], list[str]]:
    """The key variables and base-URL variables of the providers the config's tiers use (for the default config:
    OPENAI_API_KEY and OPENAI_BASE_URL)."""
    keys, urls = [], []
    for tier in config.tiers.values():
        p = config.providers[tier.provider]
        if p.api_key_env and p.api_key_env not in keys:
            keys.append(p.api_key_env)
        if p.base_url_env and p.base_url_env not in urls:
            urls.append(p.base_url_env)
    return keys, urls


def _input_id(name: str) -> str:
    return name.lower().replace("_", "-")


def entry_for(host: str, config: str | None = None, copy_env: dict[str, str] | None = None,
              keys: list[str] | None = None, urls: list[str] | None = None) -> dict[str, Any]:
    """The server's entry as the host's file holds it (for codex, the TOML table as a dict).

    Args:
        host: one of HOSTS.
        config: a config file to pass with --config (made absolute).
        copy_env: variables whose values are written into the entry as they are now.
        keys: key variables to pass through (default OPENAI_API_KEY); each arrives empty or absent when unset.
        urls: base-URL variables to pass through, only those set now (a host's own environment decides the rest).
    """
    command, *args = server_command()
    if config:
        args += ["--config", str(Path(config).expanduser().resolve())]
    keys = [KEY_ENV] if keys is None else keys
    urls = urls or []
    env: dict[str, str] = {}
    for name in [*keys, *urls]:
        if host == "claude-code":
            env[name] = "${" + name + ":-}"  # empty when unset: no "missing variable" warning
        elif host == "cursor":
            env[name] = "${env:" + name + "}"
        elif host == "vscode":
            env[name] = "${input:" + _input_id(name) + "}" if name in keys else "${env:" + name + "}"
    env.update(copy_env or {})
    if host == "codex":
        out: dict[str, Any] = {"command": command, "args": args, "env_vars": [*keys, *urls],
                               "startup_timeout_sec": 30, "tool_timeout_sec": 300}
        if copy_env:
            out["env"] = dict(copy_env)
        return out
    out = {"command": command, "args": args, "env": env}
    if host in ("claude-code", "vscode"):
        out = {"type": "stdio", **out}
    return out


def default_file(host: str, scope: str | None, env: Any = None) -> Path | None:
    """The host's config file for this platform (None for claude-code, which is edited through its own CLI)."""
    env = os.environ if env is None else env
    home = Path.home()
    if host == "codex":
        return Path(env.get("CODEX_HOME") or home / ".codex") / "config.toml"
    if host == "cursor":
        return (Path.cwd() if scope == "project" else home) / ".cursor" / "mcp.json"
    if host == "vscode":
        return Path.cwd() / ".vscode" / "mcp.json"
    if host == "claude-desktop":
        if sys.platform == "darwin":
            return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
        if sys.platform == "win32":
            return Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "Claude" / "claude_desktop_config.json"
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "Claude" / "claude_desktop_config.json"
    return None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def codex_table(name: str, entry: dict[str, Any]) -> str:
    lines = [f"[mcp_servers.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def merge_json(path: Path, key: str, name: str, entry: dict[str, Any], force: bool,
               extra: dict[str, Any] | None = None) -> str:
    """Put `entry` at `key.name` in the JSON file, keeping everything else.

    Raises:
        ValueError: the file is not a JSON object, or already has a different `name` entry and not `force`.
    """
    data: dict[str, Any] = {}
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise ValueError(f"{path} is not JSON ({e}); fix it first (comments are not allowed)") from None
        if not isinstance(data, dict) or not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{path}: expected an object with a {key!r} object")
    servers = dict(data.get(key) or {})
    if name in servers and servers[name] != entry and not force:
        raise ValueError(f"{path} already has a server named {name!r}; pass --force to replace it, or --name")
    if servers.get(name) == entry and all(k in data for k in (extra or {})):
        return f"{path} already has this entry; unchanged"
    servers[name] = entry
    data[key] = servers
    for k, v in (extra or {}).items():
        if k == "inputs":
            have = {i.get("id") for i in data.get("inputs") or [] if isinstance(i, dict)}
            data["inputs"] = [*(data.get("inputs") or []), *[i for i in v if i["id"] not in have]]
        else:
            data.setdefault(k, v)
    _write(path, json.dumps(data, indent=2) + "\n")
    return f"added {name!r} to {path} ({len(servers) - 1} other server(s) kept)"


def merge_codex(path: Path, name: str, entry: dict[str, Any], force: bool) -> str:
    import tomllib

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e})") from None
    table = codex_table(name, entry)
    if name in (data.get("mcp_servers") or {}):
        if not force:
            raise ValueError(f"{path} already has [mcp_servers.{name}]; pass --force to replace it, or --name")
        lines, out, skipping = text.splitlines(keepends=True), [], False
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("["):
                skipping = stripped in (f"[mcp_servers.{name}]", f"[mcp_servers.{name}.env]")
            if not skipping:
                out.append(line)
        text = "".join(out)
        if name in (tomllib.loads(text).get("mcp_servers") or {}):
            raise ValueError(f"{path} sets mcp_servers.{name} in a form this command cannot replace; edit it by hand")
    new = text + ("\n" if text and not text.endswith("\n\n") else "") + table
    tomllib.loads(new)  # never write a file that no longer parses
    _write(path, new)
    return f"added [mcp_servers.{name}] to {path}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tiered-mcp.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def install_command(args: argparse.Namespace) -> int:
    copy: dict[str, str] = {}
    for var in args.copy_env:
        if not os.environ.get(var):
            return fail(f"--copy-env {var}: the variable is not set here", USAGE)
        copy[var] = os.environ[var]
    from tiered_mcp.core.config import CONFIG_ENV, env_value, load_config

    # The host will not have this shell's TIERED_MCP_CONFIG: a config named here goes into the entry as --config.
    config_path = args.config or env_value(os.environ, CONFIG_ENV)
    keys, urls = needed_variables(load_config(config_path))
    entry = entry_for(args.host, config_path, copy, keys, [u for u in urls if env_value(os.environ, u)])
    if args.host == "claude-code":
        return _claude_code(args, entry)
    if args.scope == "local" or (args.scope and args.host in ("claude-desktop", "codex", "vscode")):
        return fail(f"--scope {args.scope} does not apply to {args.host}", USAGE)
    path = Path(args.file).expanduser() if args.file else default_file(args.host, args.scope)
    assert path is not None
    if args.print_only:
        if args.host == "codex":
            print(f"# add to {path}\n" + codex_table(args.name, entry), end="")
        else:
            key = "servers" if args.host == "vscode" else "mcpServers"
            print(json.dumps({key: {args.name: entry}}, indent=2))
            print(f"(in {path})", file=sys.stderr)
        return OK
    try:
        if args.host == "codex":
            said = merge_codex(path, args.name, entry, args.force)
        elif args.host == "vscode":
            inputs = [{"type": "promptString", "id": _input_id(k), "description": f"{k} for tiered-mcp (empty: "
                       "local tier only)", "password": True} for k in keys]
            said = merge_json(path, "servers", args.name, entry, args.force, {"inputs": inputs})
        else:
            said = merge_json(path, "mcpServers", args.name, entry, args.force)
    except (ValueError, OSError) as e:
        return fail(str(e), FAILED)
    print(said)
    if args.host == "claude-desktop" and keys and not set(keys) & set(copy):
        print(f"Claude Desktop expands no variables: the server runs on the local tier until the entry has a key "
              f"(re-run with --copy-env {keys[0]} --force). Restart Claude Desktop to load it.")
    return OK


def _claude_code(args: argparse.Namespace, entry: dict[str, Any]) -> int:
    import shlex

    scope = args.scope or "local"
    if scope not in ("local", "user", "project"):
        return fail(f"--scope {scope} does not apply to claude-code", USAGE)
    cmd = ["claude", "mcp", "add-json", args.name, json.dumps(entry), "--scope", scope]
    if args.print_only:
        print(shlex.join(cmd))
        return OK
    claude = shutil.which("claude")
    if claude is None:
        print(shlex.join(cmd))
        return fail("`claude` is not on PATH; run the command above once Claude Code is installed", FAILED)
    if not args.force:
        have = subprocess.run([claude, "mcp", "get", args.name], capture_output=True, text=True, timeout=60)
        if have.returncode == 0:
            return fail(f"Claude Code already has a server named {args.name!r}; pass --force to replace it, or --name",
                        FAILED)
    else:
        subprocess.run([claude, "mcp", "remove", args.name, "--scope", scope], capture_output=True, text=True,
                       timeout=60)
    done = subprocess.run([claude, *cmd[1:]], capture_output=True, text=True, timeout=60)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        return fail(f"claude mcp add-json failed: {done.stderr.strip() or done.stdout.strip()}", FAILED)
    print(f"`claude mcp get {args.name}` checks that it starts")
    return OK
