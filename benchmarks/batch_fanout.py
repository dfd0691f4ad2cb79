"""Item-level fan-out: 1,000 classify items against a loopback upstream with 50 ms latency at concurrency 32.

    python benchmarks/batch_fanout.py [--items 1000] [--latency 0.05] [--concurrency 32]

The upstream (benchmarks/fast_upstream.py, in its own process so it does not share our GIL) answers every request
after `latency`. The ideal is ceil(items / concurrency) x latency; the goal is within 1.2x of it. The run goes through
the real runner, the real openai client over HTTP and a real SQLite ledger.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

import anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(items: int, latency: float, concurrency: int, port: int) -> tuple[float, dict]:
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.ledger.sqlite import Ledger
    from tiered_mcp.models.base import LazyOpenAI
    from tiered_mcp.specs.spec import load_specs

    env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    config = config_from_dict({"cache_ttl_s": 0, "providers": {"openai": {"max_concurrency": concurrency}}})
    ledger = Ledger(os.path.join(tempfile.mkdtemp(), "ledger.sqlite3"))
    runner = Runner(config, load_specs(), LazyOpenAI(env), ledger, env=env)
    labels = ["bug report", "feature request", "billing question"]
    await runner.call("classify", {"text": "warm-up", "labels": labels})  # import openai, open the pool
    t0 = time.perf_counter()
    result = await runner.call("classify", {"items": [f"ticket {i}: the app crashes" for i in range(items)],
                                            "labels": labels})
    elapsed = time.perf_counter() - t0
    await runner.model.aclose()
    rows = len(ledger.calls())
    return elapsed, {"ok": result.receipt["ok"], "failed": result.receipt["failed"], "ledger_rows": rows - 1}


async def floor(items: int, concurrency: int, port: int) -> float:
    """The same requests straight through the openai client (no tiered-mcp): what the upstream and the SDK cost."""
    import openai
    from openai.types.chat import ChatCompletion

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0,
                                http_client=openai.DefaultAioHttpClient())
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"],
              "additionalProperties": False}
    body = {"model": "gpt-5.4-nano", "max_completion_tokens": 4096,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}}
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await client.post("/chat/completions", cast_to=ChatCompletion,
                              body={**body, "messages": [{"role": "user", "content": f"ticket {i}"}]})

    await one(-1)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(items):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "fast_upstream.py"),
                                 str(port), str(args.latency)])
    try:
        time.sleep(1.0)
        base = anyio.run(floor, args.items, args.concurrency, port)
        elapsed, info = anyio.run(run, args.items, args.latency, args.concurrency, port)
    finally:
        upstream.terminate()
    ideal = math.ceil(args.items / args.concurrency) * args.latency
    print(f"{args.items} items, {args.latency * 1000:.0f} ms upstream latency, concurrency {args.concurrency}, 2 cores")
    print(f"  tiered-mcp batch:            {elapsed:.2f} s  ratio to ideal {ideal:.2f} s: {elapsed / ideal:.2f} "
          f"(goal <= 1.20)  {info}")
    print(f"  same requests, openai alone: {base:.2f} s  ratio to ideal: {base / ideal:.2f}  "
          f"(tiered-mcp / openai alone: {elapsed / base:.2f})")


if __name__ == "__main__":
    main()
