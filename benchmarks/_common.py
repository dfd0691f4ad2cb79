"""Helpers shared by the call-latency, throughput and start-up benchmarks: the machine, the loopback upstream, server
subprocesses, the exact request body tiered-mcp sends, and percentiles.

Every benchmark runs on loopback only, bounded in calls and time, and stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from typing import Any, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = ["bug report", "feature request", "billing question"]
API_KEY = "sk-bench-not-a-key"


def text_for(i: int) -> str:
    # A different text per call: identical calls would be answered from tiered-mcp's cache.
    return f"Ticket {i}: the app crashes when I press save, and I lose my work every time."


def classify_args(i: int) -> dict[str, Any]:
    return {"text": text_for(i), "labels": LABELS}


INVOICE = {"type": "object", "properties": {"invoice": {"type": "string"}, "total": {"type": "number"},
                                            "currency": {"type": "string"}}}


def extract_args(i: int) -> dict[str, Any]:
    # The same schema every call, as a host extracting one kind of record sends it.
    # The fake upstream answers "x" for every string and 0 for numbers: "tax" lets "x" pass the occurs-in check.
    return {"text": f"Invoice INV-{i}, total EUR 1,250.00 incl. tax, due in 30 days, 0 paid.", "schema": INVOICE}


def args_for(tool: str, i: int) -> dict[str, Any]:
    return {"classify": classify_args, "extract": extract_args}[tool](i)


def machine() -> str:
    """One line naming the machine and the versions that decide the figures."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for name in ("tiered-mcp", "mcp", "openai", "aiohttp", "anyio", "pydantic", "uvicorn", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    load = ""
    with contextlib.suppress(OSError):
        load = f"; load average at start {os.getloadavg()[0]:.2f}"
    return (f"{os.cpu_count()} cores ({cpu or platform.machine()}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; " + ", ".join(versions) + load)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def upstream(latency_s: float) -> Iterator[int]:
    """benchmarks/fast_upstream.py in its own process (it must not share our GIL); yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fast_upstream.py"), str(port), str(latency_s)])
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)


def server_env(upstream_port: int) -> dict[str, str]:
    """What a host passes to the server: the key, the endpoint, and a state dir of its own (no stray ledger)."""
    # PYTHONPATH too: run from a checkout or a worktree, the server runs that source, not an installed copy.
    env = {k: os.environ[k] for k in ("HOME", "PATH", "LANG", "PYTHONPATH") if k in os.environ}
    env.update(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port}/v1",
               XDG_STATE_HOME=tempfile.mkdtemp(prefix="tiered-bench-state-"))
    return env


def tiered_stdio_args(ledger: str) -> list[str]:
    return ["-m", "tiered_mcp", "serve", "--ledger", ledger]


@contextlib.contextmanager
def http_server(argv: list[str], env: dict[str, str], port: int, log_path: str) -> Iterator[str]:
    """Start an HTTP MCP server subprocess; yields its /mcp URL once /healthz (or the port) answers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            stop(proc)


def request_body(args: dict[str, Any], tool: str = "classify") -> dict[str, Any]:
    """The Chat Completions body tiered-mcp sends for a call of `tool` with `args` on the default nano tier.

    Built from the same spec, template and schema binding the runner uses; `check_same_body` proves it equal to what
    the runner really sends.
    """
    from tiered_mcp.call.runner import _strict, _with_defaults

    spec, tier = _spec(tool)
    full = _with_defaults(spec.input_schema, args)
    schema = spec.model_output_schema(full)
    return {
        "model": tier.model,
        "messages": spec.render(full),
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": spec.name, "schema": schema, "strict": _strict(schema)}},
        "max_completion_tokens": tier.max_output_tokens,
    }


_LOADED: dict[str, Any] = {}


def _spec(tool: str) -> Any:
    if not _LOADED:
        from tiered_mcp.core.config import load_config
        from tiered_mcp.specs.spec import load_specs

        _LOADED.update(specs=load_specs(), nano=load_config(None, {}).tiers["nano"])
    return _LOADED["specs"].get(tool), _LOADED["nano"]


async def check_same_body(upstream_port: int, tool: str = "classify") -> None:
    """Run one classify call through the real runner and openai client, capture the body it posts, and check that
    `request_body` builds exactly that body: the direct client and the floor server then send what we send."""
    import openai

    from tiered_mcp.call.runner import Runner
    from tiered_mcp.core.config import load_config
    from tiered_mcp.models.base import LazyOpenAI
    from tiered_mcp.specs.spec import load_specs

    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1"}
    seen: list[dict[str, Any]] = []
    original = openai.AsyncOpenAI.post

    async def post(self: Any, path: str, *a: Any, body: Any = None, **kw: Any) -> Any:
        seen.append(body)
        return await original(self, path, *a, body=body, **kw)

    openai.AsyncOpenAI.post = post  # type: ignore[method-assign]
    try:
        runner = Runner(load_config(None, env), load_specs(), LazyOpenAI(env), None, env=env)
        await runner.call(tool, args_for(tool, -1))
        await runner.aclose()
    finally:
        openai.AsyncOpenAI.post = original  # type: ignore[method-assign]
    want = request_body(args_for(tool, -1), tool)
    if seen != [want]:
        raise SystemExit("the direct request body differs from tiered-mcp's:\n"
                         f"tiered-mcp: {json.dumps(seen)}\nbenchmark:  {json.dumps(want)}")


def direct_client(upstream_port: int) -> Any:
    """An AsyncOpenAI client built as tiered-mcp builds its own: aiohttp transport, no SDK retries."""
    import openai

    return openai.AsyncOpenAI(api_key=API_KEY, base_url=f"http://127.0.0.1:{upstream_port}/v1", max_retries=0,
                              timeout=60.0, http_client=openai.DefaultAioHttpClient())


async def direct_call(client: Any, body: dict[str, Any]) -> Any:
    """The request straight through the openai client, as `OpenAIModels.complete` makes it (raw post, parsed into a
    ChatCompletion), plus parsing the answer's JSON: what any caller of the model must do at least."""
    from openai.types.chat import ChatCompletion

    resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
    return json.loads(resp.choices[0].message.content)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def label(src: str) -> str:
    """A name for a copy of src/ given with --before: its parent folder's name (/tmp/before/src -> "before")."""
    return os.path.basename(os.path.dirname(os.path.abspath(src)))


def version_of(name: str) -> str:
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} (not installed)"
