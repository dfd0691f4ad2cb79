"""Structured logs on stderr (never stdout), one line per tool call, and OpenTelemetry spans that nest under the SDK's."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server.lowlevel import Server

from tiered_mcp.core import tracing
from tiered_mcp.serve.logs import JsonFormatter, configure_logging
from tiered_mcp.serve.server import build_server
from tiered_mcp.testing import ScriptedModel, reply

from .conftest import PYTHON, SECRET, server_env
from .test_http import ARGS, TOKEN, cli_server, mcp_client, serving_mcp

pytestmark = pytest.mark.anyio


@pytest.fixture
def root_logging():
    """Leaves the root logger as it found it (configure_logging adds a handler bound to the captured stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- the log format ----------------------------------------------------------------------------------------------


def test_the_http_clients_line_per_upstream_request_is_kept_below_info_unless_debug(root_logging, capsys):
    client = logging.getLogger("httpx2")
    try:
        configure_logging("INFO", "json")
        client.info("HTTP Request: POST http://upstream/v1/chat/completions 200 OK")
        client.warning("a retry")
        logging.getLogger("tiered_mcp").info("call classify ok=True")
        assert [r["message"] for r in json_lines(capsys.readouterr().err)] == ["a retry", "call classify ok=True"]
        configure_logging("DEBUG", "json")
        client.info("HTTP Request: POST http://upstream/v1/chat/completions 200 OK")
        assert [r["message"] for r in json_lines(capsys.readouterr().err)] == [
            "HTTP Request: POST http://upstream/v1/chat/completions 200 OK"]
    finally:
        client.setLevel(logging.NOTSET)


def test_json_lines_carry_ts_level_logger_message_and_extra_fields(root_logging, capsys):
    configure_logging("INFO", "json")
    log = logging.getLogger("tiered_mcp.test")
    log.info("call %s", "classify", extra={"tool": "classify", "cost_usd": 0.0001, "path": Path("/x"),
                                           "color_message": "\x1b[36mnoise\x1b[0m"})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    out, err = capsys.readouterr()
    assert out == ""
    first, second = json_lines(err)
    assert first["message"] == "call classify" and first["level"] == "INFO" and first["logger"] == "tiered_mcp.test"
    assert first["ts"].endswith("Z") and (first["tool"], first["cost_usd"], first["path"]) == ("classify", 0.0001, "/x")
    assert "color_message" not in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_text_is_the_default_and_reads_as_one_line(root_logging, capsys):
    configure_logging("INFO")
    logging.getLogger("tiered_mcp").info("hello %s", "there")
    out, err = capsys.readouterr()
    assert out == "" and err.rstrip().endswith("INFO tiered_mcp: hello there")


def test_a_second_call_replaces_our_handler_and_keeps_everyone_elses(root_logging, capsys):
    before = len(root_logging.handlers)
    configure_logging("INFO", "text")
    configure_logging("INFO", "json")
    assert len(root_logging.handlers) == before + 1
    logging.getLogger("x").warning("once")
    assert len(json_lines(capsys.readouterr().err)) == 1


def test_redacted_strings_never_reach_the_log(root_logging, capsys):
    configure_logging("DEBUG", "json", redact=[TOKEN])
    logging.getLogger("x").warning("header was Bearer %s", TOKEN, extra={"auth": TOKEN})
    err = capsys.readouterr().err
    assert TOKEN not in err and json_lines(err)[0]["auth"] == "***"


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "xml")


# ---- one line per tool call --------------------------------------------------------------------------------------


def call_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tiered_mcp" and getattr(r, "tool", None)]


async def test_each_finished_call_logs_one_info_line_from_its_receipt(make_runner, caplog):
    caplog.set_level(logging.INFO, logger="tiered_mcp")
    async with Client(build_server(make_runner())) as client:
        result = await client.call_tool("classify", ARGS)
    [record] = call_records(caplog)
    receipt = result.meta["tiered-mcp/receipt"]
    assert record.levelno == logging.INFO
    assert (record.tool, record.ok, record.tier, record.model, record.attempts, record.cost_usd, record.call_id) == (
        "classify", True, "nano", "gpt-5.4-nano", 1, receipt["cost_usd"], receipt["call_id"])
    assert record.latency_ms == receipt["latency_ms"] and record.error is None
    assert record.getMessage().startswith("call classify ok=True tier=nano model=gpt-5.4-nano attempts=1 cost_usd=")
    line = json.loads(JsonFormatter().format(record))
    assert (line["tool"], line["tier"], line["cost_usd"]) == ("classify", "nano", receipt["cost_usd"])


async def test_a_failed_call_logs_its_error_class_but_not_the_arguments(make_runner, caplog):
    caplog.set_level(logging.INFO, logger="tiered_mcp")
    model = ScriptedModel(fallback=lambda req: reply("not json"))
    async with Client(build_server(make_runner(model))) as client:
        failed = await client.call_tool("classify", ARGS)
        bad = await client.call_tool("classify", {"text": "secret customer text", "labels": "nope"})
    assert failed.is_error and bad.is_error
    first, second = call_records(caplog)
    assert (first.ok, first.error, first.attempts, first.tier) == (False, "ToolFailed", 6, None)
    assert (second.ok, second.error, second.attempts) == (False, "ArgumentsError", 0)
    assert "secret customer text" not in caplog.text


# ---- end to end: JSON logs from a real server, nothing on stdout, no secret anywhere ------------------------------


async def test_http_server_json_logs_carry_each_call_and_no_secret(upstream, tmp_path):
    env = server_env(upstream, tmp_path, TIERED_MCP_TOKEN=TOKEN)
    async with cli_server(tmp_path, env, "--log-format", "json", "--log-level", "DEBUG") as base:
        async with httpx2.AsyncClient(base_url=base, trust_env=False) as http:
            assert (await http.post("/mcp", json={}, headers={"authorization": "Bearer wrong"})).status_code == 401
        async with mcp_client(base) as client:
            assert not (await client.call_tool("classify", ARGS)).is_error
    text = (tmp_path / "stderr.log").read_text(encoding="utf-8")
    lines = json_lines(text)  # every line is one JSON object, DEBUG lines from the SDK and uvicorn included
    assert (tmp_path / "stdout.log").read_bytes() == b""
    [call] = [x for x in lines if x.get("tool") == "classify"]
    assert (call["level"], call["logger"], call["ok"], call["tier"], call["model"], len(call["call_id"])) == (
        "INFO", "tiered_mcp", True, "nano", "gpt-5.4-nano", 16)
    assert call["cost_usd"] > 0 and call["attempts"] == 1 and call["latency_ms"] > 0
    assert any(x["logger"] == "uvicorn.access" and '"POST /mcp HTTP/1.1" 401' in x["message"] for x in lines)
    assert TOKEN not in text and SECRET not in text


def stdio_with_errlog(params: StdioServerParameters, path: Path) -> Any:
    """A stdio transport whose child's stderr goes to `path` (a Client given a plain params object inherits ours)."""
    err = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller after the client is done
    return stdio_client(params, errlog=err), err


async def test_stdio_json_logs_at_debug_leave_stdout_to_the_protocol(upstream, tmp_path):
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "tiered_mcp", "serve", "--log-format", "json", "--log-level", "DEBUG",
                              "--ledger", str(tmp_path / "ledger.sqlite3")],
        env=server_env(upstream, tmp_path))
    errlog = tmp_path / "stderr.log"
    transport, err = stdio_with_errlog(params, errlog)
    with err:
        async with Client(transport, mode="legacy") as client:
            result = await client.call_tool("classify", ARGS)
    assert not result.is_error
    text = errlog.read_text(encoding="utf-8")
    lines = json_lines(text)
    assert [x["tier"] for x in lines if x.get("tool") == "classify"] == ["nano"]
    assert SECRET not in text


# ---- tracing -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter():
    """An in-memory exporter on the global provider (set once per process: OTel allows no reset)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


@pytest.fixture
def spans(exporter):
    exporter.clear()
    return exporter


def echo_server() -> Server[Any]:
    """A server whose tool does what the runner will: a call span around an attempt span."""

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema={"type": "object"})])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        with tracing.span("tiered.call", tool=params.name, tier=None) as call:
            with tracing.span("tiered.attempt", tier="nano", model="gpt-5.4-nano", reason="first") as attempt:
                attempt.set(outcome="invalid", input_tokens=120, detail={"field": "confidence"})
                attempt.error("invalid")
            call.set(ok=True, cost_usd=0.0001, labels=["a", "b"])
        return types.CallToolResult(content=[types.TextContent(text="ok")])

    return Server("echo", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_spans_nest_under_the_sdk_request_span(spans, mode):
    async with Client(echo_server(), mode=mode) as client:
        await client.call_tool("echo", {})
    by_name = {s.name: s for s in spans.get_finished_spans()}
    request, call, attempt = by_name["tools/call echo"], by_name["tiered.call"], by_name["tiered.attempt"]
    assert call.parent.span_id == request.context.span_id
    assert attempt.parent.span_id == call.context.span_id
    assert attempt.context.trace_id == request.context.trace_id
    assert dict(call.attributes) == {"tiered.tool": "echo", "tiered.ok": True, "tiered.cost_usd": 0.0001,
                                     "tiered.labels": ("a", "b")}
    assert attempt.attributes["tiered.model"] == "gpt-5.4-nano"
    assert attempt.attributes["tiered.detail"] == '{"field": "confidence"}'
    assert attempt.status.status_code.name == "ERROR" and call.status.status_code.name == "UNSET"


async def test_spans_nest_over_http_too(spans):
    async with serving_mcp(echo_server(), tools=1) as base, mcp_client(base) as client:
        await client.call_tool("echo", {})
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["tiered.call"].parent.span_id == by_name["tools/call echo"].context.span_id


def test_an_exception_marks_the_span_failed_and_a_cancel_does_not(spans):
    with pytest.raises(ValueError), tracing.span("tiered.attempt", tier="mini"):
        raise ValueError("upstream said no")

    async def cancelled() -> None:
        with anyio.CancelScope() as scope:
            with tracing.span("tiered.call", tool="classify"):
                scope.cancel()
                await anyio.sleep(1)

    anyio.run(cancelled)
    failed, cancel = spans.get_finished_spans()
    assert failed.status.status_code.name == "ERROR" and failed.events[0].name == "exception"
    assert cancel.status.status_code.name == "UNSET" and cancel.attributes["error.type"] == "CancelledError"


def test_configure_tracing_leaves_an_installed_provider_alone(exporter):
    assert tracing.configure_tracing() is False


@pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                 {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}])
def test_no_provider_unless_the_environment_asks(monkeypatch, env):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert tracing.tracer_provider_from_env() is None


def test_an_unknown_exporter_is_refused(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        tracing.tracer_provider_from_env()


def test_the_console_exporter_writes_to_stderr_only(monkeypatch, capsys):
    pytest.importorskip("opentelemetry.sdk")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracing.tracer_provider_from_env()
    assert provider.resource.attributes["service.name"] == "tiered-mcp"
    with provider.get_tracer("t").start_as_current_span("hello-span"):
        pass
    provider.shutdown()
    out, err = capsys.readouterr()
    [line] = json_lines(err)  # one line per span, like the JSON log lines
    assert out == "" and line["name"] == "hello-span"


@pytest.mark.parametrize("protocol, module", [("http/protobuf", "http"), ("grpc", "grpc")])
def test_an_otlp_endpoint_gets_the_exporter_its_protocol_names(monkeypatch, protocol, module):
    pytest.importorskip(f"opentelemetry.exporter.otlp.proto.{module}")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "team-mcp")
    assert type(tracing._otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": protocol})).__module__.startswith(
        f"opentelemetry.exporter.otlp.proto.{module}")
    provider = tracing.tracer_provider_from_env()
    assert provider.resource.attributes["service.name"] == "team-mcp"
    provider.shutdown()  # nothing was recorded, so nothing is sent


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-c", code], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_without_a_provider_spans_are_no_ops():
    proc = run_python("from tiered_mcp.core import tracing\n"
                      "with tracing.span('tiered.call', tool='x', n=None) as s:\n"
                      "    s.set(ok=True); s.error('e')\n")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


def test_configure_tracing_installs_a_provider_in_a_fresh_process():
    pytest.importorskip("opentelemetry.sdk")
    proc = run_python("import sys\nfrom tiered_mcp.core import tracing\n"
                      "assert tracing.configure_tracing()\n"
                      "with tracing.span('tiered.call', tool='classify'): pass\n",
                      OTEL_TRACES_EXPORTER="console")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and '"tiered.tool": "classify"' in proc.stderr


def test_configure_tracing_without_the_sdk_warns_and_carries_on():
    proc = run_python("import logging, sys\nsys.modules['opentelemetry.sdk'] = None\n"
                      "logging.basicConfig()\nfrom tiered_mcp.core import tracing\n"
                      "assert tracing.configure_tracing() is False\n"
                      "with tracing.span('tiered.call'): pass\n",
                      OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'tiered-mcp[otel]'" in proc.stderr and proc.stdout == ""

