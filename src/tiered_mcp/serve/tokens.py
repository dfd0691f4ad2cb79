"""Named tokens for a team server: who is calling, and how much each caller may do.

The tokens file (TOML) holds names and SHA-256 hashes of tokens, never the tokens themselves:

    [defaults]                      # optional; limits for every token that does not set its own
    requests_per_minute = 600
    max_concurrent = 32
    max_sessions = 100

    [tokens.alice]
    sha256 = "5e88489...64 hex digits"    # python -c "import hashlib,sys;print(hashlib.sha256(sys.argv[1].encode()).hexdigest())" TOKEN
    daily_usd = 5.0                       # her spend per UTC day (enforced by the call path)
    requests_per_minute = 60

The file is checked for changes (mtime, size, inode) at most once a second as requests arrive, and reloaded: a token
is added or revoked without a restart. A file that becomes unreadable or invalid fails closed: every token is
refused, and an error is logged, until it is fixed. At start-up an invalid file is a ConfigError.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiered_mcp.core.errors import ConfigError

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 1.0
SESSION_IDLE_S = 3600.0
"""A session not used for this long stops counting towards its token's cap (the SDK may have dropped it)."""


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=600, ge=1)
    max_concurrent: int | None = Field(default=32, ge=1)
    max_sessions: int | None = Field(default=100, ge=1)


class _Token(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    daily_usd: float | None = Field(default=None, ge=0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    max_sessions: int | None = Field(default=None, ge=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: _Limits = Field(default_factory=_Limits)
    tokens: dict[str, _Token] = Field(default_factory=dict)


_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


@dataclass(frozen=True)
class NamedToken:
    """One caller: its name, its token's hash, and its limits (None: no limit)."""

    name: str
    digest: bytes
    daily_usd: float | None
    requests_per_minute: int | None
    max_concurrent: int | None
    max_sessions: int | None


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, source: str) -> dict[str, NamedToken]:
    """The named tokens in a tokens file's text.

    Raises:
        ConfigError: naming the file, the entry and the problem (never a hash).
    """
    try:
        data = _File.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{source}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    out: dict[str, NamedToken] = {}
    seen: dict[bytes, str] = {}
    for name, t in data.tokens.items():
        if not _NAME.match(name):
            raise ConfigError(f"{source}: tokens.{name}: a name is 1-64 letters, digits or _ . @ + -")
        digest = bytes.fromhex(t.sha256)
        if digest in seen:
            raise ConfigError(f"{source}: tokens.{name}: the same token as tokens.{seen[digest]}")
        seen[digest] = name
        d = data.defaults
        out[name] = NamedToken(
            name=name, digest=digest, daily_usd=t.daily_usd,
            requests_per_minute=t.requests_per_minute or d.requests_per_minute,
            max_concurrent=t.max_concurrent or d.max_concurrent,
            max_sessions=t.max_sessions or d.max_sessions,
        )
    return out


class TokenStore:
    """The named tokens from a file, reloaded when it changes.

    Args:
        path: the tokens file.
        clock: monotonic seconds (tests pass their own).

    Raises:
        ConfigError: the file cannot be read or is invalid at start-up.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = clock()
        self._signature = self._stat()
        self.tokens = self._load(self.path.read_text(encoding="utf-8") if self._signature else None)
        if os.name == "posix" and self._signature and self.path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users; chmod 600 it", self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self, text: str | None) -> dict[str, NamedToken]:
        if text is None:
            raise ConfigError(f"tokens file {self.path}: cannot read it")
        return parse_tokens(text, f"tokens file {self.path}")

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            signature = self._stat()
            if signature == self._signature:
                return
            self._signature = signature
            try:
                text = self.path.read_text(encoding="utf-8")
                self.tokens = self._load(text)
            except (OSError, UnicodeDecodeError, ConfigError) as e:
                self.tokens = {}
                log.error("tokens file %s: %s; refusing every token until it is fixed", self.path,
                          e if isinstance(e, ConfigError) else f"cannot read it ({type(e).__name__})")
                return
            log.info("tokens file %s reloaded: %d tokens", self.path, len(self.tokens))

    def lookup(self, token: bytes) -> NamedToken | None:
        """The caller a presented token belongs to, or None. Compares hashes in constant time, against all."""
        self._maybe_reload()
        digest = hashlib.sha256(token).digest()
        found = None
        for entry in self.tokens.values():
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


@dataclass
class CallerState:
    """What one caller is doing now: recent requests (for the rate), requests in flight, open sessions."""

    recent: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    sessions: dict[str, float] = field(default_factory=dict)

    def rate_wait(self, per_minute: int | None, now: float) -> float:
        """0 when a request may go now (and count it), else seconds until one may."""
        if per_minute is None:
            return 0.0
        while self.recent and now - self.recent[0] >= 60.0:
            self.recent.popleft()
        if len(self.recent) >= per_minute:
            return max(0.01, 60.0 - (now - self.recent[0]))
        self.recent.append(now)
        return 0.0

    def expire(self, now: float) -> list[str]:
        """Forget sessions idle past SESSION_IDLE_S; returns their ids."""
        gone = [s for s, seen in self.sessions.items() if now - seen > SESSION_IDLE_S]
        for sid in gone:
            del self.sessions[sid]
        return gone


__all__ = ["CallerState", "NamedToken", "TokenStore", "parse_tokens", "token_hash"]
