"""Streamable HTTP: a real uvicorn on a loopback port, a real MCP client, and raw requests for what must be refused."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tiered_mcp.cli.main import main
from tiered_mcp.core.errors import ConfigError
from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.serve.http_app import (
    HttpOptions,
    build_http_app,
    is_loopback,
    resolve_token,
    transport_security,
    uvicorn_server,
)
from tiered_mcp.serve.server import build_server

from .conftest import PYTHON, server_env
from .test_specs import SHIPPED

pytestmark = pytest.mark.anyio

TOKEN = "tok_TEST-0123456789abcdefghij"
ARGS = {"text": "The app crashes when I click save.", "labels": ["bug", "feature"]}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "1"}}}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def serving(runner: Any, **options: Any) -> contextlib.AbstractAsyncContextManager[str]:
    """Run the tiered server for `runner` on a free loopback port in this event loop; yields the base URL."""
    return serving_mcp(build_server(runner), len(runner.specs), **options)


@contextlib.asynccontextmanager
async def serving_mcp(mcp_server: Any, tools: int, **options: Any) -> AsyncIterator[str]:
    """Run any low-level MCP server over our HTTP app with uvicorn (token TOKEN unless given); yields the base URL."""
    opts = HttpOptions(**{"port": 0, "token": TOKEN, **options})
    server = uvicorn_server(build_http_app(mcp_server, opts, tools=tools), opts)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@contextlib.asynccontextmanager
async def mcp_client(base: str, token: str | None = TOKEN, **kwargs: Any) -> AsyncIterator[Client]:
    """A real MCP client over Streamable HTTP, sending `Authorization: Bearer <token>` when a token is given."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    # trust_env=False: a proxy variable in the developer's shell must not reroute loopback traffic.
    async with (httpx2.AsyncClient(headers=headers, timeout=30, trust_env=False) as http,
                Client(streamable_http_client(f"{base}/mcp", http_client=http), **kwargs) as client):
        yield client


def raw(base: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=base, timeout=10, trust_env=False)


# ---- the MCP endpoint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_and_a_call_work_with_the_token(make_runner, mode):
    async with serving(make_runner()) as base, mcp_client(base, mode=mode) as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == sorted(SHIPPED)
        result = await client.call_tool("classify", ARGS)
    assert not result.is_error
    assert result.structured_content["label"] in ARGS["labels"]
    assert result.meta[RECEIPT_META_KEY]["tier"] == "nano"


@pytest.mark.parametrize("authorization", [
    None,
    "Bearer wrong-token-0123456789abcdef",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Basic {TOKEN}",
    TOKEN,
    "Bearer",
])
async def test_a_missing_or_wrong_token_gets_401_and_nothing_else(make_runner, authorization):
    headers = {**MCP_HEADERS, **({"authorization": authorization} if authorization else {})}
    async with serving(make_runner()) as base, raw(base) as http:
        r = await http.post("/mcp", json=INITIALIZE, headers=headers)
        get = await http.get("/mcp", headers=headers)
    challenge = 'Bearer realm="tiered-mcp"' + (', error="invalid_token"' if authorization else "")
    assert (r.status_code, r.content, r.headers["www-authenticate"]) == (401, b"", challenge)
    assert (get.status_code, get.content) == (401, b"")


async def test_the_scheme_is_case_insensitive_and_the_right_token_opens_a_session(make_runner):
    async with serving(make_runner()) as base, raw(base) as http:
        r = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["mcp-session-id"]


async def test_a_client_without_the_token_cannot_connect(make_runner):
    def leaves(e: BaseException) -> list[BaseException]:
        return [x for sub in e.exceptions for x in leaves(sub)] if isinstance(e, BaseExceptionGroup) else [e]

    async with serving(make_runner()) as base:
        with pytest.raises(BaseExceptionGroup) as raised:  # the client's task groups wrap the error
            with anyio.fail_after(10):
                async with mcp_client(base, token=None, mode="legacy") as client:
                    await client.list_tools()
    assert any(isinstance(e, MCPError) for e in leaves(raised.value)), raised.value


async def test_healthz_answers_without_a_token(make_runner):
    runner = make_runner()
    async with serving(runner) as base, raw(base) as http:
        r = await http.get("/healthz")
        other = await http.get("/nothing-here")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"status": "ok", "version": "0.1.0", "tools": len(runner.specs)}
    assert other.status_code == 401  # only /healthz is open


@pytest.mark.parametrize("headers, status", [
    ({"host": "evil.example"}, 421),
    ({"host": "evil.example:8000"}, 421),
    ({"origin": "http://evil.example"}, 403),
    ({"origin": "null"}, 403),
])
async def test_dns_rebinding_host_and_origin_are_refused(make_runner, headers, status):
    async with serving(make_runner()) as base, raw(base) as http:
        r = await http.post("/mcp", json=INITIALIZE,
                            headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}", **headers})
    assert r.status_code == status


async def test_allowed_hosts_and_origins_extend_the_loopback_defaults(make_runner):
    runner = make_runner()
    async with serving(runner, allowed_hosts=("mcp.internal",), allowed_origins=("https://app.example.com",)) as base:
        port = base.rsplit(":", 1)[1]
        async with raw(base) as http:
            auth = {**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}
            by_name = await http.post("/mcp", json=INITIALIZE, headers={**auth, "host": f"mcp.internal:{port}"})
            browser = await http.post("/mcp", json=INITIALIZE, headers={**auth, "origin": "https://app.example.com"})
            local_page = await http.post("/mcp", json=INITIALIZE, headers={**auth, "origin": f"http://localhost:{port}"})
    assert (by_name.status_code, browser.status_code, local_page.status_code) == (200, 200, 200)


def test_transport_security_allows_loopback_the_bound_address_and_what_was_asked():
    s = transport_security(HttpOptions(host="10.1.2.3", token=TOKEN, allowed_hosts=("mcp.example.com:443",)))
    assert s.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost", "[::1]:*", "10.1.2.3", "10.1.2.3:*", "mcp.example.com:443"} <= set(
        s.allowed_hosts)
    assert "mcp.example.com:*" not in s.allowed_hosts  # a port given is the only port
    v6 = transport_security(HttpOptions(host="fd00::1", token=TOKEN))
    assert "[fd00::1]:*" in v6.allowed_hosts
    wildcard = transport_security(HttpOptions(host="0.0.0.0", token=TOKEN))
    assert not any(h.startswith("0.0.0.0") for h in wildcard.allowed_hosts)


async def test_a_body_over_the_cap_gets_413(make_runner):
    big = {**INITIALIZE, "params": {**INITIALIZE["params"], "pad": "x" * 2000}}
    data = json.dumps(big).encode()

    async def chunks():  # no Content-Length: the cap must hold while reading, too
        for i in range(0, len(data), 256):
            yield data[i:i + 256]

    async with serving(make_runner(), max_body_bytes=1024) as base, raw(base) as http:
        auth = {**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"}
        declared = await http.post("/mcp", content=data, headers=auth)
        streamed = await http.post("/mcp", content=chunks(), headers=auth)
        small = await http.post("/mcp", json=INITIALIZE, headers=auth)
    assert (declared.status_code, streamed.status_code, small.status_code) == (413, 413, 200)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stateless_mode_serves_each_request_on_its_own(make_runner, mode):
    async with serving(make_runner(), stateless=True) as base:
        async with raw(base) as http:
            r = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "mcp-session-id" not in r.headers
        for _ in range(2):  # two clients, as if behind a load balancer: nothing carries over between them
            async with mcp_client(base, mode=mode) as client:
                assert len((await client.list_tools()).tools) == len(SHIPPED)
                assert not (await client.call_tool("classify", ARGS)).is_error


async def test_json_response_mode_answers_with_plain_json(make_runner):
    async with serving(make_runner(), json_response=True) as base:
        async with raw(base) as http:
            r = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "authorization": f"Bearer {TOKEN}"})
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["result"]["serverInfo"]["name"] == "tiered-mcp"
        async with mcp_client(base, mode="legacy") as client:
            assert not (await client.call_tool("classify", ARGS)).is_error


async def test_without_a_token_loopback_is_open(make_runner):
    async with serving(make_runner(), token=None) as base, mcp_client(base, token=None) as client:
        assert len((await client.list_tools()).tools) == len(SHIPPED)


# ---- binding and the token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.1", False), ("example.com", False),
    ("localhost.example.com", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com"])
def test_options_refuse_a_non_loopback_bind_without_a_token(host):
    with pytest.raises(ConfigError, match="without a bearer token"):
        HttpOptions(host=host)
    assert HttpOptions(host=host, token=TOKEN).token == TOKEN


def test_the_token_comes_from_the_file_stripped_else_the_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n", encoding="utf-8")
    f.chmod(0o600)
    assert resolve_token({}, str(f)) == TOKEN
    assert resolve_token({"TIERED_MCP_TOKEN": "env_token_0123456789abcdef"}, str(f)) == TOKEN  # the flag wins
    assert resolve_token({"TIERED_MCP_TOKEN": "env_token_0123456789abcdef"}) == "env_token_0123456789abcdef"
    assert resolve_token({"TIERED_MCP_TOKEN": "  "}) is None
    assert resolve_token({}) is None


@pytest.mark.parametrize("content, problem", [
    ("", "is empty"),
    ("Zq9Xw", "shorter than 16"),
    ("has spaces in it 0123456789", "may not carry"),
    ('quote"0123456789abcdef', "may not carry"),
])
def test_a_bad_token_is_refused_without_echoing_it(tmp_path, content, problem):
    f = tmp_path / "token"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as e:
        resolve_token({}, str(f))
    assert not content or content not in str(e.value)


def test_a_missing_token_file_is_a_setup_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        resolve_token({}, str(tmp_path / "nope"))


def test_serve_refuses_a_non_loopback_bind_without_a_token_and_binds_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TIERED_MCP_TOKEN", raising=False)
    with socket.socket() as held:
        # If serve got as far as binding 0.0.0.0:port it would fail with exit code 3 instead of 2.
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        rc = main(["serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(port),
                   "--ledger", str(tmp_path / "ledger.sqlite3")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "refusing to serve on 0.0.0.0 without a bearer token" in err and "TIERED_MCP_TOKEN" in err
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_the_cli_refuses_a_bad_token_file_with_exit_code_2(tmp_path, capsys):
    f = tmp_path / "token"
    f.write_text("short", encoding="utf-8")
    assert main(["serve", "--transport", "http", "--token-file", str(f)]) == 2
    assert "shorter than 16" in capsys.readouterr().err


def test_a_port_in_use_exits_with_code_3(upstream, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run([PYTHON, "-m", "tiered_mcp", "serve", "--transport", "http", "--port", str(port),
                               "--ledger", str(tmp_path / "ledger.sqlite3")],
                              env=server_env(upstream, tmp_path), capture_output=True, text=True, timeout=60,
                              check=False)
    assert proc.returncode == 3, proc.stderr
    assert "address already in use" in proc.stderr.lower() and proc.stdout == ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_serve(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`tiered-mcp serve --transport http` on a free port; its stdout and stderr go to files in tmp_path."""
    port = free_port()
    cmd = [PYTHON, "-m", "tiered_mcp", "serve", "--transport", "http", "--port", str(port),
           "--ledger", str(tmp_path / "ledger.sqlite3"), *args]
    with open(tmp_path / "stdout.log", "wb") as out, open(tmp_path / "stderr.log", "wb") as err:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=err), port


@contextlib.asynccontextmanager
async def cli_server(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[str]:
    """The CLI's HTTP server in a child process, once /healthz answers; yields the base URL, then stops it."""
    proc, port = spawn_serve(tmp_path, env, *args)
    base = f"http://127.0.0.1:{port}"
    try:
        async with raw(base) as http:
            with anyio.fail_after(30):
                while True:
                    assert proc.poll() is None, (tmp_path / "stderr.log").read_text(encoding="utf-8")
                    with contextlib.suppress(httpx2.TransportError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    await anyio.sleep(0.05)
        yield base
    finally:
        proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        await anyio.to_thread.run_sync(proc.wait, 30)


async def test_the_cli_serves_http_end_to_end(upstream, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    args = ("--stateless", "--token-file", str(token_file))
    async with cli_server(tmp_path, server_env(upstream, tmp_path), *args) as base, mcp_client(base) as client:
        result = await client.call_tool("classify", ARGS)
    assert not result.is_error and re.fullmatch("[0-9a-f]{16}", result.meta[RECEIPT_META_KEY]["call_id"])
    log = (tmp_path / "stderr.log").read_text(encoding="utf-8")
    assert "serving MCP at http://127.0.0.1" in log and "call classify ok=True tier=nano" in log
    assert TOKEN not in log and (tmp_path / "stdout.log").read_bytes() == b""
