"""`tiered-mcp demo`: a minute that shows what tiering saves.

It starts the real server over stdio (as a host would), makes a handful of ordinary calls and prints each receipt
and the total: what the calls cost on the tiers they ran on, against what the flagship would have cost. With no key
the tools the local tier serves run there; with OPENAI_API_KEY set the calls go to their tiers and cost real money
(a few hundredths of a cent in all). The demo writes to a throwaway ledger unless --ledger names one, so it never
counts in `tiered-mcp usage`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tiered_mcp.cli.output import OK, UNREACHABLE, console, fail, first_leaf, money

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("classify", {"text": "The app crashes every time I press save on a large file.",
                  "labels": ["bug report", "feature request", "billing question"]}),
    ("classify", {"text": "Could you add a dark mode to the settings page?",
                  "labels": ["bug report", "feature request", "billing question"]}),
    ("rank", {"query": "reset my password",
              "items": ["How to change your email address", "Resetting a forgotten password",
                        "Exporting your data", "Two-factor authentication and recovery codes"], "top_k": 2}),
    ("summarize", {"text": "The release moves the export job to a queue. Large exports no longer time out, because "
                           "the web request only enqueues the job. Users get an email with a download link when the "
                           "export is ready. The old synchronous endpoint stays for a month and then returns 410. "
                           "Support should point users with failing exports to the new flow.", "max_words": 40}),
    ("extract", {"text": "Invoice INV-204 from Acme GmbH, total EUR 1,250.00, due 2026-12-15.",
                 "schema": {"type": "object", "properties": {"invoice": {"type": "string"},
                                                             "total": {"type": "number"}}}}),
]


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("demo", help="a one-minute tour: a few real calls, their receipts, and what they saved")
    common(p)
    p.add_argument("--ledger", metavar="PATH|URL", help="record the demo calls here (default: a throwaway ledger)")
    p.add_argument("--svg", metavar="FILE", help="also save what was printed as an SVG picture of the terminal")


async def _run_all(command: list[str], env: dict[str, str], calls: list[tuple[str, dict[str, Any]]],
                   on_result: Any) -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    async with Client(params) as client:
        for tool, arguments in calls:
            on_result(tool, await client.call_tool(tool, arguments))


def demo_command(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.cli.call import child_env, receipt_line
    from tiered_mcp.core.config import load_config
    from tiered_mcp.core.receipts import RECEIPT_META_KEY
    from tiered_mcp.serve.server import load_checked_specs, tier_table, usable_tiers

    config = load_config(args.config)
    import os

    specs = load_checked_specs(config, tuple(args.specs))
    runnable = {r["tool"] for r in tier_table(config, specs, usable_tiers(config, os.environ)) if r["ladder"]}
    calls = [(t, a) for t, a in CALLS if t in runnable]
    skipped = sorted({t for t, _ in CALLS} - runnable)
    con = console()
    if args.svg:
        from rich.console import Console

        con = Console(record=True, width=100, highlight=False)
    if not calls:
        return fail("no demo tool can run here: set OPENAI_API_KEY, or add the local tier (`tiered-mcp doctor` "
                    "says how)", UNREACHABLE)
    tmp = None
    ledger = args.ledger
    if ledger is None:
        tmp = tempfile.TemporaryDirectory(prefix="tiered-mcp-demo-")
        ledger = str(Path(tmp.name) / "demo.sqlite3")
    child = [sys.executable, "-m", "tiered_mcp", "serve", "--ledger", ledger]
    if args.config:
        child += ["--config", args.config]
    for d in args.specs:
        child += ["--specs", d]
    totals = {"cost": 0.0, "flagship": 0.0, "calls": 0, "failed": 0}

    def answer_of(tool: str, arguments: dict[str, Any], out: dict[str, Any]) -> str:
        if tool == "rank":
            items = arguments.get("items") or []
            return ", ".join(f"{items[r['index']]!r} ({r['score']:.2f})" for r in out.get("ranked") or []
                             if 0 <= r.get("index", -1) < len(items))
        return str(out.get("label") or out.get("summary") or out.get("data") or out)

    args_of = dict(calls)

    def on_result(tool: str, result: Any) -> None:
        from rich.markup import escape

        r = (result.meta or {}).get(RECEIPT_META_KEY) or {}
        if result.is_error:
            totals["failed"] += 1
            text = "".join(getattr(c, "text", "") for c in result.content)
            con.print(f"[red]✗ {tool}[/]: {escape(text[:200])}")
            return
        out = result.structured_content or {}
        con.print(f"[green]✓ {tool}[/] → {escape(answer_of(tool, args_of.get(tool, {}), out)[:90])}")
        con.print(f"  [dim]{escape(receipt_line(r))}[/]")
        totals["calls"] += 1
        totals["cost"] += r.get("cost_usd") or 0.0
        totals["flagship"] += r.get("baseline_usd") or 0.0
        totals["estimated"] = totals.get("estimated", 0.0) or float(bool(r.get("estimated")))

    con.print(f"[bold]tiered-mcp demo[/]: {len(calls)} calls through the real server over stdio "
              f"(config: {config.source})\n")
    if sys.stderr.isatty():
        print("(the first local call loads the local model: a few seconds)", file=sys.stderr)
    try:
        anyio.run(_run_all, child, child_env(config), calls, on_result)
    except Exception as e:
        leaf = first_leaf(e)
        return fail(f"could not run the server: {type(leaf).__name__}: {leaf}", UNREACHABLE)
    finally:
        if tmp is not None:
            tmp.cleanup()
    saved = totals["flagship"] - totals["cost"]
    pct = f" ({100 * saved / totals['flagship']:.0f}%)" if totals["flagship"] else ""
    estimated = " (estimated: local-tier answers send no request, so their tokens are counted, not reported)" \
        if totals.get("estimated") else ""
    con.print(f"\n[bold]{totals['calls']} calls cost {money(totals['cost'])}; on the flagship they would have cost "
              f"{money(totals['flagship'])}: saved {money(saved)}{pct}{estimated}.[/]")
    if skipped:
        con.print(f"[dim]Skipped {', '.join(skipped)}: no tier can run {'it' if len(skipped) == 1 else 'them'} here "
                  "(set OPENAI_API_KEY).[/]")
    if totals["calls"] and saved > 0:
        con.print(f"At 1,000 calls a day like these, that is {money(saved / totals['calls'] * 1000)} a day"
                  + (" (estimated)." if totals.get("estimated") else "."))
    con.print("[dim]Next: connect a host (`tiered-mcp install claude-code`), then `tiered-mcp usage` and "
              "`tiered-mcp logs` show your own calls.[/]")
    if args.svg:
        con.save_svg(args.svg, title="tiered-mcp demo")
    return OK
