"""OpenTelemetry spans for tool calls and model attempts, no-ops unless an SDK is configured.

Only `opentelemetry-api` is required (the MCP SDK depends on it). Without a configured TracerProvider every span is a
no-op costing a few microseconds. `configure_tracing()` installs one when the `otel` extra is installed and the
standard OTEL_* variables ask for export.

Spans started here nest under the MCP SDK's own server span (`tools/call classify`, kind SERVER): the SDK's
OpenTelemetryMiddleware makes that span current around the handler, and a span started in the same task (or a
worker thread anyio starts from it, which copies the context) takes it as parent.

Usage:

    with tracing.span("tiered.attempt", tier="nano", model="gpt-5.4-nano", reason="first") as s:
        ...
        s.set(outcome="ok", input_tokens=120, output_tokens=30, cost_usd=0.0000615)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from tiered_mcp import __version__

PREFIX = "tiered."
"""Keyword attributes are published under this namespace: `tier=` becomes `tiered.tier`."""

log = logging.getLogger(__name__)
# A proxy until a provider is installed, then the real tracer: safe to create at import time.
_tracer = trace.get_tracer("tiered-mcp", __version__)


def _value(v: Any) -> Any:
    # OTel accepts str, bool, int, float and homogeneous sequences of them; anything else is sent as JSON text.
    if isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, bool, int, float)) for x in v):
        return list(v)
    return json.dumps(v, default=str, ensure_ascii=False)


def _attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {PREFIX + k: _value(v) for k, v in fields.items() if v is not None}


class Span:
    """The handle `span()` yields: add attributes as they become known, or mark the span failed."""

    def __init__(self, otel_span: trace.Span) -> None:
        self.otel = otel_span

    def set(self, **fields: Any) -> None:
        """Add attributes (`tiered.<name>`); None values are skipped."""
        self.otel.set_attributes(_attributes(fields))

    def error(self, description: str) -> None:
        """Mark the span failed without an exception (e.g. an attempt whose answer was invalid)."""
        self.otel.set_status(Status(StatusCode.ERROR, description))


_NOOP = Span(trace.INVALID_SPAN)


@contextmanager
def span(name: str, /, **fields: Any) -> Iterator[Span]:
    """Start a span named `name` as a child of the current one, with `tiered.<key>` attributes.

    An exception leaving the block is recorded on the span and sets its status to ERROR (OTel's default); a
    cancellation (a BaseException, not an error) only sets `error.type`.

    Args:
        name: the span name, e.g. "tiered.call" or "tiered.attempt".
        **fields: attributes; None values are skipped, dicts and mixed lists become JSON text.

    Returns:
        A context manager yielding a `Span` handle.
    """
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No SDK installed a provider, so every span would be a no-op; skipping OTel's machinery saves ~0.2 ms a
        # span, which counts when a batch runs a thousand items.
        yield _NOOP
        return
    with _tracer.start_as_current_span(name, attributes=_attributes(fields)) as otel_span:
        try:
            yield Span(otel_span)
        except BaseException as e:
            if not isinstance(e, Exception):  # a cancellation is worth seeing, but is not a failure of ours
                otel_span.set_attribute("error.type", type(e).__name__)
            raise


def _wanted_exporters(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in ("otlp", "console", "none")]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER={','.join(unknown)!r} is not supported (otlp, console or none)")
    if names:
        return [n for n in names if n != "none"]
    # The OTel default exporter is otlp, but exporting to localhost:4318 because no variable was set would surprise:
    # an endpoint variable is the operator's signal.
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported (grpc or http/protobuf)")
    # The exporter reads the endpoint, headers, timeout and TLS settings from the same variables itself.
    return OTLPSpanExporter()


def _console_exporter() -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    # stderr: stdout belongs to the stdio transport. One line per span, like our JSON log lines.
    return ConsoleSpanExporter(out=sys.stderr, formatter=lambda s: s.to_json(indent=None) + "\n")


def tracer_provider_from_env() -> Any:
    """A TracerProvider with the exporters the process's OTEL_* variables ask for, or None when they ask for none.

    Honours OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (`otlp`, `console`, `none`, comma-separated),
    OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (`http/protobuf`, the default, or `grpc`), OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES; the OTLP exporter reads its endpoint and headers itself. `console` writes to stderr,
    never stdout. The provider is returned, not installed.

    Raises:
        ImportError: the opentelemetry SDK (or the OTLP exporter) is not installed.
        ValueError: an exporter or protocol we do not support.
    """
    env = os.environ  # not a parameter: Resource.create and the OTLP exporters read os.environ themselves
    wanted = _wanted_exporters(env)
    if not wanted:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes: dict[str, Any] = {"service.version": __version__}
    # Resource.create reads the OTEL_* variables; a name passed here would override the operator's.
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "tiered-mcp"
    # Exporters first: one that cannot be made must not leave a half-built provider (and its threads) behind.
    exporters = [(name, _otlp_exporter(env) if name == "otlp" else _console_exporter()) for name in wanted]
    provider = TracerProvider(resource=Resource.create(attributes))
    for name, exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter) if name == "otlp" else SimpleSpanProcessor(exporter))
    return provider


def configure_tracing() -> bool:
    """Install a global TracerProvider as the OTEL_* variables ask; a no-op when they ask for nothing.

    Leaves an existing provider alone (e.g. one installed by `opentelemetry-instrument`). Problems are logged as
    warnings, never raised: tracing must not stop the server from starting.

    Returns:
        True when this call installed a provider.
    """
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    try:
        provider = tracer_provider_from_env()
    except ImportError as e:
        log.warning("tracing asked for by OTEL_* variables, but %s is missing: pip install 'tiered-mcp[otel]'",
                    e.name or e)
        return False
    except ValueError as e:
        log.warning("tracing not configured: %s", e)
        return False
    if provider is None:
        return False
    trace.set_tracer_provider(provider)  # its shutdown (flushing pending spans) is registered at exit
    log.info("tracing: exporting spans (%s)", ", ".join(_wanted_exporters(os.environ)))
    return True
