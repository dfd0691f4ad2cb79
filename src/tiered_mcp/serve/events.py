"""A bounded in-memory event store, so Streamable HTTP's SSE streams can be resumed (`Last-Event-ID`).

With an event store the SDK sends a priming event (and the `retry` interval) at the start of each SSE stream and
keeps every event it sends; a client whose connection drops reconnects with the last event id it saw and gets the
rest. Memory stays bounded: at most `max_events` events in all (oldest dropped first), each at most `max_age_s` old.
One process only: replicas behind a load balancer run `--stateless`, which has no streams to resume.

Pass it to `Server.streamable_http_app(event_store=MemoryEventStore(), retry_interval=RETRY_MS)`.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from typing import Any

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

RETRY_MS = 1000
"""The reconnection delay suggested to clients in the priming event (milliseconds)."""


class MemoryEventStore(EventStore):
    """Events by id, in the order sent; ids are `<counter>` so they sort and never repeat within the process."""

    def __init__(self, max_events: int = 10_000, max_age_s: float = 300.0, clock: Any = time.monotonic) -> None:
        self._events: OrderedDict[str, tuple[StreamId, Any, float]] = OrderedDict()
        self._ids = itertools.count(1)
        self._max_events, self._max_age_s, self._clock = max_events, max_age_s, clock

    @property
    def size(self) -> int:
        """Events held now. (Not `__len__`: the SDK tests the store for truth, and an empty one must count.)"""
        return len(self._events)

    def _trim(self) -> None:
        cutoff = self._clock() - self._max_age_s
        while self._events:
            first = next(iter(self._events.values()))
            if len(self._events) > self._max_events or first[2] < cutoff:
                self._events.popitem(last=False)
            else:
                break

    async def store_event(self, stream_id: StreamId, message: Any) -> EventId:
        event_id = str(next(self._ids))
        self._events[event_id] = (stream_id, message, self._clock())
        self._trim()
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        self._trim()
        found = self._events.get(last_event_id)
        if found is None:
            return None  # unknown or expired: the client starts afresh
        stream_id = found[0]
        after = False
        for event_id, (sid, message, _) in list(self._events.items()):
            if event_id == last_event_id:
                after = True
                continue
            if after and sid == stream_id and message is not None:  # priming events carry no message
                await send_callback(EventMessage(message, event_id))
        return stream_id
