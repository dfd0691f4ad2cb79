"""Local-tier classify throughput, in process and through the real server over stdio, with CPU ms per text.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_throughput.py [--short 1000] [--long 100] [--rounds 2]
        [--skip-in-process] [--skip-mcp] [--baseline-src /path/to/other/checkout/src]

Texts: short = tweets from the vaderSentiment sdist (~13 words); news-length = the first 400 words of ACLSum papers
(abstract + introduction). Every text is distinct (tiered-mcp caches identical calls). Labels: 3 topic labels.

In process: LocalEngine.run_many (one batch) and LocalEngine.run with 64 concurrent callers.
Over MCP: `python -m tiered_mcp serve` with no API key (so classify runs on the local tier), one stdio client;
classify with `items` (the server's batch path, 1000 items a call) and one call per text with 32 calls in flight.
CPU is the server process's user + system time over the run (from /proc), divided by the texts. With
`--baseline-src` a second server runs from that source tree, and every measurement alternates between the two
(round by round), so both see the same load. Each round uses fresh texts (a round prefix), so the cache never
answers. The load average (1 minute) is printed on every line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402

LABELS = ["science and research", "customer support", "personal life"]


def texts(short: int, long: int) -> tuple[list[str], list[str]]:
    tweets = local_data.labelled("tweets", None).texts
    shorts = [f"{t} (#{i})" for i, t in enumerate((tweets * (short // len(tweets) + 1))[:short])]
    docs = [" ".join(s) for s, _ in local_data.aclsum_documents("train") + local_data.aclsum_documents("test")]
    longs = [f"({i}) " + " ".join(d.split()[:400]) for i, d in enumerate((docs * (long // len(docs) + 1))[:long])]
    return shorts, longs


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children() -> list[int]:
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(entry.name))
    return out


def line(what: str, n: int, wall: float, cpu: float) -> None:
    print(f"  {what:58s} {n:5d} texts  {n / wall:7.0f} texts/s  {1000 * cpu / n:6.1f} CPU ms/text  "
          f"load {os.getloadavg()[0]:.2f}", flush=True)


async def in_process(shorts: list[str], longs: list[str]) -> None:
    import anyio

    from tiered_mcp.models.local import LocalEngine

    engine = LocalEngine()
    # Warm-up with a full batch: the first large pass pays one-off costs (allocations, tokenizer caches).
    await engine.run_many("classify", [{"text": f"warm-up {i}", "labels": LABELS} for i in range(256)])
    print(f"in process ({engine.model_name}):")
    for name, batch in (("short", shorts), ("news-length", longs)):
        items = [{"text": t, "labels": LABELS} for t in batch]
        w, c = time.perf_counter(), time.process_time()
        await engine.run_many("classify", items)
        line(f"run_many, {name}", len(items), time.perf_counter() - w, time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        limiter = anyio.CapacityLimiter(64)

        async def one(item: dict, limiter: anyio.CapacityLimiter = limiter) -> None:
            async with limiter:
                await engine.run("classify", item)

        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
        line(f"run, 64 concurrent callers, {name}", len(items), time.perf_counter() - w, time.process_time() - c)


async def over_mcp(shorts: list[str], longs: list[str], rounds: int, baseline: str | None) -> None:
    from mcp import Client, StdioServerParameters

    servers = {"this tree": str(ROOT.parent / "src"), **({"baseline": baseline} if baseline else {})}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, src in servers.items():
            tmp = tempfile.mkdtemp(prefix="local-bench-")
            env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG") if k in os.environ}
            env.update(XDG_STATE_HOME=tmp, HF_HUB_OFFLINE="1", PYTHONPATH=src)
            params = StdioServerParameters(
                command=sys.executable, args=["-m", "tiered_mcp", "serve", "--ledger", os.path.join(tmp, "l.sqlite3")],
                env=env)
            before = set(_children())
            client = await stack.enter_async_context(Client(params))
            await client.list_tools()
            warm = await client.call_tool("classify", {"items": [f"warm-up {i}" for i in range(256)], "labels": LABELS})
            assert not warm.is_error, warm
            [pid] = set(_children()) - before
            clients[name] = (client, pid)
            print(f"over MCP stdio: {name} = tiered-mcp serve from {src} (no key, so the local tier), pid {pid}")
        for r in range(rounds):
            for kind, batch in (("short", shorts), ("news-length", longs)):
                for name, (client, pid) in clients.items():
                    texts = [f"r{r} {t}" for t in batch]
                    w, c = time.perf_counter(), _cpu_of(pid)
                    for start in range(0, len(texts), 1000):
                        res = await client.call_tool("classify", {"items": texts[start : start + 1000],
                                                                  "labels": LABELS})
                        assert not res.is_error, res.content
                    line(f"[{name}] round {r + 1}: items=[...], {kind}", len(texts), time.perf_counter() - w,
                         _cpu_of(pid) - c)
                for name, (client, pid) in clients.items():
                    sem = asyncio.Semaphore(32)

                    async def one(text: str, sem: asyncio.Semaphore = sem, client: Client = client) -> None:
                        async with sem:
                            res = await client.call_tool("classify", {"text": text, "labels": LABELS})
                            assert not res.is_error, res.content

                    w, c = time.perf_counter(), _cpu_of(pid)
                    await asyncio.gather(*(one(f"r{r} single {t}") for t in batch))
                    line(f"[{name}] round {r + 1}: one call per text, 32 in flight, {kind}", len(batch),
                         time.perf_counter() - w, _cpu_of(pid) - c)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", type=int, default=1000)
    parser.add_argument("--long", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-mcp", action="store_true")
    parser.add_argument("--baseline-src", help="also serve from this source tree (e.g. main's src), interleaved")
    args = parser.parse_args()
    shorts, longs = texts(args.short, args.long)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"{os.cpu_count()} CPUs, load average {' '.join(load)} at start (other work on the machine slows wall "
          f"time; CPU ms per text is the steadier figure); short ~{sum(len(t.split()) for t in shorts) / len(shorts):.0f} words, "
          f"news-length ~{sum(len(t.split()) for t in longs) / len(longs):.0f} words")
    if not args.skip_in_process:
        asyncio.run(in_process(shorts, longs))
    if not args.skip_mcp:
        asyncio.run(over_mcp(shorts, longs, args.rounds, args.baseline_src))


if __name__ == "__main__":
    main()
