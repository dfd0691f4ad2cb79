"""Ledger writes that never hold up an answer.

While the server runs, finished calls and shadow rows go onto a bounded queue that one background task drains,
writing whatever has gathered in one transaction in a worker thread; a call's answer is sent without waiting for
its row. Outside a running server (tests, one-off scripts) each write is made at once, awaited. At shutdown the
queue is drained before the server exits.
"""

from __future__ import annotations

import logging
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tiered_mcp.core.config import Config
from tiered_mcp.ledger.base import CallWrite, LedgerStore, ShadowRow, off_loop

log = logging.getLogger(__name__)

QUEUE = 10_000  # writes waiting; past this, callers wait (back-pressure rather than unbounded memory)
GATHER = 500  # writes per transaction at most


class LedgerWriter:
    def __init__(self, ledger: LedgerStore | None, config: Config) -> None:
        self.ledger, self.config = ledger, config
        self._send: MemoryObjectSendStream[CallWrite | ShadowRow] | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._queued = 0

    async def put(self, calls: list[CallWrite], shadows: list[ShadowRow] = ()) -> None:  # type: ignore[assignment]
        if self.ledger is None or not (calls or shadows):
            return
        if self._send is None:
            await off_loop(self.ledger.write, list(calls), list(shadows), self.config)
            return
        self._queued += len(calls) + len(shadows)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        items: list[CallWrite | ShadowRow] = [*calls, *shadows]
        for item in items:
            await self._send.send(item)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until `close` (the runner's task group runs this)."""
        send, receive = anyio.create_memory_object_stream[CallWrite | ShadowRow](QUEUE)
        self._send = send
        task_status.started()
        with receive:
            await self._drain(receive)

    async def _drain(self, receive: MemoryObjectReceiveStream[CallWrite | ShadowRow]) -> None:
        assert self.ledger is not None
        async for first in receive:
            batch = [first]
            while len(batch) < GATHER:
                try:
                    batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            calls = [b for b in batch if isinstance(b, CallWrite)]
            shadows = [b for b in batch if isinstance(b, ShadowRow)]
            with anyio.CancelScope(shield=True):
                try:
                    await off_loop(self.ledger.write, calls, shadows, self.config)
                except Exception:  # a ledger that fails must not take answers down; the rows are lost and said so
                    log.exception("ledger write of %d calls and %d shadow rows failed", len(calls), len(shadows))
            self._queued -= len(batch)
            if self._queued <= 0:
                self._idle.set()

    async def flush(self, timeout_s: float = math.inf) -> None:
        """Wait until every queued write is in the ledger."""
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()

    async def close(self) -> None:
        """Stop taking writes (pending ones are still written by `run`)."""
        if self._send is not None:
            send, self._send = self._send, None
            await send.aclose()
