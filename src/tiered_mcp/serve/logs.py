"""Logging set-up for `tiered-mcp serve`: readable text or one JSON object per line, always on stderr.

stdout is never touched: over stdio it carries the protocol, and one stray line there breaks the client.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came in through `extra=` and is a field worth keeping.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
# uvicorn attaches an ANSI-coloured copy of some messages; it is noise in a JSON line.
_DROPPED = frozenset({"color_message"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _DROPPED and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a Path, an exception) must not cost the whole line.
        return json.dumps(out, ensure_ascii=False, default=str)


class _Redacting(logging.Formatter):
    """Wraps a formatter and replaces each secret in the finished line, whichever logger wrote it."""

    def __init__(self, inner: logging.Formatter, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.inner, self.secrets = inner, secrets

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def configure_logging(level: str | int = "WARNING", fmt: str = "text", redact: Iterable[str] = ()) -> None:
    """Send every log record at `level` or above to stderr, as text or JSON lines.

    Replaces the handler a previous call installed (and only that one: handlers others attached, such as pytest's,
    stay). Loggers that propagate (uvicorn's, the MCP SDK's, ours) all come out in the same format.

    Args:
        level: a logging level name or number.
        fmt: "text" (`ts LEVEL logger: message`) or "json" (one object per line).
        redact: strings never to print (e.g. the HTTP bearer token); each is replaced by `***`.

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    secrets = tuple(s for s in redact if s)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(inner, secrets) if secrets else inner)
    handler._tiered_mcp = True  # type: ignore[attr-defined]  # marks the handler as ours, for the next call
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tiered_mcp", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # The model client's HTTP library logs every upstream request at INFO ("HTTP Request: POST ... 200"): the call's
    # own INFO line says the same and more, and each extra line is a write to stderr on the event loop (~5 % of the
    # HTTP server's Python time at 64 callers). Its warnings still come through; DEBUG (set explicitly) shows all.
    quiet = logging.WARNING if logging.getLogger().getEffectiveLevel() > logging.DEBUG else logging.NOTSET
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(quiet)
