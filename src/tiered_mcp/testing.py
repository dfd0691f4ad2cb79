"""Test doubles shipped with the package, for our tests and for anyone testing a host against tiered-mcp.

- `ScriptedModel`: a Model that answers from a script per tier (replies, exceptions or callables).
- `SchemaModel`: a Model that answers anything with an object valid against the requested schema.
- `FakeUpstream`: a real OpenAI-compatible HTTP server on loopback, scripted the same way, for end-to-end runs of
  the real `openai` client.
- `network_guard`: refuses (and records) every connection that is not to loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import anyio

from tiered_mcp.models.base import ModelReply, ModelRequest

# ---- schema-valid answers ----------------------------------------------------------------------------------------


def sample_for(schema: Any, defs: dict[str, Any] | None = None) -> Any:
    """A small value valid against `schema` (the subset of JSON Schema our specs and typical callers use)."""
    if not isinstance(schema, dict):
        return None
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return sample_for(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return sample_for(schema[key][0], defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties", {})
        return {k: sample_for(v, defs) for k, v in props.items() if k in schema.get("required", props)}
    if kind == "array":
        return [sample_for(schema.get("items", {}), defs) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("number", "integer"):
        # The top of the range: a confidence or score at its maximum never triggers a confidence escalation.
        value = schema.get("maximum", schema.get("minimum", 1))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def reply(content: Any = None, *, finish_reason: str = "stop", refusal: str | None = None,
          input_tokens: int = 100, output_tokens: int = 20) -> ModelReply:
    """A ModelReply; `content` that is not a string is sent as JSON."""
    text = content if isinstance(content, str) or content is None else json.dumps(content)
    return ModelReply(content=text, finish_reason=finish_reason, refusal=refusal,  # type: ignore[arg-type]
                      input_tokens=input_tokens, output_tokens=output_tokens)


# ---- model doubles -----------------------------------------------------------------------------------------------

Step = ModelReply | Exception | Callable[[ModelRequest], Any]


class ScriptedModel:
    """A Model whose answers are scripted per tier, consumed in order.

    A step is a ModelReply, an exception to raise, or a (sync or async) callable taking the request and returning
    either. When a tier's script runs out, `fallback` answers (by default: a schema-valid object).

    Attributes:
        requests: every request received, in order.
    """

    def __init__(self, script: dict[str, list[Step]] | None = None,
                 fallback: Callable[[ModelRequest], Any] | None = None) -> None:
        self.script: dict[str, deque[Step]] = defaultdict(deque, {k: deque(v) for k, v in (script or {}).items()})
        self.fallback = fallback or (lambda req: reply(sample_for(req.schema)))
        self.requests: list[ModelRequest] = []

    def tiers_called(self) -> list[str]:
        return [r.tier for r in self.requests]

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.requests.append(request)
        queue = self.script[request.tier]
        step: Any = queue.popleft() if queue else self.fallback
        if callable(step) and not isinstance(step, (ModelReply, Exception)):
            step = step(request)
            if hasattr(step, "__await__"):
                step = await step
        if isinstance(step, Exception):
            raise step
        return step


class SchemaModel(ScriptedModel):
    """A Model that answers every request with a small object valid against the requested schema."""

    def __init__(self) -> None:
        super().__init__()


class Hang:
    """A script step that waits until cancelled, and remembers that it was."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = False

    async def __call__(self, request: ModelRequest) -> ModelReply:
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


# ---- a loopback OpenAI-compatible server -------------------------------------------------------------------------


@dataclass
class FakeResponse:
    """One scripted HTTP answer. `json_body` None with status 200 means: build a schema-valid completion.

    `raw` sends those bytes as the body instead, with `content_type`; `hang_up` closes the connection without an
    answer; `echo_headers` puts every request header into the body's error message (a careless upstream)."""

    status: int = 200
    json_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content: Any = None
    finish_reason: str = "stop"
    refusal: str | None = None
    usage: tuple[int, int] = (120, 30)
    raw: bytes | None = None
    content_type: str = "application/json"
    hang_up: bool = False
    echo_headers: bool = False


@dataclass
class Seen:
    """A request the fake upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    disconnected: bool = False


def completion(request_body: dict[str, Any], r: FakeResponse) -> dict[str, Any]:
    """A Chat Completions response body for a scripted answer."""
    content = r.content
    if content is None and r.refusal is None:
        fmt = request_body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema", {"type": "object"})
        content = sample_for(schema)
    text = content if isinstance(content, str) or content is None else json.dumps(content)
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": request_body.get("model", "fake"),
        "choices": [{"index": 0, "finish_reason": r.finish_reason,
                     "message": {"role": "assistant", "content": text, "refusal": r.refusal}}],
        "usage": {"prompt_tokens": r.usage[0], "completion_tokens": r.usage[1],
                  "total_tokens": r.usage[0] + r.usage[1]},
    }


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets connections when dozens of clients connect at once.
    request_queue_size = 256
    daemon_threads = True


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread.

    Script answers per model name with `push(model, FakeResponse(...))`; unscripted requests get a schema-valid
    completion after `latency_s`. Use as a context manager; `base_url` ends in /v1.
    """

    def __init__(self, latency_s: float = 0.0, models: tuple[str, ...] = ("gpt-5.4-nano", "gpt-5.4-mini", "gpt-5.4"),
                 port: int = 0, record: bool = True):
        self.latency_s = latency_s
        self.models = models
        self.record = record
        self.seen: list[Seen] = []
        self._script: dict[str, deque[FakeResponse]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-upstream", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def push(self, model: str, *responses: FakeResponse) -> None:
        with self._lock:
            self._script[model].extend(responses)

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.path.split("?")[0].endswith("/chat/completions")]

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _remember(self, seen: Seen) -> None:
        # A long-running demo server must not grow without bound.
        if self.record:
            self.seen.append(seen)

    def _next(self, model: str) -> FakeResponse:
        with self._lock:
            queue = self._script.get(model)
            return queue.popleft() if queue else FakeResponse(delay_s=self.latency_s)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output (and stdout) clean
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; with Nagle's algorithm and the client's delayed ACK,
                # every keep-alive request would wait ~40 ms for nothing.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _wait(self, seconds: float) -> bool:
                """Sleep, watching the socket; False when the client hung up meanwhile."""
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):
                        return False
                return True

            def do_GET(self) -> None:
                upstream._remember(Seen("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None))
                if self.path.split("?")[0].rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                                for m in upstream.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                upstream._remember(seen)
                if not self.path.split("?")[0].rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                r = upstream._next(body.get("model", ""))
                if r.delay_s and not self._wait(r.delay_s):
                    seen.disconnected = True
                    self.close_connection = True
                    return
                if r.hang_up:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if r.raw is not None:
                    self.send_response(r.status)
                    self.send_header("Content-Type", r.content_type)
                    self.send_header("Content-Length", str(len(r.raw)))
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(r.raw)
                    return
                if r.echo_headers:
                    echoed = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                    self._send(r.status, {"error": {"message": f"bad request, you sent {echoed}"}}, r.headers)
                elif r.status != 200:
                    self._send(r.status, r.json_body or {"error": {"message": f"scripted {r.status}"}}, r.headers)
                else:
                    self._send(200, r.json_body or completion(body, r), r.headers)

        return Handler


# ---- the network guard -------------------------------------------------------------------------------------------


def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_guard() -> Iterator[list[str]]:
    """Refuse every connection and name lookup that is not loopback; yields the list of refused targets.

    The refusal is an OSError (so code under test sees a failed connection); callers should also assert that the
    list is empty, so that a request swallowed by error handling still fails the test.
    """
    blocked: list[str] = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            blocked.append(str(host))
            raise ConnectionRefusedError(f"network_guard: connection to {host} refused (tests stay on loopback)")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            check((host.decode() if isinstance(host, bytes) else host,))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield blocked
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo  # type: ignore[assignment]


def main() -> None:
    """`python -m tiered_mcp.testing [--port P] [--latency S]`: run the fake upstream until interrupted."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m tiered_mcp.testing", description="A loopback OpenAI-compatible "
                                 "server that answers every request with a schema-valid completion.")
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    args = ap.parse_args()
    up = FakeUpstream(latency_s=args.latency, port=args.port, record=False)
    sys.stderr.write(f"fake upstream at {up.base_url} (Ctrl-C to stop)\n")
    try:
        up._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
