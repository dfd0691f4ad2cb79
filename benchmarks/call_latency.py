"""One tool call through tiered-mcp against the same request made straight with the openai client (goal: p50 within
1.1x), over stdio and Streamable HTTP, at several upstream latencies.

    python benchmarks/call_latency.py [--transport stdio,http] [--latency-ms 0,50] [--calls 200] [--mode auto]
                                      [--tool classify|extract] [--before OTHER/src]

Per transport and upstream latency (benchmarks/fast_upstream.py, in its own process), four subjects take turns in
rounds of `calls / 10` sequential calls each, after a warm-up, so that a noisy moment hits them all alike:

- direct:      the Chat Completions request straight through `openai.AsyncOpenAI` (aiohttp transport, raw `post`,
               the exact body tiered-mcp sends, checked at start), answer JSON parsed. The baseline of every ratio.
- mcp echo:    a tool call to a minimal SDK low-level server whose tool returns its arguments: the MCP round trip.
- mcp proxy:   the same minimal server forwarding the same request with the same client: the SDK + openai floor.
- tiered-mcp:  `tiered-mcp serve` (default config, a real SQLite ledger), `classify` with a new text each call
               (identical calls would be cache hits), through a real `mcp.Client`.

Client-side time includes the client's own work (framing, parsing, output-schema check), as a host would see it.
`--before DIR/src` adds tiered-mcp run from another copy of the source (e.g. a checkout of an older commit) to the
same rounds: before/after figures from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

GOAL = 1.1
SUBJECTS = ("direct", "mcp echo", "mcp proxy", "tiered-mcp")


@dataclass
class Row:
    transport: str
    latency_ms: float
    times: dict[str, list[float]] = field(default_factory=dict)
    tool: str = "classify"

    def p(self, subject: str, q: float) -> float:
        return C.pct(self.times[subject], q)

    def ratio(self, subject: str, q: float) -> float:
        return self.p(subject, q) / self.p("direct", q)


async def _connect(stack: contextlib.AsyncExitStack, transport: str, which: str, upstream_port: int,
                   mode: str, tmp: str, src: str | None = None) -> Any:
    """A connected mcp.Client to tiered-mcp (which="tiered") or the floor server (which="floor"); `src`: run
    tiered-mcp from that source folder instead (a copy of another version's src/, for before/after figures)."""
    from mcp import Client, StdioServerParameters

    env = C.server_env(upstream_port)
    if src:
        env["PYTHONPATH"] = src
    if which == "tiered":
        argv = C.tiered_stdio_args(os.path.join(tmp, f"ledger-{transport}-{C.label(src) if src else 'now'}.sqlite3"))
    else:
        argv = [os.path.join(C.HERE, "floor_server.py"), "--proxy"]
    if transport == "stdio":
        target: Any = StdioServerParameters(command=sys.executable, args=argv, env=env)
    else:
        port = C.free_port()
        argv = argv + ["--transport", "http", "--port", str(port)]
        target = stack.enter_context(C.http_server(argv, env, port, os.path.join(tmp, f"{which}-http.log")))
    client = await stack.enter_async_context(Client(target, mode=mode))
    await client.list_tools()
    return client


def _mcp_call(client: Any, tool: str) -> Callable[[int], Awaitable[None]]:
    async def call(i: int) -> None:
        args = {"text": C.text_for(i)} if tool == "echo" else C.args_for(tool, i)
        result = await client.call_tool(tool, args)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {result.content[0].text if result.content else result}")
    return call


async def measure(transport: str, latency_ms: float, calls: int, warmup: int, mode: str, upstream_port: int,
                  before: list[str] = (), tool: str = "classify") -> Row:
    """Interleaved rounds of sequential calls for the four subjects; per-call seconds."""
    subjects = SUBJECTS + tuple(C.label(src) for src in before)
    row = Row(transport, latency_ms, {s: [] for s in subjects}, tool)
    tmp = tempfile.mkdtemp(prefix="tiered-bench-")
    async with contextlib.AsyncExitStack() as stack:
        direct = C.direct_client(upstream_port)
        stack.push_async_callback(direct.close)
        floor = await _connect(stack, transport, "floor", upstream_port, mode, tmp)
        tiered = await _connect(stack, transport, "tiered", upstream_port, mode, tmp)
        bodies: dict[int, dict[str, Any]] = {}

        async def direct_call(i: int) -> None:
            await C.direct_call(direct, bodies[i])

        run = {"direct": direct_call, "mcp echo": _mcp_call(floor, "echo"), "mcp proxy": _mcp_call(floor, tool),
               "tiered-mcp": _mcp_call(tiered, tool)}
        for src in before:
            run[C.label(src)] = _mcp_call(await _connect(stack, transport, "tiered", upstream_port, mode, tmp, src),
                                        tool)
        n = 0
        for subject in subjects:  # warm-up: imports, connection pools, bytecode, first ledger write
            for _ in range(warmup):
                n += 1
                bodies[n] = C.request_body(C.args_for(tool, n), tool)
                await run[subject](n)
        per_round = max(1, calls // 10)
        rounds = max(1, calls // per_round)
        for r in range(rounds):
            order = subjects[r % len(subjects):] + subjects[: r % len(subjects)]
            for subject in order:
                for _ in range(per_round):
                    n += 1
                    bodies[n] = C.request_body(C.args_for(tool, n), tool)  # built before the clock starts
                    t0 = time.perf_counter()
                    await run[subject](n)
                    row.times[subject].append(time.perf_counter() - t0)
    return row


def print_row(row: Row) -> None:
    print(f"\n{row.tool} over {row.transport}, upstream latency {row.latency_ms:g} ms, "
          f"{len(row.times['direct'])} calls each (ms; ratio = subject / direct)")
    print(f"  {'subject':<11} {'p50':>8} {'p95':>8} {'mean':>8} {'p50 ratio':>10} {'p95 ratio':>10}")
    for s in row.times:
        t = row.times[s]
        print(f"  {s:<11} {C.ms(row.p(s, 50)):>8} {C.ms(row.p(s, 95)):>8} {C.ms(sum(t) / len(t)):>8} "
              f"{row.ratio(s, 50):>10.3f} {row.ratio(s, 95):>10.3f}")
    over = row.p("tiered-mcp", 50) - row.p("mcp proxy", 50)
    verdict = "meets" if row.ratio("tiered-mcp", 50) <= GOAL else "misses"
    print(f"  tiered-mcp p50 {row.ratio('tiered-mcp', 50):.3f}x direct: {verdict} the {GOAL}x goal; "
          f"floor (mcp proxy) {row.ratio('mcp proxy', 50):.3f}x; tiered-mcp's own work {over * 1000:+.2f} ms "
          f"over the floor at p50")


async def run_all(transports: list[str], latencies: list[float], calls: int, warmup: int, mode: str,
                  before: list[str] = (), tool: str = "classify") -> list[Row]:
    rows = []
    for latency in latencies:
        with C.upstream(latency / 1000) as port:
            await C.check_same_body(port, tool)
            for transport in transports:
                row = await measure(transport, latency, calls, warmup, mode, port, before, tool)
                print_row(row)
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", default="stdio,http", help="comma-separated: stdio, http")
    ap.add_argument("--latency-ms", default="0,50", help="comma-separated upstream latencies in ms")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per subject")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="MCP protocol era of the client")
    ap.add_argument("--tool", default="classify", choices=["classify", "extract"],
                    help="the tool called (extract: the same caller's schema each call, a new text)")
    ap.add_argument("--before", metavar="SRC", action="append", default=[],
                    help="also run tiered-mcp from this copy of src/, labelled by its parent folder (repeatable)")
    args = ap.parse_args()
    print(C.machine())
    print(f"MCP client mode {args.mode}")
    anyio.run(run_all, args.transport.split(","), [float(x) for x in args.latency_ms.split(",")], args.calls,
              args.warmup, args.mode, args.before, args.tool)


if __name__ == "__main__":
    main()
