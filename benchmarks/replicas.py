"""Scale-out load test: calls/s and p50/p99 through haproxy in front of three replicas against one replica alone,
one PostgreSQL ledger, every call answered and one ledger row per call.

    python benchmarks/replicas.py [--callers 64] [--calls 1024] [--rounds 3] [--latency-ms 50] [--replicas 3]

tests/replicas.py starts it all, as the tests do: `--replicas` processes of `tiered-mcp serve --transport http
--stateless` (default config, `classify` with a new text per call, so no cache hits) on one throwaway PostgreSQL
cluster (tests/pg_server.py, fsync off), behind haproxy running examples/haproxy.cfg with only its ports rewritten.
The upstream is benchmarks/fast_upstream.py in its own process (fixed latency). Subjects, in rotating order per
round, their runs pooled (drift on a noisy machine hits both alike):

- balancer:    every caller's MCP client talks to haproxy, which spreads the requests over the replicas (leastconn).
- one replica: the same callers talk to the first replica directly (the others idle).

Each caller is a `mcp.Client` over Streamable HTTP of its own, making its calls one after another; all callers run
in this one process. CPU seconds are read from /proc for every process (the callers, each replica, haproxy), so a
reader can see which one was the bottleneck: on a 2-core machine shared with the upstream, PostgreSQL and the
callers themselves, three replicas cannot get three cores. At the end the ledger is read (after the replicas have
stopped and flushed): the run fails unless every call was answered without error and the ledger holds exactly one
row per call, by call id.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as C  # noqa: E402
from tests import pg_server, replicas  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@dataclass
class Subject:
    name: str
    url: str
    elapsed: float = 0.0
    calls: int = 0
    times: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def rate(self) -> float:
        return self.calls / self.elapsed


async def run_round(subject: Subject, callers: int, per_caller: int, start: int, ids: list[str],
                    processes: dict[str, int]) -> None:
    from mcp import Client

    from tiered_mcp.core.receipts import RECEIPT_META_KEY

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(subject.url + "/mcp")) for _ in range(callers)]

        async def caller(c: int, calls: int, base: int, times: list[float] | None) -> None:
            for k in range(calls):
                args = C.classify_args(base + c * calls + k)
                t0 = time.perf_counter()
                result = await clients[c].call_tool("classify", args)
                if times is not None:
                    times.append(time.perf_counter() - t0)
                if result.is_error:
                    raise RuntimeError(f"a call failed: {result.content[0].text if result.content else result}")
                ids.append(result.meta[RECEIPT_META_KEY]["call_id"])

        async with anyio.create_task_group() as tg:  # warm-up: connections, pools, the first ledger writes
            for c in range(callers):
                tg.start_soon(caller, c, 1, start, None)
        before = {name: cpu_s(pid) for name, pid in processes.items()}
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for c in range(callers):
                tg.start_soon(caller, c, per_caller, start + callers, subject.times)
        subject.elapsed += time.perf_counter() - t0
        for name, pid in processes.items():
            subject.cpu[name] = subject.cpu.get(name, 0.0) + cpu_s(pid) - before[name]
        subject.calls += callers * per_caller


async def measure(rs: replicas.ReplicaSet, callers: int, calls: int, rounds: int) -> tuple[list[Subject], list[str]]:
    subjects = [Subject("balancer", rs.url), Subject("one replica", rs.replicas[0].base)]
    processes = {"callers": os.getpid(), "haproxy": rs.balancer.proc.pid,
                 **{r.name: r.proc.pid for r in rs.replicas if r.proc is not None}}
    per_caller = max(1, calls // callers // rounds)
    ids: list[str] = []
    n = 0
    for replica in rs.replicas:  # each replica's first call imports the openai SDK: not within a round
        await run_round(Subject(replica.name, replica.base), 1, 1, n, ids, {})
        n += 2
    for r in range(rounds):
        for s in subjects[r % 2:] + subjects[:r % 2]:
            before, elapsed = len(s.times), s.elapsed
            await run_round(s, callers, per_caller, n, ids, processes)
            n += callers * (per_caller + 1)
            took = s.times[before:]
            print(f"  round {r + 1}: {s.name:<11} {len(took) / (s.elapsed - elapsed):7.1f} calls/s, "
                  f"p50 {C.ms(C.pct(took, 50))} ms; load average {os.getloadavg()[0]:.2f}", flush=True)
    return subjects, ids


def report(subjects: list[Subject], callers: int, latency_ms: float, n: int) -> None:
    print(f"\n{n} replicas behind haproxy vs one replica; {callers} concurrent callers, {latency_ms:g} ms upstream; "
          f"{subjects[0].calls} timed calls each; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"  {'subject':<11} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}   CPU s per 1,000 calls")
    for s in subjects:
        cpu = ", ".join(f"{k} {v / s.calls * 1000:.2f}" for k, v in s.cpu.items() if v / s.calls * 1000 >= 0.005)
        print(f"  {s.name:<11} {s.rate():>8.1f} {C.ms(C.pct(s.times, 50)):>8} {C.ms(C.pct(s.times, 99)):>8}   {cpu}")
    b, one = subjects
    print(f"  balancer / one replica: {b.rate() / one.rate():.2f}x the calls/s; p50 "
          f"{C.pct(b.times, 50) / C.pct(one.times, 50):.2f}x, p99 {C.pct(b.times, 99) / C.pct(one.times, 99):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--calls", type=int, default=1024, help="timed calls per subject, over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--replicas", type=int, default=3)
    args = ap.parse_args()
    print(C.machine())
    print(f"haproxy {replicas.haproxy_binary()}; ledger: PostgreSQL (throwaway cluster, fsync off), "
          f"{C.version_of('psycopg')}")
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(pg_server.server())
        url = stack.enter_context(pg_server.schema_url(dsn))
        port = stack.enter_context(C.upstream(args.latency_ms / 1000))
        folder = Path(tempfile.mkdtemp(prefix="tiered-bench-replicas-"))
        with replicas.replica_set(url, f"http://127.0.0.1:{port}/v1", folder, args.replicas,
                                  api_key=C.API_KEY) as rs:
            try:
                subjects, ids = anyio.run(measure, rs, args.callers, args.calls, args.rounds)
            except BaseExceptionGroup as group:  # the SDK's clients nest task groups ten deep: name the cause
                raise SystemExit(f"the load test failed: {leaf(group)!r}") from group
        # The replicas have stopped (SIGTERM): their queued ledger writes are flushed.
        from tiered_mcp.ledger.base import open_ledger

        ledger = open_ledger(url)
        try:
            rows = ledger.calls()
        finally:
            ledger.close()
    report(subjects, args.callers, args.latency_ms, args.replicas)
    uids = [r["uid"] for r in rows]
    sessions: dict[str, int] = {}
    for r in rows:
        sessions[r["session"]] = sessions.get(r["session"], 0) + 1
    print(f"  calls answered {len(ids)} (all without error), ledger rows {len(rows)}, distinct call ids in both "
          f"{len(set(ids) & set(uids))}; rows per replica process: {sorted(sessions.values(), reverse=True)}")
    if len(set(ids)) != len(ids) or set(ids) != set(uids) or len(uids) != len(set(uids)):
        raise SystemExit("the ledger does not hold exactly one row per answered call")


if __name__ == "__main__":
    main()
