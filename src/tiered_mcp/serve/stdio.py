"""stdio that never drops a line silently.

The SDK's stdio transport turns a line it cannot parse into an exception on the read stream, which the server
logs and drops: the host then waits for its own timeout. Here every such line gets a JSON-RPC error back: -32700
(parse error) for a line that is not JSON (including a lone surrogate escape, or nesting the parser refuses) and
-32600 (invalid request) for JSON that is not a JSON-RPC message, with the line's `id` when it can be recovered,
else null. Blank lines are not messages and are skipped.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, suppress
from io import TextIOWrapper
from typing import Any, AsyncIterator, Iterator

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
_EXCERPT = 80


class _Lines:
    """The lines of a text stream, remembering the last one handed out (the one a parse error is about: the
    SDK's reader passes each line on before it reads the next)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.last = ""

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._stream:
            if line.strip():
                self.last = line
                yield line


def _recover_id(line: str) -> tuple[int | str | None, bool]:
    """(the request id if one can be read, whether the line is JSON at all)."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None, False
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid, True
    return None, True


def error_for(line: str, error: Exception) -> types.JSONRPCError:
    """The JSON-RPC error answering a line the transport could not take."""
    rid, is_json = _recover_id(line)
    kinds = {e.get("type") for e in getattr(error, "errors", lambda: [])()} if hasattr(error, "errors") else set()
    not_json = not is_json or "json_invalid" in kinds or "recursion_loop" in kinds
    shown = line.strip()
    shown = shown if len(shown) <= _EXCERPT else shown[:_EXCERPT] + "…"
    if not_json:
        code, message = PARSE_ERROR, "Parse error: the line is not valid JSON (or is nested too deeply)"
    else:
        code, message = INVALID_REQUEST, "Invalid Request: the line is JSON but not a JSON-RPC 2.0 message"
    return types.JSONRPCError(jsonrpc="2.0", id=rid,
                              error=types.ErrorData(code=code, message=message, data={"line": shown}))


class _Unowned(TextIOWrapper):
    """A text layer whose close leaves the binary file open (it may be sys.stdin's own buffer)."""

    def close(self) -> None:
        with suppress(ValueError):
            self.detach()


@contextmanager
def _claimed_stdin() -> Iterator[Any]:
    """The protocol's stdin as a binary file, with fd 0 pointed at /dev/null meanwhile (as the SDK does when it
    opens stdin itself): a handler or child process that reads stdin gets EOF instead of protocol bytes."""
    try:
        private = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        yield sys.stdin.buffer
        return
    try:
        os.dup2(null, 0)
    except OSError:
        os.close(null)
        os.close(private)
        yield sys.stdin.buffer
        return
    os.close(null)
    try:
        # closefd=False: a worker thread may still be blocked reading it after we return.
        yield os.fdopen(private, "rb", closefd=False)
    finally:
        with suppress(OSError):
            os.dup2(private, 0)


async def serve_stdio(server: Any) -> None:
    """Serve `server` over this process's stdin and stdout until the client goes away, answering every line."""
    with _claimed_stdin() as stdin:
        raw = _Unowned(stdin, encoding="utf-8", errors="replace")
        await _serve(server, _Lines(anyio.wrap_file(raw)))


async def _serve(server: Any, lines: _Lines) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
        inner_send, inner_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def forward() -> None:
            async with inner_send:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        await write_stream.send(SessionMessage(error_for(lines.last, item)))
                    else:
                        await inner_send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            await server.run(inner_recv, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()


__all__ = ["INVALID_REQUEST", "PARSE_ERROR", "error_for", "serve_stdio"]
