"""The SSE event store: replays what a reconnecting client missed, on its own stream only, within its bounds."""

import pytest

from tiered_mcp.serve.events import MemoryEventStore

pytestmark = pytest.mark.anyio


async def test_replays_events_after_the_last_seen_on_the_same_stream():
    store = MemoryEventStore()
    prime = await store.store_event("a", None)  # the priming event the SDK sends first
    first = await store.store_event("a", {"n": 1})
    await store.store_event("b", {"n": "other stream"})
    await store.store_event("a", {"n": 2})
    await store.store_event("a", {"n": 3})
    got = []

    async def send(event):
        got.append((event.event_id, event.message))

    assert await store.replay_events_after(first, send) == "a"
    assert [m for _, m in got] == [{"n": 2}, {"n": 3}]
    got.clear()
    assert await store.replay_events_after(prime, send) == "a"
    assert [m for _, m in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert await store.replay_events_after("999", send) is None


async def test_memory_is_bounded_by_count_and_age():
    now = [0.0]
    store = MemoryEventStore(max_events=3, max_age_s=10, clock=lambda: now[0])
    ids = [await store.store_event("a", {"n": i}) for i in range(5)]
    assert store.size == 3

    async def send(event):
        pass

    assert await store.replay_events_after(ids[0], send) is None  # dropped
    now[0] = 20.0
    await store.store_event("a", {"n": 9})
    assert store.size == 1
