"""Ledger writes that never hold up an answer.

While the server runs, finished calls, shadow rows and budget settlements go onto a bounded queue that one background task drains,
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
from tiered_mcp.ledger.base import CallWrite, LedgerStore, Settle, ShadowRow, off_loop

log = logging.getLogger(__name__)

RETRIES_S = (0.2, 1.0, 3.0)  # pauses before retrying a failed transaction
QUEUE = 10_000  # writes waiting; past this, callers wait (back-pressure rather than unbounded memory)
GATHER = 500  # writes per transaction at most
Item = CallWrite | ShadowRow | Settle


class LedgerWriter:
    def __init__(self, ledger: LedgerStore | None, config: Config) -> None:
        self.ledger, self.config = ledger, config
        self._send: MemoryObjectSendStream[Item] | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._queued = 0

    async def put(self, calls: list[CallWrite], shadows: Sequence[ShadowRow] = (),
                  settles: Sequence[Settle] = ()) -> None:
        """Queue rows for the ledger (or write them now, when no writer runs). Shielded: a call cancelled while its
        row is handed over still has its row, and what it spent still counts against the caps."""
        if self.ledger is None or not (calls or shadows or settles):
            return
        items: list[Item] = [*settles, *calls, *shadows]
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
                await self._write(items[n:])
                return

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until `close` (the runner's task group runs this)."""
        send, receive = anyio.create_memory_object_stream[Item](QUEUE)
        self._send = send
        task_status.started()
        with receive:
            await self._drain(receive)

    async def _drain(self, receive: MemoryObjectReceiveStream[Item]) -> None:
        assert self.ledger is not None
        async for first in receive:
            batch = [first]
            while len(batch) < GATHER:
                try:
                    batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            with anyio.CancelScope(shield=True):
                await self._write(batch)
            self._done(len(batch))

    def _done(self, n: int) -> None:
        self._queued -= n
        if self._queued <= 0:
            self._queued = 0
            self._idle.set()

    async def _write(self, items: Sequence[Item]) -> None:
        """One transaction; on failure a few retries with backoff, then row by row, so one bad row or a passing
        outage loses as little as it can. A ledger that fails must not take answers down: what is lost is logged."""
        assert self.ledger is not None
        calls = [i for i in items if isinstance(i, CallWrite)]
        shadows = [i for i in items if isinstance(i, ShadowRow)]
        settles = [i for i in items if isinstance(i, Settle)]
        for delay in RETRIES_S:
            try:
                await off_loop(self.ledger.write, calls, shadows, self.config, settles)
                return
            except Exception:
                log.warning("ledger write of %d calls, %d shadow rows and %d settlements failed; retrying in %.1fs",
                            len(calls), len(shadows), len(settles), delay, exc_info=True)
                await anyio.sleep(delay)
        for item in items:
            await self._write_one(item)

    async def _write_one(self, item: Item) -> None:
        assert self.ledger is not None
        calls = [item] if isinstance(item, CallWrite) else []
        shadows = [item] if isinstance(item, ShadowRow) else []
        settles = [item] if isinstance(item, Settle) else []
        try:
            await off_loop(self.ledger.write, calls, shadows, self.config, settles)
        except Exception:
            what = (f"call {item.receipt.call_id}" if isinstance(item, CallWrite) else "a shadow row"
                    if isinstance(item, ShadowRow) else f"the settlement of budget hold {item.hold}")
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
