"""Tool results as the MCP client sees them: an answer (text, structured content, the receipt in `_meta`) or a
failure while running the tool (`is_error`, the message, the receipt so far). The synchronous `tools/call` and a
task's final result are built here alike, so a batch answered through a task reads exactly as one answered at once.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from tiered_mcp.call.runner import Result
from tiered_mcp.core.errors import CallError
from tiered_mcp.core.receipts import RECEIPT_META_KEY


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def answer(result: Result) -> types.CallToolResult:
    """An answered call."""
    content: list[types.ContentBlock] = [types.TextContent(text=dumps(result.output))]
    if result.receipt.get("unverified"):
        # Hosts' models read the text, not _meta: say which values no tier could verify against the input.
        content.append(types.TextContent(text="unverified (not found in the input by the tool's validators): "
                                              + ", ".join(result.receipt["unverified"])))
    return types.CallToolResult(content=content, structured_content=result.output,
                                _meta={RECEIPT_META_KEY: result.receipt})


def failure(error: CallError) -> types.CallToolResult:
    """A call that could not run, or that every tier failed: an error result the calling model can act on."""
    meta = {RECEIPT_META_KEY: error.receipt} if error.receipt else None
    return types.CallToolResult(content=[types.TextContent(text=str(error))], is_error=True, _meta=meta)


def internal(error: BaseException) -> types.CallToolResult:
    """A bug of ours, said without its message (which may quote the caller's arguments)."""
    return types.CallToolResult(
        content=[types.TextContent(text=f"internal error in tiered-mcp ({type(error).__name__}); see server log")],
        is_error=True,
    )
