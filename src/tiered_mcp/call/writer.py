"""Ledger writes, grouped into few transactions.

While the server runs, finished calls, shadow rows and budget settlements go onto a bounded queue that one background task drains,
writing whatever has gathered in one transaction in a worker thread. By default a call's answer is sent without
waiting for its row. With `ledger_durable = true` a put of call rows waits until the transaction holding them is
committed (each put carries a `_Ticket` the writer resolves after the commit); calls that wait meanwhile gather
on the queue and share the next transaction, so durability costs a commit's latency per call, not a transaction
per call. Outside a running server (tests, one-off scripts) each write is made at once, awaited. At shutdown the
queue is drained before the server exits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tiered_mcp.core.config import Config
from tiered_mcp.ledger.base import CallWrite, LedgerStore, Settle, ShadowRow, off_loop

log = logging.getLogger(__name__)

RETRIES_S = (0.2, 1.0, 3.0)  # pauses before retrying a failed transaction
QUEUE = 10_000  # writes waiting; past this, callers wait (back-pressure rather than unbounded memory)
GATHER = 500  # writes per transaction at most
Item = CallWrite | ShadowRow | Settle


class _Ticket:
    """One waiting put: how many of its items are not yet written, which of them could not be, and an event set
    when none is left."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.lost: list[Item] = []
        self.done = anyio.Event()

    def settle(self, item: Item, ok: bool) -> None:
        if not ok:
            self.lost.append(item)
        self.left -= 1
        if self.left <= 0:
            self.done.set()


Entry = tuple[Item, _Ticket | None]


class LedgerWriter:
    """Args:
        ledger: where rows go (None: nowhere; every put returns at once).
        config: the effective config; `ledger_durable` makes puts of call rows wait for their commit.
        sleep: how to wait before retrying a failed transaction (the runner's `sleep` seam).
    """

    def __init__(self, ledger: LedgerStore | None, config: Config,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        self.ledger, self.config, self._sleep = ledger, config, sleep
        self._send: MemoryObjectSendStream[Entry] | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._queued = 0

    async def put(self, calls: list[CallWrite], shadows: Sequence[ShadowRow] = (),
                  settles: Sequence[Settle] = (), *, wait: bool | None = None) -> list[CallWrite]:
        """Queue rows for the ledger (or write them now, when no writer runs). Shielded: a call cancelled while its
        row is handed over still has its row, and what it spent still counts against the caps.

        Args:
            wait: return only once every row is committed (or given up on after the retries). Default: with
                `ledger_durable` when there are call rows; otherwise only queued.

        Returns:
            The calls whose rows could not be written after every retry, when the put waited; else empty (losses
            are logged).
        """
        if self.ledger is None or not (calls or shadows or settles):
            return []
        if wait is None:
            wait = self.config.ledger_durable and bool(calls)
        items: list[Item] = [*settles, *calls, *shadows]
        ticket = _Ticket(len(items)) if wait else None
        with anyio.CancelScope(shield=True):
            send = self._send
            for n, item in enumerate(items):
                if send is not None:
                    if self._idle.is_set():
                        self._idle = anyio.Event()
                    self._queued += 1
                    try:
                        await send.send((item, ticket))
                        continue
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        self._done(1)  # the writer stopped between items: write the rest here
                await self._write([(i, ticket) for i in items[n:]])
                break
            if ticket is not None:
                await ticket.done.wait()
        if ticket is None:
            return []
        return [c for c in ticket.lost if isinstance(c, CallWrite)]

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until `close` (the runner's task group runs this)."""
        send, receive = anyio.create_memory_object_stream[Entry](QUEUE)
        self._send = send
        task_status.started()
        with receive:
            await self._drain(receive)

    async def _drain(self, receive: MemoryObjectReceiveStream[Entry]) -> None:
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

    async def _write(self, entries: Sequence[Entry]) -> None:
        """One transaction; on failure a few retries with backoff, then row by row, so one bad row or a passing
        outage loses as little as it can. Each entry's ticket is settled once its row is committed or lost. Without
        a waiting put, a ledger that fails must not take answers down: what is lost is logged."""
        assert self.ledger is not None
        items = [i for i, _ in entries]
        calls = [i for i in items if isinstance(i, CallWrite)]
        shadows = [i for i in items if isinstance(i, ShadowRow)]
        settles = [i for i in items if isinstance(i, Settle)]
        for delay in RETRIES_S:
            try:
                await off_loop(self.ledger.write, calls, shadows, self.config, settles)
            except Exception:
                log.warning("ledger write of %d calls, %d shadow rows and %d settlements failed; retrying in %.1fs",
                            len(calls), len(shadows), len(settles), delay, exc_info=True)
                await self._sleep(delay)
                continue
            for item, ticket in entries:
                if ticket is not None:
                    ticket.settle(item, True)
            return
        for item, ticket in entries:
            ok = await self._write_one(item)
            if ticket is not None:
                ticket.settle(item, ok)

    async def _write_one(self, item: Item) -> bool:
        assert self.ledger is not None
        calls = [item] if isinstance(item, CallWrite) else []
        shadows = [item] if isinstance(item, ShadowRow) else []
        settles = [item] if isinstance(item, Settle) else []
        try:
            await off_loop(self.ledger.write, calls, shadows, self.config, settles)
            return True
        except Exception:
            what = (f"call {item.receipt.call_id}" if isinstance(item, CallWrite) else "a shadow row"
                    if isinstance(item, ShadowRow) else f"the settlement of budget hold {item.hold}")
            log.exception("ledger write of %s failed; the row is lost", what)
            return False

    async def flush(self, timeout_s: float = math.inf) -> None:
        """Wait until every queued write is in the ledger."""
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()

    async def close(self) -> None:
        """Stop taking writes (pending ones are still written by `run`)."""
        if self._send is not None:
            send, self._send = self._send, None
            await send.aclose()
