"""Streamable HTTP for a team: the MCP endpoint at `/mcp` behind a bearer token, plus `/healthz` for orchestrators.

Layers, outside in: the bearer-token check (every path but `/healthz`) — one shared token, or named tokens from a
tokens file (serve/tokens.py) with per-caller request rate, concurrency and open-session limits — then the SDK's
own Streamable HTTP app, which caps request bodies (413) and checks Host and Origin against DNS rebinding
(421 / 403) before it parses anything. With named tokens, each request runs with `core.identity.current_caller`
set to its caller, which the call path reads for the ledger and the caller's budget.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings

from tiered_mcp import __version__
from tiered_mcp.core.errors import ConfigError
from tiered_mcp.core.identity import Caller, current_caller
from tiered_mcp.serve.tokens import CallerState, NamedToken, TokenStore

if TYPE_CHECKING:
    import uvicorn
    from mcp.server.lowlevel import Server
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

TOKEN_ENV = "TIERED_MCP_TOKEN"
MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES: int = DEFAULT_MAX_REQUEST_BODY_SIZE  # 4 MiB, the SDK's own default
MIN_TOKEN_LENGTH = 16
# Long enough for an in-flight model call to finish after SIGTERM, short enough for an orchestrator's grace period;
# open SSE streams would otherwise hold shutdown forever.
GRACEFUL_SHUTDOWN_S = 20

# RFC 6750 b64token: what may follow "Bearer " in a header, so the token can be sent verbatim (and redacted exactly).
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and `localhost`."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address


def resolve_token(env: Mapping[str, str], token_file: str | None = None) -> str | None:
    """The bearer token from `--token-file` (stripped) if given, else from $TIERED_MCP_TOKEN, else None.

    Raises:
        ConfigError: the file cannot be read or is empty, or the token is too short or has characters a bearer
            token may not carry. The message never contains the token.
    """
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({type(e).__name__})") from None
        if not token:
            raise ConfigError(f"--token-file {token_file} is empty")
        source = f"--token-file {token_file}"
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users; chmod 600 it", token_file)
    else:
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        source = f"${TOKEN_ENV}"
    hint = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the token from {source} is shorter than {MIN_TOKEN_LENGTH} characters; {hint}")
    if not _TOKEN_CHARS.fullmatch(token):
        raise ConfigError(f"the token from {source} has characters a bearer token may not carry "
                          f"(allowed: letters, digits, - . _ ~ + / and trailing =); {hint}")
    return token


@dataclass(frozen=True)
class HttpOptions:
    """How to serve over HTTP. Checked on creation: binding beyond loopback without a token is refused.

    Attributes:
        host: the address to bind.
        port: the TCP port.
        token: the bearer token every request except /healthz must carry; required off loopback (or tokens_file).
        tokens_file: a file of named tokens (serve/tokens.py) instead of one shared token; reloaded on change.
        allowed_hosts: Host header values accepted besides loopback; a name without a port matches any port.
        allowed_origins: Origin header values accepted besides loopback (e.g. "https://app.example.com").
        max_body_bytes: largest request body; bigger ones get 413.
        stateless: no sessions: every request stands alone, so replicas behind a load balancer need no stickiness.
        json_response: answer POSTs with plain JSON instead of an SSE stream (no progress notifications).

    Raises:
        ConfigError: no token on a non-loopback bind, or a value out of range.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    tokens_file: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    stateless: bool = False
    json_response: bool = False

    def __post_init__(self) -> None:
        if self.token and self.tokens_file:
            raise ConfigError("give either one shared token or a tokens file, not both")
        if not is_loopback(self.host) and not self.token and not self.tokens_file:
            raise ConfigError(
                f"refusing to serve on {self.host or 'every interface'} without a bearer token: anyone who can reach "
                f"the port could spend your model budget. Set ${TOKEN_ENV}, pass --token-file PATH or a tokens file "
                "(or bind to 127.0.0.1)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        if self.max_body_bytes <= 0:
            raise ConfigError(f"--max-body-bytes {self.max_body_bytes} must be a positive number of bytes")


def _with_any_port(host: str) -> list[str]:
    # "name" or "[v6]" has no port: accept it bare (behind a proxy on 80/443) and with any port.
    has_port = host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else host.count(":") == 1
    return [host] if has_port else [host, f"{host}:*"]


def transport_security(options: HttpOptions) -> TransportSecuritySettings:
    """Host and Origin rules against DNS rebinding: loopback always, plus the bound address and what was allowed.

    A browser page on another site cannot make a request carrying our Host or a loopback Origin, so a page that
    rebinds its own name to this machine is refused (Host 421, Origin 403). Clients that send no Origin (every
    non-browser MCP client) are not affected by the Origin rule.
    """
    hosts = [h for name in _LOOPBACK_NAMES for h in _with_any_port(name)]
    bound = options.host.strip()
    if bound and bound not in ("0.0.0.0", "::") and not is_loopback(bound):
        # Clients that reach us by the address we bound send it as Host; a rebinding attack never can.
        hosts += _with_any_port(f"[{bound}]" if ":" in bound else bound)
    for h in options.allowed_hosts:
        hosts += _with_any_port(h.strip())
    origins = [f"{scheme}://{name}{port}" for scheme in ("http", "https") for name in _LOOPBACK_NAMES
               for port in ("", ":*")]
    origins += [o.strip().rstrip("/") for o in options.allowed_origins]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=list(dict.fromkeys(hosts)),
                                     allowed_origins=list(dict.fromkeys(origins)))


async def _refuse(send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    values = [v for k, v in scope.get("headers", ()) if k == name]
    return values[0] if len(values) == 1 else None


CHALLENGE = b'Bearer realm="tiered-mcp"'
SHARED_MAX_SESSIONS = 1000
"""Open sessions a single shared token may hold (all its holders together)."""


class SharedToken:
    """The one shared token as a token store: no rate or concurrency limit, SHARED_MAX_SESSIONS sessions."""

    def __init__(self, token: str) -> None:
        self._entry = NamedToken(name="shared", digest=hashlib.sha256(token.encode()).digest(), daily_usd=None,
                                 requests_per_minute=None, max_concurrent=None, max_sessions=SHARED_MAX_SESSIONS)

    def lookup(self, token: bytes) -> NamedToken | None:
        # compare_digest: the time taken does not depend on how many leading characters were right.
        return self._entry if hmac.compare_digest(hashlib.sha256(token).digest(), self._entry.digest) else None


class NamedTokenAuth:
    """ASGI middleware for a team server: each request carries one of the named tokens, and runs as its caller.

    Per caller: requests per minute (429 with Retry-After), requests in flight (POSTs; 429), and open sessions
    (a new session past the cap gets 429; a session id is usable only with the token that opened it, else 404).
    A missing or unknown token gets 401 with an empty body and `WWW-Authenticate: Bearer realm="tiered-mcp"` (with
    `error="invalid_token"` when a token was sent, RFC 6750): a host sees that a bearer token is expected, not OAuth.
    """

    def __init__(self, app: ASGIApp, store: TokenStore | SharedToken, stateless: bool = False,
                 exempt: frozenset[str] = frozenset({HEALTH_PATH}), clock: Any = None, set_caller: bool = True) -> None:
        self.app, self.store, self.stateless, self.exempt = app, store, stateless, exempt
        self.set_caller = set_caller
        self._clock = clock or time.monotonic
        self._state: dict[str, CallerState] = {}
        self._owner: dict[str, str] = {}

    def _caller(self, scope: Scope) -> tuple[NamedToken | None, bool]:
        """(the caller, whether any credentials were sent)."""
        value = _header(scope, b"authorization")
        if value is None:
            return None, any(k == b"authorization" for k, _ in scope.get("headers", ()))
        scheme, _, given = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return None, True
        return self.store.lookup(given.strip()), True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        entry, sent = self._caller(scope)
        if entry is None:
            challenge = CHALLENGE + (b', error="invalid_token"' if sent else b"")
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"www-authenticate", challenge), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        state = self._state.setdefault(entry.name, CallerState())
        now = self._clock()
        wait = state.rate_wait(entry.requests_per_minute, now)
        if wait:
            await _refuse(send, 429, f"rate limit: {entry.requests_per_minute} requests per minute for "
                          f"{entry.name}", ((b"retry-after", str(max(1, round(wait))).encode()),))
            return
        method = scope.get("method", "GET")
        raw_sid = _header(scope, b"mcp-session-id")
        sid = raw_sid.decode("latin-1") if raw_sid else None
        if sid is not None:
            owner = self._owner.get(sid)
            if owner is not None and owner != entry.name:
                await _refuse(send, 404, "session not found")  # another caller's session: as if unknown
                return
            if owner is not None:
                state.sessions[sid] = now
        for gone in state.expire(now):
            self._owner.pop(gone, None)
        opening = method == "POST" and sid is None and not self.stateless
        if opening and entry.max_sessions is not None and len(state.sessions) >= entry.max_sessions:
            await _refuse(send, 429, f"{entry.name} has {entry.max_sessions} sessions open, the most it may; close "
                          "one (DELETE /mcp) or let one go idle", ((b"retry-after", b"60"),))
            return
        counted = method == "POST"
        if counted and entry.max_concurrent is not None and state.in_flight >= entry.max_concurrent:
            await _refuse(send, 429, f"{entry.name} has {entry.max_concurrent} requests in flight, the most it may",
                          ((b"retry-after", b"1"),))
            return

        async def watching(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                opened = dict(message.get("headers") or ()).get(b"mcp-session-id")
                if opening and opened and status < 400:
                    new = opened.decode("latin-1")
                    self._owner[new] = entry.name
                    state.sessions[new] = self._clock()
                if sid is not None and (status == 404 or (method == "DELETE" and status < 300)):
                    state.sessions.pop(sid, None)
                    self._owner.pop(sid, None)
            await send(message)

        if counted:
            state.in_flight += 1
        reset = current_caller.set(Caller(entry.name, entry.daily_usd)) if self.set_caller else None
        try:
            await self.app(scope, receive, watching)
        finally:
            if reset is not None:
                current_caller.reset(reset)
            if counted:
                state.in_flight -= 1


def build_http_app(server: Server[Any], options: HttpOptions, tools: int) -> ASGIApp:
    """The ASGI app serving `server` over Streamable HTTP at /mcp, with /healthz beside it.

    Args:
        server: the built low-level MCP server (its streamable HTTP app can be made once).
        options: bind address, token, Host/Origin allowances, body cap, stateless and JSON modes.
        tools: how many tools the server publishes, reported by /healthz.

    Returns:
        An ASGI app whose lifespan runs the SDK's session manager (uvicorn runs it with lifespan "on").
    """
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    health = json.dumps({"status": "ok", "version": __version__, "tools": tools}).encode()

    async def healthz(request: Request) -> Response:
        # Open, and exempt from the Host check: orchestrators probe by pod IP. It tells nothing secret.
        return Response(health, media_type="application/json", headers={"cache-control": "no-store"})

    from tiered_mcp.serve.events import RETRY_MS, MemoryEventStore

    # Resumable SSE streams (priming event, `retry`) where there are streams to resume: sessions and SSE answers.
    resumable = not (options.stateless or options.json_response)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=options.json_response,
        stateless_http=options.stateless,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=RETRY_MS if resumable else None,
        max_request_body_size=options.max_body_bytes,
        transport_security=transport_security(options),
        host=options.host,
        custom_starlette_routes=[Route(HEALTH_PATH, healthz, methods=["GET"])],
    )
    if options.tokens_file:
        return NamedTokenAuth(app, TokenStore(options.tokens_file), stateless=options.stateless)
    if options.token:
        # One shared token: no caller name (the ledger cannot tell its holders apart), but still a cap on open
        # sessions, so that one holder cannot fill the SDK's 10,000-session table for everyone.
        return NamedTokenAuth(app, SharedToken(options.token), stateless=options.stateless, set_caller=False)
    return app


def uvicorn_server(app: ASGIApp, options: HttpOptions) -> uvicorn.Server:
    """A uvicorn server for `app` that logs through the root logger (stderr, our format), never to stdout."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        lifespan="on",
        ws="none",
        # None: no dictConfig of uvicorn's own, whose access log writes to stdout; its loggers propagate to ours.
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


async def serve_http(app: ASGIApp, options: HttpOptions) -> None:
    """Serve `app` with uvicorn until SIGINT or SIGTERM.

    A port that cannot be bound ends the process with exit code 3 (uvicorn's start-up failure), after logging why.
    """
    log.info("serving MCP at http://%s:%d%s (%s%s; token %s)",
             f"[{options.host}]" if ":" in options.host else options.host, options.port, MCP_PATH,
             "stateless" if options.stateless else "sessions", ", JSON responses" if options.json_response else "",
             "required" if options.token else "named, from " + options.tokens_file if options.tokens_file
             else "not set, loopback only")
    await uvicorn_server(app, options).serve()
