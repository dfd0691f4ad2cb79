"""The `tiered-mcp` command: argument parsing and printing only.

Exit codes: 0 success; 1 the tool (or a doctor check) failed; 2 bad usage, config or spec; 3 the server could not
be started or reached; 130 interrupted (Ctrl-C); 141 stdout closed early (`| head`), without a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from tiered_mcp import __version__
from tiered_mcp.cli.output import (
    CLOSED_PIPE,
    FAILED,
    INTERRUPTED,
    OK,
    UNREACHABLE,
    USAGE,
    console,
    first_leaf,
    fitted_table,
    money,
)
from tiered_mcp.core.errors import SetupError

__all__ = ["main", "OK", "FAILED", "USAGE", "UNREACHABLE"]


def _common(p: argparse.ArgumentParser, specs: bool = True) -> None:
    p.add_argument("--config", metavar="PATH", help="TOML config file (default: $TIERED_MCP_CONFIG, else "
                   "~/.config/tiered-mcp/config.toml or the platform's equivalent if it exists, else built-in)")
    if specs:
        p.add_argument("--specs", metavar="DIR", action="append", default=[],
                       help="extra folder of tool spec files (repeatable; after the config's specs and "
                            "$TIERED_MCP_SPECS); same name replaces a shipped tool")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiered-mcp", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An MCP server that hands routine steps to cheaper model tiers and shows what that saves.",
        epilog="Start here:\n  tiered-mcp demo                  a few real calls and what they saved\n"
               "  tiered-mcp install claude-code   connect a host (or codex, cursor, vscode, claude-desktop)\n"
               "  tiered-mcp logs                  what your host's calls did\n"
               "Exit codes: 0 ok, 1 the tool failed, 2 bad usage/config/spec, 3 server unreachable, 130 Ctrl-C.")
    parser.add_argument("--version", action="version", version=f"tiered-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the MCP server (stdio, or Streamable HTTP at /mcp)")
    _common(p)
    p.add_argument("--ledger", metavar="PATH|URL",
                   help="SQLite ledger file or postgresql:// URL (default: the config's, else the state dir)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default: WARNING on stdio, INFO over HTTP")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="stderr log lines: readable text, or one JSON object per line")
    p.add_argument("--transport", default="stdio", choices=["stdio", "http"])
    http = p.add_argument_group("HTTP (with --transport http)")
    http.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default 127.0.0.1); beyond loopback a token is required")
    http.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    http.add_argument("--tokens-file", metavar="PATH",
                      help="named tokens, one per caller (docs/security.md); reloaded when it changes")
    http.add_argument("--token-file", metavar="PATH",
                      help="file holding the bearer token clients must send (default: $TIERED_MCP_TOKEN)")
    http.add_argument("--allowed-host", metavar="HOST[:PORT]", action="append", default=[],
                      help="accept this Host header besides loopback (repeatable; no port = any port)")
    http.add_argument("--allowed-origin", metavar="ORIGIN", action="append", default=[],
                      help="accept this browser Origin besides loopback, e.g. https://app.example.com (repeatable)")
    http.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                      help="largest request body; larger ones get 413 (default 4 MiB)")
    http.add_argument("--stateless", action="store_true",
                      help="no sessions: each request stands alone (replicas behind a load balancer)")
    http.add_argument("--json-response", action="store_true",
                      help="answer with plain JSON instead of SSE streams (no progress notifications)")

    p = sub.add_parser("tools", help="list the tools with the tier each starts on now, its model and price")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("call", help="call one tool through a real MCP client over stdio; prints result and receipt")
    p.add_argument("tool")
    p.add_argument("--args", default="{}", metavar="JSON|@FILE|-",
                   help="the tool's arguments: a JSON object, @file.json, or - to read them from stdin")
    _common(p)
    p.add_argument("--ledger", metavar="PATH|URL")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object (result, receipt, is_error)")
    out.add_argument("--text", action="store_true",
                     help="print only the answer's text (draft, summarize); the receipt goes to stderr")
    p.add_argument("--no-receipt", action="store_true", help="do not print the receipt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--options", metavar="JSON", help='per-call routing options, e.g. \'{"cache": false}\' '
                   "(sent in the request's _meta)")

    p = sub.add_parser("usage", help="totals, cost, flagship baseline and savings from the ledger")
    _common(p, specs=False)
    p.add_argument("--ledger", metavar="PATH|URL")
    p.add_argument("--since", metavar="DATE", help="only calls on or after this date (YYYY-MM-DD, UTC)")
    p.add_argument("--by", default="tool", choices=["tool", "tier", "model", "caller"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("config", help="print the effective config (keys masked)")
    _common(p, specs=False)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="check each tier: key set, endpoint answers, which tools can run")
    _common(p)

    sub.add_parser("spec-schema", help="print the JSON Schema of tool spec files")

    from tiered_mcp.cli.logs import add_parser as add_logs
    from tiered_mcp.cli.reports import add_parsers

    add_parsers(sub, _common)
    add_logs(sub, _common)
    from tiered_mcp.cli.install import add_parser as add_install

    add_install(sub)
    from tiered_mcp.cli.demo import add_parser as add_demo

    add_demo(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and an exit code (see the module docstring).

    Set TIERED_MCP_DEBUG=1 to see the traceback of an unexpected error.
    """
    args = _parser().parse_args(argv)
    try:
        code = int(_COMMANDS[args.command](args) or OK)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at interpreter exit
        return code
    except SetupError as e:
        print(f"tiered-mcp: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("tiered-mcp: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as e:
        leaf = first_leaf(e)
        if isinstance(leaf, SetupError):
            print(f"tiered-mcp: {leaf}", file=sys.stderr)
            return USAGE
        if isinstance(leaf, BrokenPipeError):
            return _closed_pipe()
        if os.environ.get("TIERED_MCP_DEBUG"):
            raise
        print(f"tiered-mcp: {args.command} failed: {type(leaf).__name__}: {leaf} "
              "(TIERED_MCP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return FAILED


def _closed_pipe() -> int:
    # The reader went away (`| head`): say nothing, and keep Python from complaining again when it flushes at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return CLOSED_PIPE


# ---- commands ----------------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.core.tracing import configure_tracing
    from tiered_mcp.serve.heap import settle_heap
    from tiered_mcp.serve.logs import configure_logging
    from tiered_mcp.serve.server import build_runner, build_server, serve_stdio

    if args.transport == "stdio":
        if sys.stdin.isatty():
            print("tiered-mcp serve speaks MCP on stdin/stdout and is meant to be started by a host "
                  "(`tiered-mcp install HOST`); to try a tool, run `tiered-mcp call` or `tiered-mcp demo`. "
                  "Ctrl-D or Ctrl-C stops it.", file=sys.stderr)
        runner = build_runner(args.config, tuple(args.specs), args.ledger)
        configure_logging(args.log_level or "WARNING", args.log_format, redact=runner.scrubber.secrets)
        configure_tracing()
        server = build_server(runner)
        settle_heap()
        anyio.run(serve_stdio, server)
        return OK

    from tiered_mcp.serve.http_app import HttpOptions, build_http_app, resolve_token, serve_http

    # Checked before anything is set up: a refused start leaves no ledger file and binds nothing.
    token = None if args.tokens_file else resolve_token(os.environ, args.token_file)
    options = HttpOptions(host=args.host, port=args.port, token=token, tokens_file=args.tokens_file,
                          allowed_hosts=tuple(args.allowed_host),
                          allowed_origins=tuple(args.allowed_origin), max_body_bytes=args.max_body_bytes,
                          stateless=args.stateless, json_response=args.json_response)
    runner = build_runner(args.config, tuple(args.specs), args.ledger)
    configure_logging(args.log_level or "INFO", args.log_format, redact=[*runner.scrubber.secrets,
                                                                          *([token] if token else [])])
    configure_tracing()
    app = build_http_app(build_server(runner), options, tools=len(runner.specs))
    settle_heap()
    anyio.run(serve_http, app, options)
    return OK


def _console() -> Any:
    return console()


def _money(x: float | None) -> str:
    return money(x)


def _tools(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tiered_mcp.core.config import load_config
    from tiered_mcp.serve.server import load_checked_specs, tier_table, usable_tiers

    # Exactly what `serve` would publish and do now: the same spec folders and checks, the same routing (with no
    # key set, the tools the local tier serves start there).
    config = load_config(args.config)
    _warn_unexpanded(config)
    specs = load_checked_specs(config, tuple(args.specs))
    rows = tier_table(config, specs, usable_tiers(config, os.environ))
    if args.json:
        print(json.dumps(rows, indent=2))
        return OK
    price = lambda v: "?" if v is None else f"{v:g}"  # noqa: E731
    blocked, cells = [], []
    for row in rows:
        if not row["ladder"]:
            blocked.append(row)
            cells.append([row["tool"], "[red]cannot run[/]", "-", "-", "-", escape(row["description"])])
            continue
        cells.append([row["tool"], row["tier"], " > ".join(row["ladder"][1:]) or "-", row["model"] or "-",
                      f"{price(row['input_price'])}/{price(row['output_price'])}", escape(row["description"])])
    con = _console()
    table = fitted_table(con, ["tool", "starts on", "escalates to", "model", "$/M in/out", "description"], cells,
                         flex="description", title=f"tools (config: {config.source})")
    con.print(table)
    # Tools blocked only for want of a key get one line between them; other reasons are shown as they are.
    keyless = [r["tool"] for r in blocked if specs.tools[r["tool"]].local_task is None]
    keys = sorted({config.providers[t.provider].api_key_env or "" for t in config.tiers.values()
                   if config.providers[t.provider].api_key_env})
    if keyless:
        con.print(f"[red]{', '.join(keyless)}[/]: {'needs' if len(keyless) == 1 else 'need'} a model tier: set "
                  f"{' or '.join(keys) or 'a provider key'}, or point their tiers at a provider you have "
                  "(examples/config.*.toml); `tiered-mcp doctor` says what each tier lacks")
    for row in blocked:
        if row["tool"] not in keyless:
            con.print(f"[red]{row['tool']}[/]: {escape(row.get('problem') or '')}")
    return OK


def _warn_unexpanded(config: Any) -> None:
    """One warning line on stderr per variable that holds its own unexpanded `${NAME}` text (it counts as unset)."""
    from tiered_mcp.core.config import unexpanded_variables

    for name in unexpanded_variables(config, os.environ):
        print(f"tiered-mcp: warning: {name} is the literal text {os.environ[name]!r} (a host passed it through "
              "unexpanded); it counts as unset", file=sys.stderr)


def _call(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.call import call_command

    return call_command(args)


def _usage(args: argparse.Namespace) -> int:

    from tiered_mcp.core.config import is_postgres_url, load_config
    from tiered_mcp.ledger.base import open_ledger

    config = load_config(args.config)
    path = args.ledger or config.ledger_target()
    if not is_postgres_url(path) and not os.path.exists(path):
        print(f"tiered-mcp: no ledger at {path} yet (it is created by the first tool call)", file=sys.stderr)
        return FAILED
    since = args.since
    if since:
        from datetime import date

        try:
            since = date.fromisoformat(since).isoformat()
        except ValueError:
            print(f"tiered-mcp: --since {args.since!r} is not a date; use YYYY-MM-DD", file=sys.stderr)
            return USAGE
    ledger = open_ledger(path)
    try:
        usage = ledger.usage(since=since, by=args.by)
    finally:
        ledger.close()
    path = ledger.location  # a URL's password masked
    if args.json:
        print(json.dumps(usage.as_dict(args.by), indent=2))
        return OK
    rows, total = usage.rows, usage.total
    cells = []
    for r in [*rows, total]:
        pct = f"{100 * r.saved_usd / r.baseline_usd:.0f}%" if r.baseline_usd else "-"
        row = [r.key, str(r.calls), str(r.failed), f"{r.input_tokens:,}", f"{r.output_tokens:,}",
               _money(r.cost_usd), _money(r.baseline_usd), _money(r.saved_usd), pct]
        cells.append([f"[bold]{c}[/]" for c in row] if r is total else row)
    for e in usage.evidence:
        cells.append([f"evidence: {e.key}", str(e.calls), str(e.failed), f"{e.input_tokens:,}", f"{e.output_tokens:,}",
                      _money(e.cost_usd), "-", "-", "-"])
    con = _console()
    table = fitted_table(con, [args.by, "calls", "failed", "tokens in", "tokens out", "spent", "baseline", "saved",
                               "saved %"], cells, right=("calls", "failed", "tokens in", "tokens out", "spent",
                                                         "baseline", "saved", "saved %"),
                         title=f"usage by {args.by}" + (f" since {since}" if since else "") + f" ({path})")
    con.print(table)
    con.print(f"net saving after evidence spend: {_money(usage.net_saved_usd)}"
              + (f"; estimated (local tier, or no usage reported), not in the saving: "
                 f"{_money(total.estimated_saved_usd)} over {total.estimated_calls} call(s)"
                 if total.estimated_calls else ""))
    if total.unpriced_calls:
        con.print(f"{total.unpriced_calls} call(s) used a model with no known price; their cost is not in the totals.")
    return OK


_SECRET_WORDS = ("key", "token", "secret", "auth", "password")


def masked_config(config: Any, env: Any = None) -> dict[str, Any]:
    """The config as a dict, with secret-looking header values masked and the state of each key variable."""
    from urllib.parse import urlsplit, urlunsplit

    from tiered_mcp.core.config import env_value, is_unexpanded
    from tiered_mcp.ledger.base import mask_dsn

    def mask_url(raw: str) -> str:
        url = urlsplit(raw)
        if url.username or url.password:
            url = url._replace(netloc="***@" + url.netloc.rsplit("@", 1)[-1])
        return urlunsplit(url)

    env = os.environ if env is None else env
    data = config.model_dump(mode="json")
    for name, p in config.providers.items():
        out = data["providers"][name]
        out["base_url"] = mask_url(p.base_url)
        out["effective_base_url"] = mask_url(p.effective_base_url(env))
        out["default_headers"] = {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v)
                                  for k, v in p.default_headers.items()}
        if p.api_key_env:
            raw = env.get(p.api_key_env)
            out["api_key"] = ("set (hidden)" if env_value(env, p.api_key_env) else
                              f"NOT SET (unexpanded {raw!r}): export {p.api_key_env}=..." if is_unexpanded(raw) else
                              f"NOT SET: export {p.api_key_env}=...")
        else:
            out["api_key"] = "not needed"
    data["ledger"] = mask_dsn(config.ledger_target(env))
    return data


def _config(args: argparse.Namespace) -> int:
    from tiered_mcp.core.config import load_config

    data = masked_config(load_config(args.config))
    if args.json:
        print(json.dumps(data, indent=2))
        return OK
    con = _console()
    con.print(f"[bold]effective config[/] (from {data.pop('source')})")
    con.print_json(json.dumps(data))
    return OK


def _doctor(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.cli.doctor import run_checks
    from tiered_mcp.core.config import load_config

    _warn_unexpanded(load_config(args.config))
    checks, blocked = anyio.run(run_checks, args.config, tuple(args.specs))
    from rich.markup import escape

    cells = [[c.tier, "[green]ok[/]" if c.ok else ("[red]problem[/]" if c.tools else "[yellow]unused[/]"),
              c.model, escape(c.key), escape(c.endpoint), ", ".join(c.tools) or "-"] for c in checks]
    con = _console()
    con.print(fitted_table(con, ["tier", "status", "model", "key", "endpoint", "tools starting here"], cells,
                           flex="tools starting here", title="tiered-mcp doctor"))
    for c in checks:
        if not c.ok:
            con.print(f"[{'red' if c.tools else 'yellow'}]{c.tier}[/]: {escape(c.problem or '')}")
    for tool, why in blocked.items():
        con.print(f"[red]{tool} cannot run[/]: {escape(why)}")
    # A tier with a problem fails the check only if a tool starts there (the local tier is optional).
    return OK if not blocked and all(c.ok or not c.tools for c in checks) else FAILED


def _spec_schema(args: argparse.Namespace) -> int:
    from tiered_mcp.specs.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return OK


def _report(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.reports import report

    return report(args)


def _eval(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.reports import eval_command

    return eval_command(args)


def _logs(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.logs import logs_command

    return logs_command(args)


def _install(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.install import install_command

    return install_command(args)


def _demo(args: argparse.Namespace) -> int:
    from tiered_mcp.cli.demo import demo_command

    return demo_command(args)


_COMMANDS = {"serve": _serve, "demo": _demo, "install": _install, "tools": _tools, "call": _call, "logs": _logs,
             "usage": _usage, "report": _report, "eval": _eval, "config": _config, "doctor": _doctor,
             "spec-schema": _spec_schema}
