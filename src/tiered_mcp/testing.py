"""Test doubles shipped with the package, for our tests and for anyone testing a host against tiered-mcp.

- `ScriptedModel`: a Model that answers from a script per tier (replies, exceptions or callables).
- `SchemaModel`: a Model that answers anything with an object valid against the requested schema.
- `FakeUpstream`: a real OpenAI-compatible HTTP server on loopback, scripted the same way, for end-to-end runs of
  the real `openai` client; unscripted, it answers from the request's text (`answer_from_text`), so answers pass
  the shipped validators. A completion reports the request's `service_tier` (or a scripted one);
  `service_tier_unavailable()` scripts flex's 429 `resource_unavailable`.
  It serves the Batch API too (/v1/files, /v1/batches), scripted with `FakeBatch`.
- `network_guard`: refuses (and records) every connection that is not to loopback.
- `idle`: waits for a Runner's background work and its ledger writes.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import functools
import ipaddress
import json
import re
import select
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import anyio
from jsonschema import Draft202012Validator

from tiered_mcp.models.base import ModelReply, ModelRequest
from tiered_mcp.specs.validators import Source, date_mentions, fold, number_readings, word_count

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
        props: dict[str, Any] = schema.get("properties", {})
        return {k: sample_for(v, defs) for k, v in props.items() if k in schema.get("required", props)}
    if kind == "array":
        return [sample_for(schema.get("items", {}), defs) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("number", "integer"):
        # The top of the range: a confidence or score at its maximum never triggers a confidence escalation.
        value: Any = schema.get("maximum", schema.get("minimum", 1))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


# ---- answers built from the request's text ----------------------------------------------------------------------

_TAG = re.compile(r"<(text|code|query|items|instructions|context)>\n?(.*?)\n?</\1>", re.S)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_NUM = re.compile(r"(?<![\d.,])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:\.\d{3})+(?:,\d+)?|\d+(?:[.,]\d+)?)(?!\d)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")


def _sections(messages: list[dict[str, Any]]) -> dict[str, str]:
    """The tagged parts (<text>, <query>, ...) of the first user message, plus "prompt": that whole message."""
    user = next((m.get("content") for m in messages if m.get("role") == "user"), "") or ""
    user = user if isinstance(user, str) else json.dumps(user)
    found = {name: body.replace("<\\/", "</") for name, body in _TAG.findall(user)}
    return {"prompt": user, **found}


def _words(text: str) -> set[str]:
    return set(_WORD.findall(fold(text)))


def _name_at(name: str, text: str) -> int | None:
    """Where the text names a property ("invoice_number" -> "Invoice"), as the end of that word; None if nowhere."""
    parts = [w for w in re.split(r"[_\W]+|(?<=[a-z])(?=[A-Z])", name) if len(w) > 1]
    for word in parts:
        m = re.search(rf"\b{re.escape(word)}\b", text, re.I)
        if m:
            return m.end()
    return None


def _span_after(text: str, at: int) -> str | None:
    """The words after a property's name, up to punctuation (one word when it carries a digit, else up to 3)."""
    rest = re.sub(r"^[\s:#=]*(?:(?:is|was|are|of)\s+)?", "", text[at:])
    words = re.split(r"[,;()\n]|[.!?](?:\s|$)", rest, maxsplit=1)[0].split()[:3]
    if not words:
        return None
    return words[0] if any(c.isdigit() for c in words[0]) else " ".join(words)


def _proper_noun(text: str) -> str | None:
    """The first run of capitalised words after the text's first word ("Hi, this is Dana Reyes" -> "Dana Reyes")."""
    m = re.search(r"(?<=[\w,;:] )([A-Z][^\W\d_]+(?![\w-])(?: [A-Z][^\W\d_]+(?![\w-]))*)", text)
    return m.group(1) if m else None


def _number(schema: dict[str, Any], kind: str, text: str, at: int) -> int | float | None:
    lo, hi = schema.get("minimum", float("-inf")), schema.get("maximum", float("inf"))
    for m in sorted(_NUM.finditer(text), key=lambda m: (m.start() < at, m.start())):
        for r in sorted(number_readings(m.group()), key=abs, reverse=True):
            if kind == "integer" and r != r.to_integral_value():
                continue
            value = int(r) if kind == "integer" else float(r)
            if lo <= value <= hi:
                return value
    return None


def value_from_text(schema: Any, name: str, text: str, defs: dict[str, Any] | None = None) -> tuple[bool, Any]:
    """(found, value): a value for property `name` taken from `text`, valid against `schema` where possible.

    Strings near the property's name in the text (else the text's first words); an email, URL or date (ISO) for
    those formats; the number after the name (else the first one) for numbers; the first enum value the text
    names (else the first). Objects get every property found, and required ones regardless.
    """
    if not isinstance(schema, dict):
        return False, None
    defs = defs if defs is not None else {}
    defs.update(schema.get("$defs", {}))
    if "$ref" in schema:
        return value_from_text(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), name, text, defs)
    if "const" in schema:
        return True, schema["const"]
    if schema.get("enum"):
        source = Source(text)
        return True, next((e for e in schema["enum"] if isinstance(e, str) and source.has(e)), schema["enum"][0])
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key) or []:
            found, value = value_from_text(branch, name, text, defs)
            if found and value is not None:
                return found, value
    kinds = schema.get("type")
    kinds = [k for k in (kinds if isinstance(kinds, list) else [kinds]) if k != "null"] or [None]
    at = _name_at(name, text)
    for kind in kinds:
        if kind == "object" or (kind is None and "properties" in schema):
            props, required = schema.get("properties", {}), schema.get("required", [])
            out = {}
            for key, sub in props.items():
                found, value = value_from_text(sub, key, text, defs)
                if found:
                    out[key] = value
                elif key in required:
                    out[key] = None if _allows_null(sub) else sample_for(sub, defs)
            return True, out
        if kind == "array":
            found, item = value_from_text(schema.get("items", {}), name, text, defs)
            fmt = (schema.get("items") or {}).get("format")
            if fmt == "email":
                return True, list(dict.fromkeys(_EMAIL.findall(text)))
            return True, [item] if found else []
        if kind == "string":
            fmt = schema.get("format")
            if fmt in ("date", "date-time"):
                mention = next(iter(date_mentions(fold(text))), None)
                if mention:
                    return True, mention[1] + ("T00:00:00Z" if fmt == "date-time" else "")
                continue
            if fmt in ("email", "uri", "url"):
                m = (_EMAIL if fmt == "email" else _URL).search(text)
                if m:
                    return True, m.group()
                continue
            span = _span_after(text, at) if at is not None else None
            span = span or _proper_noun(text) or " ".join(text.split()[:3])
            if span and len(span) >= schema.get("minLength", 0):
                return True, span[: schema.get("maxLength", len(span))].strip()
        if kind in ("number", "integer"):
            number = _number(schema, kind, text, at or 0)
            if number is not None:
                return True, number
        if kind == "boolean":
            return True, at is not None
    return False, None


def _allows_null(schema: Any) -> bool:
    kinds = schema.get("type") if isinstance(schema, dict) else None
    return kinds == "null" or (isinstance(kinds, list) and "null" in kinds) or any(
        _allows_null(b) for b in (schema.get("anyOf") or [] if isinstance(schema, dict) else []))


def _limit(prompt: str, label: str) -> int | None:
    m = re.search(rf"^{label}: (\d+)$", prompt, re.M)
    return int(m.group(1)) if m else None


def _classify(schema: dict[str, Any], parts: dict[str, str]) -> dict[str, Any]:
    labels = schema["properties"]["label"].get("enum") or ["x"]
    source = Source(parts.get("text", ""))
    named = [label for label in labels if source.has(label)]
    label = (named or labels)[0]
    multi = "Multi-label mode: on" in parts["prompt"]
    reason = f"The text mentions {label!r}." if named else f"No label is named in the text; {label!r} is the first."
    return {"label": label, "labels": named if multi and named else [label], "confidence": 0.9, "reason": reason}


def _summarize(parts: dict[str, str]) -> dict[str, Any]:
    limit = _limit(parts["prompt"], "Word limit") or 120
    style = (re.search(r"^Style: (\w+)$", parts["prompt"], re.M) or [None, "paragraph"])[1]
    sentences = [s for s in _SENTENCE.split(" ".join(parts.get("text", "").split())) if s]
    chosen: list[str] = []
    for s in sentences:
        if word_count(" ".join([*chosen, s])) > limit or (style == "headline" and chosen):
            break
        chosen.append(s)
    if not chosen:
        chosen = [" ".join(sentences[0].split()[:limit])] if sentences else ["(empty)"]
    if style == "bullets":
        summary = "\n".join(f"- {s}" for s in chosen)
    elif style == "headline":
        summary = chosen[0].rstrip(".")
    else:
        summary = " ".join(chosen)
    return {"summary": summary, "key_points": chosen[:7], "method": "extractive"}


def _rank(parts: dict[str, str]) -> dict[str, Any]:
    try:
        items = json.loads(parts.get("items", "[]"))
    except json.JSONDecodeError:
        items = []
    query = _words(parts.get("query", ""))
    overlap = [len(query & _words(str(item))) for item in items]
    order = sorted(range(len(items)), key=lambda i: (-overlap[i], i))[: _limit(parts["prompt"], "Limit") or None]
    return {"ranked": [{"index": i, "score": round(overlap[i] / max(1, len(query)), 3)} for i in order]}


def answer_from_text(schema: Any, messages: list[dict[str, Any]]) -> Any:
    """An answer to a chat request built from its text, valid against `schema` (else `sample_for(schema)`).

    The shipped tools are recognised by their output schemas: classify picks the first label the text names,
    summarize keeps the first sentences within the word limit, rank orders items by words shared with the query,
    review_code finds nothing, extract fills the caller's schema from the text (`value_from_text`). Anything else is
    filled from the text the same way. Deterministic: the same request gets the same answer.
    """
    parts = _sections(messages)
    text = parts.get("text") or parts.get("instructions") or parts["prompt"]
    keys = set((schema or {}).get("properties", {})) if isinstance(schema, dict) else set()
    if keys == {"label", "labels", "confidence", "reason"}:
        answer: Any = _classify(schema, parts)
    elif keys == {"summary", "key_points", "method"}:
        answer = _summarize(parts)
    elif keys == {"ranked"}:
        answer = _rank(parts)
    elif keys == {"findings", "verdict", "summary"}:
        answer = {"findings": [], "verdict": "approve", "summary": "No problems found."}
    elif keys == {"data", "missing"}:
        data_schema = schema["properties"]["data"]
        _, data = value_from_text(data_schema, "data", text)
        data = data if isinstance(data, dict) else {}
        missing = [k for k in data_schema.get("properties", {}) if data.get(k) is None]
        answer = {"data": {k: v for k, v in data.items() if v is not None or k in data_schema.get("required", [])},
                  "missing": missing}
    else:
        answer = value_from_text(schema, "answer", text)[1]
    try:
        valid = _checker(json.dumps(schema, sort_keys=True)).is_valid(answer)
    except Exception:  # a schema we cannot check: the fallback is at least shaped by it
        valid = False
    return answer if valid else sample_for(schema)


@functools.lru_cache(maxsize=64)
def _checker(schema_json: str) -> Draft202012Validator:
    # Benchmarks send thousands of requests with one schema; building the validator was a third of each answer.
    return Draft202012Validator(json.loads(schema_json))


def reply(content: Any = None, *, finish_reason: str = "stop", refusal: str | None = None,
          input_tokens: int = 100, output_tokens: int = 20, service_tier: str | None = None) -> ModelReply:
    """A ModelReply; `content` that is not a string is sent as JSON."""
    text = content if isinstance(content, str) or content is None else json.dumps(content)
    return ModelReply(content=text, finish_reason=finish_reason, refusal=refusal,  # type: ignore[arg-type]
                      input_tokens=input_tokens, output_tokens=output_tokens, service_tier=service_tier)


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


async def idle(runner: Any, timeout_s: float = 10.0) -> None:
    """Wait until a Runner's background work (shadows, auto-tiering evidence) is done and its ledger writer has
    written what they queued: a test then reads the ledger as the work left it."""
    with anyio.fail_after(timeout_s):
        while runner.background_pending:
            await anyio.sleep(0.002)
        await runner.writer.flush()


# ---- a loopback OpenAI-compatible server -------------------------------------------------------------------------


@dataclass
class FakeResponse:
    """One scripted HTTP answer. `json_body` and `content` None with status 200 mean: build a schema-valid
    completion from the request's text (`answer_from_text`).

    `raw` sends those bytes as the body instead, with `content_type`; `hang_up` closes the connection without an
    answer; `echo_headers` puts every request header into the body's error message (a careless upstream).
    `service_tier` is the service tier the completion reports (default: the request's own, "auto" reported as
    "default"; none when the request named none)."""

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
    service_tier: str | None = None


def service_tier_unavailable(**kw: Any) -> FakeResponse:
    """OpenAI's answer to a flex request when flex has no capacity: 429 with code `resource_unavailable`."""
    return FakeResponse(status=429, json_body={"error": {
        "message": "Resource unavailable: flex processing is temporarily out of capacity; try again later.",
        "type": "resource_unavailable", "param": None, "code": "resource_unavailable"}}, **kw)


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
        content = answer_from_text(schema, request_body.get("messages") or [])
    text = content if isinstance(content, str) or content is None else json.dumps(content)
    body = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": request_body.get("model", "fake"),
        "choices": [{"index": 0, "finish_reason": r.finish_reason,
                     "message": {"role": "assistant", "content": text, "refusal": r.refusal}}],
        "usage": {"prompt_tokens": r.usage[0], "completion_tokens": r.usage[1],
                  "total_tokens": r.usage[0] + r.usage[1]},
    }
    asked = request_body.get("service_tier")
    served = r.service_tier or ("default" if asked == "auto" else asked)
    if served:
        body["service_tier"] = served
    return body


@dataclass
class FakeBatch:
    """How the fake upstream runs a batch (`FakeUpstream.script_batch`; unscripted batches complete at the first
    look).

    Attributes:
        polls: GET /v1/batches/{id} says "in_progress" this many times, then the batch has ended.
        end: "completed"; "expired" (only the first `answered` requests, in file order, have answers; the rest
            none, in neither file); or "failed" (the input was refused: no output at all).
        errors: custom_ids answered in the error file (HTTP 500 with an error body) instead of the output file.
        responses: custom_id -> how its line is answered (content, usage, finish reason, refusal).
        answered: with end "expired", or when the batch is cancelled, how many requests were answered before (at
            least those `request_counts` already counted).
        progress: while "in_progress", each look counts this many more requests answered in `request_counts`
            (completed, or failed for a custom_id in `errors`), up to all of them.
    """

    polls: int = 0
    end: str = "completed"
    errors: tuple[str, ...] = ()
    responses: dict[str, FakeResponse] = field(default_factory=dict)
    answered: int = 0
    progress: int = 0


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's fields: name -> (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets connections when dozens of clients connect at once.
    request_queue_size = 256
    daemon_threads = True


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread.

    Script answers per model name with `push(model, FakeResponse(...))`; unscripted requests get a schema-valid
    completion built from the request's text (`answer_from_text`) after `latency_s`. Use as a context manager; `base_url` ends in /v1.
    """

    def __init__(self, latency_s: float = 0.0, models: tuple[str, ...] = ("gpt-5.4-nano", "gpt-5.4-mini", "gpt-5.4"),
                 port: int = 0, record: bool = True):
        self.latency_s = latency_s
        self.models = models
        self.record = record
        self.seen: list[Seen] = []
        self._script: dict[str, deque[FakeResponse]] = defaultdict(deque)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._batch_script: deque[FakeBatch] = deque()
        self._batch_plans: dict[str, FakeBatch] = {}
        self._failures: dict[str, deque[int]] = defaultdict(deque)
        self._lock = threading.RLock()  # the Batch API's handlers nest
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

    def fail_next(self, step: str, *statuses: int) -> None:
        """The next requests of a Batch API step ("upload", "create", "look", "download", "cancel") answer with
        these HTTP statuses, one each, before the step works again."""
        with self._lock:
            self._failures[step].extend(statuses)

    def script_batch(self, *plans: FakeBatch) -> None:
        """How the next batches created run, in order."""
        with self._lock:
            self._batch_script.extend(plans)

    def batch_requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The request lines of a batch's input file."""
        data = self.files[self.batches[batch_id]["input_file_id"]]
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def batch_creates(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.split("?")[0].rstrip("/").endswith("/batches")]

    # ---- the Batch API ---------------------------------------------------------------------------------------

    def _file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{len(self.files) + 1:04d}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def _create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("input_file_id") not in self.files:
            return 404, {"error": {"message": f"no file {body.get('input_file_id')}"}}
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1:04d}"
            self._batch_plans[batch_id] = self._batch_script.popleft() if self._batch_script else FakeBatch()
            total = sum(1 for line in self.files[body["input_file_id"]].splitlines() if line.strip())
            batch = self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "metadata": body.get("metadata"),
                "request_counts": {"total": total, "completed": 0, "failed": 0}}
            return 200, dict(batch)

    def _look(self, batch_id: str) -> dict[str, Any]:
        """GET /v1/batches/{id}: one more look; the batch ends after its plan's polls."""
        with self._lock:
            batch, plan = self.batches[batch_id], self._batch_plans[batch_id]
            if batch["status"] == "cancelling":
                self._end(batch, plan, "cancelled")
            elif batch["status"] in ("validating", "in_progress"):
                if plan.polls > 0:
                    plan.polls -= 1
                    batch["status"] = "in_progress"
                    if plan.progress:
                        requests = self._requests(batch)
                        counts = batch["request_counts"]
                        seen = min(len(requests), counts["completed"] + counts["failed"] + plan.progress)
                        failed = sum(1 for r in requests[:seen] if r["custom_id"] in plan.errors)
                        batch["request_counts"] = {"total": len(requests), "completed": seen - failed,
                                                   "failed": failed}
                else:
                    self._end(batch, plan, plan.end)
            return dict(batch)

    def _requests(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]

    def _end(self, batch: dict[str, Any], plan: FakeBatch, end: str) -> None:
        if end == "failed":
            batch["status"] = "failed"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": "scripted"}]}
            return
        out, errors = [], []
        requests = self._requests(batch)
        counts = batch["request_counts"]
        answered = max(plan.answered, counts["completed"] + counts["failed"])
        for n, req in enumerate(requests):
            cid = req["custom_id"]
            if end in ("expired", "cancelled") and n >= answered:
                continue
            if cid in plan.errors:
                errors.append({"id": f"batch_req_{n}", "custom_id": cid, "error": None, "response": {
                    "status_code": 500, "request_id": f"req_{n}",
                    "body": {"error": {"message": "scripted batch item failure", "type": "server_error"}}}})
                continue
            answer = completion(req["body"], plan.responses.get(cid) or FakeResponse())
            out.append({"id": f"batch_req_{n}", "custom_id": cid, "error": None,
                        "response": {"status_code": 200, "request_id": f"req_{n}", "body": answer}})
        output = self._file(_jsonl(out), "batch_output", "output.jsonl")["id"] if out else None
        error = self._file(_jsonl(errors), "batch_output", "errors.jsonl")["id"] if errors else None
        batch.update(status=end, output_file_id=output, error_file_id=error,
                     request_counts={"total": len(requests), "completed": len(out), "failed": len(errors)})

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

            def _scripted_failure(self, step: str) -> bool:
                with upstream._lock:
                    queue = upstream._failures.get(step)
                    status = queue.popleft() if queue else None
                if status is not None:
                    self._send(status, {"error": {"message": f"scripted Batch API failure {status}"}})
                return status is not None

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
                route = self.path.split("?")[0].rstrip("/")
                parts = route.split("/")
                step = ("download" if route.endswith("/content") else "look" if "/batches/" in route else "")
                if step and self._scripted_failure(step):
                    return
                if route.endswith("/content") and len(parts) >= 3 and parts[-3] == "files":
                    data = upstream.files.get(parts[-2])
                    if data is None:
                        self._send(404, {"error": {"message": f"no file {parts[-2]}"}})
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif route.endswith("/batches"):
                    with upstream._lock:
                        listed = [dict(b) for b in reversed(upstream.batches.values())]
                    self._send(200, {"object": "list", "data": listed, "has_more": False})
                elif len(parts) >= 2 and parts[-2] == "batches":
                    if parts[-1] not in upstream.batches:
                        self._send(404, {"error": {"message": f"no batch {parts[-1]}"}})
                    else:
                        self._send(200, upstream._look(parts[-1]))
                elif route.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                                for m in upstream.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                route = self.path.split("?")[0].rstrip("/")
                content_type = self.headers.get("Content-Type") or ""
                step = ("upload" if route.endswith("/files") else "create" if route.endswith("/batches")
                        else "cancel" if route.endswith("/cancel") else "")
                if step and self._scripted_failure(step):
                    upstream._remember(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, None))
                    return
                if route.endswith("/files") and content_type.startswith("multipart/form-data"):
                    fields = _multipart(content_type, raw)
                    upstream._remember(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                            {"purpose": fields.get("purpose", (None, b""))[1].decode()}))
                    filename, data = fields.get("file", ("upload", b""))
                    self._send(200, upstream._file(data, fields.get("purpose", (None, b"batch"))[1].decode(),
                                                   filename or "upload"))
                    return
                body = json.loads(raw or b"{}")
                seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                upstream._remember(seen)
                if route.endswith("/batches"):
                    self._send(*upstream._create_batch(body))
                    return
                if route.endswith("/cancel") and "/batches/" in route:
                    batch_id = route.split("/")[-2]
                    with upstream._lock:
                        batch = upstream.batches.get(batch_id)
                        if batch is not None and batch["status"] in ("validating", "in_progress"):
                            batch["status"] = "cancelling"
                    if batch is None:
                        self._send(404, {"error": {"message": f"no batch {batch_id}"}})
                    else:
                        self._send(200, dict(batch))
                    return
                if not route.endswith("/chat/completions"):
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
def network_guard(allow_loopback: bool = True) -> Iterator[list[str]]:
    """Refuse every connection and name lookup that is not loopback (with `allow_loopback=False`, every one at
    all: what runs "offline" must open no socket); yields the list of refused targets.

    The refusal is an OSError (so code under test sees a failed connection); callers should also assert that the
    list is empty, so that a request swallowed by error handling still fails the test.
    """
    blocked: list[str] = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not (allow_loopback and _is_loopback(host)):
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

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign, assignment]
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
                                 "server that answers every request with a schema-valid completion built from its text.")
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
