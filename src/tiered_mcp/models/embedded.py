"""The embedded local tier as a Model: it answers a request's local task in process and never opens a socket.

It reads the call's validated arguments, not the prompt; the token counts it reports are what the prompt and the
answer come to in o200k tokens (flagged as estimates: no request was sent), the basis of the "would have cost"
figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tiered_mcp.core.config import Provider
from tiered_mcp.core.errors import UpstreamRejected
from tiered_mcp.core.tokens import count, count_messages
from tiered_mcp.models.base import ModelReply, ModelRequest
from tiered_mcp.models.local import LocalEngine


class EmbeddedModel:
    """A Model over the local engine."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    async def complete(self, request: ModelRequest) -> ModelReply:
        if request.local_task is None or request.arguments is None:
            raise UpstreamRejected(f"the local tier does not serve {request.schema_name}")
        output = await self.engine.run(request.local_task, dict(request.arguments))
        return self._reply(request, output)

    def answers_together(self, provider: Provider) -> bool:
        return provider.kind == "embedded"

    async def complete_many(self, requests: Sequence[ModelRequest]) -> list[ModelReply | Exception]:
        """Answer many requests in one `LocalEngine.run_many` pass per local task (each reply is what `complete`
        gives that request alone)."""
        out: list[ModelReply | Exception] = []
        tasks: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            out.append(UpstreamRejected(f"the local tier does not serve {r.schema_name}"))
            if r.local_task is not None and r.arguments is not None:
                tasks.setdefault(r.local_task, []).append(i)
        for task, members in tasks.items():
            answers = await self.engine.run_many(task, [dict(requests[i].arguments or {}) for i in members])
            for i, answer in zip(members, answers):
                out[i] = answer if isinstance(answer, Exception) else self._reply(requests[i], answer)
        return out

    def _reply(self, request: ModelRequest, output: dict[str, Any]) -> ModelReply:
        content = json.dumps(output, ensure_ascii=False)
        return ModelReply(content=content, input_tokens=count_messages(request.messages),
                          output_tokens=count(content), model=self.engine.model_name, usage_reported=False)
