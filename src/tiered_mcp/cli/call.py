"""`tiered-mcp call`: one tool call through a real MCP client over stdio, with progress, the result and its receipt.

Arguments come from `--args JSON`, `--args @file.json` or `--args -` (stdin). While the call runs, and when stderr
is a terminal, each attempt is shown on stderr as the server reports it; stdout carries only the answer (JSON, or
with `--text` the tool's text) and the receipt, so `call ... --text > out.txt` keeps the file clean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

from tiered_mcp.cli.output import FAILED, OK, UNREACHABLE, USAGE, console, fail, first_leaf, fitted_table, money


def read_arguments(raw: str, stdin: Any = None) -> dict[str, Any]:
    """`--args` as given: a JSON object, `-` for stdin, or `@PATH` for a file.

    Raises:
        ValueError: not readable, not JSON, or not an object (the message says which).
    """
    if raw == "-":
        text = (stdin or sys.stdin).read()
        where = "stdin"
    elif raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        where = str(path)
    else:
        text, where = raw, "--args"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a JSON object of the tool's arguments")
    return value


def text_field(output_schema: dict[str, Any]) -> str | None:
    """The output property `--text` prints: `text` if the tool has it, else its only required string property."""
    props = output_schema.get("properties") or {}
    if "text" in props:
        return "text"
    strings = [k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"
               and k in (output_schema.get("required") or ())]
    return strings[0] if len(strings) == 1 else None


def child_env(config: Any) -> dict[str, str]:
    """What the server child needs from this environment (the SDK passes only HOME, PATH and a few more)."""
    from tiered_mcp.core.config import CONFIG_ENV, SPECS_ENV

    names = {CONFIG_ENV, SPECS_ENV, "XDG_STATE_HOME", "XDG_CONFIG_HOME", "LOCALAPPDATA", "APPDATA"}
    for p in config.providers.values():
        names.update(n for n in (p.api_key_env, p.base_url_env) if n)
    return {n: os.environ[n] for n in names if n in os.environ}


class _Progress:
    """Prints what the server reports as it happens, on stderr, when that is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()
        self.said_local = False

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"\r\033[K{text}", file=sys.stderr, flush=True)

    async def __call__(self, done: float, total: float | None, message: str | None) -> None:
        msg = message or ""
        elapsed = time.perf_counter() - self.started
        if total:  # a batch: items finishing
            self.say(f"  [{elapsed:5.1f}s] {int(done)}/{int(total)} {msg}")
            return
        self.say(f"  [{elapsed:5.1f}s] attempt {int(done)}: {msg}")
        # Each `call` starts a fresh server, so its first local attempt loads the model.
        if msg.startswith("local") and not self.said_local:
            self.said_local = True
            self.say("           loading the local model (a few seconds on the first call)…")


def call_command(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.call.options import OPTIONS_META_KEY, parse_options
    from tiered_mcp.core.config import load_config
    from tiered_mcp.core.errors import ArgumentsError
    from tiered_mcp.serve.server import load_checked_specs

    try:
        arguments = read_arguments(args.args)
    except ValueError as e:
        return fail(f"--args must be a JSON object of the tool's arguments: {e}", USAGE)
    try:
        meta = {OPTIONS_META_KEY: json.loads(args.options)} if args.options else None
        parse_options(meta)
    except (ValueError, ArgumentsError) as e:
        return fail(f"--options: {e}", USAGE)
    # Everything the server would refuse at start-up is refused here, readably, before a child is spawned.
    config = load_config(args.config)
    specs = load_checked_specs(config, tuple(args.specs))
    spec = specs.get(args.tool)
    if spec is None:
        return fail(f"unknown tool {args.tool!r}; tools: {', '.join(sorted(specs.tools))}", USAGE)
    field = text_field(spec.output_schema) if args.text else None
    if args.text and field is None:
        return fail(f"--text: {spec.name}'s answer is structured ({', '.join(spec.output_schema.get('properties', {}))}); "
                    "drop --text to see it as JSON", USAGE)
    child = [sys.executable, "-m", "tiered_mcp", "serve"]
    if args.config:
        child += ["--config", args.config]
    for d in args.specs:
        child += ["--specs", d]
    if args.ledger:
        child += ["--ledger", args.ledger]
    progress = _Progress(enabled=sys.stderr.isatty() and not args.quiet)
    progress.say(f"tiered-mcp: calling {spec.name} (starting the server…)")
    try:
        result = anyio.run(call_over_stdio, child, child_env(config), spec.name, arguments, meta, progress)
    except Exception as e:  # the child died or never spoke MCP
        leaf = first_leaf(e)
        return fail(f"could not run the server: {type(leaf).__name__}: {leaf} (its own message, if any, is above; "
                    "`tiered-mcp doctor` checks the set-up)", UNREACHABLE)
    from tiered_mcp.core.receipts import RECEIPT_META_KEY

    receipt = (result.meta or {}).get(RECEIPT_META_KEY)
    text = "".join(getattr(c, "text", "") for c in result.content)
    if args.json:
        print(json.dumps({"is_error": result.is_error, "result": result.structured_content,
                          "error": text if result.is_error else None, "receipt": receipt}, indent=2))
        return _exit_code(result, receipt)
    con = console()
    err = console(stderr=True)
    if result.is_error:
        from rich.markup import escape

        err.print(f"[bold red]error[/]: {escape(text)}")
    elif field is not None:
        out = result.structured_content or {}
        if "results" in out and isinstance(out.get("results"), list):  # a batch: one answer per item
            for item in out["results"]:
                print(item.get("output", {}).get(field, "") if "output" in item else f"[item {item['index']} failed: "
                      f"{item.get('error')}]")
        else:
            print(out.get(field, ""))
    else:
        con.print_json(json.dumps(result.structured_content))
    if receipt and not args.no_receipt:
        # With --text the receipt goes to stderr so that stdout is only the text.
        print_receipt(err if field is not None else con, receipt)
    return _exit_code(result, receipt)


def _exit_code(result: Any, receipt: dict[str, Any] | None) -> int:
    """0 answered; 2 the arguments (or the per-call tier) were refused: bad usage; 1 the tool failed."""
    if not result.is_error:
        return OK
    return USAGE if (receipt or {}).get("error_kind") in ("arguments", "tier") else FAILED


async def call_over_stdio(command: list[str], env: dict[str, str], tool: str, arguments: dict[str, Any],
                          meta: dict[str, Any] | None = None, progress: Any = None) -> Any:
    from mcp import Client, StdioServerParameters
    from mcp.types import RequestParamsMeta

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    async with Client(params) as client:
        return await client.call_tool(tool, arguments, meta=cast("RequestParamsMeta | None", meta), progress_callback=progress)


def receipt_line(r: dict[str, Any]) -> str:
    """One line that says where a call ran, what it cost and what it saved."""
    saved, baseline = r.get("saved_usd"), r.get("baseline_usd")
    pct = f" ({100 * saved / baseline:.0f}%)" if saved is not None and baseline else ""
    estimated = " (estimated)" if r.get("estimated") else ""
    if r.get("batch"):
        tiers = ", ".join(f"{n} on {t}" for t, n in (r.get("tiers") or {}).items())
        return (f"{r['tool']} batch: {r['ok']}/{r['items']} ok ({tiers}); {r['input_tokens']} in / "
                f"{r['output_tokens']} out tokens; cost {money(r.get('cost_usd'))}; baseline (flagship alone) "
                f"{money(baseline)}; saved {money(saved)}{pct}{estimated}; {r.get('latency_ms', 0):.0f} ms")
    model = (r.get("model") or "-").split(" (")[0]  # the local model's name carries its package in parentheses
    return (f"{r['tool']} on {r.get('tier') or '-'} ({model}); {r['input_tokens']} in / "
            f"{r['output_tokens']} out tokens; cost {money(r.get('cost_usd'))}; baseline (flagship alone) "
            f"{money(baseline)}; saved {money(saved)}{pct}{estimated}; {r.get('latency_ms', 0):.0f} ms")


def print_receipt(con: Any, r: dict[str, Any]) -> None:
    """The receipt as a line and a table of attempts (for a batch: a line and a table of items)."""
    from rich.markup import escape

    if r.get("batch"):
        con.print(f"[bold]receipt[/]: {escape(receipt_line(r))}")
        cells = []
        for item in r.get("per_item") or []:
            cells.append([str(item.get("index", "-")), ("cache " if item.get("cached") else "") + (item.get("tier") or "-"),
                          str(len(item.get("attempts") or [])), money(item.get("cost_usd")),
                          money(item.get("saved_usd")), f"{item.get('latency_ms', 0):.0f}",
                          escape(item.get("error") or "")])
        if cells:  # the items that failed, escalated or came from the cache; the others are in `tiered-mcp logs`
            con.print(fitted_table(con, ["item", "tier", "attempts", "cost", "saved", "ms", "error"], cells,
                                   flex="error", right=("cost", "saved", "ms")))
        return
    if r.get("cached"):
        con.print(f"[bold]receipt[/]: {r['tool']} answered from the cache (first answered on {r.get('tier')}, "
                  f"{r.get('model')}); cost {money(r.get('cost_usd'))}")
        return
    if not r.get("attempts"):
        return  # the call failed before any model was asked: the error says why
    con.print(f"[bold]receipt[/]: {escape(receipt_line(r))}")
    cells = []
    for i, a in enumerate(r["attempts"], 1):
        reason = a["reason"] + (f" ({a['trigger']})" if a.get("trigger") else "")
        cells.append([str(i), a["tier"], escape(a["model"]), reason, a["outcome"],
                      f"{a['input_tokens']}/{a['output_tokens']}", money(a["cost_usd"]), f"{a['latency_ms']:.0f}",
                      escape(a["detail"][:300])])
    con.print(fitted_table(con, ["#", "tier", "model", "reason", "outcome", "tokens", "cost", "ms", "detail"], cells,
                           flex="detail", right=("cost", "ms")))
    if r.get("call_id") is not None:
        con.print(f"[dim]call {r['call_id']}: `tiered-mcp logs {r['call_id']}` shows it again[/]")
