"""Every speed goal of the "Serve a team" issue in one run, then one summary table.

    python benchmarks/run_all.py [--quick] [--latency-ms 0,50,200] [--calls 200] [--runs 8]

(a) one tool call over stdio against the same request made straight with the openai client (p50 goal <= 1.1x),
(b) the same over Streamable HTTP, (c) spawn-to-first-answer (goal <= 0.6 s), (d) tokens of the default tools/list
(goal <= 2,500), (e) throughput at 1, 8 and 64 concurrent callers over stdio and HTTP. Each part is also a script of
its own (call_latency.py, startup.py, throughput.py) with more options. Every figure is measured in this run, with
its floor beside it: what a minimal server on the same MCP SDK (benchmarks/floor_server.py) does on the same
machine, at the same moment. The machine is shared and noisy: compare ratios within one run, not across runs.
Takes about 10 minutes on 2 cores (--quick: about 3).
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import call_latency  # noqa: E402
import startup  # noqa: E402
import throughput  # noqa: E402


def _x(v: float) -> str:
    return f"{v:.3f}x"


async def main(latencies: list[float], calls: int, runs: int, levels: list[int], rounds: int, mode: str) -> None:
    print("\n== (c), (d): start-up and tools/list ==")
    s = await startup.measure(runs)
    startup.print_startup(s)
    print("\n== (a), (b): one call, sequential ==")
    rows = await call_latency.run_all(["stdio", "http"], latencies, calls, max(10, calls // 10), mode)
    print("\n== (e): throughput ==")
    levels_out = await throughput.run_all(["stdio", "http"], levels, 50.0, mode, rounds)

    table: list[tuple[str, ...]] = [("", "measure", "setting", "tiered-mcp", "floor (SDK)", "baseline", "goal", "met")]
    for r in rows:
        part = "(a)" if r.transport == "stdio" else "(b)"
        for q in (50, 95):
            goal = f"<= {call_latency.GOAL}x" if q == 50 else "-"
            met = ("yes" if r.ratio("tiered-mcp", 50) <= call_latency.GOAL else "no") if q == 50 else ""
            table.append((part, f"call p{q}, {r.transport}", f"upstream {r.latency_ms:g} ms",
                          f"{C.ms(r.p('tiered-mcp', q))} ms = {_x(r.ratio('tiered-mcp', q))}",
                          f"{C.ms(r.p('mcp proxy', q))} ms = {_x(r.ratio('mcp proxy', q))}",
                          f"openai direct {C.ms(r.p('direct', q))} ms", goal, met))
    for mode_ in ("auto", "legacy"):
        ours, floor = s.median(f"tiered-mcp {mode_}"), s.median(f"floor {mode_}")
        table.append(("(c)", "spawn-to-first-answer", f"stdio, {mode_} era", f"{ours:.3f} s", f"{floor:.3f} s",
                      f"import mcp {s.median('import mcp'):.3f} s", f"<= {startup.GOAL_S} s",
                      "yes" if ours <= startup.GOAL_S else "no"))
    table.append(("(d)", "default tools/list", "o200k_base tokens", f"{s.tokens}", "-", "-",
                  f"<= {startup.GOAL_TOKENS}", "yes" if s.tokens <= startup.GOAL_TOKENS else "no"))
    for lv in levels_out:
        floor_rate = lv.rate("mcp proxy")
        table.append(("(e)", f"throughput, {lv.transport}", f"{lv.callers} caller(s), upstream 50 ms",
                      f"{lv.rate('tiered-mcp'):.0f}/s p50 {C.ms(C.pct(lv.times['tiered-mcp'], 50))} "
                      f"p95 {C.ms(C.pct(lv.times['tiered-mcp'], 95))} ms",
                      f"{floor_rate:.0f}/s (ours {lv.rate('tiered-mcp') / floor_rate:.2f} of it)",
                      f"openai direct {lv.rate('direct'):.0f}/s", "-", ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print("\n== summary ==")
    print(C.machine())
    print(f"MCP client mode {mode}; ratios are against the direct openai call measured in the same rounds; the floor "
          "is a minimal low-level-Server MCP server making the same openai call (no validation, receipt, ledger)")
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and runs (noisier)")
    ap.add_argument("--latency-ms", default="0,50,200", help="upstream latencies for (a) and (b)")
    ap.add_argument("--calls", type=int, default=200, help="timed sequential calls per subject for (a) and (b)")
    ap.add_argument("--runs", type=int, default=8, help="spawns per subject for (c)")
    ap.add_argument("--callers", default="1,8,64", help="concurrency levels for (e)")
    ap.add_argument("--rounds", type=int, default=4, help="runs per subject and level for (e)")
    ap.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="MCP protocol era of the clients")
    args = ap.parse_args()
    if args.quick:
        args.calls, args.runs, args.rounds, args.latency_ms = 100, 4, 2, "0,50"
    print(C.machine())
    anyio.run(main, [float(x) for x in args.latency_ms.split(",")], args.calls, args.runs,
              [int(x) for x in args.callers.split(",")], args.rounds, args.mode)


if __name__ == "__main__":
    cli()
