"""Budgets whatever the ledger's size: p50 of one call with daily, per-tool and session caps on a ledger of N rows,
against the same call with no caps, in interleaved rounds (the machine is noisy).

    python benchmarks/budget_scale.py [--rows 1000000] [--calls 400] [--rounds 4]

The call goes through the real runner (validation, the model path with its budget holds, the ledger writer) with a
scripted model that answers at once, so what is measured is our own work. Budgets are running totals per cap and
day plus holds (call/budget.py): a call never sums the ledger, so the ledger's size should not show. Goal (issue
13): p50 with budgets on a 1M-row ledger within 1.1x of p50 with none.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))  # run from a checkout without installing

import anyio

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.specs.spec import load_specs
from tiered_mcp.testing import ScriptedModel, reply

GOOD = {"label": "bug", "labels": ["bug"], "confidence": 0.9, "reason": "r"}


def prefill(path: Path, rows: int) -> None:
    """`rows` earlier calls, spread over the last 30 days, written straight in (as a busy ledger would hold)."""
    import sqlite3

    Ledger(path).close()  # the schema, by the migrations
    db = sqlite3.connect(path)
    now = time.time()
    batch = 50_000
    for start in range(0, rows, batch):
        db.executemany(
            "INSERT INTO calls (uid, ts, tool, tier, model, ok, attempts, input_tokens, output_tokens, cost_usd,"
            " baseline_usd, latency_ms, kind, session) VALUES (?, ?, 'classify', 'nano', 'gpt-5.4-nano', 1, 1,"
            " 1000, 50, 0.0002625, 0.00325, 5.0, 'call', ?)",
            [(f"pre{i}", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - (i % (30 * 86400)))) + ".000+00:00",
              f"s{i % 1000}") for i in range(start, min(rows, start + batch))])
        db.commit()
    db.close()


async def p50(runner: Runner, calls: int, tag: str) -> float:
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        await runner.call("classify", {"text": f"{tag} item {i}", "labels": ["bug", "feature"]})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the scripted model takes to answer")
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores); ledger rows: {args.rows:,}; "
          f"model latency {1000 * args.latency:.0f} ms")

    async def answer(req: object) -> object:
        if args.latency:
            await anyio.sleep(args.latency)
        return reply(GOOD)

    specs = load_specs()
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.sqlite3", Path(tmp) / "small.sqlite3"
        t0 = time.perf_counter()
        prefill(big, args.rows)
        Ledger(small).close()
        print(f"prefilled in {time.perf_counter() - t0:.1f} s")
        caps = {"budgets": {"daily_usd": 1000.0, "session_usd": 1000.0}, "tools": {"classify": {"daily_usd": 1000.0}}}
        runs: dict[str, list[float]] = {"none, empty ledger": [], "budgets, empty ledger": [],
                                        "none, big ledger": [], "budgets, big ledger": []}
        for r in range(args.rounds):
            for name in runs:  # interleaved: every configuration once per round
                path = big if "big" in name else small
                ledger = Ledger(path)
                config = config_from_dict({"cache_ttl_s": 0, **(caps if name.startswith("budgets") else {})})
                runner = Runner(config, specs, ScriptedModel(fallback=answer), ledger, env={"OPENAI_API_KEY": "k"})
                async with runner.running():
                    runs[name].append(await p50(runner, args.calls, f"{r}-{name}"))
                ledger.close()
        best = {name: min(v) for name, v in runs.items()}
        for name, value in best.items():
            print(f"  {name:24s} p50 {value:6.2f} ms  (rounds: {', '.join(f'{v:.2f}' for v in runs[name])})")
        ratio = best["budgets, big ledger"] / best["none, big ledger"]
        growth = best["budgets, big ledger"] / best["budgets, empty ledger"]
        print(f"budgets on the big ledger / no budgets: {ratio:.3f}x (goal <= 1.10)")
        print(f"budgets: big ledger / empty ledger: {growth:.3f}x (goal < 1.10)")


if __name__ == "__main__":
    anyio.run(main)
