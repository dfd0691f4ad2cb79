"""A minimal MCP server on the SDK's low-level Server: the floor the benchmarks measure tiered-mcp against.

    python benchmarks/floor_server.py [--proxy] [--transport stdio|http] [--port N]

Without --proxy it imports nothing of ours and publishes one tool, `echo`, that returns its arguments: the SDK's own
start-up and round trip. With --proxy it also publishes `classify` and `extract` with tiered-mcp's schemas, and
answers them by posting the very body tiered-mcp would post (same openai client, same aiohttp transport) and
returning the model's JSON: what any MCP server that forwards a call to a model pays, without tiered-mcp's work
(argument and answer validation, receipts, the ledger write, the cache, logs). OPENAI_BASE_URL and OPENAI_API_KEY
name the upstream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, AsyncIterator

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server

HERE = os.path.dirname(os.path.abspath(__file__))


def build(proxy: bool) -> Server[Any]:
    tools = [types.Tool(name="echo", description="Return the arguments.", input_schema={"type": "object"})]
    state: dict[str, Any] = {}
    if proxy:
        sys.path.insert(0, HERE)
        from _common import request_body

        from tiered_mcp.core.config import load_config
        from tiered_mcp.serve.server import published_input_schema, published_output_schema
        from tiered_mcp.specs.spec import load_specs

        specs, config = load_specs(), load_config(None, os.environ)
        for name in ("classify", "extract"):
            spec = specs.get(name)
            tools.append(types.Tool(name=spec.name, title=spec.title, description=spec.description,
                                    input_schema=published_input_schema(spec, config),
                                    output_schema=published_output_schema(spec)))
        state["body"] = request_body

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "echo":
            return types.CallToolResult(content=[types.TextContent(text=json.dumps(params.arguments))])
        if "client" not in state:
            import openai
            from openai.types.chat import ChatCompletion

            state["client"] = openai.AsyncOpenAI(api_key=os.environ["OPENAI_API_KEY"],
                                                 base_url=os.environ["OPENAI_BASE_URL"], max_retries=0, timeout=60.0,
                                                 http_client=openai.DefaultAioHttpClient())
            state["cast"] = ChatCompletion
        resp = await state["client"].post("/chat/completions", cast_to=state["cast"],
                                          body=state["body"](params.arguments or {}, params.name))
        out = json.loads(resp.choices[0].message.content)
        return types.CallToolResult(content=[types.TextContent(text=json.dumps(out))], structured_content=out)

    @contextlib.asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if "client" in state:
                await state["client"].close()

    return Server("floor", lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_http(server: Server[Any], port: int) -> None:
    import uvicorn
    from starlette.responses import Response
    from starlette.routing import Route

    async def healthz(request: Any) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1",
                                     custom_starlette_routes=[Route("/healthz", healthz, methods=["GET"])])
    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="on", ws="none", log_level="warning",
                server_header=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", action="store_true")
    ap.add_argument("--transport", default="stdio", choices=["stdio", "http"])
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    server = build(args.proxy)
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    else:
        serve_http(server, args.port)


if __name__ == "__main__":
    main()
