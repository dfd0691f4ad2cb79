"""stdio that never drops a line silently.

The SDK's stdio transport turns a line it cannot parse into an exception on the read stream, which the server
logs and drops: the host then waits for its own timeout. Here every such line gets a JSON-RPC error back: -32700
(parse error) for a line that is not JSON (including a lone surrogate escape, or nesting the parser refuses) and
-32600 (invalid request) for JSON that is not a JSON-RPC message, with the line's `id` when it can be recovered,
else null. Blank lines are not messages and are skipped.

Where stdin and stdout are pipes or sockets (as every host starts a server), both are driven by the event loop
itself; the SDK's own transport hands each line read, each write and each flush to a worker thread (three thread
hops per request and answer, ~50 us of CPU each on these machines, more under load). A file, a terminal, or a
stdout that shares its file with stderr (`2>&1`: making it non-blocking would make stderr non-blocking too) keep
the threaded reads and writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections import deque
from contextlib import contextmanager, suppress
from io import TextIOWrapper
from typing import Any, AsyncIterator, Iterator

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
_EXCERPT = 80
DRAIN_S = 5.0  # at exit, how long the answers still buffered may take to reach a host that reads slowly


class _Lines:
    """The lines of a text stream, remembering those handed out and not yet matched to what the SDK's reader made
    of them: it turns every line into exactly one item (a message or an exception), in order, so the n-th item is
    about the n-th line, even when the reader has already taken the next line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.unmatched: deque[str] = deque()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._stream:
            if line.strip():
                self.unmatched.append(line)
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


@contextmanager
def _claimed_stdout() -> Iterator[int | None]:
    """A private descriptor of the protocol's stdout, with fd 1 pointed at stderr meanwhile (as the SDK does when
    it opens stdout itself), so a handler's stray print misses the wire; None if it cannot be claimed."""
    try:
        private = os.dup(1)
    except OSError:
        yield None
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(private)
        yield None
        return
    try:
        yield private
    finally:
        with suppress(Exception):  # what a handler printed goes to stderr now, not to the wire at exit
            sys.stdout.flush()
        with suppress(OSError):
            os.dup2(private, 1)
        with suppress(OSError):
            os.close(private)


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return True
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class _PipeLines:
    """The lines of a pipe read by the event loop (no worker thread), decoded as the threaded reader does."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        pending = bytearray()  # a long line arrives in many chunks: appended, not copied each time
        while True:
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                break
            end = chunk.rfind(b"\n")
            if end < 0:
                pending += chunk
                continue
            pending += chunk[: end + 1]
            for line in pending.splitlines(keepends=True):
                yield line.decode("utf-8", errors="replace")
            pending = bytearray(chunk[end + 1 :])
        for line in pending.splitlines(keepends=True):  # the last piece, unterminated: split as the rest
            yield line.decode("utf-8", errors="replace")


class _PipeOut:
    """The SDK's stdout (write, flush) over an event-loop pipe: a write is buffered by the transport, a flush waits
    only while the host is not reading (flow control), never in a thread."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


async def serve_stdio(server: Any) -> None:
    """Serve `server` over this process's stdin and stdout until the client goes away, answering every line."""
    with _claimed_stdin() as stdin:
        if stdin is not sys.stdin.buffer and _on_asyncio() and _pipe_path_ok(stdin.fileno(), 1, 2):
            with _claimed_stdout() as out_fd:
                if out_fd is not None:
                    await _serve_pipes(server, stdin, out_fd)
                    return
        raw = _Unowned(stdin, encoding="utf-8", errors="replace")
        await _serve(server, _Lines(anyio.wrap_file(raw)))


def _pipe_path_ok(in_fd: int, out_fd: int, err_fd: int) -> bool:
    """Whether stdin and stdout can be driven by the event loop: both pipes or sockets, stdout not shared with
    stderr (non-blocking would reach stderr too), and not one socket for both (asyncio's write transport takes
    the host's next request, which makes the socket readable, for the reader hanging up)."""
    return (_pollable(in_fd) and _pollable(out_fd) and not _same_file(out_fd, err_fd)
            and not _same_file(in_fd, out_fd))


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _serve_pipes(server: Any, stdin: Any, out_fd: int) -> None:
    loop = asyncio.get_running_loop()
    in_fd = stdin.fileno()
    reader = asyncio.StreamReader(limit=1 << 16)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    out = os.fdopen(out_fd, "wb", closefd=False)
    write_transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    try:
        await _serve(server, _Lines(_PipeLines(reader)), _PipeOut(writer))
    finally:
        # Every answer handed over reaches the host before the pipe closes (drain alone waits only above the
        # high-water mark), unless the host stops reading for good.
        write_transport.set_write_buffer_limits(0)
        with suppress(Exception), anyio.move_on_after(DRAIN_S, shield=True):
            await writer.drain()
        write_transport.close()
        read_transport.close()
        for fd in (in_fd, out_fd):  # the descriptors are the host's too: leave them as they were
            with suppress(OSError):
                os.set_blocking(fd, True)


async def _serve(server: Any, lines: _Lines, stdout: Any = None) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server(stdin=lines, stdout=stdout) as (read_stream, write_stream):  # type: ignore[arg-type]
        inner_send, inner_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def forward() -> None:
            async with inner_send:
                async for item in read_stream:
                    line = lines.unmatched.popleft() if lines.unmatched else ""
                    if isinstance(item, Exception):
                        await write_stream.send(SessionMessage(error_for(line, item)))
                    else:
                        await inner_send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            await server.run(inner_recv, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()


__all__ = ["INVALID_REQUEST", "PARSE_ERROR", "error_for", "serve_stdio"]
