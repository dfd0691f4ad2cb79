"""Spawn-to-first-answer over stdio, and the size of the default tools/list in o200k_base tokens.

    python benchmarks/startup.py [--runs 10]

Spawn-to-first-answer: from starting `python -m tiered_mcp serve` to the client holding the tools/list answer
(handshake included), in both protocol eras. Goal: under 1 s (issue 2), 0.6 s (issue 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import anyio
from mcp import Client, StdioServerParameters


async def first_answer(mode: str, ledger: str) -> tuple[float, str]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "tiered_mcp", "serve", "--ledger", ledger])
    t0 = time.perf_counter()
    async with Client(params, mode=mode) as client:
        listing = await client.list_tools()
        elapsed = time.perf_counter() - t0
    return elapsed, json.dumps(listing.model_dump(mode="json", by_alias=True, exclude_none=True))


async def main(runs: int) -> None:
    ledger = tempfile.mktemp(suffix=".sqlite3")
    await first_answer("auto", ledger)  # warm the bytecode cache; a fresh venv's first run compiles everything
    listing = ""
    for mode in ("auto", "legacy"):
        times = []
        for _ in range(runs):
            t, listing = await first_answer(mode, ledger)
            times.append(t)
        print(f"spawn-to-first-answer ({mode:6}): median {statistics.median(times):.3f} s, "
              f"min {min(times):.3f} s, max {max(times):.3f} s over {runs} runs")
    from tiered_mcp.tokens import count

    print(f"default tools/list: {count(listing)} o200k_base tokens ({len(listing)} bytes of JSON); goal <= 2500")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    anyio.run(main, ap.parse_args().runs)
