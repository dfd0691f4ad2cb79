"""A batch run as an MCP task against the same batch answered synchronously, in one run, interleaved rounds.

    python benchmarks/batch_task.py [--items 1000] [--latency 0.05] [--concurrency 32] [--rounds 3]

Both go through the real runner, the real openai client over HTTP to benchmarks/fast_upstream.py (its own process)
and a real SQLite ledger. The task side is what a task adds: items saved in chunks as they finish, progress counters,
the final result rebuilt from the saved items; it is timed from `create` to the moment the ledger says `completed`
(polled every 10 ms, so up to 10 ms of it is the poll). Prints each round and the median ratio task / synchronous.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import anyio
from _common import free_port


async def rounds(items: int, concurrency: int, port: int, n: int) -> list[tuple[float, float]]:
    from tiered_mcp.call.options import CallOptions
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger
    from tiered_mcp.ledger.tasks import TaskStore
    from tiered_mcp.models.base import LazyOpenAI
    from tiered_mcp.serve.tasks import TaskManager
    from tiered_mcp.specs.spec import load_specs

    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    config = config_from_dict({"cache_ttl_s": 0, "providers": {"openai": {"max_concurrency": concurrency}}})
    ledger = Ledger(os.path.join(tempfile.mkdtemp(), "ledger.sqlite3"))
    runner = Runner(config, load_specs(), LazyOpenAI(env), ledger, env=env)
    store = TaskStore(ledger)
    labels = ["bug report", "feature request", "billing question"]
    out = []
    async with runner.running(), TaskManager(runner, store).running() as manager:
        await runner.call("classify", {"text": "warm-up", "labels": labels})  # import openai, open the pool
        for r in range(n):
            batch = {"items": [f"round {r} ticket {i}: the app crashes" for i in range(items)], "labels": labels}
            t0 = time.perf_counter()
            await runner.call("classify", batch)
            sync = time.perf_counter() - t0
            batch = {**batch, "items": [f"task {t}" for t in batch["items"]]}
            t0 = time.perf_counter()
            row = await manager.create("classify", batch, CallOptions())
            while (await anyio.to_thread.run_sync(store.get, row.id)).status == "working":
                await anyio.sleep(0.01)
            task = time.perf_counter() - t0
            done = store.get(row.id)
            assert done.status == "completed" and done.done == items, done
            out.append((sync, task))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "fast_upstream.py"),
                                 str(port), str(args.latency)])
    try:
        time.sleep(1.0)
        results = anyio.run(rounds, args.items, args.concurrency, port, args.rounds)
    finally:
        upstream.terminate()
    print(f"{args.items} items, {args.latency * 1000:.0f} ms upstream latency, concurrency {args.concurrency}; "
          f"load average {os.getloadavg()[0]:.2f}")
    for n, (sync, task) in enumerate(results, 1):
        print(f"  round {n}: synchronous {sync:.2f} s, as a task {task:.2f} s, ratio {task / sync:.2f}")
    print(f"  median ratio task / synchronous: {statistics.median(t / s for s, t in results):.2f}")


if __name__ == "__main__":
    main()
