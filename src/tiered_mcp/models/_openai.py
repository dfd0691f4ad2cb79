"""The only module that imports `openai`: Chat Completions with structured output, and the error boundary.

Every `openai` exception is translated into ours in `_translate`, once, and every answer that is not a chat
completion gets a name too (HTML page, malformed body, error object, disconnect); messages are scrubbed of every
secret the provider sends (key, secret headers, URL credentials) and quote at most a short excerpt of a body.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import anyio
import openai
from openai.types.chat import ChatCompletion

from tiered_mcp.core.config import Provider
from tiered_mcp.core.errors import (
    MissingKey,
    ModelError,
    RateLimited,
    ServiceTierUnavailable,
    UpstreamDisconnected,
    UpstreamErrorObject,
    UpstreamMalformed,
    UpstreamMisconfigured,
    UpstreamNotAPI,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from tiered_mcp.core.secrets import Scrubber, env_secrets, provider_secrets, url_credentials, without_credentials
from tiered_mcp.models.base import BatchState, FinishReason, ModelReply, ModelRequest

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                                    "tool_calls": "tool_calls", "function_call": "tool_calls"}
_EXCERPT = 200


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove keys (the given ones, and anything shaped like a provider key) from a message."""
    return Scrubber(secrets).scrub(text)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say or said something malformed (ignored:
    a broken header must never end the call)."""
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            value = float(ms) / 1000
            if math.isfinite(value):
                return max(0.0, value)
        text = (headers.get("retry-after") or "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            when = email.utils.parsedate_to_datetime(text)
            value = when.timestamp() - time.time()
        return max(0.0, value) if math.isfinite(value) else None
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def _status_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return e.message


def _status_code(e: openai.APIStatusError) -> str | None:
    """The error object's `code` (`resource_unavailable`, ...), or None."""
    body = e.body
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"


def _disconnected(e: BaseException) -> bool:
    """Whether the transport gave up because the server closed the connection (aiohttp reports that as a
    timeout whose cause is "Server disconnected")."""
    seen: BaseException | None = e
    for _ in range(6):
        if seen is None:
            return False
        name, text = type(seen).__name__, str(seen).lower()
        if "disconnected" in name.lower() or "server disconnected" in text or "remoteprotocolerror" in name.lower() \
                or "connection closed" in text or "connectionreset" in name.lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _translate(where: str, scrubber: Scrubber) -> Iterator[None]:
    """Map openai's (and the transport's) exceptions onto ours; `where` names the tier and endpoint."""
    try:
        yield
    except openai.APITimeoutError as e:
        # The aiohttp transport reports a refused connection, and a closed one, as a timeout; tell them apart.
        if "Cannot connect to host" in str(e.__cause__ or ""):
            raise UpstreamUnreachable(f"{where}: cannot connect ({scrubber.scrub(str(e.__cause__))})") from e
        if _disconnected(e):
            raise UpstreamDisconnected(f"{where}: the server closed the connection without an answer") from e
        raise UpstreamTimeout(f"{where}: timed out") from e
    except openai.APIConnectionError as e:
        if _disconnected(e):
            raise UpstreamDisconnected(f"{where}: the server closed the connection without an answer") from e
        raise UpstreamUnreachable(f"{where}: cannot connect ({scrubber.scrub(_short(str(e.__cause__ or e)))})") from e
    except openai.APIStatusError as e:
        status = e.status_code
        msg = f"{where}: HTTP {status}: {scrubber.scrub(_short(_status_message(e)))}"
        if status == 429:
            # Flex processing without capacity: a 429 of its own (nothing charged), which a fallback can route around.
            kind = ServiceTierUnavailable if _status_code(e) == "resource_unavailable" else RateLimited
            raise kind(msg, retry_after=_retry_after(e.response.headers)) from e
        if status >= 500 or status in (408, 409):
            raise UpstreamUnavailable(msg) from e
        if status in (401, 403):
            msg += " (check the provider's api_key_env variable holds a valid key)"
        elif status == 404:
            msg += " (check the tier's model name and the provider's base_url)"
        raise UpstreamRejected(msg) from e
    except openai.APIResponseValidationError as e:
        raise UpstreamMalformed(f"{where}: malformed response: {scrubber.scrub(_short(str(e)))}") from e
    except openai.OpenAIError as e:
        raise UpstreamRejected(f"{where}: {scrubber.scrub(_short(str(e)))}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # A body sent as JSON that does not parse: openai lets the decoder's error through.
        raise UpstreamMalformed(f"{where}: the response body is not valid JSON ({type(e).__name__})") from e


def _error_object(where: str, error: Any, scrubber: Scrubber) -> ModelError:
    """A 200 carrying `{"error": ...}`: keep the provider's message; a status or code inside it picks the kind."""
    message = error.get("message") if isinstance(error, dict) else error
    message = scrubber.scrub(_short(str(message or "no message")))
    code = None
    if isinstance(error, dict):
        for key in ("status", "code", "status_code"):
            value = error.get(key)
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                code = int(value)
                break
    msg = f"{where}: the provider answered 200 with an error{f' ({code})' if code else ''}: {message}"
    if code == 429:
        return RateLimited(msg)
    if code is not None and 400 <= code < 500 and code not in (408, 409):
        return UpstreamRejected(msg)
    return UpstreamErrorObject(msg)


def _not_a_completion(where: str, resp: Any, scrubber: Scrubber) -> ModelError:
    if isinstance(resp, str):
        head = resp.lstrip()[:200].lower()
        kind = "an HTML page" if head.startswith(("<!doctype", "<html", "<head", "<body", "<")) else "text, not JSON"
        return UpstreamNotAPI(
            f"{where}: the endpoint answered with {kind}, not the API ({scrubber.scrub(_short(resp))!r}); check "
            "base_url, or a proxy or captive portal is in the way")
    return UpstreamMalformed(f"{where}: the response is a JSON {type(resp).__name__}, not a chat completion")


def _count(obj: Any, *names: str) -> int:
    for name in names:
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if obj is None:
            return 0
    return obj if isinstance(obj, int) and obj >= 0 else 0


def _default_http_client() -> Any:
    """The SDK's aiohttp transport when installed (the `openai[aiohttp]` extra, one of our dependencies): it costs
    about half the CPU per request of the default httpx2 transport (1.5 ms against 2.9 ms measured here), which
    decides throughput when hundreds of batch items are in flight. None falls back to the SDK's default."""
    try:
        return openai.DefaultAioHttpClient()
    except RuntimeError:  # the extra is missing
        return None


def _batch_state(batch: Any) -> BatchState:
    counts = batch.request_counts
    return BatchState(id=batch.id, status=batch.status, input_file=batch.input_file_id,
                      output_file=batch.output_file_id, error_file=batch.error_file_id,
                      total=counts.total if counts else 0, completed=counts.completed if counts else 0,
                      failed=counts.failed if counts else 0)


class OpenAIModels:
    """A `Model` over any OpenAI-compatible Chat Completions endpoint.

    One `AsyncOpenAI` per provider, built on first use. The SDK's own retries are off: the runner retries, so that
    every attempt is counted in the receipt. Credentials in a base URL (`https://user:pass@host/v1`) are sent as
    HTTP Basic auth and never appear in a message; with a Bearer key as well they are refused (both would need the
    Authorization header).

    Args:
        env: where API keys and base-URL overrides are read from.
        http_client: an `httpx2.AsyncClient` to hand to every `AsyncOpenAI` (tests and custom transports).
    """

    def __init__(self, env: Mapping[str, str], http_client: Any = None) -> None:
        self._env = env
        self._http_client = http_client
        self._clients: dict[tuple[int, str], tuple[openai.AsyncOpenAI, Scrubber]] = {}
        self._where: dict[int, tuple[Provider, str]] = {}
        self._env_secrets = tuple(env_secrets(env))

    def where(self, provider: Provider) -> str:
        """The provider's base URL as messages show it (without credentials); kept per provider, since every
        request asks and the URL parse costs more than the rest of the lookup."""
        hit = self._where.get(id(provider))
        if hit is None or hit[0] is not provider:
            hit = self._where[id(provider)] = (provider, without_credentials(provider.effective_base_url(self._env)))
        return hit[1]

    def _client(self, provider: Provider, where: str) -> tuple[openai.AsyncOpenAI, Scrubber]:
        key = provider.api_key(self._env)
        if provider.api_key_env and not key:
            raise MissingKey(
                f"{where}: environment variable {provider.api_key_env} is not set "
                f"(set it to your key, or point this tier at another provider in the config)"
            )
        # Providers are frozen config objects that live as long as the config: their identity is a stable key.
        cache_key = (id(provider), key or "")
        if cache_key not in self._clients:
            scrubber = Scrubber((*provider_secrets(provider, self._env), *self._env_secrets))
            url = provider.effective_base_url(self._env)
            headers = dict(provider.default_headers)
            if provider.api_key_header and key:
                headers[provider.api_key_header] = key
            creds = url_credentials(url)
            if creds is not None:
                if key and not provider.api_key_header:
                    raise UpstreamMisconfigured(
                        f"{where}: the base URL carries credentials (user:password@) and the provider also sends "
                        f"its key ({provider.api_key_env}) as a Bearer token; both need the Authorization header. "
                        "Remove one, or send the key in api_key_header")
                if not any(h.lower() == "authorization" for h in headers):
                    headers["Authorization"] = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
                url = without_credentials(url)
            client = openai.AsyncOpenAI(
                http_client=self._http_client or _default_http_client(),
                # With api_key_header the key travels in that header only, never also as a Bearer token.
                api_key="sent-in-" + provider.api_key_header if provider.api_key_header else key or "not-needed",
                base_url=url,
                timeout=provider.timeout_s,
                max_retries=0,
                default_headers=headers or None,
                default_query=provider.default_query or None,
            )
            self._clients[cache_key] = (client, scrubber)
        return self._clients[cache_key]

    async def complete(self, request: ModelRequest) -> ModelReply:
        provider, tier = request.provider, request.settings
        where = f"{request.tier} ({tier.model} at {self.where(provider)})"
        client, scrubber = self._client(provider, where)
        params = self.chat_body(request)
        options: Any = {} if request.timeout_s is None else {"timeout": request.timeout_s}  # the SDK's RequestOptions
        with _translate(where, scrubber):
            # The SDK's documented raw `post` rather than `chat.completions.create`: create() walks every parameter
            # through its TypedDict transforms on each request, which measured as most of its CPU per request (our
            # body is plain JSON that we built and checked). The response is still parsed into a ChatCompletion,
            # or comes back as a str (a body that is not JSON) or a bare list/dict: checked below.
            resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=params, options=options)
        return self._reply(where, resp, tier.model, scrubber)

    def chat_body(self, request: ModelRequest) -> dict[str, Any]:
        """The Chat Completions body `complete` posts for `request` (a Batch API line carries the same one)."""
        provider, tier = request.provider, request.settings
        messages = list(request.messages)
        if provider.structured_output == "json_schema":
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": request.strict},
            }
        else:
            # json_object mode needs the schema in the prompt (and the word JSON, which OpenAI insists on). The
            # schema may be the caller's, so it goes in a user message of its own: the system message stays fixed.
            messages[0] = {
                "role": "system",
                "content": messages[0]["content"] + "\n\nAnswer with one JSON object valid against the JSON Schema "
                "given in the first user message.",
            }
            messages.insert(1, {"role": "user", "content": "The JSON Schema the answer must be valid against:\n"
                                + json.dumps(request.schema, separators=(",", ":"))})
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
        if request.service_tier is not None:
            params["service_tier"] = request.service_tier
        return params

    # ---- the Batch API (/v1/files + /v1/batches): call/provider_batch.py drives these ----------------------------

    def batch_api(self) -> OpenAIModels:
        return self

    def _batch_client(self, provider: Provider) -> tuple[openai.AsyncOpenAI, Scrubber, str]:
        where = f"the Batch API at {self.where(provider)}"
        client, scrubber = self._client(provider, where)
        return client, scrubber, where

    async def batch_upload(self, provider: Provider, data: bytes) -> str:
        """Upload a JSONL file of requests (purpose "batch"); its file id."""
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            file = await client.files.create(file=("batch.jsonl", data, "application/jsonl"), purpose="batch")
        return str(file.id)

    async def batch_create(self, provider: Provider, input_file: str, window: str,
                           metadata: dict[str, str]) -> BatchState:
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            batch = await client.batches.create(input_file_id=input_file, endpoint="/v1/chat/completions",
                                                completion_window=window, metadata=metadata)  # type: ignore[arg-type]
        return _batch_state(batch)

    async def batch_find(self, provider: Provider, key: str, value: str, since: float = 0.0) -> BatchState | None:
        """The newest batch created after `since` (a Unix time) whose metadata has `key` = `value` (one submitted
        before a crash), or None. The provider lists batches newest first: the walk stops at `since`."""
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            async for batch in client.batches.list(limit=100):
                if (batch.metadata or {}).get(key) == value:
                    return _batch_state(batch)
                if batch.created_at < since:
                    break
        return None

    async def batch_get(self, provider: Provider, batch_id: str) -> BatchState:
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            return _batch_state(await client.batches.retrieve(batch_id))

    async def batch_cancel(self, provider: Provider, batch_id: str) -> BatchState:
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            return _batch_state(await client.batches.cancel(batch_id))

    async def batch_results(self, provider: Provider, tier: str, model: str,
                            file_id: str) -> dict[str, ModelReply | ModelError]:
        """An output or error file, line by line: per custom_id, the reply (as `complete` would give it) or the
        error (named as `complete` would name it)."""
        client, scrubber, where = self._batch_client(provider)
        with _translate(where, scrubber):
            data = (await client.files.content(file_id)).content
        where = f"{tier} ({model} at {self.where(provider)}, Batch API)"

        def parse() -> dict[str, ModelReply | ModelError]:  # up to ~200 MB of JSON lines: in a worker thread
            out: dict[str, ModelReply | ModelError] = {}
            for raw in data.splitlines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    custom_id = str(line["custom_id"])
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    continue  # a line we cannot tie to a request: its item counts as unanswered
                out[custom_id] = self._batch_line(where, line, model, scrubber)
            return out

        return await anyio.to_thread.run_sync(parse)

    def _batch_line(self, where: str, line: dict[str, Any], model: str, scrubber: Scrubber) -> ModelReply | ModelError:
        response, error = line.get("response"), line.get("error")
        if isinstance(response, dict) and response.get("status_code") == 200:
            try:
                completion = ChatCompletion.model_validate(response.get("body"))
                return self._reply(where, completion, model, scrubber)
            except ModelError as e:
                return e
            except Exception:  # pydantic's ValidationError: a body that is not a chat completion
                return UpstreamMalformed(f"{where}: the batch line's body is not a chat completion")
        status = response.get("status_code") if isinstance(response, dict) else None
        body = response.get("body") if isinstance(response, dict) else None
        inner = body.get("error") if isinstance(body, dict) and body.get("error") is not None else error
        if isinstance(inner, dict) and status is not None and "status" not in inner:
            inner = {**inner, "status": status}
        return _error_object(where, inner or f"HTTP {status}", scrubber)

    def _reply(self, where: str, resp: Any, model: str, scrubber: Scrubber) -> ModelReply:
        if not isinstance(resp, ChatCompletion):
            raise _not_a_completion(where, resp, scrubber)
        extra = resp.model_extra or {}
        choices = getattr(resp, "choices", None)
        if extra.get("error") is not None and not choices:
            raise _error_object(where, extra["error"], scrubber)
        if not choices:
            raise UpstreamMalformed(f"{where}: the response had no choices")
        try:
            choice = choices[0]
            message = choice.message
            content, refusal = message.content, getattr(message, "refusal", None)
            finish = choice.finish_reason
        except (AttributeError, TypeError, IndexError, KeyError):
            raise UpstreamMalformed(f"{where}: the response's first choice has no message") from None
        if not isinstance(content, (str, type(None))) or not isinstance(refusal, (str, type(None))):
            raise UpstreamMalformed(f"{where}: the response's message content is not text")
        usage = getattr(resp, "usage", None)
        return ModelReply(
            content=content,
            refusal=refusal,
            finish_reason=_FINISH.get(finish if isinstance(finish, str) else "stop", "other"),
            input_tokens=_count(usage, "prompt_tokens"),
            output_tokens=_count(usage, "completion_tokens"),
            model=resp.model if isinstance(resp.model, str) and resp.model else model,
            cached_input_tokens=_count(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_count(usage, "completion_tokens_details", "reasoning_tokens"),
            usage_reported=usage is not None,
            service_tier=resp.service_tier if isinstance(resp.service_tier, str) and resp.service_tier else None,
        )

    async def probe(self, provider: Provider, timeout_s: float = 5.0) -> list[str]:
        """List the endpoint's models (a cheap request that proves the endpoint answers and the key works).

        Raises:
            ModelError: the endpoint did not answer, or refused.
        """
        where = self.where(provider)
        client, scrubber = self._client(provider, where)
        with _translate(where, scrubber):
            page = await client.with_options(timeout=timeout_s).models.list()
        data = getattr(page, "data", None)
        if not isinstance(data, list):
            raise _not_a_completion(where, page, scrubber)
        return [m.id for m in data if isinstance(getattr(m, "id", None), str)]

    async def aclose(self) -> None:
        for client, _ in self._clients.values():
            await client.close()
        self._clients.clear()


__all__ = ["OpenAIModels", "ModelError", "scrub"]
