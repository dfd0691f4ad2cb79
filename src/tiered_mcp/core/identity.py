"""Who is calling: the caller's name, set by the serving layer per request and read by the call path.

A context variable, so each request's task (and the worker threads anyio starts from it) sees its own caller.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """A named caller (a team server's token), with the limits the operator gave it (None: no limit)."""

    name: str
    daily_usd: float | None = None


current_caller: ContextVar[Caller | None] = ContextVar("tiered_mcp_caller", default=None)
"""The caller of the request being served; None on stdio and for an HTTP server with one shared token."""
