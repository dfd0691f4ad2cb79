"""Item-level fan-out: N classify items against a loopback upstream with 50 ms latency at concurrency 32.

    python benchmarks/batch_fanout.py [--items 1000] [--latency 0.05] [--concurrency 32] [--rounds 2] [--stdio]

The upstream (benchmarks/fast_upstream.py, in its own process so it does not share our GIL) answers every request
after `latency`. The ideal is ceil(items / concurrency) x latency; the goals (issue 13) are within 1.20x of it and
within 1.05x of the bare openai client's own ratio measured in the same run. Subjects, in rotating order per round
(drift on a noisy machine hits them alike), times pooled over the rounds:

- openai alone: the very bodies tiered-mcp sends (`_common.request_body`), straight through one `openai.AsyncOpenAI`
  on the same aiohttp transport, at most `concurrency` in flight, each answer's JSON parsed.
- tiered-mcp:   one batch call through the real runner, the real openai client and a real SQLite ledger (every
  item's row written), the cache off (every item asks the model). The runner runs as the server runs it, with
  its ledger writer: the items' rows are queued when the batch ends and written meanwhile (their count is checked
  once they are in). It runs under the garbage-collector settings `tiered-mcp serve` uses (serve/heap.py),
  and Python's defaults come back before the next subject.
- over stdio (--stdio): the same batch through `tiered-mcp serve` over stdio and a real `mcp.Client`, so the
  result's size (its JSON, bytes) and the time to send it are measured too: the client's time for the call less
  the batch's own time as its receipt gives it (`latency_ms`, measured in the server), i.e. sending the items,
  encoding, sending and decoding the result, and the client's check of it against the output schema.

The shipped specs cap a batch at 1,000 items; past that the run loads a copy of classify with `max_items` raised,
as a user would in a spec folder of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

LABELS = ["bug report", "feature request", "billing question"]


def item(i: int) -> str:
    return f"ticket {i}: the app crashes when I press save"


def spec_dir(items: int) -> str | None:
    """A folder with classify's spec allowing `items` items, or None when the shipped cap is enough."""
    from tiered_mcp.specs.spec import default_specs_dir, load_specs

    if items <= load_specs().get("classify").batch.max_items:
        return None
    folder = tempfile.mkdtemp(prefix="tiered-bench-specs-")
    text = (default_specs_dir() / "classify.yaml").read_text(encoding="utf-8")
    text = text.replace("max_items: 1000}", f"max_items: {items}}}")
    assert f"max_items: {items}" in text, "classify.yaml's batch line changed: update the benchmark"
    Path(folder, "classify.yaml").write_text(text, encoding="utf-8")
    return folder


async def openai_alone(items: int, concurrency: int, port: int, bodies: list[dict[str, Any]]) -> float:
    client = C.direct_client(port)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await C.direct_call(client, bodies[i])

    await C.direct_call(client, bodies[0])  # open the pool
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(items):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed


@contextlib.contextmanager
def server_heap() -> Any:
    """The garbage collector as `tiered-mcp serve` sets it (serve/heap.py), for the tiered-mcp subject only: the
    process's own settings come back afterwards, so the openai-alone subject runs on Python's defaults."""
    import gc

    from tiered_mcp.serve.heap import settle_heap

    before = gc.get_threshold()
    settle_heap()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def in_process(items: int, concurrency: int, port: int, specs_dir: str | None, tmp: str) -> tuple[float, dict]:
    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import config_from_dict
    from tiered_mcp.core.tokens import encoding
    from tiered_mcp.ledger.sqlite import Ledger
    from tiered_mcp.models.base import LazyOpenAI
    from tiered_mcp.specs.spec import load_specs

    env = {"OPENAI_API_KEY": C.API_KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    config = config_from_dict({"cache_ttl_s": 0, "providers": {"openai": {"max_concurrency": concurrency}}})
    ledger = Ledger(os.path.join(tmp, f"ledger-{time.monotonic_ns()}.sqlite3"))
    runner = Runner(config, load_specs([specs_dir] if specs_dir else []), LazyOpenAI(env), ledger, env=env)
    encoding()  # a server loads the o200k table in the background as it starts: not within the batch
    async with runner.running():
        await runner.call("classify", {"text": "warm-up", "labels": LABELS})  # import openai, open the pool
        with server_heap():
            t0 = time.perf_counter()
            result = await runner.call("classify", {"items": [item(i) for i in range(items)], "labels": LABELS})
            elapsed = time.perf_counter() - t0
    rows = len(ledger.calls()) - 1
    ledger.close()
    receipt = result.receipt
    return elapsed, {"ok": receipt["ok"], "failed": receipt["failed"], "per_item receipts": len(receipt["per_item"]),
                     "ledger rows": rows}


async def over_stdio(items: int, concurrency: int, port: int, specs_dir: str | None,
                     tmp: str) -> tuple[float, int, float]:
    """The batch through `tiered-mcp serve` over stdio: (seconds, bytes of the result's JSON, seconds sending)."""
    from mcp import Client, StdioServerParameters

    from tiered_mcp.core.receipts import RECEIPT_META_KEY

    config = Path(tmp, "bench.toml")
    config.write_text(f"cache_ttl_s = 0\n[providers.openai]\nmax_concurrency = {concurrency}\n", encoding="utf-8")
    argv = [*C.tiered_stdio_args(os.path.join(tmp, f"ledger-{time.monotonic_ns()}.sqlite3")), "--config", str(config)]
    if specs_dir:
        argv += ["--specs", specs_dir]
    params = StdioServerParameters(command=sys.executable, args=argv, env=C.server_env(port))
    async with Client(params, read_timeout_seconds=600) as client:
        await client.call_tool("classify", {"text": "warm-up", "labels": LABELS})
        args = {"items": [item(i) for i in range(items)], "labels": LABELS}
        t0 = time.perf_counter()
        result = await client.call_tool("classify", args)
        elapsed = time.perf_counter() - t0
    if result.is_error:
        raise SystemExit(f"the batch failed over stdio: {result.content[0].text if result.content else result}")
    # What the server wrote, near enough: the result as the SDK serialises it (the JSON-RPC envelope adds ~40 bytes).
    size = len(result.model_dump_json(by_alias=True, exclude_none=True).encode())
    return elapsed, size, elapsed - result.meta[RECEIPT_META_KEY]["latency_ms"] / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="runs per subject, in rotating order, pooled")
    ap.add_argument("--stdio", action="store_true", help="also run the batch through the server over stdio")
    args = ap.parse_args()
    print(C.machine())
    specs_dir = spec_dir(args.items)
    bodies = [C.request_body({"text": item(i), "labels": LABELS}) for i in range(args.items)]
    tmp = tempfile.mkdtemp(prefix="tiered-bench-")
    subjects = ["openai alone", "tiered-mcp"] + (["over stdio"] if args.stdio else [])
    total = {s: 0.0 for s in subjects}
    cpu = {s: 0.0 for s in subjects}  # this process's CPU seconds (every thread: the ledger writer's too)
    info: dict[str, Any] = {}
    size, sending = 0, 0.0
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(C.upstream(args.latency))
        for r in range(args.rounds):
            for s in subjects[r % len(subjects):] + subjects[:r % len(subjects)]:
                c0 = time.process_time()
                if s == "openai alone":
                    t = anyio.run(openai_alone, args.items, args.concurrency, port, bodies)
                elif s == "tiered-mcp":
                    t, info = anyio.run(in_process, args.items, args.concurrency, port, specs_dir, tmp)
                else:
                    t, size, send = anyio.run(over_stdio, args.items, args.concurrency, port, specs_dir, tmp)
                    sending += send / args.rounds
                total[s] += t
                cpu[s] += time.process_time() - c0
                print(f"  round {r + 1}: {s:<12} {t:6.2f} s, this process's CPU {time.process_time() - c0:6.2f} s "
                      f"(load average {os.getloadavg()[0]:.2f})")
    ideal = math.ceil(args.items / args.concurrency) * args.latency
    mean = {s: total[s] / args.rounds for s in subjects}
    base = mean["openai alone"]
    print(f"\n{args.items} items, {args.latency * 1000:.0f} ms upstream, concurrency {args.concurrency}, "
          f"{args.rounds} round(s); ideal {ideal:.2f} s; load average at the end {os.getloadavg()[0]:.2f}")
    per_item = {s: cpu[s] / args.rounds / args.items * 1000 for s in subjects}
    print(f"  openai alone:  {base:6.2f} s  {base / ideal:.3f}x ideal; CPU {per_item['openai alone']:.2f} ms per item")
    t = mean["tiered-mcp"]
    print(f"  tiered-mcp:    {t:6.2f} s  {t / ideal:.3f}x ideal (goal <= 1.20)  {t / base:.3f}x openai alone "
          f"(goal <= 1.05); CPU {per_item['tiered-mcp']:.2f} ms per item; {info}")
    if args.stdio:
        s = mean["over stdio"]
        print(f"  over stdio:    {s:6.2f} s  {s / ideal:.3f}x ideal  {s / base:.3f}x openai alone; "
              f"result {size:,} bytes; sending it {sending:.2f} s (the call as the client saw it less the batch's "
              "latency_ms in its receipt)")


if __name__ == "__main__":
    main()
