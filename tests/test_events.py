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


async def test_with_the_store_the_sdk_primes_each_stream_with_an_id_and_retry(make_runner):
    """What http_app gets by passing the store: SSE responses start with a priming event that has an id and the
    retry interval, and a client that lost the stream can ask for the rest with Last-Event-ID."""
    import anyio
    import httpx2

    from tiered_mcp.serve.events import RETRY_MS
    from tiered_mcp.serve.http_app import HttpOptions, uvicorn_server
    from tiered_mcp.serve.server import build_server

    store = MemoryEventStore()
    app = build_server(make_runner()).streamable_http_app(event_store=store, retry_interval=RETRY_MS)
    server = uvicorn_server(app, HttpOptions(port=0))
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-11-25"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as http:
                first = await http.post("/mcp", json=init, headers=headers)
                session = {**headers, "mcp-session-id": first.headers["mcp-session-id"]}
                await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
                r = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session)
                body = r.text
        finally:
            server.should_exit = True
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert f"retry: {RETRY_MS}" in body and "\nid: " in "\n" + body
    assert store.size >= 2  # the priming event and the initialize result, kept for a reconnecting client
