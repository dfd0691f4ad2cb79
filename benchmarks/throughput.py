"""Throughput (calls/s) and per-call p50/p95 at 1, 8 and 64 concurrent callers, over stdio and Streamable HTTP.

    python benchmarks/throughput.py [--transport stdio,http] [--callers 1,8,64] [--latency-ms 50] [--rounds 4]
                                    [--calls N] [--before OTHER/src]

Subjects, against benchmarks/fast_upstream.py in its own process (fixed latency per request):

- direct:     the same Chat Completions requests straight through one `openai.AsyncOpenAI` (aiohttp transport).
- mcp proxy:  a minimal SDK low-level server forwarding the same request (benchmarks/floor_server.py --proxy).
- tiered-mcp: `tiered-mcp serve` with its default config and a real SQLite ledger, `classify` with a new text per
              call (identical calls would be cache hits). Note the default `max_concurrency = 32` per provider:
              at 64 callers, at most 32 requests are in flight upstream.
- durable:    with `--durable`, the same server with `ledger_durable = true` (each answer waits for its ledger
              row's commit), in the same rotation, so the two are measured under the same load.

Over stdio a host has one connection to its server, so the callers share one `mcp.Client`; over HTTP each caller
is a team member with a `mcp.Client` (a session) of its own. Each caller makes its calls one after another. Per
level, each subject runs `--rounds` times (A B C, B C A, C A B, ...) and its runs are pooled, so that drift on a
noisy machine hits all of them alike. Everything (callers, server, upstream) shares the machine's cores, as it
would on a laptop.
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

SUBJECTS = ("direct", "mcp proxy", "tiered-mcp")
LEDGER: dict[str, Any] = {"dsn": None}  # --ledger postgresql: the throwaway server's URL and tests/pg_server helpers
Call = Callable[[int, int], Awaitable[None]]  # (caller, call number)


@dataclass
class Level:
    transport: str
    callers: int
    elapsed: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the subject's server process

    def rate(self, subject: str) -> float:
        return self.calls[subject] / self.elapsed[subject]


def _child_pid(marker: str) -> int | None:
    """The process this one started whose command line holds `marker` (a server), or None."""
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = open(f"/proc/{pid}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()
            if stat[1] == me and marker in open(f"/proc/{pid}/cmdline", encoding="utf-8").read():
                return int(pid)
    return None


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process, from /proc (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = open(f"/proc/{pid}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calls_per_caller(callers: int, calls: int | None = None) -> int:
    return calls or {1: 200, 8: 48}.get(callers, max(16, 1024 // callers))


async def _clients(stack: contextlib.AsyncExitStack, transport: str, which: str, upstream_port: int, callers: int,
                   mode: str, tmp: str, src: str | None = None, durable: bool = False) -> list[Any]:
    """One shared client over stdio; one client per caller over HTTP. `src`: run tiered-mcp from that copy of src/;
    `durable`: with `ledger_durable = true`."""
    from mcp import Client, StdioServerParameters

    env = C.server_env(upstream_port)
    if src:
        env["PYTHONPATH"] = src
    if which == "tiered":
        if LEDGER["dsn"]:  # a schema of its own on the benchmark's PostgreSQL server
            ledger = stack.enter_context(LEDGER["schema_url"](LEDGER["dsn"]))
        else:
            name = "durable" if durable else C.label(src) if src else "now"
            ledger = os.path.join(tmp, f"ledger-{transport}-{name}.sqlite3")
            _prefill(ledger, LEDGER.get("prefill", 0))
        argv = C.tiered_stdio_args(ledger)
        if durable:
            config = os.path.join(tmp, "durable.toml")
            with open(config, "w", encoding="utf-8") as f:
                f.write("ledger_durable = true\n")
            argv += ["--config", config]
    else:
        argv = [os.path.join(C.HERE, "floor_server.py"), "--proxy"]
    if transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=argv, env=env)
        client = await stack.enter_async_context(Client(params, mode=mode))
        await client.list_tools()
        return [client]
    port = C.free_port()
    argv = argv + ["--transport", "http", "--port", str(port)]
    url = stack.enter_context(C.http_server(argv, env, port, os.path.join(tmp, f"{which}-{port}-http.log")))
    out = []
    for _ in range(callers):
        client = await stack.enter_async_context(Client(url, mode=mode))
        await client.list_tools()
        out.append(client)
    return out


def _prefill(path: str, rows: int) -> None:
    """Cache entries of `rows` earlier distinct calls (still fresh), as on a server that has been busy a while."""
    if rows:
        import time

        from tiered_mcp.core.config import config_from_dict
        from tiered_mcp.core.receipts import Receipt
        from tiered_mcp.ledger.base import CacheEntry, CallWrite
        from tiered_mcp.ledger.sqlite import Ledger

        ledger = Ledger(path)
        expires = time.time() + 3600.0
        ledger.write([CallWrite(Receipt(tool="classify", tier="nano", model="gpt-5.4-nano", ok=True),
                                cache=CacheEntry(f"earlier-call-{i}", {"label": "bug report"}, "nano", "gpt-5.4-nano",
                                                 expires)) for i in range(rows)], [], config_from_dict({}))
        ledger.close()


def _mcp(clients: list[Any]) -> Call:
    async def call(caller: int, n: int) -> None:
        result = await clients[caller % len(clients)].call_tool("classify", C.classify_args(n))
        if result.is_error:
            raise RuntimeError(f"classify failed: {result.content[0].text if result.content else result}")
    return call


async def _run(call: Call, callers: int, per_caller: int, start: int, times: list[float]) -> float:
    async def caller(c: int) -> None:
        for k in range(per_caller):
            t0 = time.perf_counter()
            await call(c, start + c * per_caller + k)
            times.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(callers):
            tg.start_soon(caller, c)
    return time.perf_counter() - t0


async def measure(transport: str, levels: list[int], mode: str, upstream_port: int, rounds: int,
                  before: list[str] = (), durable: bool = False, calls: int | None = None) -> list[Level]:
    tmp = tempfile.mktemp(prefix="tiered-bench-")
    os.makedirs(tmp)
    out = []
    async with contextlib.AsyncExitStack() as stack:
        direct = C.direct_client(upstream_port)
        stack.push_async_callback(direct.close)
        bodies: dict[int, dict[str, Any]] = {}

        async def direct_call(caller: int, n: int) -> None:
            await C.direct_call(direct, bodies[n])

        most = max(levels)
        floor = await _clients(stack, transport, "floor", upstream_port, most, mode, tmp)
        tiered = await _clients(stack, transport, "tiered", upstream_port, most, mode, tmp)
        run = {"direct": direct_call, "mcp proxy": _mcp(floor), "tiered-mcp": _mcp(tiered)}
        for src in before:
            run[C.label(src)] = _mcp(await _clients(stack, transport, "tiered", upstream_port, most, mode, tmp, src))
        if durable:
            run["durable"] = _mcp(await _clients(stack, transport, "tiered", upstream_port, most, mode, tmp,
                                                 durable=True))
        subjects = tuple(run)
        # Each server's own CPU per call, which a crowded machine changes far less than calls/s.
        pids = {"mcp proxy": _child_pid("floor_server.py"), "tiered-mcp": _child_pid(f"ledger-{transport}-now"),
                **{C.label(src): _child_pid(f"ledger-{transport}-{C.label(src)}") for src in before},
                **({"durable": _child_pid(f"ledger-{transport}-durable")} if durable else {})}
        n = 0
        for callers in levels:
            level = Level(transport, callers, {s: 0.0 for s in subjects}, {s: 0 for s in subjects},
                          {s: [] for s in subjects}, {s: 0.0 for s in subjects})
            per = max(1, calls_per_caller(callers, calls) // rounds)
            for subject in subjects:  # warm-up at this concurrency: pools grow to it
                for i in range(callers):
                    bodies[n + i] = C.request_body(C.classify_args(n + i))
                await _run(run[subject], callers, 1, n, [])
                n += callers
            order = [s for r in range(rounds) for s in subjects[r % len(subjects):] + subjects[:r % len(subjects)]]
            for subject in order:
                for i in range(callers * per):
                    bodies[n + i] = C.request_body(C.classify_args(n + i))  # built before the clock starts
                cpu0 = _cpu_s(pids.get(subject))
                level.elapsed[subject] += await _run(run[subject], callers, per, n, level.times[subject])
                level.cpu[subject] += _cpu_s(pids.get(subject)) - cpu0
                level.calls[subject] += callers * per
                n += callers * per
            out.append(level)
            print_level(level)
    return out


def print_level(level: Level) -> None:
    print(f"\n{level.transport}, {level.callers} concurrent caller(s), {level.calls['direct']} calls each; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {'subject':<11} {'calls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'rate vs direct':>15} "
          f"{'server CPU ms/call':>19}")
    for s in level.calls:
        cpu = f"{level.cpu[s] / level.calls[s] * 1000:.2f}" if level.cpu.get(s) else "-"
        print(f"  {s:<11} {level.rate(s):>9.1f} {C.ms(C.pct(level.times[s], 50)):>8} "
              f"{C.ms(C.pct(level.times[s], 95)):>8} {level.rate(s) / level.rate('direct'):>15.3f} {cpu:>19}")
    print(f"  tiered-mcp / mcp proxy: {level.rate('tiered-mcp') / level.rate('mcp proxy'):.3f} of the floor's rate"
          + (f"; server CPU per call {level.cpu['tiered-mcp'] / level.cpu['mcp proxy']:.2f}x the floor's"
             if level.cpu.get("mcp proxy") and level.cpu.get("tiered-mcp") else ""))
    if "durable" in level.calls:
        print(f"  durable / tiered-mcp: {level.rate('durable') / level.rate('tiered-mcp'):.3f} of the rate; p50 "
              f"{C.pct(level.times['durable'], 50) / C.pct(level.times['tiered-mcp'], 50):.2f}x")


async def run_all(transports: list[str], levels: list[int], latency_ms: float, mode: str, rounds: int = 4,
                  before: list[str] = (), ledger: str = "sqlite", durable: bool = False,
                  calls: int | None = None) -> list[Level]:
    out = []
    with contextlib.ExitStack() as stack:
        if ledger == "postgresql":
            sys.path.insert(0, os.path.dirname(C.HERE))
            from tests import pg_server  # a throwaway cluster on loopback, as the tests use

            LEDGER.update(dsn=stack.enter_context(pg_server.server()), schema_url=pg_server.schema_url)
            print(f"ledger: PostgreSQL (a throwaway cluster on loopback, fsync off); {C.version_of('psycopg')}")
        port = stack.enter_context(C.upstream(latency_ms / 1000))
        await C.check_same_body(port)
        for transport in transports:
            out += await measure(transport, levels, mode, port, rounds, before, durable, calls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", default="stdio,http")
    ap.add_argument("--callers", default="1,8,64")
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    ap.add_argument("--rounds", type=int, default=4, help="runs per subject and level, in rotating order, pooled")
    ap.add_argument("--calls", type=int, default=None, metavar="N",
                    help="calls per caller and subject, over all rounds (default 200 for 1 caller, 48 for 8, "
                         "16 for 64): more for steadier figures on a busy machine")
    ap.add_argument("--prefill-cache", type=int, default=0, metavar="N",
                    help="start each SQLite ledger with N fresh cache entries (a server busy for a while)")
    ap.add_argument("--ledger", default="sqlite", choices=["sqlite", "postgresql"],
                    help="tiered-mcp's ledger: a SQLite file, or a throwaway PostgreSQL cluster (tests/pg_server.py)")
    ap.add_argument("--before", metavar="SRC", action="append", default=[],
                    help="also run tiered-mcp from this copy of src/, labelled by its parent folder (repeatable)")
    ap.add_argument("--durable", action="store_true",
                    help="also run tiered-mcp with ledger_durable = true (answers wait for their rows' commit)")
    args = ap.parse_args()
    print(C.machine())
    print(f"upstream latency {args.latency_ms:g} ms; MCP client mode {args.mode}"
          + (f"; ledgers start with {args.prefill_cache} cache entries" if args.prefill_cache else ""))
    LEDGER["prefill"] = args.prefill_cache
    anyio.run(run_all, args.transport.split(","), [int(x) for x in args.callers.split(",")], args.latency_ms,
              args.mode, args.rounds, args.before, args.ledger, args.durable, args.calls)


if __name__ == "__main__":
    main()
