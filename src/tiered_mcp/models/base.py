"""The Model seam: what the runner asks of a model, and what it gets back.

The runner talks only to `Model`. `OpenAIModels` (in `_openai`, imported lazily because `import openai` costs
about half a second of start-up) is the real implementation; `tiered_mcp.testing` has doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

from tiered_mcp.core.config import Provider, Tier
from tiered_mcp.core.errors import ModelError

FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


@dataclass(frozen=True)
class ModelRequest:
    """One chat completion to make.

    Attributes:
        tier: the tier's name ("nano", ...).
        settings: the tier's model and parameters.
        provider: the endpoint to call.
        messages: chat messages (role, content).
        schema: the JSON Schema the answer must satisfy.
        schema_name: a name for the schema (the tool's name).
        strict: whether the schema can be enforced by strict structured output.
        local_task: the spec's in-process task, for the embedded local tier (None: the tool has none).
        arguments: the call's validated arguments, which the local tier answers from (it reads no prompt).
        service_tier: the provider's service tier to ask for (None: send none); the call path sets it.
        timeout_s: this request's timeout (None: the provider's); the call path sets it.
    """

    tier: str
    settings: Tier
    provider: Provider
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    schema_name: str
    strict: bool
    local_task: str | None = None
    arguments: Mapping[str, Any] | None = None
    service_tier: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class ModelReply:
    """What came back: the text, or a refusal, and what it cost in tokens."""

    content: str | None
    finish_reason: FinishReason = "stop"
    refusal: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    cached_input_tokens: int = 0
    """Of `input_tokens`, those the provider served from its prompt cache (priced at the cached-input rate)."""
    reasoning_tokens: int = 0
    """Of `output_tokens`, those spent on reasoning (already inside `output_tokens`; priced as output)."""
    usage_reported: bool = True
    """False when the provider sent no usage: the token counts are then o200k estimates made by the caller."""
    service_tier: str | None = None
    """The service tier the provider reports it used (None: it named none); the attempt is priced at it."""


@dataclass(frozen=True)
class BatchState:
    """A batch submitted to a provider's Batch API, as last seen (`status`: validating, in_progress, finalizing,
    completed, failed, expired, cancelling, cancelled)."""

    id: str
    status: str
    input_file: str
    output_file: str | None = None
    error_file: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "expired", "cancelled")


class BatchApi(Protocol):
    """A provider's Batch API (OpenAI-style /v1/files + /v1/batches), as `OpenAIModels` implements it. Raises
    `ModelError` subclasses, as `Model` does."""

    def chat_body(self, request: ModelRequest) -> dict[str, Any]: ...
    async def batch_upload(self, provider: Provider, data: bytes) -> str: ...
    async def batch_create(self, provider: Provider, input_file: str, window: str,
                           metadata: dict[str, str]) -> BatchState: ...
    async def batch_find(self, provider: Provider, key: str, value: str,
                         since: float = 0.0) -> BatchState | None: ...
    async def batch_get(self, provider: Provider, batch_id: str) -> BatchState: ...
    async def batch_cancel(self, provider: Provider, batch_id: str) -> BatchState: ...
    async def batch_results(self, provider: Provider, tier: str, model: str,
                            file_id: str) -> dict[str, ModelReply | ModelError]: ...


class Model(Protocol):
    """Anything that can answer a ModelRequest.

    Implementations raise `tiered_mcp.core.errors.ModelError` subclasses for failed calls, never vendor exceptions.
    Cancellation must propagate: a cancelled caller must cancel the request in flight.
    """

    async def complete(self, request: ModelRequest) -> ModelReply: ...


@runtime_checkable
class ManyModel(Protocol):
    """A Model that can also answer many requests in one pass (the local tier: one batched forward pass).

    `complete_many` gives, per request and in order, the reply `complete` would give it alone, or the exception
    `complete` would raise for it (a ModelError, or a CallError such as ArgumentsError); an exception raised by
    `complete_many` itself (the model failed to load) stands for every request. Models that answer one request at a
    time do not implement it: the call path then sends each request alone.
    """

    def answers_together(self, provider: Provider) -> bool: ...
    async def complete(self, request: ModelRequest) -> ModelReply: ...
    async def complete_many(self, requests: Sequence[ModelRequest]) -> list[ModelReply | Exception]: ...


class Models:
    """The one seam the call path talks to: requests for an embedded provider go to the in-process local model,
    every other request to the remote model. Nothing configured as local ever reaches the remote model, so it never
    opens a socket.
    """

    def __init__(self, remote: Model, local: Model) -> None:
        self.remote, self.local = remote, local

    async def complete(self, request: ModelRequest) -> ModelReply:
        model = self.local if request.provider.kind == "embedded" else self.remote
        return await model.complete(request)

    def answers_together(self, provider: Provider) -> bool:
        """Whether requests to `provider` can share one pass: those the local model serves, if it can."""
        return provider.kind == "embedded" and isinstance(self.local, ManyModel)

    async def complete_many(self, requests: Sequence[ModelRequest]) -> list[ModelReply | Exception]:
        """Answer requests to the local model in one pass (see `ManyModel`); only for `answers_together` providers.

        Raises:
            ValueError: a request is not for the local model (the call path never sends one).
        """
        if not isinstance(self.local, ManyModel) or any(r.provider.kind != "embedded" for r in requests):
            raise ValueError("only requests for the embedded local model are answered together")
        return await self.local.complete_many(requests)

    async def aclose(self) -> None:
        for model in (self.remote, self.local):
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()


@dataclass
class LazyOpenAI:
    """Builds the OpenAI-compatible model on first use so that starting the server does not import openai."""

    env: Mapping[str, str]
    _model: Any = field(default=None, init=False)

    def _get(self) -> Any:
        if self._model is None:
            from tiered_mcp.models._openai import OpenAIModels

            self._model = OpenAIModels(self.env)
        return self._model

    async def complete(self, request: ModelRequest) -> ModelReply:
        return await self._get().complete(request)

    def batch_api(self) -> BatchApi:
        """The provider's Batch API over the same clients (imports openai now)."""
        return self._get()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._model is not None:
            await self._model.aclose()

