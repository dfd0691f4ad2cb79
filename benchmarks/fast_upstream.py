"""A minimal asyncio OpenAI-compatible upstream for benchmarks: keep-alive HTTP/1.1, a fixed latency per request,
a schema-valid completion for whatever schema the request asks for. Much cheaper per request than the thread-per-
connection fake in tiered_mcp.testing, so that a benchmark measures tiered-mcp rather than its upstream.

    python benchmarks/fast_upstream.py PORT LATENCY_S
"""

from __future__ import annotations

import asyncio
import json
import sys

from tiered_mcp.testing import FakeResponse, completion


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            if latency:
                await asyncio.sleep(latency)
            if path.split("?")[0].endswith("/models"):
                out = {"object": "list", "data": [{"id": "gpt-5.4-nano", "object": "model"}]}
            else:
                out = completion(body, FakeResponse())
            data = json.dumps(out).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(data)).encode() + b"\r\n\r\n" + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, latency), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
