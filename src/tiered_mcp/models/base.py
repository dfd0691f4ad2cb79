"""The Model seam: what the runner asks of a model, and what it gets back.

The runner talks only to `Model`. `OpenAIModels` (in `_openai`, imported lazily because `import openai` costs
about half a second of start-up) is the real implementation; `tiered_mcp.testing` has doubles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol

from tiered_mcp.core.config import Provider, Tier

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


class Model(Protocol):
    """Anything that can answer a ModelRequest.

    Implementations raise `tiered_mcp.core.errors.ModelError` subclasses for failed calls, never vendor exceptions.
    Cancellation must propagate: a cancelled caller must cancel the request in flight.
    """

    async def complete(self, request: ModelRequest) -> ModelReply: ...


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

    async def complete(self, request: ModelRequest) -> ModelReply:
        if self._model is None:
            from tiered_mcp.models._openai import OpenAIModels

            self._model = OpenAIModels(self.env)
        return await self._model.complete(request)

    async def aclose(self) -> None:
        if self._model is not None:
            await self._model.aclose()

