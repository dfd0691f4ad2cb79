"""The `tiered-mcp` command: argument parsing and printing only.

Exit codes: 0 success; 1 the tool (or a doctor check) failed; 2 bad usage, config or spec; 3 the server could not
be started or reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from tiered_mcp import __version__
from tiered_mcp.core.errors import SetupError

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


def _common(p: argparse.ArgumentParser, specs: bool = True) -> None:
    p.add_argument("--config", metavar="PATH", help="TOML config file (default: $TIERED_MCP_CONFIG, else built-in)")
    if specs:
        p.add_argument("--specs", metavar="DIR", action="append", default=[],
                       help="extra folder of tool spec files (repeatable); same name replaces a shipped tool")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiered-mcp", description=__doc__.splitlines()[0])
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

    p = sub.add_parser("tools", help="list the tools with their tier, model and price")
    _common(p)

    p = sub.add_parser("call", help="call one tool through a real MCP client over stdio; prints result and receipt")
    p.add_argument("tool")
    p.add_argument("--args", default="{}", metavar="JSON", help="the tool's arguments as a JSON object")
    _common(p)
    p.add_argument("--ledger", metavar="PATH|URL")
    p.add_argument("--json", action="store_true", help="print one JSON object (result, receipt, is_error)")
    p.add_argument("--options", metavar="JSON", help='per-call routing options, e.g. \'{"cache": false}\' '
                   "(sent in the request's _meta)")

    p = sub.add_parser("usage", help="totals, cost, flagship baseline and savings from the ledger")
    _common(p, specs=False)
    p.add_argument("--ledger", metavar="PATH|URL")
    p.add_argument("--since", metavar="DATE", help="only calls on or after this date (YYYY-MM-DD, UTC)")
    p.add_argument("--by", default="tool", choices=["tool", "tier", "model"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("config", help="print the effective config (keys masked)")
    _common(p, specs=False)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="check each tier: key set, endpoint answers, which tools can run")
    _common(p)

    sub.add_parser("spec-schema", help="print the JSON Schema of tool spec files")

    from tiered_mcp.cli.reports import add_parsers

    add_parsers(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args) or OK)
    except SetupError as e:
        print(f"tiered-mcp: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return FAILED


# ---- commands ----------------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.core.tracing import configure_tracing
    from tiered_mcp.serve.logs import configure_logging
    from tiered_mcp.serve.server import build_runner, build_server, serve_stdio

    if args.transport == "stdio":
        configure_logging(args.log_level or "WARNING", args.log_format)
        configure_tracing()
        runner = build_runner(args.config, tuple(args.specs), args.ledger)
        anyio.run(serve_stdio, build_server(runner))
        return OK

    from tiered_mcp.serve.http_app import HttpOptions, build_http_app, resolve_token, serve_http

    # Checked before anything is set up: a refused start leaves no ledger file and binds nothing.
    token = resolve_token(os.environ, args.token_file)
    options = HttpOptions(host=args.host, port=args.port, token=token, allowed_hosts=tuple(args.allowed_host),
                          allowed_origins=tuple(args.allowed_origin), max_body_bytes=args.max_body_bytes,
                          stateless=args.stateless, json_response=args.json_response)
    configure_logging(args.log_level or "INFO", args.log_format, redact=[token] if token else [])
    configure_tracing()
    runner = build_runner(args.config, tuple(args.specs), args.ledger)
    anyio.run(serve_http, build_http_app(build_server(runner), options, tools=len(runner.specs)), options)
    return OK


def _console() -> Any:
    import shutil

    from rich.console import Console

    # Piped output would otherwise wrap at 80 columns, which folds every table into unreadable slivers.
    return Console(highlight=False, width=None if sys.stdout.isatty() else max(140, shutil.get_terminal_size().columns))


def _money(x: float | None) -> str:
    if x is None:
        return "unknown"
    sign, x = ("-" if x < 0 else ""), abs(x)
    return f"{sign}${x:,.6f}" if x < 0.01 else f"{sign}${x:,.4f}"


def _tools(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tiered_mcp.core.config import load_config
    from tiered_mcp.serve.server import tier_table
    from tiered_mcp.specs.spec import load_specs

    config = load_config(args.config)
    table = Table(title=f"tiered-mcp tools (config: {config.source})")
    for col in ("tool", "tier", "ladder", "model", "$/M in", "$/M out", "description"):
        table.add_column(col, overflow="fold")
    for row in tier_table(config, load_specs(args.specs)):
        price = lambda v: "unknown" if v is None else f"{v:g}"  # noqa: E731
        table.add_row(row["tool"], row["tier"] or "-", " > ".join(row["ladder"]), row["model"] or "-",
                      price(row["input_price"]), price(row["output_price"]), row["description"])
    _console().print(table)
    return OK


def _child_env(config_path: str | None) -> dict[str, str]:
    from tiered_mcp.core.config import CONFIG_ENV, load_config

    config = load_config(config_path)
    names = {CONFIG_ENV, "XDG_STATE_HOME", "LOCALAPPDATA"}
    for p in config.providers.values():
        names.update(n for n in (p.api_key_env, p.base_url_env) if n)
    return {n: os.environ[n] for n in names if n in os.environ}


def _call(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.core.config import load_config
    from tiered_mcp.specs.spec import load_specs

    try:
        arguments = json.loads(args.args)
        if not isinstance(arguments, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        print(f"tiered-mcp: --args must be a JSON object of the tool's arguments ({e})", file=sys.stderr)
        return USAGE
    from tiered_mcp.call.options import OPTIONS_META_KEY, parse_options
    from tiered_mcp.core.errors import ArgumentsError

    try:
        meta = {OPTIONS_META_KEY: json.loads(args.options)} if args.options else None
        parse_options(meta)
    except (ValueError, ArgumentsError) as e:
        print(f"tiered-mcp: --options: {e}", file=sys.stderr)
        return USAGE
    load_config(args.config)  # fail here, readably, rather than in the child
    specs = load_specs(args.specs)
    if specs.get(args.tool) is None:
        print(f"tiered-mcp: unknown tool {args.tool!r}; tools: {', '.join(sorted(specs.tools))}", file=sys.stderr)
        return USAGE
    child = [sys.executable, "-m", "tiered_mcp", "serve"]
    if args.config:
        child += ["--config", args.config]
    for d in args.specs:
        child += ["--specs", d]
    if args.ledger:
        child += ["--ledger", args.ledger]
    try:
        result = anyio.run(_call_over_stdio, child, _child_env(args.config), args.tool, arguments, meta)
    except Exception as e:  # the child died or never spoke MCP
        print(f"tiered-mcp: could not run the server: {type(e).__name__}: {e}", file=sys.stderr)
        return UNREACHABLE
    from tiered_mcp.core.receipts import RECEIPT_META_KEY

    receipt = (result.meta or {}).get(RECEIPT_META_KEY)
    text = "".join(getattr(c, "text", "") for c in result.content)
    if args.json:
        print(json.dumps({"is_error": result.is_error, "result": result.structured_content,
                          "error": text if result.is_error else None, "receipt": receipt}, indent=2))
    else:
        con = _console()
        if result.is_error:
            from rich.markup import escape

            con.print(f"[bold red]error[/]: {escape(text)}")
        else:
            con.print_json(json.dumps(result.structured_content))
        if receipt:
            _print_receipt(con, receipt)
    return FAILED if result.is_error else OK


async def _call_over_stdio(command: list[str], env: dict[str, str], tool: str, arguments: dict[str, Any],
                           meta: dict[str, Any] | None = None) -> Any:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    async with Client(params) as client:
        return await client.call_tool(tool, arguments, meta=meta)


def _print_receipt(con: Any, r: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    saved = r.get("saved_usd")
    if r.get("cached"):
        con.print(f"[bold]receipt[/]: {r['tool']} answered from the cache (first answered on {r.get('tier')}, "
                  f"{r.get('model')}); cost {_money(r['cost_usd'])}")
        return
    if not r.get("attempts"):
        return  # the call failed before any model was asked: the error says why
    con.print(
        f"[bold]receipt[/]: {r['tool']} on {r.get('tier') or '-'} ({r.get('model') or '-'}); "
        f"{r['input_tokens']} in / {r['output_tokens']} out tokens; cost {_money(r['cost_usd'])}; "
        f"baseline (flagship alone) {_money(r.get('baseline_usd'))}; saved {_money(saved)}"
        f"{' (estimated)' if r.get('estimated') else ''}; {r['latency_ms']:.0f} ms"
    )
    table = Table(show_header=True, header_style="dim")
    for col in ("#", "tier", "model", "reason", "outcome", "tokens in/out", "cost", "ms", "detail"):
        table.add_column(col, overflow="fold")
    for i, a in enumerate(r["attempts"], 1):
        reason = a["reason"] + (f" ({a['trigger']})" if a.get("trigger") else "")
        table.add_row(str(i), a["tier"], a["model"], reason, a["outcome"],
                      f"{a['input_tokens']}/{a['output_tokens']}", _money(a["cost_usd"]),
                      f"{a['latency_ms']:.0f}", escape(a["detail"][:300]))
    con.print(table)


def _usage(args: argparse.Namespace) -> int:
    from rich.table import Table

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
    table = Table(title=f"usage by {args.by}" + (f" since {since}" if since else "") + f" ({path})")
    for col in (args.by, "calls", "failed", "tokens in", "tokens out", "spent", "baseline", "saved", "saved %"):
        table.add_column(col, justify="left" if col == args.by else "right")
    for r in [*rows, total]:
        pct = f"{100 * r.saved_usd / r.baseline_usd:.0f}%" if r.baseline_usd else "-"
        table.add_row(r.key, str(r.calls), str(r.failed), f"{r.input_tokens:,}", f"{r.output_tokens:,}",
                      _money(r.cost_usd), _money(r.baseline_usd), _money(r.saved_usd), pct,
                      style="bold" if r is total else None)
    for e in usage.evidence:
        table.add_row(f"evidence: {e.key}", str(e.calls), str(e.failed), f"{e.input_tokens:,}",
                      f"{e.output_tokens:,}", _money(e.cost_usd), "-", _money(-e.cost_usd), "-", style="dim")
    con = _console()
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
            out["api_key"] = "set (hidden)" if env.get(p.api_key_env) else f"NOT SET: export {p.api_key_env}=..."
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

    checks, blocked = anyio.run(run_checks, args.config, tuple(args.specs))
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="tiered-mcp doctor")
    for col in ("tier", "provider", "model", "key", "endpoint", "tools starting here", "status"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.tier, c.provider, c.model, c.key, c.endpoint, ", ".join(c.tools) or "-",
                      "[green]ok[/]" if c.ok else f"[red]{escape(c.problem or '')}[/]")
    con = _console()
    con.print(table)
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


_COMMANDS = {"report": _report, "eval": _eval, "serve": _serve, "tools": _tools, "call": _call, "usage": _usage, "config": _config,
             "doctor": _doctor, "spec-schema": _spec_schema}
