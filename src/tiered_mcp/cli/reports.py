"""The `report` and `eval` commands: parsing their options and printing their tables (the work is in report.py and
evaluate.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

FAILED, USAGE = 1, 2


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("report", help="per tool: shadow agreement with a confidence interval, cost, recommendation")
    common(p, specs=False)
    p.add_argument("--ledger", metavar="PATH")
    p.add_argument("--since", metavar="DATE", help="only comparisons on or after this date (YYYY-MM-DD, UTC)")
    p.add_argument("--keep-at", type=float, default=0.9, metavar="Q",
                   help="agreement a tier must show to be kept (default 0.9)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with a chart")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="bake-off: run cases on several tiers; quality, validity, cost, latency per tier")
    p.add_argument("cases", nargs="?", help="JSONL file: {tool, arguments, expected?} per line")
    common(p)
    p.add_argument("--ledger", metavar="PATH")
    p.add_argument("--tiers", default="nano,mini,flagship", help="comma-separated tiers (default nano,mini,flagship)")
    p.add_argument("--min-quality", type=float, metavar="Q", help="name the cheapest tier reaching Q per tool")
    p.add_argument("--write-config", metavar="PATH",
                   help="set [tools.X] tier = ... for those tiers in PATH, keeping the rest of it (needs --min-quality)")
    p.add_argument("--force", action="store_true", help="with --write-config: replace PATH instead of merging")
    p.add_argument("--from-ledger", action="store_true", help="replay stored calls (needs store_inputs = true)")
    p.add_argument("--limit", type=int, default=200, help="with --from-ledger: at most this many calls")
    p.add_argument("--reference", default="flagship", metavar="TIER",
                   help="with --from-ledger: the tier whose stored answers are the reference (default flagship)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--html", metavar="FILE", help="also write the results as an HTML page")
    p.add_argument("--json", action="store_true")


def _console() -> Any:
    from tiered_mcp.cli.main import _console as console

    return console()


def report(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tiered_mcp.cli.html_report import render_html
    from tiered_mcp.core.config import is_postgres_url, load_config
    from tiered_mcp.evidence.report import build_report
    from tiered_mcp.ledger.base import open_ledger
    from tiered_mcp.specs.spec import load_specs

    config = load_config(args.config)
    target = args.ledger or config.ledger_target()
    if not is_postgres_url(target) and not Path(target).exists():
        print(f"tiered-mcp: no ledger at {target} yet (it is created by the first tool call)", file=sys.stderr)
        return FAILED
    ledger = open_ledger(target)
    try:
        specs = load_specs((*config.specs, *(getattr(args, 'specs', ()) or ())))
        reports = build_report(ledger, args.since, args.keep_at, config, specs)
        auto = _auto_summary(ledger, config, specs, args.since)
        calls = [c for c in ledger.calls() if not args.since or str(c.get("ts")) >= args.since] if args.html else []
    finally:
        ledger.close()
    path = ledger.location  # a URL's password masked
    if args.html:
        from datetime import datetime, timezone

        from tiered_mcp.specs.spec import load_specs

        try:
            tools = [s.name for s in load_specs(config.specs)]
        except Exception:  # the page still helps without the tool list
            tools = []
        page = render_html(reports, calls=calls, ledger=path, tools=tools,
                           generated=datetime.now(timezone.utc).isoformat())
        Path(args.html).write_text(page, encoding="utf-8")
    if args.json:
        by_tool = {a["tool"]: a for a in auto}
        print(json.dumps([{**r.as_dict(), "auto": by_tool.get(r.tool)} for r in reports], indent=2))
        return 0
    from tiered_mcp.cli.output import fitted_table

    con = _console()
    cells = [[r.tool, f"{r.tier} ({r.model})", r.comparison_tier, str(r.calls), str(r.scored), str(r.skipped),
              "-" if r.agreement is None else f"{100 * r.agreement:.0f}%",
              "-" if r.interval is None else f"{100 * r.interval[0]:.0f}–{100 * r.interval[1]:.0f}%",
              _money(r.cost_per_call), _money(r.comparison_cost_per_call)] for r in reports]
    table = fitted_table(con, ["tool", "tier", "vs", "calls", "scored", "skipped", "agreement", "95% interval",
                               "cost/call", "vs cost/call"], cells, title=f"shadow comparisons ({path})")
    con.print(table)
    for r in reports:
        con.print(escape(r.recommendation))
    if not reports:
        con.print(escape("No shadow comparisons yet: set shadow_rate = 0.05 under [tools.NAME] in the config to "
                         "compare a share of real calls with the flagship, or run a bake-off with `tiered-mcp eval`."))
    for line in _auto_lines(auto):
        con.print(escape(line))
    if args.html:
        con.print(f"wrote {args.html}")
    return 0


def _auto_summary(ledger: Any, config: Any, specs: Any, since: str | None) -> list[dict[str, Any]]:
    from tiered_mcp.evidence.tiering import summary

    tools = [name for name, s in config.tools.items() if s.auto]
    if not tools:
        return []
    switches = [w for t in tools for w in ledger.tier_switches(t, limit=50, since=since)]
    return summary(config, specs, ledger.autotier_states(), switches)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _auto_lines(auto: list[dict[str, Any]]) -> list[str]:
    """Per auto tool: where it is, each cheaper tier's evidence, and its switches with theirs (newest first)."""
    lines = []
    for a in auto:
        evidence = "; ".join(f"{t} ({e['model']}) {e['successes']} of {e['trials']} agree, bounds "
                             f"{_pct(e['lower'])}-{_pct(e['upper'])}" for t, e in a["evidence"].items())
        spend = f"evidence today ${a['day_spend_usd']:.4f}"
        if a["evidence_daily_usd"] is not None:
            spend += f" of ${a['evidence_daily_usd']:g}"
        if a.get("sentinel_set"):
            kept = a["sentinel_set"]
            evidence += (f"; sentinel set {kept['kept']} of {kept['size']} kept, replays since the last switch "
                         f"{kept['sentinels'][0]} of {kept['sentinels'][1]} agree")
        lines.append(f"{a['tool']}: auto, on {a['tier']} (bar {100 * a['quality_bar']:g}% agreement with "
                     f"{a['reference']}); {evidence}; {spend}, evidence runs skipped {a['skipped_today']} today, "
                     f"{a['skipped_total']} in all (over the day's evidence limit, refused by a budget cap, or too "
                     "many in flight)")
        for w in a["switches"]:
            e = "" if w.get("e_value") is None else f"e-value {w['e_value']:.1f}, "
            counts = (f" ({w['successes']} of {w['trials']} agree, bounds {_pct(w['lower_bound'])}-"
                      f"{_pct(w['upper_bound'])}, {e}bar {100 * w['bar']:g}%, model {w['model']}, spec "
                      f"{w['spec_version']})" if w.get("trials") is not None else "")
            lines.append(f"  {str(w['ts'])[:19].replace('T', ' ')} {w['kind']} {w['from_tier']} -> {w['to_tier']}: "
                         f"{w['reason']}{counts}")
    return lines


def _money(x: float | None) -> str:
    from tiered_mcp.cli.output import money

    return money(x)


def eval_command(args: argparse.Namespace) -> int:
    import anyio

    from tiered_mcp.core.config import load_config
    from tiered_mcp.core.errors import ArgumentsError
    from tiered_mcp.evidence.evaluate import Case, cases_from_ledger, cheapest_meeting, config_snippet, load_cases
    from tiered_mcp.serve.server import build_runner

    if args.write_config and args.min_quality is None:
        print("tiered-mcp: --write-config needs --min-quality Q", file=sys.stderr)
        return USAGE
    if bool(args.cases) == bool(args.from_ledger):
        print("tiered-mcp: give a CASES.jsonl file or --from-ledger (one of them)", file=sys.stderr)
        return USAGE
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    configured = load_config(args.config).tiers
    wrong = [t for t in tiers if t not in configured]
    if wrong or not tiers:
        print(f"tiered-mcp: --tiers: {', '.join(map(repr, wrong)) or 'none given'} "
              f"{'is not a configured tier' if len(wrong) == 1 else 'are not configured tiers'}; "
              f"configured: {', '.join(configured)}", file=sys.stderr)
        return USAGE
    if args.from_ledger and args.reference not in configured:
        print(f"tiered-mcp: --reference: {args.reference!r} is not a configured tier; configured: "
              f"{', '.join(configured)}", file=sys.stderr)
        return USAGE
    runner = build_runner(args.config, tuple(args.specs), args.ledger)
    reference = None
    try:
        if args.from_ledger:
            if not load_config(args.config).store_inputs:
                print("tiered-mcp: --from-ledger replays stored arguments; set store_inputs = true in the config "
                      "and let calls accumulate first", file=sys.stderr)
            assert runner.ledger is not None
            stored = cases_from_ledger(runner.ledger, runner.specs, args.reference, limit=args.limit)
            if stored.cases:
                reference = stored.as_dict()
                cases = stored.cases
                models = ", ".join(f"{m} ({n})" for m, n in sorted(stored.models.items()))
                print(f"tiered-mcp: {len(cases)} stored {args.reference} answers are the reference ({models}); "
                      f"{args.reference} is not run again"
                      + (f"; {stored.other_spec} answers to an older spec version left out" if stored.other_spec
                         else ""), file=sys.stderr)
            else:
                # No stored reference answers: replay the stored arguments on every tier, the strongest the reference.
                cases = [Case(tool, arguments) for tool, arguments in runner.ledger.stored_calls(limit=args.limit)]
                if cases:
                    print(f"tiered-mcp: no stored {args.reference} answers under the current spec versions; "
                          f"replaying {len(cases)} stored calls on every tier", file=sys.stderr)
            if not cases:
                print("tiered-mcp: the ledger holds no stored calls to replay", file=sys.stderr)
                return FAILED
        else:
            cases = load_cases(args.cases)
        scores, pairs = anyio.run(_with_progress, runner, cases, tiers, args.concurrency)
    except ArgumentsError as e:
        print(f"tiered-mcp: {e}", file=sys.stderr)
        return USAGE
    choice = cheapest_meeting(scores, args.min_quality) if args.min_quality is not None else None
    wrote = None
    if args.write_config and choice is not None:
        from tiered_mcp.cli.config_edit import write_tool_tiers

        chosen = {tool: tier for tool, tier in choice.items() if tier}
        wrote = write_tool_tiers(Path(args.write_config).expanduser(), chosen, config_snippet(choice, args.min_quality),
                                 f"cheapest tier meeting {args.min_quality:g} in `tiered-mcp eval`", args.force)
    if args.html:
        from datetime import datetime, timezone

        from tiered_mcp.cli.html_report import render_html

        Path(args.html).write_text(render_html([], [asdict(s) for s in scores], "tiered-mcp bake-off",
                                               ledger=runner.ledger.location if runner.ledger else None,
                                               generated=datetime.now(timezone.utc).isoformat()), encoding="utf-8")
    if args.json:
        print(json.dumps({"scores": [asdict(s) for s in scores], "cheapest": choice, "pairwise": pairs,
                          "reference": reference}, indent=2))
        return 0
    _print_scores(scores, choice, args)
    for p in pairs:
        lo, hi = p["interval"]
        _console().print(f"{p['tool']}: {p['first']} vs {p['second']} on the same {p['cases']} cases: "
                         f"{p['b']} only {p['first']} got, {p['c']} only {p['second']} got; difference "
                         f"{100 * p['difference']:+.0f} points ({100 * lo:+.0f} to {100 * hi:+.0f}), McNemar p = "
                         f"{p['p_value']:.3g}")
    if wrote:
        _console().print(wrote)
    return 0


async def _with_progress(runner: Any, cases: Any, tiers: list[str], concurrency: int) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    from tiered_mcp.evidence.evaluate import pairwise, run_eval

    try:
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("running cases", total=len(cases) * len(tiers))
            scores, runs = await run_eval(runner, cases, tiers, concurrency,
                                          lambda done, total: bar.update(task, completed=done))
            agree_at = {s.name: (s.compare.agree_at if s.compare else 0.8) for s in runner.specs}
            return scores, pairwise(runs, cases, agree_at)
    finally:
        await runner.aclose()


def _print_scores(scores: Any, choice: dict[str, str | None] | None, args: argparse.Namespace) -> None:

    from tiered_mcp.cli.output import fitted_table

    con = _console()
    cells = [[s.tool, s.tier, str(s.cases), "-" if s.quality is None else f"{100 * s.quality:.0f}%", s.basis,
              f"{100 * s.valid_rate:.0f}%", _money(s.cost_usd), f"{s.p50_ms:.0f}", f"{s.p95_ms:.0f}"] for s in scores]
    table = fitted_table(con, ["tool", "tier", "cases", "quality", "basis", "schema-valid", "cost", "p50 ms", "p95 ms"],
                         cells, title="bake-off")
    con.print(table)
    if choice is not None:
        for tool, tier in sorted(choice.items()):
            con.print(f"{tool}: " + (f"cheapest tier meeting {args.min_quality:g} is {tier}" if tier
                                     else f"no tier meets {args.min_quality:g}"))
