"""The only module that imports `openai`: Chat Completions with structured output, and the error boundary.

Every `openai` exception is translated into ours in `_translate`, once; messages are scrubbed of the key.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import openai
from openai.types.chat import ChatCompletion

from tiered_mcp.core.config import Provider
from tiered_mcp.core.errors import (
    MissingKey,
    ModelError,
    RateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from tiered_mcp.models.base import FinishReason, ModelReply, ModelRequest

_KEYLIKE = re.compile(r"\b(sk|rk|pk|or|gsk|xai)-[A-Za-z0-9_\-*]{6,}")
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                                    "tool_calls": "tool_calls", "function_call": "tool_calls"}


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove keys (the given ones, and anything shaped like a provider key) from a message."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _KEYLIKE.sub(lambda m: m.group(1) + "-***", text)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _status_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return e.message


@contextmanager
def _translate(where: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Map openai's exceptions onto ours; `where` names the tier and endpoint for the message."""
    try:
        yield
    except openai.APITimeoutError as e:
        # The aiohttp transport reports a refused connection as a connect timeout; tell the two apart.
        if "Cannot connect to host" in str(e.__cause__ or ""):
            raise UpstreamUnreachable(f"{where}: cannot connect ({scrub(str(e.__cause__), secrets)})") from e
        raise UpstreamTimeout(f"{where}: timed out") from e
    except openai.APIConnectionError as e:
        raise UpstreamUnreachable(f"{where}: cannot connect ({scrub(str(e.__cause__ or e), secrets)})") from e
    except openai.APIStatusError as e:
        status = e.status_code
        msg = f"{where}: HTTP {status}: {scrub(_status_message(e), secrets)}"
        if status == 429:
            raise RateLimited(msg, retry_after=_retry_after(e.response.headers)) from e
        if status >= 500 or status in (408, 409):
            raise UpstreamUnavailable(msg) from e
        if status in (401, 403):
            msg += " (check the provider's api_key_env variable holds a valid key)"
        elif status == 404:
            msg += " (check the tier's model name and the provider's base_url)"
        raise UpstreamRejected(msg) from e
    except openai.APIResponseValidationError as e:
        raise UpstreamUnavailable(f"{where}: malformed response: {scrub(str(e), secrets)}") from e
    except openai.OpenAIError as e:
        raise UpstreamRejected(f"{where}: {scrub(str(e), secrets)}") from e


def _default_http_client() -> Any:
    """The SDK's aiohttp transport when installed (the `openai[aiohttp]` extra, one of our dependencies): it costs
    about half the CPU per request of the default httpx2 transport (1.5 ms against 2.9 ms measured here), which
    decides throughput when hundreds of batch items are in flight. None falls back to the SDK's default."""
    try:
        return openai.DefaultAioHttpClient()
    except RuntimeError:  # the extra is missing
        return None


class OpenAIModels:
    """A `Model` over any OpenAI-compatible Chat Completions endpoint.

    One `AsyncOpenAI` per provider, built on first use. The SDK's own retries are off: the runner retries, so that
    every attempt is counted in the receipt.

    Args:
        env: where API keys and base-URL overrides are read from.
        http_client: an `httpx2.AsyncClient` to hand to every `AsyncOpenAI` (tests and custom transports).
    """

    def __init__(self, env: Mapping[str, str], http_client: Any = None) -> None:
        self._env = env
        self._http_client = http_client
        self._clients: dict[tuple[int, str], tuple[openai.AsyncOpenAI, tuple[str, ...]]] = {}

    def _client(self, provider: Provider, where: str) -> tuple[openai.AsyncOpenAI, tuple[str, ...]]:
        key = provider.api_key(self._env)
        if provider.api_key_env and not key:
            raise MissingKey(
                f"{where}: environment variable {provider.api_key_env} is not set "
                f"(set it to your key, or point this tier at another provider in the config)"
            )
        # Providers are frozen config objects that live as long as the config: their identity is a stable key.
        cache_key = (id(provider), key or "")
        if cache_key not in self._clients:
            headers = dict(provider.default_headers)
            if provider.api_key_header and key:
                headers[provider.api_key_header] = key
            client = openai.AsyncOpenAI(
                http_client=self._http_client or _default_http_client(),
                # With api_key_header the key travels in that header only, never also as a Bearer token.
                api_key="sent-in-" + provider.api_key_header if provider.api_key_header else key or "not-needed",
                base_url=provider.effective_base_url(self._env),
                timeout=provider.timeout_s,
                max_retries=0,
                default_headers=headers or None,
                default_query=provider.default_query or None,
            )
            self._clients[cache_key] = (client, (key,) if key else ())
        return self._clients[cache_key]

    async def complete(self, request: ModelRequest) -> ModelReply:
        provider, tier = request.provider, request.settings
        where = f"{request.tier} ({tier.model} at {provider.effective_base_url(self._env)})"
        client, secrets = self._client(provider, where)
        messages = list(request.messages)
        if provider.structured_output == "json_schema":
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": request.strict},
            }
        else:
            # json_object mode needs the schema in the prompt (and the word JSON, which OpenAI insists on).
            messages[0] = {
                "role": "system",
                "content": messages[0]["content"] + "\n\nAnswer with one JSON object valid against this JSON Schema:\n"
                + json.dumps(request.schema, separators=(",", ":")),
            }
            response_format = {"type": "json_object"}
        params: dict[str, Any] = {
            "model": tier.model,
            "messages": messages,
            "response_format": response_format,
            provider.max_tokens_param: tier.max_output_tokens,
        }
        if tier.temperature is not None:
            params["temperature"] = tier.temperature
        if tier.reasoning_effort is not None:
            params["reasoning_effort"] = tier.reasoning_effort
        with _translate(where, secrets):
            # The SDK's documented raw `post` rather than `chat.completions.create`: create() walks every parameter
            # through its TypedDict transforms on each request, which measured as most of its CPU per request (our
            # body is plain JSON that we built and checked). The response is still parsed into a ChatCompletion.
            resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=params)
        if not resp.choices:
            raise UpstreamUnavailable(f"{where}: the response had no choices")
        choice = resp.choices[0]
        usage = resp.usage
        return ModelReply(
            content=choice.message.content,
            refusal=getattr(choice.message, "refusal", None),
            finish_reason=_FINISH.get(choice.finish_reason or "stop", "other"),
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            model=resp.model or tier.model,
        )

    async def probe(self, provider: Provider, timeout_s: float = 5.0) -> list[str]:
        """List the endpoint's models (a cheap request that proves the endpoint answers and the key works).

        Raises:
            ModelError: the endpoint did not answer, or refused.
        """
        where = provider.effective_base_url(self._env)
        client, secrets = self._client(provider, where)
        with _translate(where, secrets):
            page = await client.with_options(timeout=timeout_s).models.list()
        return [m.id for m in page.data]

    async def aclose(self) -> None:
        for client, _ in self._clients.values():
            await client.close()
        self._clients.clear()


__all__ = ["OpenAIModels", "ModelError", "scrub"]
