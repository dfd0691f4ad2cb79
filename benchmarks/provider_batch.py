"""A batch task through the provider's Batch API against the same task on the model path: this process's CPU per
item, in one run, interleaved rounds.

    python benchmarks/provider_batch.py [--items 1000] [--rounds 3]

Both run through the real runner, the real openai client over HTTP and a real SQLite ledger, against the fake
upstream (`python -m tiered_mcp.testing`, its own process, so its CPU is not counted here; it answers a batch at the
first look). The Batch API side is what that path costs the server: the JSONL built and uploaded, the batch created
and polled (every 50 ms), the output downloaded and parsed, every item checked and saved. Its wall time says nothing
about a real provider (which takes minutes to hours); the CPU per item is the figure. Prints the load average beside
each round.
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


async def one_task(manager, store, batch) -> None:
    from tiered_mcp.call.options import CallOptions

    row = await manager.create("classify", batch, CallOptions())
    while (await anyio.to_thread.run_sync(store.get, row.id)).status == "working":
        await anyio.sleep(0.01)
    done = store.get(row.id)
    assert done.status == "completed" and done.failed == 0, done


async def rounds(items: int, port: int, n: int) -> list[dict[str, float]]:
    from tiered_mcp.call.provider_batch import default_executor
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger
    from tiered_mcp.ledger.tasks import TaskStore
    from tiered_mcp.models._openai import OpenAIModels
    from tiered_mcp.serve.tasks import TaskManager, path_executor
    from tiered_mcp.specs.spec import load_specs

    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    labels = ["bug report", "feature request", "billing question"]
    sides = {}
    for name, extra in (("path", {}), ("batch_api", {"tiers": {"nano": {"batch_api": True}},
                                                    "batch_api": {"poll_s": 0.05}})):
        config = config_from_dict({"cache_ttl_s": 0, **extra})
        ledger = Ledger(os.path.join(tempfile.mkdtemp(), "ledger.sqlite3"))
        runner = Runner(config, load_specs(), OpenAIModels(env), ledger, env=env)
        store = TaskStore(ledger)
        sides[name] = (runner, store, TaskManager(runner, store, default_executor(runner) or path_executor))
    out = []
    async with sides["path"][0].running(), sides["batch_api"][0].running(), \
            sides["path"][2].running(), sides["batch_api"][2].running():
        for runner, _, _ in sides.values():
            await runner.call("classify", {"text": "warm-up", "labels": labels})
        for r in range(n):
            figures = {}
            for name in (("path", "batch_api") if r % 2 == 0 else ("batch_api", "path")):
                runner, store, manager = sides[name]
                batch = {"items": [f"{name} round {r} ticket {i}: the app crashes" for i in range(items)],
                         "labels": labels}
                c0, t0 = time.process_time(), time.perf_counter()
                await one_task(manager, store, batch)
                figures[name + "_cpu_ms"] = (time.process_time() - c0) * 1000 / items
                figures[name + "_wall_s"] = time.perf_counter() - t0
            figures["load"] = os.getloadavg()[0]
            out.append(figures)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tiered_mcp.testing", "--port", str(port)],
                                stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        results = anyio.run(rounds, args.items, port, args.rounds)
    finally:
        upstream.terminate()
    print(f"{args.items} classify items as a task, 0 ms upstream latency (CPU: this process only, per item)")
    for n, f in enumerate(results, 1):
        print(f"  round {n}: model path {f['path_cpu_ms']:.2f} ms CPU/item ({f['path_wall_s']:.2f} s wall), "
              f"Batch API {f['batch_api_cpu_ms']:.2f} ms CPU/item ({f['batch_api_wall_s']:.2f} s wall); "
              f"load average {f['load']:.2f}")
    print("  median CPU per item, Batch API / model path: "
          f"{statistics.median(f['batch_api_cpu_ms'] / f['path_cpu_ms'] for f in results):.2f}")


if __name__ == "__main__":
    main()
