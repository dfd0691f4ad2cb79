"""Ledger writes that never hold up an answer.

While the server runs, finished calls and shadow rows go onto a bounded queue that one background task drains,
writing whatever has gathered in one transaction in a worker thread; a call's answer is sent without waiting for
its row. Outside a running server (tests, one-off scripts) each write is made at once, awaited. At shutdown the
queue is drained before the server exits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tiered_mcp.core.config import Config
from tiered_mcp.ledger.base import CallWrite, LedgerStore, ShadowRow, off_loop

log = logging.getLogger(__name__)

RETRIES_S = (0.2, 1.0, 3.0)  # pauses before retrying a failed transaction
QUEUE = 10_000  # writes waiting; past this, callers wait (back-pressure rather than unbounded memory)
GATHER = 500  # writes per transaction at most


class LedgerWriter:
    def __init__(self, ledger: LedgerStore | None, config: Config) -> None:
        self.ledger, self.config = ledger, config
        self._send: MemoryObjectSendStream[CallWrite | ShadowRow] | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._queued = 0

    async def put(self, calls: list[CallWrite], shadows: Sequence[ShadowRow] = ()) -> None:
        """Queue rows for the ledger (or write them now, when no writer runs). Shielded: a call cancelled while its
        row is handed over still has its row, and what it spent still counts against the caps."""
        if self.ledger is None or not (calls or shadows):
            return
        items: list[CallWrite | ShadowRow] = [*calls, *shadows]
        with anyio.CancelScope(shield=True):
            send = self._send
            for n, item in enumerate(items):
                if send is not None:
                    if self._idle.is_set():
                        self._idle = anyio.Event()
                    self._queued += 1
                    try:
                        await send.send(item)
                        continue
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        self._done(1)  # the writer stopped between items: write the rest here
                rest = items[n:]
                await self._write([r for r in rest if isinstance(r, CallWrite)],
                                  [r for r in rest if isinstance(r, ShadowRow)])
                return

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
                await self._write(calls, shadows)
            self._done(len(batch))

    def _done(self, n: int) -> None:
        self._queued -= n
        if self._queued <= 0:
            self._queued = 0
            self._idle.set()

    async def _write(self, calls: list[CallWrite], shadows: list[ShadowRow]) -> None:
        """One transaction; on failure a few retries with backoff, then row by row, so one bad row or a passing
        outage loses as little as it can. A ledger that fails must not take answers down: what is lost is logged."""
        assert self.ledger is not None
        for delay in RETRIES_S:
            try:
                await off_loop(self.ledger.write, calls, shadows, self.config)
                return
            except Exception:
                log.warning("ledger write of %d calls and %d shadow rows failed; retrying in %.1fs", len(calls),
                            len(shadows), delay, exc_info=True)
                await anyio.sleep(delay)
        for call in calls:
            await self._write_one([call], [])
        for row in shadows:
            await self._write_one([], [row])

    async def _write_one(self, calls: list[CallWrite], shadows: list[ShadowRow]) -> None:
        assert self.ledger is not None
        try:
            await off_loop(self.ledger.write, calls, shadows, self.config)
        except Exception:
            what = f"call {calls[0].receipt.call_id}" if calls else "a shadow row"
            log.exception("ledger write of %s failed; the row is lost", what)

    async def flush(self, timeout_s: float = math.inf) -> None:
        """Wait until every queued write is in the ledger."""
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()

    async def close(self) -> None:
        """Stop taking writes (pending ones are still written by `run`)."""
        if self._send is not None:
            send, self._send = self._send, None
            await send.aclose()
