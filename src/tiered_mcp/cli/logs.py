"""`tiered-mcp logs`: the recent calls from the ledger, or one call's attempts in full (like `llm logs`)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from tiered_mcp.cli.output import FAILED, OK, USAGE, console, fail, fitted_table, money


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("logs", help="recent calls (tool, tier, model, outcome, cost, saving, latency); `logs ID` "
                                    "shows one call's attempts")
    p.add_argument("id", nargs="?", help="one call's id (the receipt's call_id) to show in full")
    common(p, specs=False)
    p.add_argument("--ledger", metavar="PATH|URL")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many calls (default 20)")
    p.add_argument("--tool", help="only this tool's calls")
    p.add_argument("--outcome", choices=["ok", "failed", "cached"], help="only calls with this outcome")
    p.add_argument("--since", metavar="DATE", help="only calls on or after this date (YYYY-MM-DD, UTC)")
    p.add_argument("--json", action="store_true", help="JSON (one array, or one object with `logs ID`)")
    p.add_argument("--switches", action="store_true",
                   help="auto tools' tier switches (newest first) with the evidence each was taken on")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new calls as they arrive (one line each; JSON lines with --json); Ctrl-C stops")


def logs_command(args: argparse.Namespace) -> int:
    from datetime import date

    from tiered_mcp.core.config import is_postgres_url, load_config
    from tiered_mcp.ledger.base import open_ledger

    config = load_config(args.config)
    target = args.ledger or config.ledger_target()
    if not is_postgres_url(target) and not os.path.exists(target):
        return fail(f"no ledger at {target} yet (it is created by the first tool call)", FAILED)
    since = args.since
    if since:
        try:
            since = date.fromisoformat(since).isoformat()
        except ValueError:
            return fail(f"--since {args.since!r} is not a date; use YYYY-MM-DD", USAGE)
    if args.limit < 1:
        return fail("--limit must be at least 1", USAGE)
    ledger = open_ledger(target)
    try:
        if args.id is not None:
            detail = ledger.call_detail(args.id)
            if detail is None:
                return fail(f"no call {args.id} in {ledger.location}", FAILED)
            return _show_one(detail, args.json)
        if args.switches:
            return _switches(ledger.tier_switches(args.tool, args.limit, since), args.json, ledger.location)
        rows = ledger.recent_calls(args.limit, tool=args.tool, outcome=args.outcome, since=since)
        if args.follow:
            return follow(ledger, rows, args)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return OK
    con = console()
    if not rows:
        con.print("No calls match." if (args.tool or args.outcome or since) else
                  "No calls yet: they appear here after a host (or `tiered-mcp call`) uses a tool.")
        return OK
    cells = [[str(r["uid"]), _when(r["ts"]), r["tool"], _tier(r), _outcome(r), money(r["cost_usd"]),
              money(r["saved_usd"]) + ("~" if r.get("estimated") else ""), f"{r['latency_ms']:.0f}", r.get("model") or "-"] for r in rows]
    con.print(fitted_table(con, ["id", "when (UTC)", "tool", "tier", "outcome", "cost", "saved", "ms", "model"],
                           cells, flex="model", right=("cost", "saved", "ms"),
                           title=f"{len(rows)} most recent calls ({ledger.location})"))
    if any(r.get("estimated") for r in rows):
        con.print("[dim]~ estimated: the tokens were counted here, not reported by a provider (the local tier); "
                  "`usage` shows such savings apart[/]")
    con.print("[dim]`tiered-mcp logs ID` shows one call's attempts[/]")
    return OK


def _switches(rows: list[dict[str, Any]], as_json: bool, location: str) -> int:
    from rich.markup import escape

    from tiered_mcp.evidence.tiering import switch_evalue

    rows = [{**r, "e_value": switch_evalue(r)} for r in rows]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return OK
    con = console()
    if not rows:
        con.print(escape("No tier switches yet: auto tools (`auto = true` under [tools.NAME]) switch as evidence "
                         "comes in."))
        return OK

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    cells = [[_when(r["ts"]), r["tool"], r["kind"], f"{r['from_tier']} -> {r['to_tier']}",
              "-" if r.get("trials") is None else f"{r['successes']}/{r['trials']}",
              f"{pct(r.get('lower_bound'))}-{pct(r.get('upper_bound'))}" if r.get("trials") is not None else "-",
              "-" if r["e_value"] is None else f"{r['e_value']:.1f}",
              "-" if r.get("bar") is None else f"{100 * r['bar']:g}%", escape(r.get("model") or "-"),
              escape(r["reason"])]
             for r in rows]
    con.print(fitted_table(con, ["when (UTC)", "tool", "switch", "tiers", "agreed", "bounds", "e-value", "bar",
                                 "model", "reason"], cells, flex="reason",
                           title=f"{len(rows)} most recent tier switches ({location})"))
    return OK


def line(r: dict[str, Any]) -> str:
    """One call on one line, for --follow."""
    return (f"{r['uid']:>16}  {_when(r['ts'])}  {r['tool']:<12} {_tier(r):<9} "
            f"{'cached' if r.get('cached') else 'ok' if r['ok'] else 'FAILED':<7} {money(r['cost_usd']):>10}  "
            f"saved {money(r['saved_usd']):>10}  {r['latency_ms']:>6.0f} ms  {r.get('model') or '-'}")


def follow(ledger: Any, rows: list[dict[str, Any]], args: argparse.Namespace, polls: int | None = None,
           interval_s: float = 1.0) -> int:
    """Print `rows` oldest first, then each new call as it is written, until Ctrl-C (or `polls` polls, for tests)."""
    import time

    def show(r: dict[str, Any]) -> None:
        print(json.dumps(r, default=str) if args.json else line(r), flush=True)

    for r in reversed(rows):
        show(r)
    last = max((r["id"] for r in rows), default=0)
    n = 0
    try:
        while polls is None or n < polls:
            n += 1
            time.sleep(interval_s)
            new = [r for r in ledger.recent_calls(200, tool=args.tool, outcome=args.outcome) if r["id"] > last]
            for r in reversed(new):
                show(r)
            last = max([last, *(r["id"] for r in new)])
    except KeyboardInterrupt:
        pass
    return OK


def _when(ts: str) -> str:
    return str(ts)[:19].replace("T", " ")


def _tier(r: dict[str, Any]) -> str:
    kind = r.get("kind") or "call"
    return (r.get("tier") or "-") + ("" if kind == "call" else f" ({kind})")


def _outcome(r: dict[str, Any]) -> str:
    if r.get("cached"):
        return "cached"
    return "ok" if r["ok"] else "[red]failed[/]"


def _show_one(d: dict[str, Any], as_json: bool) -> int:
    from rich.markup import escape

    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return OK
    con = console()
    flagship = d.get("baseline_usd")
    pct = f" ({100 * d['saved_usd'] / flagship:.0f}%)" if d.get("saved_usd") is not None and flagship else ""
    con.print(f"[bold]call {d['uid']}[/]: {d['tool']} at {_when(d['ts'])} UTC ({d.get('kind') or 'call'}"
              f"{', batch ' + d['batch'] if d.get('batch') else ''}), {_outcome(d)} on {d.get('tier') or '-'} "
              f"({escape(d.get('model') or '-')})")
    con.print(f"  {d['input_tokens']} in / {d['output_tokens']} out tokens; cost {money(d['cost_usd'])}; baseline "
              f"(flagship alone) {money(flagship)}; saved {money(d['saved_usd'])}{pct}"
              f"{' (estimated)' if d.get('estimated') else ''}; {d['latency_ms']:.0f} ms")
    if d.get("error"):
        con.print(f"  [red]error[/]: {escape(d['error'])}")
    for a in d.get("attempt_rows") or []:
        trigger = f" ({a['trigger']})" if a.get("trigger") else ""
        via = " (Batch API, batch rate)" if a.get("batch_api") else ""
        service = f", service tier {a['service_tier']}" if a.get("service_tier") else ""
        con.print(f"  [bold]attempt {a['n']}[/]: {a['tier']} ({escape(a['model'])}{service}), {a['reason']}{trigger}{via} -> "
                  f"{a['outcome']}; {a['input_tokens']}/{a['output_tokens']} tokens, {money(a['cost_usd'])}, "
                  f"{a['latency_ms']:.0f} ms")
        if a.get("detail"):
            con.print(f"    {escape(a['detail'])}")
    for key in ("arguments", "output"):
        if d.get(key) is not None:
            con.print(f"  [bold]{key}[/]:")
            con.print_json(json.dumps(d[key]))
    if d.get("arguments") is None:
        con.print("  [dim](arguments and output are kept only with store_inputs = true in the config)[/]")
    return OK
