"""Spawn-to-first-answer over stdio, and the size of the default tools/list in o200k_base tokens.

    python benchmarks/startup.py [--runs 10]

Spawn-to-first-answer: from starting `python -m tiered_mcp serve` to the client holding the tools/list answer
(handshake included), in both protocol eras. Goal: under 0.6 s (issue 5). The same is measured, in the same run and
interleaved with ours, for the floor: a minimal server on the SDK's low-level Server publishing one tool
(benchmarks/floor_server.py), which pays the SDK's own imports and nothing of ours; and for bare `python -c "import
mcp"`, what any server built on the SDK pays before it can read a byte. Goal for the tools/list size: <= 2,500 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import anyio
from mcp import Client, StdioServerParameters

HERE = os.path.dirname(os.path.abspath(__file__))
GOAL_S = 0.6
GOAL_TOKENS = 2500


@dataclass
class Startup:
    times: dict[str, list[float]]
    tokens: int
    json_bytes: int

    def median(self, what: str) -> float:
        return statistics.median(self.times[what])


def _env() -> dict[str, str]:
    # What a host passes: the SDK passes only a few variables; a key makes every default tier usable.
    return {"OPENAI_API_KEY": "sk-bench-not-a-key", "XDG_STATE_HOME": tempfile.mkdtemp(prefix="tiered-bench-state-")}


async def first_answer(args: list[str], mode: str) -> tuple[float, str]:
    params = StdioServerParameters(command=sys.executable, args=args, env=_env())
    t0 = time.perf_counter()
    async with Client(params, mode=mode) as client:
        listing = await client.list_tools()
        elapsed = time.perf_counter() - t0
    return elapsed, json.dumps(listing.model_dump(mode="json", by_alias=True, exclude_none=True))


def import_mcp() -> float:
    """From spawning `python -c "import mcp"` to the child saying it is done (its exit, which tears down every
    module, is not counted: a server never waits for that either)."""
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-c", "import mcp; print('ok', flush=True)"], stdout=subprocess.PIPE,
                          env=_env()) as child:
        assert child.stdout is not None
        child.stdout.readline()
        elapsed = time.perf_counter() - t0
    return elapsed


async def measure(runs: int) -> Startup:
    ledger = tempfile.mktemp(suffix=".sqlite3")
    ours = ["-m", "tiered_mcp", "serve", "--ledger", ledger]
    floor = [os.path.join(HERE, "floor_server.py")]
    await first_answer(ours, "auto")  # warm the bytecode cache; a fresh venv's first run compiles everything
    await first_answer(floor, "auto")
    times: dict[str, list[float]] = {k: [] for k in ("tiered-mcp auto", "tiered-mcp legacy", "floor auto",
                                                     "floor legacy", "import mcp")}
    listing = ""
    for _ in range(runs):  # interleaved, so that a noisy moment hits every subject alike
        for mode in ("auto", "legacy"):
            t, listing_now = await first_answer(ours, mode)
            times[f"tiered-mcp {mode}"].append(t)
            listing = listing or listing_now
            times[f"floor {mode}"].append((await first_answer(floor, mode))[0])
        times["import mcp"].append(import_mcp())
    from tiered_mcp.core.tokens import count

    return Startup(times, count(listing), len(listing))


def print_startup(s: Startup) -> None:
    runs = len(s.times["import mcp"])
    print(f"spawn-to-first-answer over stdio (start the process, handshake, tools/list answered), {runs} runs each:")
    for what, t in s.times.items():
        print(f"  {what:<18} median {statistics.median(t):.3f} s  min {min(t):.3f} s  max {max(t):.3f} s")
    for mode in ("auto", "legacy"):
        ours, floor = s.median(f"tiered-mcp {mode}"), s.median(f"floor {mode}")
        verdict = "meets" if ours <= GOAL_S else "misses"
        print(f"  {mode}: tiered-mcp {ours:.3f} s {verdict} the {GOAL_S} s goal; the SDK floor (minimal server) is "
              f"{floor:.3f} s, so tiered-mcp's own start-up is {ours - floor:+.3f} s")
    print(f"default tools/list: {s.tokens} o200k_base tokens ({s.json_bytes} bytes of JSON); goal <= {GOAL_TOKENS}: "
          + ("meets" if s.tokens <= GOAL_TOKENS else "misses"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    from _common import machine

    print(machine())
    print_startup(anyio.run(measure, args.runs))


if __name__ == "__main__":
    main()
