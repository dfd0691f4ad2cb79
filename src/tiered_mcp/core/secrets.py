"""Every secret the config knows, and the two ways text is cleaned before it leaves the process.

`Scrubber.from_config(config, env)` collects the provider keys (the values of their `api_key_env` variables),
secret-looking `default_headers` and `default_query` values (an auth header for a gateway, say), credentials in a
base URL (user, password, and the Basic header they make), and secret-named environment variables. `scrub(text)`
replaces each with `***`, and also anything shaped like a provider key, a bearer token or URL credentials.

`redact(text, arguments)` removes argument values from a message (for `store_inputs = false`): any quoted value
that comes from an argument, and any argument string found verbatim, becomes `‹redacted›`.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from tiered_mcp.core.config import Config

MASK = "***"
REDACTED = "‹redacted›"
MIN_SECRET_CHARS = 6
"""Shorter values are not treated as secrets: replacing them everywhere would garble every message."""

_KEYLIKE = re.compile(r"\b(sk|rk|pk|or|gsk|xai|ghp|gho|xox[abp]|AKIA)[-_][A-Za-z0-9_\-*]{6,}")
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{8,}", re.I)
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@", re.I)
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|session|signature|credential|bearer", re.I)


def _header_secrets(name: str, value: str) -> Iterator[str]:
    """The secret parts of a header or query value: the whole value when the name sounds secret, and the token
    after an auth scheme ("Bearer abc" -> "abc")."""
    value = value.strip()
    if _SECRET_NAME.search(name) or _AUTH_VALUE.match(value):
        yield value
        scheme, _, rest = value.partition(" ")
        if rest.strip() and scheme.lower() in ("bearer", "basic", "token"):
            yield rest.strip()


def url_credentials(url: str) -> tuple[str, str] | None:
    """The (user, password) in a URL's userinfo, percent-decoded, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.username is None and parts.password is None:
        return None
    return unquote(parts.username or ""), unquote(parts.password or "")


def without_credentials(url: str) -> str:
    """The URL with any userinfo removed (for messages and for the request itself)."""
    return _URL_CREDENTIALS.sub(r"\1", url)


def _url_secrets(url: str) -> Iterator[str]:
    creds = url_credentials(url)
    if creds is None:
        return
    user, password = creds
    yield from (password, f"{user}:{password}")
    yield base64.b64encode(f"{user}:{password}".encode()).decode()
    raw = urlsplit(url)
    if raw.password:
        yield raw.password  # the percent-encoded spelling, as it appears in the URL


def provider_secrets(provider: Any, env: Mapping[str, str]) -> list[str]:
    """The secrets one provider sends: its key, secret-looking header and query values, its URL credentials."""
    found: list[str] = []
    if provider.api_key_env and env.get(provider.api_key_env):
        found.append(env[provider.api_key_env])
    for name, value in {**provider.default_headers, **provider.default_query}.items():
        found += _header_secrets(name, value)
    found += _url_secrets(provider.base_url)
    if provider.base_url_env and env.get(provider.base_url_env):
        found += _url_secrets(env[provider.base_url_env])
    return found


def env_secrets(env: Mapping[str, str]) -> list[str]:
    """Values of environment variables whose names sound secret (…_KEY, …_TOKEN, …_SECRET, …PASSWORD)."""
    return [v for k, v in env.items() if v and re.search(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", k, re.I)]


class Scrubber:
    """Removes known secrets, and anything shaped like one, from text.

    Args:
        secrets: exact values to mask (shorter than MIN_SECRET_CHARS are ignored).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a value is masked whole before any secret it contains.
        self.secrets: tuple[str, ...] = tuple(sorted(found, key=len, reverse=True))

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str]) -> Scrubber:
        """Every secret `config` can reach with `env`: keys, secret headers and query values, URL credentials,
        and environment variables whose names sound secret (…_KEY, …_TOKEN, …_SECRET, …PASSWORD)."""
        found = [s for p in config.providers.values() for s in provider_secrets(p, env)]
        return cls(found + env_secrets(env))

    def extended(self, more: Iterable[str]) -> Scrubber:
        """This scrubber, knowing `more` secrets as well."""
        return Scrubber((*self.secrets, *more))

    def scrub(self, text: str) -> str:
        """`text` with every known secret, and anything key-shaped, replaced by ***."""
        if not text:
            return text
        for s in self.secrets:
            if s in text:
                text = text.replace(s, MASK)
        text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", text)
        text = _AUTH_VALUE.sub(lambda m: m.group(1) + " " + MASK, text)
        return _KEYLIKE.sub(lambda m: m.group(1) + "-" + MASK, text)

    def scrub_value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string scrubbed (dict keys too)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_value(v) for v in value]
        return value


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` scrubbed of the given secrets and anything key-shaped (a one-off Scrubber)."""
    return Scrubber(secrets).scrub(text)


# ---- arguments out of messages ------------------------------------------------------------------------------------

_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*?(?:'|…)|"(?:[^"\\\n]|\\.)*?(?:"|…)""")
_TYPE_WORDS = frozenset({"string", "number", "integer", "object", "array", "boolean", "null"})
MIN_REDACT_CHARS = 3


def _strings(value: Any, keys: bool = True) -> Iterator[str]:
    """Every string in a value; with `keys`, the keys of its objects too (those inside an argument are data)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if keys:
                yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _unescape(body: str) -> str:
    try:
        return json.loads('"' + body.replace('"', '\\"').replace("\\'", "'") + '"')
    except ValueError:
        return body


def redact(text: str, arguments: Mapping[str, Any] | None) -> str:
    """`text` with argument values removed: every quoted literal (a repr or JSON string, whole or cut short with
    "…") whose content occurs in an argument, and every argument string of 3 characters or more found verbatim.
    Numbers and booleans are left: they say little, and removing them would garble the rule being quoted."""
    if not text or not arguments:
        return text
    values = sorted({s for s in _strings(dict(arguments), keys=False) if len(s) >= MIN_REDACT_CHARS}, key=len, reverse=True)
    if not values:
        return text
    haystack = "\n".join(values)

    def literal(m: re.Match[str]) -> str:
        raw = m.group(0)
        body = _unescape(raw[1:-1])
        if len(body) < MIN_REDACT_CHARS or body in _TYPE_WORDS:
            return raw
        if body in haystack or any(v in body for v in values):
            return f"'{REDACTED}'"
        return raw

    text = _QUOTED.sub(literal, text)
    for v in values:
        if v in text:
            text = text.replace(v, REDACTED)
    return text


__all__ = ["MASK", "REDACTED", "Scrubber", "env_secrets", "provider_secrets", "redact", "scrub", "url_credentials",
           "without_credentials"]
